/* SPDX-License-Identifier: MIT
 *
 * Drive libomemo-c (Dino's fork of libsignal-protocol-c) to produce OMEMO artifacts.
 * Build: gcc -O1 -o omemo_c_gen omemo_c_gen.c $(pkg-config --cflags --libs libomemo-c) -lcrypto
 * Run:   ./omemo_c_gen VERSION   (VERSION 3 = legacy eu.siacs.conversations.axolotl, 4 = urn:xmpp:omemo:2)
 * Prints "name value" lines (values base64 or decimal) for generate.py, which wraps them in XML.
 * Only public data is printed. The crypto provider is OpenSSL (Dino uses libgcrypt).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/core_names.h>
#include <omemo/signal_protocol.h>
#include <omemo/key_helper.h>
#include <omemo/session_builder.h>
#include <omemo/session_cipher.h>
#include <omemo/session_pre_key.h>
#include <omemo/protocol.h>
#include <omemo/curve.h>

#define CHECK(x) do { int _r = (x); if (_r < 0) { fprintf(stderr, "%s:%d %s -> %d\n", __FILE__, __LINE__, #x, _r); exit(1); } } while (0)

/* ---------- crypto provider (OpenSSL) ---------- */
static int p_random(uint8_t *data, size_t len, void *u) { (void)u; return RAND_bytes(data, (int)len) == 1 ? 0 : SG_ERR_UNKNOWN; }
static int p_hmac_init(void **ctx, const uint8_t *key, size_t key_len, void *u) {
    (void)u; EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL); EVP_MAC_CTX *c = EVP_MAC_CTX_new(mac); EVP_MAC_free(mac);
    OSSL_PARAM params[] = { OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0), OSSL_PARAM_construct_end() };
    if (!EVP_MAC_init(c, key, key_len, params)) return SG_ERR_UNKNOWN;
    *ctx = c; return 0; }
static int p_hmac_update(void *ctx, const uint8_t *d, size_t n, void *u) { (void)u; return EVP_MAC_update(ctx, d, n) ? 0 : SG_ERR_UNKNOWN; }
static int p_hmac_final(void *ctx, signal_buffer **out, void *u) {
    (void)u; uint8_t md[64]; size_t n = 0; if (!EVP_MAC_final(ctx, md, &n, sizeof md)) return SG_ERR_UNKNOWN;
    *out = signal_buffer_create(md, n); return 0; }
static void p_hmac_cleanup(void *ctx, void *u) { (void)u; EVP_MAC_CTX_free(ctx); }
static int p_sha_init(void **ctx, void *u) { (void)u; EVP_MD_CTX *c = EVP_MD_CTX_new(); EVP_DigestInit_ex(c, EVP_sha512(), NULL); *ctx = c; return 0; }
static int p_sha_update(void *ctx, const uint8_t *d, size_t n, void *u) { (void)u; return EVP_DigestUpdate(ctx, d, n) ? 0 : SG_ERR_UNKNOWN; }
static int p_sha_final(void *ctx, signal_buffer **out, void *u) {
    (void)u; uint8_t md[64]; unsigned n = 0; EVP_DigestFinal_ex(ctx, md, &n); *out = signal_buffer_create(md, n);
    EVP_DigestInit_ex(ctx, EVP_sha512(), NULL); return 0; }
static void p_sha_cleanup(void *ctx, void *u) { (void)u; EVP_MD_CTX_free(ctx); }
static const EVP_CIPHER *pick(int cipher, size_t key_len) {
    if (cipher == SG_CIPHER_AES_CBC_PKCS5) return key_len == 16 ? EVP_aes_128_cbc() : key_len == 24 ? EVP_aes_192_cbc() : EVP_aes_256_cbc();
    if (cipher == SG_CIPHER_AES_CTR_NOPADDING) return key_len == 16 ? EVP_aes_128_ctr() : key_len == 24 ? EVP_aes_192_ctr() : EVP_aes_256_ctr();
    return NULL; }
