"""The stored key-state record: both shipped versions load, and corrupt records are refused clearly.

Version 1 (the first layout) kept each pre key as two base64 strings; version 2 packs them into one
blob. The version-1 sample below is written out by hand in that layout (a golden sample).
"""

from __future__ import annotations

import base64

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


def test_version_1_golden_sample_loads() -> None:
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
    assert KeyState.from_json(record) == STATE


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
