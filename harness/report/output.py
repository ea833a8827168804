"""The report's output folder: a report only ever writes into a folder that is its own.

`ablate report --out DIR` replaces index.html, report.md, runs.csv and the PNGs under figures/.
Pointed at a folder the user made (their home, `/`, a folder of their own figures) that would
overwrite or delete their files, so a folder is written only when it is new, empty, or carries
the marker file a report leaves behind (MARKER). Anything else is refused with UsageError.
"""

from __future__ import annotations

from pathlib import Path

from harness.core.errors import UsageError

MARKER = ".ablate-report"
"""The file that marks a folder as written by `ablate report` (and so safe to rewrite)."""

_MARKER_TEXT = "This folder was written by `ablate report`; the next report of the same study replaces it.\n"


def check_out_dir(folder: Path) -> None:
    """UsageError unless `folder` is missing, an empty folder, or a report folder (has MARKER)."""
    if not folder.exists() and not folder.is_symlink():
        _check_parent(folder)
        return
    if not folder.is_dir():
        raise UsageError(f"--out {str(folder)!r} is a file, not a folder; allowed: a new folder, an empty "
                         f"one, or one an earlier ablate report wrote")
    if (folder / MARKER).is_file():
        return
    try:
        empty = next(folder.iterdir(), None) is None
    except OSError as exc:
        raise UsageError(f"--out {str(folder)!r}: cannot read the folder ({exc.strerror})") from None
    if not empty:
        raise UsageError(f"--out {str(folder)!r} is a folder with files that ablate report did not write "
                         f"(no {MARKER} marker); a report would overwrite them, so choose a new or empty "
                         f"folder")


def _check_parent(folder: Path) -> None:
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out {str(folder)!r}: {str(parent)!r} is a file, not a folder")
            return


def claim_out_dir(folder: Path) -> Path:
    """Check `folder` (check_out_dir), create it and mark it as a report folder; returns it."""
    check_out_dir(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--out {str(folder)!r}: cannot write there ({exc.strerror})") from None
    return folder