static int p_crypt(int enc, signal_buffer **out, int cipher, const uint8_t *key, size_t key_len, const uint8_t *iv, size_t iv_len,
                   const uint8_t *in, size_t in_len) {
    (void)iv_len; const EVP_CIPHER *c = pick(cipher, key_len); if (!c) return SG_ERR_UNKNOWN;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new(); uint8_t *buf = malloc(in_len + 32); int n1 = 0, n2 = 0;
    if (!EVP_CipherInit_ex(ctx, c, NULL, key, iv, enc) || !EVP_CipherUpdate(ctx, buf, &n1, in, (int)in_len) ||
        !EVP_CipherFinal_ex(ctx, buf + n1, &n2)) { EVP_CIPHER_CTX_free(ctx); free(buf); return SG_ERR_UNKNOWN; }
    *out = signal_buffer_create(buf, n1 + n2); EVP_CIPHER_CTX_free(ctx); free(buf); return 0; }
static int p_encrypt(signal_buffer **o, int c, const uint8_t *k, size_t kl, const uint8_t *iv, size_t ivl, const uint8_t *p, size_t pl, void *u) { (void)u; return p_crypt(1, o, c, k, kl, iv, ivl, p, pl); }
static int p_decrypt(signal_buffer **o, int c, const uint8_t *k, size_t kl, const uint8_t *iv, size_t ivl, const uint8_t *p, size_t pl, void *u) { (void)u; return p_crypt(0, o, c, k, kl, iv, ivl, p, pl); }

/* ---------- in-memory stores ---------- */
#define MAXREC 256
typedef struct { uint32_t id; signal_buffer *rec; } idrec;
typedef struct { char name[64]; int32_t dev; signal_buffer *rec; } sessrec;
typedef struct device {
    const char *label; const char *jid; uint32_t device_id;
    signal_context *ctx; signal_protocol_store_context *store;
    ratchet_identity_key_pair *identity;
    idrec pre[MAXREC]; int npre; idrec spk[8]; int nspk; sessrec sess[8]; int nsess;
    uint32_t pre_ids[MAXREC]; int n_pre_ids; uint32_t spk_id;
} device;

static idrec *find_id(idrec *a, int n, uint32_t id) { for (int i = 0; i < n; i++) if (a[i].rec && a[i].id == id) return &a[i]; return NULL; }
static int pk_load(signal_buffer **r, uint32_t id, void *u) { device *d = u; idrec *x = find_id(d->pre, d->npre, id); if (!x) return SG_ERR_INVALID_KEY_ID; *r = signal_buffer_copy(x->rec); return SG_SUCCESS; }
static int pk_store(uint32_t id, uint8_t *rec, size_t len, void *u) { device *d = u; idrec *x = find_id(d->pre, d->npre, id); if (!x) x = &d->pre[d->npre++]; else signal_buffer_free(x->rec); x->id = id; x->rec = signal_buffer_create(rec, len); return 0; }
static int pk_contains(uint32_t id, void *u) { device *d = u; return find_id(d->pre, d->npre, id) != NULL; }
static int pk_remove(uint32_t id, void *u) { device *d = u; idrec *x = find_id(d->pre, d->npre, id); if (x) { signal_buffer_free(x->rec); x->rec = NULL; } return 0; }
static int spk_load(signal_buffer **r, uint32_t id, void *u) { device *d = u; idrec *x = find_id(d->spk, d->nspk, id); if (!x) return SG_ERR_INVALID_KEY_ID; *r = signal_buffer_copy(x->rec); return SG_SUCCESS; }
static int spk_store(uint32_t id, uint8_t *rec, size_t len, void *u) { device *d = u; idrec *x = &d->spk[d->nspk++]; x->id = id; x->rec = signal_buffer_create(rec, len); return 0; }
static int spk_contains(uint32_t id, void *u) { device *d = u; return find_id(d->spk, d->nspk, id) != NULL; }
static int spk_remove(uint32_t id, void *u) { (void)id; (void)u; return 0; }
static sessrec *find_sess(device *d, const signal_protocol_address *a) {
    for (int i = 0; i < d->nsess; i++) if (d->sess[i].dev == a->device_id && strlen(d->sess[i].name) == a->name_len && !memcmp(d->sess[i].name, a->name, a->name_len)) return &d->sess[i];
    return NULL; }
static int ss_load(signal_buffer **r, signal_buffer **ur, const signal_protocol_address *a, void *u) { (void)ur; sessrec *s = find_sess(u, a); if (!s) return 0; *r = signal_buffer_copy(s->rec); return 1; }
static int ss_subs(signal_int_list **l, const char *n, size_t nl, void *u) { (void)n; (void)nl; (void)u; *l = signal_int_list_alloc(); return 0; }
static int ss_store(const signal_protocol_address *a, uint8_t *rec, size_t len, uint8_t *ur, size_t ul, void *u) {
    (void)ur; (void)ul; device *d = u; sessrec *s = find_sess(d, a);
    if (!s) { s = &d->sess[d->nsess++]; memcpy(s->name, a->name, a->name_len); s->name[a->name_len] = 0; s->dev = a->device_id; } else signal_buffer_free(s->rec);
    s->rec = signal_buffer_create(rec, len); return 0; }
