"""The package's layers (README, "Architecture"): cli > ui | dashboard | status > studies > report >
tracking > core, each importing only downward, and no import cycle anywhere, lazy imports
(inside functions) included. import-linter's contract lives in pyproject.toml."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from import_cycles import cycles  # noqa: E402


def test_every_layer_imports_only_the_layers_below_it():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_no_module_is_part_of_an_import_cycle():
    assert cycles("harness") == []
