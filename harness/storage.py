"""Optuna storages by URL.

- `journal:PATH` (default `journal:<project>/mlruns/optuna.journal`): a journal file, safe for
  several worker processes on one machine (file locks), no server needed.
- `postgresql+psycopg2://user:pass@host:port/db`: several machines.
- `sqlite:///...` is refused for studies: SQLite locks up under several workers pulling queued
  trials, which is what ablation studies do.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from harness.errors import UsageError
from harness.paths import mlruns_dir
from harness.tracking import redact

ALLOWED = "journal:PATH, or postgresql+psycopg2://user:password@host:port/database"


def default_storage() -> str:
    return f"journal:{mlruns_dir() / 'optuna.journal'}"


def open_storage(url: str) -> BaseStorage:
    """The Optuna storage behind `url`; UsageError naming the URL when it is not usable."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created" per process
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise UsageError(f"--storage {url!r}: cannot open the journal file ({exc.strerror})") from None
    if url.startswith("sqlite"):
        raise UsageError(f"--storage {url!r}: SQLite is not safe for several workers pulling queued "
                         f"trials; allowed: {ALLOWED}")
    if url.startswith(("postgresql", "mysql")):
        try:
            return RDBStorage(url, engine_kwargs={"connect_args": _connect_args(url),
                                                  "pool_pre_ping": True})
        except Exception as exc:  # sqlalchemy raises many kinds for a dead or wrong server
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"--storage {redact(url)!r} does not answer: {reason}") from None
    raise UsageError(f"--storage {redact(url)!r}: unknown kind of storage; allowed: {ALLOWED}")


def _connect_args(url: str) -> dict:
    # Fail in seconds, not minutes, when the server is down.
    return {"connect_timeout": 5} if url.startswith("postgresql") else {}


def dashboard_storage(url: str) -> str:
    """What optuna-dashboard takes for the same storage: a journal's file path, or the RDB URL.

    optuna-dashboard (0.21) recognises a journal only as an existing file: it guesses the storage
    kind from the path and exits on a path that is not there yet. A project with no study has no
    journal, so it is created (empty) first.
    """
    if not url.startswith("journal:"):
        return url
    open_storage(url)  # creates the journal file when missing
    return url[len("journal:"):]


def load_study(name: str, url: str) -> optuna.Study:
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UsageError(f"no study {name!r} in storage {redact(url)!r}; studies there: "
                         f"{', '.join(sorted(names)) or 'none'}") from None