static int ss_contains(const signal_protocol_address *a, void *u) { return find_sess(u, a) != NULL; }
static int ss_delete(const signal_protocol_address *a, void *u) { (void)a; (void)u; return 0; }
static int ss_delete_all(const char *n, size_t nl, void *u) { (void)n; (void)nl; (void)u; return 0; }
static int ik_pair(signal_buffer **pub, signal_buffer **priv, void *u) { device *d = u;
    CHECK(ec_public_key_serialize(pub, ratchet_identity_key_pair_get_public(d->identity)));
    CHECK(ec_private_key_serialize(priv, ratchet_identity_key_pair_get_private(d->identity))); return 0; }
static int ik_regid(void *u, uint32_t *id) { *id = ((device *)u)->device_id; return 0; }
static int ik_save(const signal_protocol_address *a, uint8_t *k, size_t l, void *u) { (void)a; (void)k; (void)l; (void)u; return 0; }
static int ik_trusted(const signal_protocol_address *a, uint8_t *k, size_t l, void *u) { (void)a; (void)k; (void)l; (void)u; return 1; }

/* ---------- output helpers ---------- */
static void out_b64(const char *name, const uint8_t *data, size_t len) {
    char *b = malloc(4 * ((len + 2) / 3) + 1); EVP_EncodeBlock((unsigned char *)b, data, (int)len); printf("%s %s\n", name, b); free(b); }
static void out_buf(const char *name, signal_buffer *b) { out_b64(name, signal_buffer_data(b), signal_buffer_len(b)); }
static uint32_t rand_range(uint32_t lo, uint32_t hi) { uint32_t v; RAND_bytes((uint8_t *)&v, 4); return lo + v % (hi - lo); } /* [lo, hi) like GLib Random.int_range */

static void make_device(device *d, const char *label, const char *jid, int prekey_mode) {
    memset(d, 0, sizeof *d); d->label = label; d->jid = jid;
    signal_crypto_provider p = { p_random, p_hmac_init, p_hmac_update, p_hmac_final, p_hmac_cleanup,
                                 p_sha_init, p_sha_update, p_sha_final, p_sha_cleanup, p_encrypt, p_decrypt, d };
    CHECK(signal_context_create(&d->ctx, d)); CHECK(signal_context_set_crypto_provider(d->ctx, &p));
    CHECK(signal_protocol_store_context_create(&d->store, d->ctx));
    signal_protocol_session_store ss = { ss_load, ss_subs, ss_store, ss_contains, ss_delete, ss_delete_all, NULL, d };
    signal_protocol_pre_key_store ps = { pk_load, pk_store, pk_contains, pk_remove, NULL, d };
    signal_protocol_signed_pre_key_store sps = { spk_load, spk_store, spk_contains, spk_remove, NULL, d };
    signal_protocol_identity_key_store iks = { ik_pair, ik_regid, ik_save, ik_trusted, NULL, d };
    CHECK(signal_protocol_store_context_set_session_store(d->store, &ss));
    CHECK(signal_protocol_store_context_set_pre_key_store(d->store, &ps));
    CHECK(signal_protocol_store_context_set_signed_pre_key_store(d->store, &sps));
    CHECK(signal_protocol_store_context_set_identity_key_store(d->store, &iks));

    CHECK(signal_protocol_key_helper_generate_identity_key_pair(&d->identity, d->ctx));
    /* device id: Dino uses Random.int_range(1, int32.MAX); the library's own generator
       (extended range) gives 1..INT32_MAX-1: we use the library's. */
    CHECK(signal_protocol_key_helper_generate_registration_id(&d->device_id, 1, d->ctx));
    d->spk_id = rand_range(1, INT32_MAX);            /* Dino: Random.int_range(1, int32.MAX) */
    session_signed_pre_key *spk;
    CHECK(signal_protocol_key_helper_generate_signed_pre_key(&spk, d->identity, d->spk_id, (uint64_t)time(NULL), d->ctx));
    signal_buffer *ser; CHECK(session_signed_pre_key_serialize(&ser, spk));
    spk_store(d->spk_id, signal_buffer_data(ser), signal_buffer_len(ser), d); signal_buffer_free(ser);
    uint32_t start = rand_range(1, INT32_MAX);         /* Dino: next_id = Random.int_range(1, int32.MAX) */
    if (prekey_mode == 0) {
        /* library key helper: ids ((start-1+i) % (PRE_KEY_MEDIUM_MAX_VALUE-1)) + 1 */
        signal_protocol_key_helper_pre_key_list_node *head, *n;
        CHECK(signal_protocol_key_helper_generate_pre_keys(&head, start, 100, d->ctx));
        for (n = head; n; n = signal_protocol_key_helper_key_list_next(n)) {
            session_pre_key *pk = signal_protocol_key_helper_key_list_element(n);
            CHECK(session_pre_key_serialize(&ser, pk));
            pk_store(session_pre_key_get_id(pk), signal_buffer_data(ser), signal_buffer_len(ser), d); signal_buffer_free(ser);
            d->pre_ids[d->n_pre_ids++] = session_pre_key_get_id(pk);
        }
        signal_protocol_key_helper_key_list_free(head);
    } else {
        /* Dino's Context.generate_pre_keys: ids start..start+count-1, session_pre_key_create */
        for (uint32_t i = start; i < start + 100; i++) {
            ec_key_pair *kp; session_pre_key *pk; CHECK(curve_generate_key_pair(d->ctx, &kp));
            CHECK(session_pre_key_create(&pk, i, kp)); CHECK(session_pre_key_serialize(&ser, pk));
            pk_store(i, signal_buffer_data(ser), signal_buffer_len(ser), d); signal_buffer_free(ser);
            d->pre_ids[d->n_pre_ids++] = i; SIGNAL_UNREF(pk); SIGNAL_UNREF(kp);
        }
    }
    SIGNAL_UNREF(spk);
}

