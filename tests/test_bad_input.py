"""Bad input, walked as a table: every case is one `ablate` command line that must stop with exit
status 2, one line on stderr naming what is wrong (the expected words), no traceback, and nothing
written: no file in the project created, changed or removed, no store opened into existence.

The commands run in-process through `harness.cli.main` (the CLI's own entry point) in a fresh
project per case; `tests/test_robustness.py` runs the ones that need a subprocess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from harness.cli import main
from harness.tracking.store import init_store

LONG = "a" * 300


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[["Ctx"], list[str]]
    """The command line, built in the case's project (Ctx) after `setup` ran."""
    expect: str
    """Words the one-line message must contain."""
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[["Ctx"], None] | None = None
    absent: str | None = None
    """Words the message must not contain."""


@dataclass
class Ctx:
    project: Path
    corpus: Path
    tiny: dict

    def spec(self, name: str = "bad", base: dict | None = None, seeds: list | None = None,
             **extra: object) -> str:
        """An ablation spec on the tiny recipe with `base` merged in; returns its path."""
        tree: dict = {}
        for key, value in self.tiny.items():
            section, leaf = key.split(".")
            tree.setdefault(section, {})[leaf] = value
        for section, values in (base or {}).items():
            tree.setdefault(section, {}).update(values)
        doc = {"name": name, "base": tree, "factors": {"model.dropout": [0.2]}, "seeds": seeds or [0], **extra}
        path = self.project / "spec.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return str(path)

    def search(self, space: dict, name: str = "badsearch", **extra: object) -> str:
        tree: dict = {}
        for key, value in self.tiny.items():
            section, leaf = key.split(".")
            tree.setdefault(section, {})[leaf] = value
        doc = {"name": name, "base": tree, "trials": 2, "space": space, **extra}
        path = self.project / "search.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return str(path)

    def train(self, *sets: str) -> list[str]:
        """`ablate train` on the tiny corpus with extra --set items."""
        args = ["train", "--quiet", "--set", f"data.corpus=file:{self.corpus}"]
        for item in sets:
            args += ["--set", item]
        return args

    def write(self, name: str, text: str) -> str:
        path = self.project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return str(path)


def _user_folder(ctx: Ctx) -> None:
    """A folder of the user's own: a note and a figure that no report wrote."""
    ctx.write("mine/notes.txt", "my notes")
    ctx.write("mine/figures/holiday.png", "not a report figure")
    ctx.write("mine/index.html", "<p>my page</p>")


def _journal(ctx: Ctx, lines: list[str]) -> None:
    ctx.write("mlruns/optuna.journal", "".join(line + "\n" for line in lines))


_GOOD_RECORD = json.dumps({"op_code": 0, "worker_id": "w", "study_name": "x", "directions": [1]})


