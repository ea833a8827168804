"""The search section of a report: built from what the search logged on its parent MLflow run
(search/trials.csv, importance.json, best_trials.json), so an Optuna storage the report cannot
read (password-protected, on another machine, moved away) costs it nothing; the Optuna storage
only as a fallback for searches that logged nothing, read-only, with the same importance rules."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from report_fixtures import Store, make_search

from harness.report import build_report
from harness.report.collect import load_study
from harness.report.search import MIN_IMPORTANCE_TRIALS, STORAGE_TAG, load_search, log_search_results, \
    storage_url, trials_table
from harness.tracking.storage import STORAGE_ENV
from harness.tracking.uris import redact

SEARCH_FIGURES = {"importance", "optimization_history"}


def logged_search(root: Path, objectives: tuple[str, ...], evaluator: str = "fanova") -> tuple[Store, dict]:
    """A search (report_fixtures.make_search) that logged its results under search/ when it ended,
    as harness.studies.search_results.finish_search does; trial 0 is the baseline."""
    store = Store(root)
    ids = make_search(store, objectives=objectives)
    study = optuna.load_study(study_name="search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(ids["journal"]))))
    names = [{"val_loss": "best_val_loss", "gap": "gap_at_best"}[o] for o in objectives]
    trials = study.get_trials()
    best = sorted(study.best_trials, key=lambda t: (t.values[0], t.number))
    table = trials_table(trials, names, baseline=lambda t: t.number == 0, counted=lambda t: True)
    log_search_results(store.client, ids["parent"], table, study, names, "best", best, evaluator)
    ids |= {"trials": trials, "front": sorted(t.number for t in best)}
    return store, ids


UNREADABLE = {
    # The tag as a search on PostgreSQL writes it: the password removed, so the server refuses the report.
    "password-protected PostgreSQL": "postgresql+psycopg2://ablate:***@127.0.0.1:1/optuna",
    "journal moved away": None,
}


@pytest.mark.parametrize("storage", UNREADABLE)
def test_a_search_report_keeps_its_search_section_when_its_optuna_storage_cannot_be_read(tmp_path, storage):
    store, ids = logged_search(tmp_path / "store", ("val_loss",))
    ids["journal"].rename(ids["journal"].with_suffix(".moved"))
    if UNREADABLE[storage]:
        store.client.set_tag(ids["parent"], STORAGE_TAG, UNREADABLE[storage])
    result = build_report("search", out_dir=tmp_path / "report", tracking_uri=store.tracking_uri)
    assert {p.stem for p in result.figures} >= SEARCH_FIGURES
    md = result.report_md.read_text(encoding="utf-8")
    assert "Search results as the search logged them on its parent run (search/)" in md
    assert "fANOVA importance of each searched parameter" in md  # the logged evaluator, not a recomputation


def test_the_search_section_is_what_the_search_logged(tmp_path):
    store, ids = logged_search(tmp_path / "store", ("val_loss", "gap"))
    ids["journal"].unlink()
    data, note = load_search(load_study("search", store.tracking_uri))
    assert data is not None and data.objectives == ["best_val_loss", "gap_at_best"]
    done = [t for t in ids["trials"] if t.state == optuna.trial.TrialState.COMPLETE]
    assert f"{len(done)} completed trials of {len(ids['trials'])}" in note
    logged = data.trials.set_index("number")
    for t in done:
        assert logged.loc[t.number, ["best_val_loss", "gap_at_best"]].tolist() == pytest.approx(t.values)
    assert logged["baseline"].tolist() == [n == 0 for n in logged.index]
    assert sorted(data.front) == ids["front"] and data.evaluator == "fANOVA"
    assert set(data.importances["objective"]) == {"best_val_loss", "gap_at_best"}
    # Its Pareto figure joins exactly the logged front.
    result = build_report("search", out_dir=tmp_path / "report", tracking_uri=store.tracking_uri)
    assert {p.stem for p in result.figures} >= SEARCH_FIGURES | {"search_pareto"}
    assert f"the {len(ids['front'])} trials no other trial beats on both" in result.report_md.read_text()


def test_without_logged_results_the_storage_is_read_with_the_importance_minimum(tmp_path):
    """A search that logged nothing (stopped early, or older): the Optuna storage, with importance
    computed as a search computes it, so too few completed trials give a note, not noise."""
    store = Store(tmp_path / "store")
    make_search(store, n_trials=MIN_IMPORTANCE_TRIALS - 1, prune_above=1.0)
    data, note = load_search(load_study("search", store.tracking_uri))
    assert data is not None and len(data.trials) == MIN_IMPORTANCE_TRIALS - 1 and data.importances.empty
    assert "its parent run has no search/trials.csv" in note
    assert f"parameter importance needs at least {MIN_IMPORTANCE_TRIALS} completed trials" in note
    result = build_report("search", out_dir=tmp_path / "report", tracking_uri=store.tracking_uri)
    assert "importance" not in {p.stem for p in result.figures}
    assert "optimization_history" in {p.stem for p in result.figures}


def test_a_report_reading_a_storage_that_is_gone_creates_none(tmp_path):
    store = Store(tmp_path / "store")
    journal = make_search(store)["journal"]
    journal.rename(journal.with_suffix(".moved"))
    data, note = load_search(load_study("search", store.tracking_uri))
    assert data is None and note.startswith(f"Optuna study 'search' could not be read from journal:{journal}")
    assert "its parent run has no search/trials.csv" in note
    assert not journal.exists()


def test_the_storage_variable_is_read_when_it_is_the_tagged_storage(monkeypatch):
    """The tag has the password removed; $ABLATE_STORAGE, when it names that storage, still has it."""
    with_password = "postgresql+psycopg2://ablate:s3cret@db.example:5432/optuna"
    tag = redact(with_password)
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert storage_url(tag) == tag
    monkeypatch.setenv(STORAGE_ENV, with_password)
    assert storage_url(tag) == with_password
    other = "postgresql+psycopg2://ablate:***@db.example:5432/other"
    assert storage_url(other) == other  # another storage: never the variable's
