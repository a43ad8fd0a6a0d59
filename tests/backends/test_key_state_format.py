"""The stored key-state record: both shipped versions load, and corrupt records are refused clearly.

Version 1 (the first layout) kept each pre key as two base64 strings; version 2 packs them into one
blob. The version-1 sample below is written out by hand in that layout (a golden sample).
"""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from omemo._engine.records import KeyState, SignedPreKey
from omemo_engine.errors import InvalidState


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


SPK = SignedPreKey(3, b"\x01" * 32, b"\x02" * 32, b"\x03" * 64, 1_700_000_000)
STATE = KeyState(
    SPK,
    None,
    {5: (b"\x04" * 32, b"\x05" * 32), 9: (b"\x06" * 32, b"\x07" * 32)},
    {2: (b"\x08" * 32, b"\x09" * 32)},
    10,
)


def test_version_2_round_trip() -> None:
    record = STATE.to_json()
    assert record["version"] == 2
    assert isinstance(record["pre_keys"], str)
    assert KeyState.from_json(record) == STATE


def version_1_record() -> dict[str, object]:
    spk = {
        "id": 3,
        "priv": b64(b"\x01" * 32),
        "pub": b64(b"\x02" * 32),
        "sig": b64(b"\x03" * 64),
        "time": 1_700_000_000,
    }
    record = {
        "version": 1,
        "spk": spk,
        "old_spk": None,
        "pre_keys": {
            "5": [b64(b"\x04" * 32), b64(b"\x05" * 32)],
            "9": [b64(b"\x06" * 32), b64(b"\x07" * 32)],
        },
        "hidden": {"2": [b64(b"\x08" * 32), b64(b"\x09" * 32)]},
        "next_pre_key_id": 10,
    }
    return record


def test_version_1_golden_sample_loads() -> None:
    assert KeyState.from_json(version_1_record()) == STATE


@pytest.mark.parametrize(
    "corrupt",
    [
        {"version": 99},
        {"version": 2},
        {**STATE.to_json(), "pre_keys": b64(b"\x00" * 67)},
        {**STATE.to_json(), "pre_keys": "not base64!"},
        {**STATE.to_json(), "spk": None},
    ],
)
def test_corrupt_records_raise_invalid_state(corrupt: dict[str, object]) -> None:
    with pytest.raises(InvalidState):
        KeyState.from_json(corrupt)


# -- counting the visible pre keys without decoding (what a restart does) ---------------------------


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 100])
def test_the_visible_pre_keys_are_counted_off_the_record(count: int) -> None:
    """Every base64 padding (68-byte entries: none, one or two ``=``) gives the decoded count."""
    pre_keys = {i: (bytes([i]) * 32, b"\x05" * 32) for i in range(1, count + 1)}
    record = replace(STATE, pre_keys=pre_keys).to_json()
    assert KeyState.count_visible_pre_keys(record) == count == len(KeyState.from_json(record).pre_keys)


def test_a_version_1_record_is_left_to_from_json() -> None:
    assert KeyState.count_visible_pre_keys(version_1_record()) is None


@pytest.mark.parametrize(
    "corrupt",
    [
        {"version": 99},
        {"version": 2},
        {**STATE.to_json(), "pre_keys": b64(b"\x00" * 67)},
        {**STATE.to_json(), "pre_keys": b64(b"\x00" * 69)},
        {**STATE.to_json(), "pre_keys": "not base64!"},
        {**STATE.to_json(), "pre_keys": None},
        "not a record",
        None,
    ],
)
def test_damage_the_count_sees_raises_invalid_state(corrupt: object) -> None:
    with pytest.raises(InvalidState):
        KeyState.count_visible_pre_keys(corrupt)
    with pytest.raises(InvalidState):
        KeyState.from_json(corrupt)


@pytest.mark.parametrize(
    "corrupt",
    [
        {**STATE.to_json(), "pre_keys": "!" + str(STATE.to_json()["pre_keys"])[1:]},
        {**STATE.to_json(), "spk": None},
        {**STATE.to_json(), "hidden": "not base64!"},
    ],
)
def test_damage_the_count_does_not_see_is_left_to_from_json(corrupt: dict[str, object]) -> None:
    assert KeyState.count_visible_pre_keys(corrupt) == 2
    with pytest.raises(InvalidState):
        KeyState.from_json(corrupt)
