"""`ablate status`: where a study stands, read from its Optuna storage alone.

Kept apart from the modules that train or track (torch, MLflow, matplotlib take seconds to
import on a small machine) so the command answers in about a second.
"""

from __future__ import annotations

from harness.tracking.storage import default_storage, load_study
from harness.studies.cells import CELL_STATES, aligned, cell_places, cell_status, status_by_arm
from harness.studies.liveness import ATTR
from harness.studies.record import read


def print_status(name: str, storage_url: str | None, cells: bool = False) -> int:
    """Cells per arm and state (an ablation), or trials per state (a search): read-only, and
    fast to start (Optuna alone: no torch, no MLflow). `cells` adds one line per cell (an
    ablation) or trial (a search): its state and the host and device it ran on."""
    study = load_study(name, default_storage(storage_url), create=False)
    if read(study).type != "ablation":
        by_state: dict[str, int] = {}
        for trial in study.get_trials(deepcopy=False):
            by_state[trial.state.name] = by_state.get(trial.state.name, 0) + 1
        print(f"search {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(by_state.items())))
        if cells:
            print(aligned([("trial", "state", "host", "device")] + [
                (str(t.number), t.state.name.lower(), t.system_attrs.get(ATTR, {}).get("host", "-"),
                 t.user_attrs.get("device", "-")) for t in study.get_trials(deepcopy=False)]))
        return 0
    counts = status_by_arm(study)
    cols = CELL_STATES
    width = max([len("arm")] + [len(a) for a in counts])
    print(f"{'arm':<{width}}  " + "  ".join(f"{c:>8}" for c in cols))
    for arm, row in counts.items():
        print(f"{arm:<{width}}  " + "  ".join(f"{row[c]:>8}" for c in cols))
    total = {c: sum(r[c] for r in counts.values()) for c in cols}
    print(f"{'total':<{width}}  " + "  ".join(f"{total[c]:>8}" for c in cols))
    if cells:
        states, places = cell_status(study), cell_places(study)
        print()
        print(aligned([("cell", "state", "host", "device")] + [(key, states[key], *places[key]) for key in states]))
    return 0