static session_signed_pre_key *load_spk(device *d) { session_signed_pre_key *s; idrec *x = find_id(d->spk, d->nspk, d->spk_id);
    CHECK(session_signed_pre_key_deserialize(&s, signal_buffer_data(x->rec), signal_buffer_len(x->rec), d->ctx)); return s; }
static session_pre_key *load_pk(device *d, uint32_t id) { session_pre_key *s; idrec *x = find_id(d->pre, d->npre, id);
    CHECK(session_pre_key_deserialize(&s, signal_buffer_data(x->rec), signal_buffer_len(x->rec), d->ctx)); return s; }

/* public key as published: legacy 0x05||u, OMEMO 2 u (and Ed25519 for the identity key) */
static signal_buffer *pub_ser(ec_public_key *k, int version) { signal_buffer *b; if (version < 4) CHECK(ec_public_key_serialize(&b, k)); else CHECK(ec_public_key_serialize_omemo(&b, k)); return b; }

static void print_bundle(device *d, int version) {
    char n[128];
    printf("device %s %u\n", d->label, d->device_id);
    snprintf(n, sizeof n, "%s.spk_id", d->label); printf("%s %u\n", n, d->spk_id);
    session_signed_pre_key *spk = load_spk(d);
    signal_buffer *b = pub_ser(ec_key_pair_get_public(session_signed_pre_key_get_key_pair(spk)), version);
    snprintf(n, sizeof n, "%s.spk", d->label); out_buf(n, b); signal_buffer_free(b);
    snprintf(n, sizeof n, "%s.spks", d->label);
    if (version < 4) out_b64(n, session_signed_pre_key_get_signature(spk), session_signed_pre_key_get_signature_len(spk));
    else out_b64(n, session_signed_pre_key_get_signature_omemo(spk), session_signed_pre_key_get_signature_omemo_len(spk));
    ec_public_key *ik = ratchet_identity_key_pair_get_public(d->identity);
    if (version < 4) b = pub_ser(ik, version); else b = ec_public_key_get_ed(ik);
    snprintf(n, sizeof n, "%s.ik", d->label); out_buf(n, b); signal_buffer_free(b);
    for (int i = 0; i < d->n_pre_ids; i++) {
        session_pre_key *pk = load_pk(d, d->pre_ids[i]);
        b = pub_ser(ec_key_pair_get_public(session_pre_key_get_key_pair(pk)), version);
        snprintf(n, sizeof n, "%s.pk.%u", d->label, d->pre_ids[i]); out_buf(n, b); signal_buffer_free(b); SIGNAL_UNREF(pk);
    }
    SIGNAL_UNREF(spk);
}

