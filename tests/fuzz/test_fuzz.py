"""The fuzz harness in CI: a deterministic run of a few thousand inputs, the corpus of inputs that once
failed, and checks that the oracle really reports what it is meant to (tests/fuzz/harness.py).

The long run (10^6 inputs and more) is ``python -m fuzz``; its figures are in docs/fuzzing.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from . import harness

CORPUS = Path(__file__).resolve().parent / "corpus.json"
SEED = 20261207
INPUTS = 3000


def _explain(report: harness.Report) -> str:
    return harness.dump(report.failures)


def test_a_deterministic_run_finds_nothing() -> None:
    report = harness.run(SEED, INPUTS)
    assert report.inputs == INPUTS
    assert report.failures == [], _explain(report)
    # It exercised every kind of input, in both directions of the oracle.
    for kind in harness.KINDS:
        outcomes = {o.split(" ", 1)[1] for o in report.outcomes if o.split(" ", 1)[0] == kind}
        assert any(o.startswith("accepted") for o in outcomes), (kind, outcomes)
        assert any(o.startswith("rejected") for o in outcomes), (kind, outcomes)


def _corpus() -> List[Dict[str, Any]]:
    entries: List[Dict[str, Any]] = json.loads(CORPUS.read_text())
    return entries


@pytest.mark.parametrize("entry", _corpus(), ids=[f"{e['kind']}-{i}" for i, e in enumerate(_corpus())])
def test_the_corpus_replays_clean(entry: Dict[str, Any]) -> None:
    report = harness.replay([entry])
    assert report.inputs == 1
    assert report.failures == [], _explain(report)


def test_edits_replay_to_the_same_document() -> None:
    # What the corpus relies on: an edit list applied to the same document gives the same result.
    import copy
    import random
    import xml.etree.ElementTree as ET

    root = ET.fromstring(
        "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a@b'><key rid='2'>"
        "CAEQARogAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIiAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="
        "</key></keys></header><payload>AAAA</payload></encrypted>"
    )
    rng = random.Random(3)
    for _ in range(200):
        first = copy.deepcopy(root)
        edits = harness.mutate(first, rng, 3)
        second = copy.deepcopy(root)
        harness.mutate(second, rng, 0, preset=json.loads(json.dumps(edits)))
        assert ET.tostring(first) == ET.tostring(second), edits


@pytest.mark.parametrize(
    ("behaviour", "category"),
    [("raise KeyError", "undefined exception"), ("wrong plaintext", "altered meaning")],
)
def test_the_oracle_reports_failures(monkeypatch: pytest.MonkeyPatch, behaviour: str, category: str) -> None:
    real = harness._decrypt

    async def broken(*args: Any) -> Any:
        result = await real(*args)
        if behaviour == "raise KeyError":
            raise KeyError("a stray exception")
        return (b"something else", *result[1:])

    monkeypatch.setattr(harness, "_decrypt", broken)
    report = harness.run(1, 10, kinds={"normal": 1})
    # (The broken decryption also breaks the genuine inputs delivered after rejected ones: "damage".)
    assert category in {failure.category for failure in report.failures}
