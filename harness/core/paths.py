"""Where a project keeps its stores: the current directory, or $ABLATE_HOME."""

import os
from pathlib import Path


def project_root() -> Path:
    return Path(os.environ.get("ABLATE_HOME") or Path.cwd()).resolve()


def mlruns_dir() -> Path:
    return project_root() / "mlruns"


def reports_dir() -> Path:
    return project_root() / "reports"
