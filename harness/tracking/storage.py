"""Optuna storages by URL.

- `journal:PATH` (default `journal:<project>/mlruns/optuna.journal`): a journal file, safe for
  several worker processes on one machine (file locks), no server needed.
- `postgresql+psycopg2://user:pass@host:port/db`: several machines.
- `sqlite:///...` is refused for studies: SQLite locks up under several workers pulling queued
  trials, which is what ablation studies do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from harness.core.errors import UsageError
from harness.core.paths import mlruns_dir
from harness.tracking.uris import redact, scrub

ALLOWED = "journal:PATH, or postgresql+psycopg2://user:password@host:port/database"
STORAGE_TAG = "harness.storage"
"""The study run's MLflow tag naming its Optuna storage (the URL with its password removed)."""
STORAGE_ENV = "ABLATE_STORAGE"
"""The default storage URL when set: how `ablate run` hands its storage to its workers (never on
their command line, where `ps` shows a password to every user), and how a user keeps a password
out of their own shell history."""


def default_storage(given: str | None = None) -> str:
    """The storage a command uses: `given` (its --storage) when set, else $ABLATE_STORAGE, else
    the project's journal. Every command resolves it here."""
    return given or os.environ.get(STORAGE_ENV) or f"journal:{mlruns_dir() / 'optuna.journal'}"


def open_storage(url: str, create: bool = True) -> BaseStorage:
    """The Optuna storage behind `url`; UsageError naming the URL when it is not usable.

    `create=False` (commands that only read) never creates a journal file or its folders: a
    journal that is not there holds no study. A journal is checked line by line first (see
    check_journal), so a corrupted one is one line naming the file and the line, not a traceback
    from Optuna, and nothing is ever appended after a line that does not parse.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created" per process
    if url.startswith("journal:"):
        return _open_journal(url, Path(url[len("journal:"):]).expanduser(), create)
    if url.startswith("sqlite"):
        raise UsageError(f"--storage {url!r}: SQLite is not safe for several workers pulling queued "
                         f"trials; allowed: {ALLOWED}")
    if url.startswith(("postgresql", "mysql")):
        try:
            if not create and not _has_optuna_tables(url):
                # A reader never creates Optuna's tables in a database that has none.
                raise UsageError(f"--storage {redact(url)!r}: the database holds no Optuna studies (no study "
                                 f"was created there; check the database name)")
            return RDBStorage(url, engine_kwargs={"connect_args": _connect_args(url), "pool_pre_ping": True},
                              skip_table_creation=not create)
        except UsageError:
            raise
        except Exception as exc:  # sqlalchemy raises many kinds for a dead or wrong server
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "DB access module" in reason or isinstance(exc, ImportError):
                scheme = url.split("://", 1)[0]
                raise UsageError(f"--storage {redact(url)!r}: the database driver for {scheme}:// is not "
                                 f"installed; allowed: {ALLOWED} (psycopg2 ships with ablate)") from None
            raise UsageError(f"--storage {redact(url)!r} does not answer: {scrub(reason, url)}") from None
    raise UsageError(f"--storage {redact(url)!r}: unknown kind of storage; allowed: {ALLOWED}")


def _open_journal(url: str, path: Path, create: bool) -> BaseStorage:
    if path.is_dir():
        raise UsageError(f"--storage {url!r}: {str(path)!r} is a folder; a journal storage is a file "
                         f"(journal:PATH/optuna.journal)")
    if not path.exists() and not create:
        raise UsageError(f"--storage {url!r}: there is no journal file {str(path)!r} (no study was "
                         f"created there; check the path)")
    try:
        check_journal(path, complete=False)  # a file that is no journal stops here, before any lock
        if not create:
            return JournalStorage(JournalFileBackend(str(path)))
        path.parent.mkdir(parents=True, exist_ok=True)
        with _journal_lock(path):
            check_journal(path, complete=True)
            return JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise UsageError(f"--storage {url!r}: cannot open or lock the journal file ({exc.strerror or exc}); "
                         f"allowed: a journal in a folder you can write") from None


@contextmanager
def _journal_lock(path: Path) -> Iterator[None]:
    """Optuna's own lock on the journal (the one its appends take), so no write is half done
    while the journal is checked."""
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def check_journal(path: Path, complete: bool) -> None:
    """UsageError naming the first line of the journal at `path` that is not a JSON record.

    Optuna tolerates a bad last line but fails on every later read once anything follows it, so
    a writer must not open a journal with one. `complete` says no write is in progress (the lock
    is held): an unterminated last line is then corruption too; a reader leaves it, as Optuna does.
    """
    if not path.exists():
        return
    with open(path, "rb") as journal:
        for number, line in enumerate(journal, 1):
            if not line.endswith(b"\n") and not complete:
                return
            try:
                json.loads(line)
                continue
            except ValueError as exc:
                why = str(exc).split(":")[0] if line.strip() else "an empty line"
            raise UsageError(
                f"journal {str(path)!r}: line {number} is not an Optuna journal record ({why}); nothing "
                f"was written. If the file is no journal, fix the --storage path; if it is a corrupted "
                f"one, keep the studies before that line: head -n {number - 1} {path} > fixed.journal, "
                f"check it, then move fixed.journal in its place (or restore the file from a backup)")


def _has_optuna_tables(url: str) -> bool:
    """Whether the database at `url` has Optuna's tables, looked at without creating any."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, connect_args=_connect_args(url))
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def _connect_args(url: str) -> dict:
    # Fail in seconds, not minutes, when the server is down.
    return {"connect_timeout": 5} if url.startswith("postgresql") else {}


def load_study(name: str, url: str, create: bool = True) -> optuna.Study:
    """Study `name` in `url`; UsageError listing the studies there when it has none of that name.
    `create=False` for commands that only read (see open_storage)."""
    storage = open_storage(url, create=create)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UsageError(f"no study {name!r} in storage {redact(url)!r}; studies there: "
                         f"{', '.join(sorted(names)) or 'none'}") from None
