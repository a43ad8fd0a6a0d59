"""The long fuzz run (not part of CI): ``cd tests && ../.venv/bin/python -m fuzz --inputs 1000000``.

Splits the inputs over ``--jobs`` processes (seeds ``seed``, ``seed + 1``...), prints the outcome
counts and the failures, and writes the failures as corpus entries to ``--failures`` (add the ones
worth keeping to ``tests/fuzz/corpus.json``, which CI replays). Exit status 1 if anything failed.
See docs/fuzzing.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Tuple

from .harness import Failure, run


def _job(arguments: Tuple[int, int]) -> Tuple[int, Dict[str, int], List[Failure], float]:
    seed, inputs = arguments
    report = run(seed, inputs)
    return report.inputs, report.outcomes, report.failures, report.seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--failures", default="fuzz-failures.json")
    args = parser.parse_args()
    share, rest = divmod(args.inputs, args.jobs)
    work = [(args.seed + job, share + (job < rest)) for job in range(args.jobs)]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(_job, work))
    elapsed = time.perf_counter() - start
    total = sum(inputs for inputs, _, _, _ in results)
    outcomes: Dict[str, int] = {}
    failures: List[Failure] = []
    for _, counts, found, _ in results:
        for outcome, count in counts.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + count
        failures.extend(found)
    seeds = f"{args.seed}..{args.seed + args.jobs - 1}"
    print(f"{total} inputs, seeds {seeds}, {elapsed:.0f} s wall, {len(failures)} failures")
    for outcome in sorted(outcomes):
        print(f"{outcomes[outcome]:>10}  {outcome}")
    categories: Dict[str, int] = {}
    for failure in failures:
        categories[failure.category] = categories.get(failure.category, 0) + 1
        print(f"FAILED {failure.kind} {failure.namespace} {failure.category}: {failure.detail[:200]}")
    print("failures by category:", categories or "none")
    with open(args.failures, "w") as out:
        entries = [
            {"kind": f.kind, "namespace": f.namespace, "edits": f.edits, "found": f"{f.category}: {f.detail}"}
            for f in failures
        ]
        json.dump(entries, out, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
