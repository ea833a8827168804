"""The command line's small promises: --version, `data` on a study spec, a dry run that plans
(done cells, an estimate, the --yes rule) and writes nothing, and read-only commands that start
without torch or MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.cli import main

from test_ablation import write_spec

HEAVY = ("torch", "mlflow", "matplotlib", "scipy", "pandas")


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == "ablate 0.1.0"


def test_data_describes_the_base_recipe_of_a_study_spec(project, tiny, capsys):
    path = write_spec(project, tiny)  # name, base, factors, seeds: a spec, not a config
    assert main(["data", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "study       tiny (the data of its base recipe)" in out
    assert "train       6,000 characters" in out and "block size  16" in out
    assert main(["data", "--config", str(path), "--set", "data.block_size=8"]) == 0
    assert "block size  8" in capsys.readouterr().out
    assert not (project / "mlruns").exists()


def test_dry_run_plans_and_writes_nothing(project, tiny, capsys):
    path = write_spec(project, tiny)
    assert main(["run", str(path), "--dry-run", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "0 of 4 cells already done; 4 to run" in out
    assert "estimated wall time:" in out and "with 2 worker(s)" in out and "measured: 1 of 2 epochs" in out
    assert "--yes" not in out
    assert not (project / "mlruns").exists()  # neither the journal nor the MLflow store


def test_dry_run_of_a_large_study_says_it_needs_yes(project, tiny, capsys):
    path = write_spec(project, tiny, seeds=range(51))  # 2 arms x 51 seeds = 102 runs
    assert main(["run", str(path)]) == 2  # the real run refuses
    assert "pass --yes" in capsys.readouterr().err
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "102 runs is more than 100: the real run needs --yes" in capsys.readouterr().out
    assert main(["run", str(path), "--dry-run", "--yes"]) == 0
    assert "needs --yes" not in capsys.readouterr().out


def test_status_starts_without_torch_or_mlflow(project, tiny):
    """`ablate status` reads Optuna alone: the modules that take seconds to import stay out."""
    from harness.studies.spec import load_spec
    from harness.tracking.storage import default_storage, open_storage
    from harness.studies.ablation import create_ablation
    from harness.tracking.store import init_store

    spec = load_spec(write_spec(project, tiny))
    create_ablation(spec, open_storage(default_storage()), default_storage(), init_store())
    probe = ("import json, sys\nfrom harness.cli import main\nrc = main(['status', 'tiny'])\n"
             f"print(json.dumps([rc, [m for m in {HEAVY!r} if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=project, capture_output=True, text=True,
                         env={**os.environ, "ABLATE_HOME": str(project)}, timeout=120)
    assert out.returncode == 0, out.stderr
    *table, last = out.stdout.strip().splitlines()
    assert json.loads(last) == [0, []]
    assert "baseline" in table[1] and table[-1].split()[:2] == ["total", "0"]
