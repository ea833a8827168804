"""The mutation score of `make mutation`, per module and overall, from mutmut's results.

mutmut 3 keeps each mutated file's results in mutants/<path>.meta (JSON: mutant name -> the
exit code of its test run). Only the mutants of the functions given as fnmatch patterns count
(the Makefile's MUTATION_FUNCTIONS: the scientific core). Killed means a test failed;
the score is killed / (killed + survived + timed out). Survivors and timeouts are listed, to be
judged: a test missing, or an equivalent mutant (README, "Tests", lists the ones judged
equivalent). Mutants not run (an interrupted run) are left out of the score and listed.

    python tools/mutation_score.py 'harness.core.metrics.*' 'harness.core.model.x_decay_groups*' ...
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import defaultdict
from pathlib import Path

KILLED = {1, 3}
"""Exit codes of a failing test run (3: pytest's internal error), mutmut's "killed"."""
TIMEOUT = {24, -24, 36, 152, 255}
"""The test run went over its CPU limit: mutmut's "timeout", listed apart (not counted killed)."""
SURVIVED = {0}


def results(root: Path = Path("mutants")) -> dict[str, int | None]:
    """Every mutant's name and exit code (None when it was not run) over the .meta files."""
    out: dict[str, int | None] = {}
    for meta in root.rglob("*.py.meta"):
        out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def module_of(mutant: str) -> str:
    """'harness.report.stats.x_paired__mutmut_3' -> 'harness.report.stats'."""
    parts = mutant.split(".")
    return ".".join(p for p in parts[:-1])


def main(patterns: list[str]) -> int:
    chosen = {name: code for name, code in results().items()
              if any(fnmatch.fnmatch(name, p) for p in patterns)}
    if not chosen:
        print("no mutant results under mutants/: run `make mutation` first")
        return 1
    per_module: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, code in sorted(chosen.items()):
        status = ("killed" if code in KILLED else "survived" if code in SURVIVED else
                  "timeout" if code in TIMEOUT else "not run" if code is None else f"other ({code})")
        per_module[module_of(name)][status].append(name)
    total_killed = total = 0
    print(f"{'module':<24} {'killed':>7} {'tested':>7} {'score':>7}")
    for module, by_status in sorted(per_module.items()):
        killed = len(by_status["killed"])
        tested = killed + len(by_status["survived"]) + len(by_status["timeout"])
        total_killed, total = total_killed + killed, total + tested
        print(f"{module:<24} {killed:>7} {tested:>7} {killed / max(tested, 1):>7.1%}")
    print(f"{'overall':<24} {total_killed:>7} {total:>7} {total_killed / max(total, 1):>7.1%}")
    for module, by_status in sorted(per_module.items()):
        for status, names in sorted(by_status.items()):
            if status == "not run" and names:
                print(f"\n{module}: not run: {len(names)} mutants")
            elif status != "killed" and names:
                print(f"\n{module}: {status}: " + " ".join(n.rsplit(".", 1)[-1] for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["*"]))