/* Build a session from the other device's bundle the way Dino's StreamModule.start_session does
   (random pre key; registration id = device id), decoding the published public keys again. */
static void start_session(device *me, device *them, int version, uint32_t *used_pk) {
    session_signed_pre_key *spk = load_spk(them);
    uint32_t pk_id = them->pre_ids[rand_range(0, them->n_pre_ids)]; *used_pk = pk_id;
    session_pre_key *pk = load_pk(them, pk_id);
    ec_public_key *ik_d, *spk_d, *pk_d; signal_buffer *b;
    ec_public_key *ik = ratchet_identity_key_pair_get_public(them->identity);
    if (version < 4) {
        b = pub_ser(ik, 3); CHECK(curve_decode_point(&ik_d, signal_buffer_data(b), signal_buffer_len(b), me->ctx)); signal_buffer_free(b);
        b = pub_ser(ec_key_pair_get_public(session_signed_pre_key_get_key_pair(spk)), 3); CHECK(curve_decode_point(&spk_d, signal_buffer_data(b), signal_buffer_len(b), me->ctx)); signal_buffer_free(b);
        b = pub_ser(ec_key_pair_get_public(session_pre_key_get_key_pair(pk)), 3); CHECK(curve_decode_point(&pk_d, signal_buffer_data(b), signal_buffer_len(b), me->ctx)); signal_buffer_free(b);
    } else {
        b = ec_public_key_get_ed(ik); CHECK(curve_decode_point_ed(&ik_d, signal_buffer_data(b), signal_buffer_len(b), me->ctx)); signal_buffer_free(b);
        b = pub_ser(ec_key_pair_get_public(session_signed_pre_key_get_key_pair(spk)), 4); CHECK(curve_decode_point_mont(&spk_d, signal_buffer_data(b), signal_buffer_len(b), me->ctx)); signal_buffer_free(b);
        b = pub_ser(ec_key_pair_get_public(session_pre_key_get_key_pair(pk)), 4); CHECK(curve_decode_point_mont(&pk_d, signal_buffer_data(b), signal_buffer_len(b), me->ctx)); signal_buffer_free(b);
    }
    const uint8_t *sig = version < 4 ? session_signed_pre_key_get_signature(spk) : session_signed_pre_key_get_signature_omemo(spk);
    size_t sig_len = version < 4 ? session_signed_pre_key_get_signature_len(spk) : session_signed_pre_key_get_signature_omemo_len(spk);
    session_pre_key_bundle *bundle;
    CHECK(session_pre_key_bundle_create(&bundle, them->device_id, (int)them->device_id, pk_id, pk_d, them->spk_id, spk_d, sig, sig_len, ik_d));
    signal_protocol_address addr = { them->jid, strlen(them->jid), (int32_t)them->device_id };
    session_builder *builder; CHECK(session_builder_create(&builder, me->store, &addr, me->ctx));
    session_builder_set_version(builder, (uint32_t)version);
    CHECK(session_builder_process_pre_key_bundle(builder, bundle));
    session_builder_free(builder); SIGNAL_UNREF(bundle); SIGNAL_UNREF(spk); SIGNAL_UNREF(pk);
}