CASES = [
    # 1. the report's output folder
    Case("report-out-user-folder", lambda c: ["report", "s", "--out", str(c.project / "mine")],
         "marker", setup=_user_folder),
    Case("report-out-is-a-file", lambda c: ["report", "s", "--out", c.write("afile.txt", "mine")], "is a file"),
    Case("report-out-under-a-file", lambda c: ["report", "s", "--out", c.write("f.txt", "x") + "/sub"],
         "is a file"),
    # 4. everything knowable before training
    Case("prompt-outside-vocabulary", lambda c: c.train("sample.prompt=\u20ac"), "sample.prompt"),
    Case("prompt-newline-missing", lambda c: ["train", "--quiet", "--set",
                                              f"data.corpus=file:{c.write('one.txt', 'ab' * 2000)}"],
         "sample.prompt"),
    Case("seed-beyond-64-bit", lambda c: c.train(f"train.seed={2**64}"), "train.seed"),
    Case("seed-negative", lambda c: c.train("train.seed=-1"), "train.seed"),
    Case("temperature-tiny", lambda c: c.train("sample.temperature=1e-300"), "sample.temperature"),
    Case("lr-infinite", lambda c: c.train("optim.lr=.inf"), "optim.lr"),
    Case("clip-nan", lambda c: c.train("optim.clip_norm=.nan"), "optim.clip_norm"),
    Case("spec-prompt-dry-run", lambda c: ["run", c.spec(base={"sample": {"prompt": "\u20ac"}}), "--dry-run"],
         "sample.prompt"),
    Case("spec-seed-dry-run", lambda c: ["run", c.spec(seeds=[0, 2**64]), "--dry-run"], "train.seed"),
    Case("spec-temperature-dry-run", lambda c: ["run", c.spec(base={"sample": {"temperature": 1e-300}}),
                                                "--dry-run"], "sample.temperature"),
    Case("spec-arm-prompt", lambda c: ["run", c.spec(arms=[{"label": "euro", "set": {"sample.prompt": "\u20ac"}}])],
         "arm 'euro': sample.prompt"),
    Case("search-base-temperature", lambda c: ["search", _search_with_base(c, {"sample": {"temperature": 1e-300}})],
         "sample.temperature"),
    Case("search-base-device", lambda c: ["search", _search_with_base(c, {"train": {"device": "cuda"}})],
         "train.device", setup=lambda c: _needs_no_cuda()),
    Case("search-space-prompt", lambda c: ["search", c.search({"sample.prompt": {"categorical": ["A", "\u20ac"]}},
                                                                       baseline={"sample.prompt": "A"})],
         "space sample.prompt='\u20ac': sample.prompt"),
    Case("search-space-device", lambda c: ["search", c.search({"train.device": {"categorical": ["cpu", "cuda"]}},
                                                                       baseline={"train.device": "cpu"})],
         "space train.device='cuda'", setup=lambda c: _needs_no_cuda()),
    Case("search-baseline-prompt-newline", lambda c: ["search", c.search({"sample.prompt": {"categorical": ["A"]}})],
         "sample.prompt='\\n' is not a choice"),
    Case("search-seeds-beyond-64-bit", lambda c: ["search", _search_with_base(c, {"train": {"seed": 2**63 - 1}},
                                                                              seeds_per_trial=2)], "train.seed"),
    # 5. transfer from a run of this project's store, which does not exist yet
    Case("init-from-run-fresh-project", lambda c: c.train("transfer.init_from=runs:/0123456789abcdef"),
         "runs:/0123456789abcdef"),
    Case("init-from-run-dry-run", lambda c: ["run", c.spec(base={"transfer": {"init_from": "runs:/0123abcd"}}),
                                             "--dry-run"], "runs:/0123abcd"),
    Case("init-from-not-a-checkpoint", lambda c: c.train(f"transfer.init_from={c.write('x.pt', 'text')}"),
         "not an ablate checkpoint", absent="weights_only"),
    # 6. names checked before anything is created
    Case("study-name-300", lambda c: ["run", c.spec(name=LONG)], "too long"),
    Case("search-name-300", lambda c: ["search", c.search({"model.dropout": {"float": [0.0, 0.5]}}, name=LONG)],
         "too long"),
    Case("study-name-characters", lambda c: ["run", c.spec(name="a/b")], "letters, digits"),
    # 7. a corrupted journal
    Case("journal-garbage-middle-status", lambda c: ["status", "x"], "line 2",
         setup=lambda c: _journal(c, [_GOOD_RECORD, "{garbage", _GOOD_RECORD])),
    Case("journal-garbage-last-run", lambda c: ["run", c.spec()], "line 2 is not an Optuna journal record",
         setup=lambda c: _journal(c, [_GOOD_RECORD, "{garbage"])),
    Case("journal-unterminated-last-run", lambda c: ["run", c.spec()], "line 2",
         setup=lambda c: c.write("mlruns/optuna.journal", _GOOD_RECORD + "\n" + '{"op_code": 0')),
    Case("journal-empty-line-worker", lambda c: ["worker", "--study", "x"], "line 1",
         setup=lambda c: _journal(c, ["", _GOOD_RECORD])),
    Case("journal-proc-version", lambda c: ["run", c.spec(), "--storage", "journal:/proc/version"],
         "line 1 is not an Optuna journal record"),
    Case("journal-is-a-folder", lambda c: ["status", "x", "--storage", f"journal:{c.project}"], "is a folder"),
    # 9. search specs
    Case("search-inf-bound", lambda c: ["search", c.search({"model.dropout": {"float": [0.0, float("inf")]}})],
         "finite"),
    Case("search-nan-step", lambda c: ["search", c.search({"model.dropout": {"float": [0.0, 0.5],
                                                                             "step": float("nan")}})], "step"),
    Case("search-grid-tiny-step", lambda c: ["search", c.search({"model.dropout": {"float": [0.0, 0.5],
                                                                                   "step": 1e-12}},
                                                                sampler="grid")], "grid points"),
    Case("search-grid-product", lambda c: ["search", c.search({
        "model.dropout": {"float": [0.0, 0.5], "step": 0.0005},
        "optim.weight_decay": {"float": [0.0, 0.5], "step": 0.0005}}, sampler="grid")], "grid points"),
    Case("search-timeout-nan", lambda c: ["search", c.search({"model.dropout": {"float": [0.0, 0.5]}}),
                                          "--timeout", "nan"], "--timeout"),
    Case("search-timeout-inf", lambda c: ["search", c.search({"model.dropout": {"float": [0.0, 0.5]}}),
                                          "--timeout", "inf"], "--timeout"),
    Case("search-timeout-negative", lambda c: ["search", c.search({"model.dropout": {"float": [0.0, 0.5]}}),
                                               "--timeout", "-1"], "--timeout"),
    # 11. tracebacks before
    Case("tinyshakespeare-env-folder", lambda c: ["data", "--corpus", "tinyshakespeare"], "ABLATE_TINYSHAKESPEARE",
         setup=lambda c: (c.project / "ts").mkdir(), env={"ABLATE_TINYSHAKESPEARE": "{project}/ts"}),
    Case("experiment-empty", lambda c: c.train() + ["--experiment", ""], "--experiment"),
    Case("experiment-blank", lambda c: c.train() + ["--experiment", "   "], "--experiment"),
    Case("experiment-300", lambda c: c.train() + ["--experiment", LONG], "too long"),
    Case("experiment-newline", lambda c: c.train() + ["--experiment", "a\nb"], "control characters"),
    # 12. reading never creates
    Case("status-mistyped-journal", lambda c: ["status", "x", "--storage", f"journal:{c.project}/nope/j.journal"],
         "no journal file"),
    Case("worker-mistyped-journal", lambda c: ["worker", "--study", "x", "--storage",
                                               f"journal:{c.project}/nope/j.journal"], "no journal file"),
    Case("status-fresh-project", lambda c: ["status", "nosuch"], "no journal file"),
    Case("report-fresh-project", lambda c: ["report", "nosuch"], "does not exist yet"),
    Case("resume-fresh-project", lambda c: ["train", "--resume", "abc123"], "--resume"),
    Case("tinyshakespeare-offline", lambda c: ["data", "--corpus", "tinyshakespeare"], "cannot download",
         env={"ABLATE_TINYSHAKESPEARE": "{project}/.data/ts/input.txt", "https_proxy": "http://127.0.0.1:9",
              "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}),
    Case("ui-optuna-mistyped-journal", lambda c: ["ui", "--optuna", "--storage", f"journal:{c.project}/no/j.journal"],
         "no journal file"),
    # 13. messages
    Case("corpus-empty", lambda c: ["data", "--corpus", f"file:{c.write('empty.txt', '')}"], "too short",
         absent="at most -1"),
    Case("corpus-tiny", lambda c: ["data", "--corpus", f"file:{c.write('tiny.txt', 'abc')}"], "too short"),
    Case("corpus-file-no-path", lambda c: ["data", "--set", "data.corpus=file:"], "no path after file:",
         absent="{"),
    Case("corpus-file-folder", lambda c: ["data", "--corpus", f"file:{c.project}"], "cannot read"),
    Case("yaml-line-column", lambda c: ["train", "--config", c.write("bad.yaml", "model:\n  dropout: [0.1,\n")],
         "line 3, column 1"),
    Case("spec-yaml-line-column", lambda c: ["run", c.write("bad-spec.yaml", "name: x\nbase: {model: \n")],
         "line"),
    Case("schedule-as-string", lambda c: c.train("schedule=cosine"), "schedule.name=cosine"),
    Case("section-as-number", lambda c: ["train", "--config", c.write("m.yaml", "model: 5\n")], "model=5"),
    Case("section-as-number-plus-set", lambda c: c.train("model.dropout=0.1", "train.epochs=1") + [
        "--config", c.write("m.yaml", "model: 5\n")], "model=5"),
    Case("postgres-no-driver", lambda c: ["run", c.spec(), "--storage", "postgresql://u:secret@127.0.0.1:9/db"],
         "postgresql+psycopg2://", absent="secret"),
    Case("postgres-query-password", lambda c: ["status", "x", "--storage",
                                               "postgresql+psycopg2://u@127.0.0.1:9/db?password=hunter2"],
         "does not answer", absent="hunter2"),
    Case("sqlite-storage", lambda c: ["run", c.spec(), "--storage", f"sqlite:///{c.project}/o.db"], "SQLite"),
    Case("unknown-storage", lambda c: ["run", c.spec(), "--storage", "redis://x"], "unknown kind"),
    # 15. a study's pretraining stage (spec checks; the pretraining text's checks are harness.core.leakage's)
    Case("pretrain-unknown-key", lambda c: ["run", c.spec(pretrain={"set": {"data.train_chars": None}, "seed": 1},
                                                          arms=[_FINETUNE])], "pretrain key 'seed' is not known"),
    Case("pretrain-set-typo", lambda c: ["run", c.spec(pretrain={"set": {"train.max_step": 10}}, arms=[_FINETUNE])],
         "pretrain: key 'train.max_step'"),
    Case("pretrain-set-bad-value", lambda c: ["run", c.spec(pretrain={"set": {"train.max_steps": 0}},
                                                            arms=[_FINETUNE]), "--dry-run"],
         "pretrain: train.max_steps=0"),
    Case("pretrain-per-seed-text", lambda c: ["run", c.spec(pretrain={"set": {"data.train_chars": None},
                                                                      "per_seed": "no"}, arms=[_FINETUNE])],
         "pretrain.per_seed='no'"),
    Case("pretrain-missing", lambda c: ["run", c.spec(arms=[_FINETUNE]), "--dry-run"], "no pretrain: section"),
    Case("pretrain-unused", lambda c: ["run", c.spec(pretrain={"set": {"data.train_chars": None}})],
         "pretrain: no arm uses it"),
    Case("pretrain-label-reserved", lambda c: ["run", c.spec(pretrain={"set": {"data.train_chars": None}},
                                                             arms=[_FINETUNE, {"label": "pretrain",
                                                                               "set": {"augment.noise": 0.1}}])],
         "arm label 'pretrain' is reserved"),
    Case("pretrain-from-itself", lambda c: ["run", c.spec(pretrain={"set": {"transfer.init_from": "pretrain"}},
                                                          arms=[_FINETUNE])], "from itself"),
    Case("pretrain-shape-mismatch", lambda c: ["run", c.spec(pretrain={"set": {"model.n_embd": 64}},
                                                             arms=[_FINETUNE]), "--dry-run"],
         "model.n_embd=32 but the pretraining has model.n_embd=64"),
    # bad input that already stopped cleanly, kept in the table so it stays that way
    Case("dropout-out-of-range", lambda c: c.train("model.dropout=1.5"), "model.dropout"),
    Case("unknown-key", lambda c: c.train("model.dropuot=0.1"), "did you mean"),
    Case("unknown-scheduler", lambda c: c.train("schedule.name=wavy"), "allowed"),
    Case("corpus-missing-file", lambda c: c.train(f"data.corpus=file:{c.project}/none.txt"), "does not exist"),
    Case("block-size-too-large", lambda c: c.train("data.block_size=100000"), "data.block_size"),
    Case("workers-zero", lambda c: ["run", c.spec(), "--workers", "0"], "--workers"),
    Case("set-without-equals", lambda c: c.train("model.dropout"), "key=value"),
    Case("spec-missing", lambda c: ["run", str(c.project / "none.yaml")], "does not exist"),
    Case("report-unknown-metric", lambda c: ["report", "s", "--metric", "nope"], "nope",
         setup=lambda c: init_store()),
    Case("resume-with-set", lambda c: ["train", "--resume", "x", "--set", "model.dropout=0.1"], "--resume"),
]


_FINETUNE = {"label": "finetune", "set": {"transfer.init_from": "pretrain"}}


def _needs_no_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")


def _search_with_base(ctx: Ctx, base: dict, **extra: object) -> str:
    path = Path(ctx.search({"model.dropout": {"float": [0.0, 0.5]}}, **extra))
    doc = yaml.safe_load(path.read_text())
    for section, values in base.items():
        doc["base"].setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root`: (size, mtime in ns); folders as (-1, 0)."""
    out = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        out[str(path.relative_to(root))] = (-1, 0) if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_stops_with_one_line_and_writes_nothing(case: Case, project: Path, small_corpus: Path,
                                                          tiny: dict, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = Ctx(project, small_corpus, tiny)
    if case.setup:
        case.setup(ctx)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value.format(project=project))
    argv = case.argv(ctx)
    before = snapshot(project)
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("ablate: error: "), err
    assert case.expect in lines[0]
    if case.absent:
        assert case.absent not in lines[0]
    assert out == "", "bad input printed a plan before it stopped"
    assert snapshot(project) == before, "bad input wrote to the project"


def test_cuda_on_a_machine_without_it_stops_before_the_run(project: Path, small_corpus: Path, tiny: dict,
                                                           capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    ctx = Ctx(project, small_corpus, tiny)
    spec = ctx.spec(base={"train": {"device": "cuda"}})
    for argv in (ctx.train("train.device=cuda"), ["run", spec, "--dry-run"], ["run", spec]):
        assert main(argv) == 2
        assert "train.device='cuda'" in capsys.readouterr().err
    assert not (project / "mlruns").exists()
    assert not (project / "mlflow.db").exists()