/* Encrypt a 32-byte key||tag (legacy, Dino) or the OMEMO 2 key material for one device. */
static void encrypt_key(device *me, device *them, int version, const uint8_t *key, size_t key_len, const char *name) {
    signal_protocol_address addr = { them->jid, strlen(them->jid), (int32_t)them->device_id };
    session_cipher *cipher; CHECK(session_cipher_create(&cipher, me->store, &addr, me->ctx));
    session_cipher_set_version(cipher, (uint32_t)version);
    ciphertext_message *m; CHECK(session_cipher_encrypt(cipher, key, key_len, &m));
    char n[128]; snprintf(n, sizeof n, "%s.type", name); printf("%s %d\n", n, ciphertext_message_get_type(m));
    snprintf(n, sizeof n, "%s.data", name); out_buf(n, ciphertext_message_get_serialized(m));
    /* round trip: the recipient decrypts it with libomemo-c */
    signal_protocol_address back = { me->jid, strlen(me->jid), (int32_t)me->device_id };
    session_cipher *rc; CHECK(session_cipher_create(&rc, them->store, &back, them->ctx));
    session_cipher_set_version(rc, (uint32_t)version);
    signal_buffer *plain = NULL; signal_buffer *ser = ciphertext_message_get_serialized(m);
    if (ciphertext_message_get_type(m) == CIPHERTEXT_PREKEY_TYPE) {
        pre_key_signal_message *pm;
        if (version < 4) CHECK(pre_key_signal_message_deserialize(&pm, signal_buffer_data(ser), signal_buffer_len(ser), them->ctx));
        else CHECK(pre_key_signal_message_deserialize_omemo(&pm, signal_buffer_data(ser), signal_buffer_len(ser), me->device_id, them->ctx));
        CHECK(session_cipher_decrypt_pre_key_signal_message(rc, pm, NULL, &plain)); SIGNAL_UNREF(pm);
    } else {
        signal_message *sm;
        if (version < 4) CHECK(signal_message_deserialize(&sm, signal_buffer_data(ser), signal_buffer_len(ser), them->ctx));
        else CHECK(signal_message_deserialize_omemo(&sm, signal_buffer_data(ser), signal_buffer_len(ser), them->ctx));
        CHECK(session_cipher_decrypt_signal_message(rc, sm, NULL, &plain)); SIGNAL_UNREF(sm);
    }
    if (signal_buffer_len(plain) != key_len || memcmp(signal_buffer_data(plain), key, key_len)) { fprintf(stderr, "round trip mismatch\n"); exit(1); }
    printf("%s.roundtrip ok\n", name);
    signal_buffer_free(plain); session_cipher_free(rc); SIGNAL_UNREF(m); session_cipher_free(cipher);
}

/* Dino's OmemoEncryptor.encrypt_plaintext: AES-128-GCM, 12-byte iv, payload = ciphertext, key = key||tag */
static void dino_payload(const char *name, const char *text, uint8_t keytag[32]) {
    uint8_t iv[12], tag[16]; int n = 0, n2 = 0; size_t len = strlen(text); uint8_t *ct = malloc(len + 16);
    RAND_bytes(keytag, 16); RAND_bytes(iv, 12);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new(); EVP_EncryptInit_ex(c, EVP_aes_128_gcm(), NULL, NULL, NULL);
    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, NULL); EVP_EncryptInit_ex(c, NULL, NULL, keytag, iv);
    EVP_EncryptUpdate(c, ct, &n, (const uint8_t *)text, (int)len); EVP_EncryptFinal_ex(c, ct + n, &n2);
    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag); EVP_CIPHER_CTX_free(c); memcpy(keytag + 16, tag, 16);
    char k[128]; snprintf(k, sizeof k, "%s.iv", name); out_b64(k, iv, 12);
    snprintf(k, sizeof k, "%s.payload", name); out_b64(k, ct, n + n2); free(ct); }

int main(int argc, char **argv) {
    int version = argc > 1 ? atoi(argv[1]) : 3;
    device alice, bob;
    make_device(&alice, "alice", "alice@localhost", 1);  /* pre keys the way Dino makes them */
    make_device(&bob, "bob", "bob@localhost", 0);        /* pre keys from the library's key helper */
    printf("version %d\n", version);
    print_bundle(&alice, version); print_bundle(&bob, version);
    uint32_t used; start_session(&alice, &bob, version, &used); printf("kex.chosen_pre_key %u\n", used);
    uint8_t key[32];
    if (version < 4) {
        dino_payload("m1", "Hello Bob, from libomemo-c (Dino's library).", key); encrypt_key(&alice, &bob, version, key, 32, "m1.key");
        dino_payload("m2", "Hi Alice, the session works.", key); encrypt_key(&bob, &alice, version, key, 32, "m2.key");
        dino_payload("m3", "Follow-up after the answer.", key); encrypt_key(&alice, &bob, version, key, 32, "m3.key");
    } else {
        /* OMEMO 2 key material (32-byte key || 16-byte HMAC, XEP-0384 0.8+): here just 48 random bytes,
           the SCE payload encryption is not part of libomemo-c */
        uint8_t km[48]; RAND_bytes(km, 48); encrypt_key(&alice, &bob, version, km, 48, "m1.key");
        RAND_bytes(km, 48); encrypt_key(&bob, &alice, version, km, 48, "m2.key");
        RAND_bytes(km, 48); encrypt_key(&alice, &bob, version, km, 48, "m3.key");
    }
    return 0;
}
