"""The `ablate` command line. Each subcommand parses its arguments and calls one module.

Exit status: 0 success; 1 a run failed (for example a non-finite loss); 2 bad input (one line on
stderr naming what is wrong and what is allowed, nothing written to the stores); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Callable

from harness.core.errors import UsageError
from harness.tracking.mlflow_ui import DEFAULT_UI_URL, UI_HOST, UI_PORT, run_url

if TYPE_CHECKING:
    from harness.studies.launch import Placement
STORAGE_HELP = ("Optuna storage URL (default: $ABLATE_STORAGE, else journal:mlruns/optuna.journal; "
                "the variable keeps a password off the command line)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one run, logged to MLflow")
    p.add_argument("--config", help="YAML config (sections data, model, optim, schedule, ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one dotted key, e.g. --set model.dropout=0.2 (repeatable)")
    p.add_argument("--experiment", default="train", help="MLflow experiment (default: train)")
    p.add_argument("--arm", help="label this run (tag harness.arm) to group runs in a report")
    p.add_argument("--name", help="MLflow run name")
    p.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from harness.core.config import load_config, parse_set_args
    from harness.tracking.run import preflight, resume_tracked, run_tracked
    from harness.tracking.store import check_experiment_name, experiment_id, init_store, read_store
    from harness.core.train import Interrupted, NonFiniteLoss

    if args.resume and (args.config or args.overrides):
        raise UsageError("--resume takes the config from the checkpoint; drop --config and --set")
    check_experiment_name(args.experiment)
    cfg = None if args.resume else load_config(args.config, parse_set_args(args.overrides))
    prepared = None if cfg is None else preflight(cfg)  # bad input stops before the store is touched
    # A run to resume is read first: a store that does not exist holds no run, and is not created.
    client = read_store(f"--resume {args.resume!r}") if args.resume else init_store()
    try:
        if args.resume:
            outcome = resume_tracked(client, args.resume, progress=not args.quiet)
            experiment = client.get_experiment(client.get_run(args.resume).info.experiment_id).name
        else:
            tags = {"harness.arm": args.arm} if args.arm else {}
            outcome = run_tracked(cfg, client, args.experiment, run_name=args.name, tags=tags,
                                  progress=not args.quiet, prepared=prepared)
            experiment = args.experiment
    except NonFiniteLoss as exc:
        print(f"ablate: run failed: {exc}", file=sys.stderr)
        return 1
    except Interrupted:
        print("ablate: interrupted; the run is KILLED with a resumable checkpoint "
              "(see its harness.reason tag)", file=sys.stderr)
        return 130
    s = outcome.result.summary
    exp_id = experiment_id(client, experiment)
    print(f"run {outcome.run_id} {outcome.status} (experiment {experiment!r})")
    print(f"  best val loss {s.best_val_loss:.4f} at epoch {s.best_epoch:g}; there: test loss {s.test_loss:.4f}, "
          f"gap on test {s.test_gap:.4f}; final gap {s.final_gap:.4f}; {s.wall_s:.1f} s, {s.n_params:,} parameters")
    print(f"  open it: ablate ui, then {run_url(DEFAULT_UI_URL, exp_id, outcome.run_id)}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="compare the arms of a study: reports/NAME/")
    p.add_argument("name", help="the study (MLflow experiment) name")
    p.add_argument("--out", help="output folder (default: reports/NAME)")
    p.add_argument("--baseline", help="the arm to compare against (default: the study's baseline)")
    p.add_argument("--metric", help="the metric of the secondary comparison table (default: the search's "
                                    "objective for a search or its confirmation, else test_loss); the "
                                    "verdicts always judge held-out loss and gap together")
    p.add_argument("--ignore-failed", action="store_true",
                   help="judge an arm with failed seeds on its finished seeds alone (by default it "
                        "cannot be called generalizes-better)")
    p.add_argument("--group-by", default="harness.arm",
                   help="tag (or params.KEY) that names a run's arm, for loose ablate train runs")
    p.add_argument("--ui-url", default=DEFAULT_UI_URL,
                   help=f"address of the MLflow UI the report links to (default {DEFAULT_UI_URL}, where "
                        f"ablate ui serves it; e.g. http://HOST:5000 for a shared tracking server)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.report import build_report, default_out_dir
    from harness.report.output import check_out_dir
    from harness.tracking.store import read_store

    check_out_dir(Path(args.out) if args.out else default_out_dir(args.name))
    read_store(f"no study named {args.name!r}")  # reading never creates the store
    result = build_report(args.name, out_dir=Path(args.out) if args.out else None, baseline=args.baseline,
                          metric=args.metric, ui_url=args.ui_url, group_by=args.group_by,
                          ignore_failed=args.ignore_failed)
    print(f"report: {result.out_dir / 'index.html'}")
    for line in result.summary_lines:
        print(f"  {line}")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare and describe a corpus")
    p.add_argument("--corpus", help="shakespeare (default), tinyshakespeare, or file:PATH")
    p.add_argument("--config", help="take data.* from this config, or from the base recipe of this "
                                    "study spec (experiments/NAME.yaml, studies/NAME.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_data)


def cmd_data(args: argparse.Namespace) -> int:
    from harness.core.config import build_config, load_config, parse_set_args, read_yaml
    from harness.core.train import prepare_data

    overrides = parse_set_args(args.overrides)
    if args.corpus:
        overrides["data.corpus"] = args.corpus
    raw = read_yaml(args.config) if args.config else None
    if isinstance(raw, dict) and {"name", "base"} <= set(raw):  # a study spec: its base recipe's data
        if not isinstance(raw["base"] or {}, dict):
            raise UsageError("base: must be a mapping of config sections (data, model, optim, ...)")
        cfg = build_config(raw["base"] or {}, overrides, where="base: ")
        print(f"study       {raw['name']} (the data of its base recipe)")
    else:
        cfg = load_config(args.config, overrides)
    data = prepare_data(cfg)
    c = data.corpus
    print(f"corpus      {c.name}")
    print(f"characters  {len(c.text):,}")
    print(f"vocabulary  {len(data.vocab)} characters")
    print(f"train       {len(data.train):,} characters (of {data.train_full:,}; data.train_chars="
          f"{cfg.data.train_chars})")
    print(f"validation  {len(data.val):,} characters (decides: best evaluation, plateau, pruning, search)")
    print(f"test        {len(data.test):,} characters (reported only)")
    print(f"block size  {cfg.data.block_size}")
    print(f"sha256      {c.sha256}")
    return 0


def _add_ui(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="the MLflow UI on this project's store")
    p.add_argument("--host", default=UI_HOST, help=f"bind address (default {UI_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=UI_PORT)
    p.add_argument("--optuna", action="store_true",
                   help="also start optuna-dashboard on the study storage (port + 1)")
    p.add_argument("--storage", help="Optuna storage for --optuna (default: the project's journal)")
    p.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    from harness.ui import serve

    return serve(args.host, args.port, optuna=args.optuna, storage=args.storage)


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an ablation study (only what is missing)")
    p.add_argument("spec", help="experiments/NAME.yaml")
    _add_placement(p)
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--dry-run", action="store_true",
                   help="print the arms, the cells already done and an estimated wall time; run nothing")
    p.add_argument("--yes", action="store_true", help="allow a study of more than 100 runs")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from harness.studies.ablation import run_ablation

    return run_ablation(args.spec, _placement(args), args.storage, args.dry_run, args.yes)


def _positive(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{option}={value}: must be at least 1")


def _add_placement(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="local worker processes (default: one per core; on a CUDA "
                                               "machine --workers-per-gpu on every GPU)")
    p.add_argument("--workers-per-gpu", type=int, metavar="N",
                   help="workers sharing each GPU, each pinned by CUDA_VISIBLE_DEVICES (default: 16, at most "
                        "the cores per GPU; see docs/cluster.md)")
    p.add_argument("--gpus", metavar="LIST", help="the GPUs to use, e.g. 0,2 (default: every visible one; "
                                                  "none: CPU workers only)")


def _placement(args: argparse.Namespace) -> Placement:
    from harness.studies.launch import Placement  # imports torch: not at the top

    _positive("--workers", args.workers)
    _positive("--workers-per-gpu", args.workers_per_gpu)
    return Placement(args.workers, args.workers_per_gpu, args.gpus)


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="Optuna search over a regularization space, pruning on")
    p.add_argument("spec", help="studies/NAME.yaml")
    p.add_argument("--trials", type=int, help="total trials the study should reach (default: the spec's)")
    _add_placement(p)
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    p.add_argument("--importance", choices=("ped-anova", "fanova"), default="ped-anova",
                   help="parameter-importance evaluator (default: Optuna's PED-ANOVA)")
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from harness.studies.search_results import run_search

    _positive("--trials", args.trials)
    return run_search(args.spec, trials=args.trials, placement=_placement(args), storage_url=args.storage,
                      timeout=args.timeout, importance=args.importance)


def _add_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="join a study (from this or another machine)")
    p.add_argument("--study", required=True)
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--threads", type=int, help="torch threads for this worker")
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from harness.tracking.storage import default_storage
    from harness.studies.worker import run_worker

    _positive("--threads", args.threads)
    trained = run_worker(args.study, default_storage(args.storage), args.threads)
    print(f"worker done: {trained} trial(s) trained")
    return 0


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="trials done / running / failed / waiting, per arm")
    p.add_argument("name")
    p.add_argument("--storage")
    p.add_argument("--cells", action="store_true",
                   help="also one line per cell: its state and the host and device it ran on")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from harness.status import print_status

    return print_status(args.name, args.storage, cells=args.cells)


# --- ablate submit: a study's workers on a cluster (harness.studies.cluster) ---------------------

def _add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="run a study's workers as a Slurm job array or a Kubernetes Job")
    engines = p.add_subparsers(dest="engine", required=True)
    slurm = engines.add_parser("slurm", help="create the study, then sbatch an array of ablate worker tasks")
    slurm.add_argument("target", metavar="SPEC_OR_STUDY", help="experiments/NAME.yaml, or a study in the storage")
    slurm.add_argument("--array", type=int, required=True, metavar="N", help="array tasks (workers, or GPU groups)")
    slurm.add_argument("--gpus-per-task", type=int, default=0, metavar="G", help="GPUs per task (default 0: CPU)")
    slurm.add_argument("--workers-per-gpu", type=int, metavar="W",
                       help="workers sharing each of a task's GPUs (default: 16, at most its CPUs per GPU)")
    slurm.add_argument("--cpus-per-task", type=int, default=1, metavar="C", help="CPUs per task (default 1)")
    slurm.add_argument("--partition", metavar="P")
    slurm.add_argument("--time", metavar="T", help="time limit per task, as sbatch takes it (e.g. 2:00:00)")
    k8s = engines.add_parser("k8s", help="create the study, then print a Kubernetes Job of ablate workers")
    k8s.add_argument("target", metavar="SPEC_OR_STUDY", help="experiments/NAME.yaml, or a study in the storage")
    k8s.add_argument("--workers", type=int, required=True, metavar="N", help="worker pods (the Job's parallelism)")
    k8s.add_argument("--image", required=True, help="the worker image (ablate installed, corpus prepared)")
    k8s.add_argument("--secret", default="ablate-storage",
                     help="Secret with keys storage and tracking-uri (default: ablate-storage)")
    k8s.add_argument("--gpus-per-pod", type=int, default=0, metavar="G")
    k8s.add_argument("--cpus-per-worker", type=int, default=1, metavar="C")
    for engine in (slurm, k8s):
        engine.add_argument("--storage", help=STORAGE_HELP + "; must be a database every node reaches")
        engine.add_argument("--dry-run", action="store_true",
                            help="print the job script (or manifest) only; write nothing")
    p.set_defaults(func=cmd_submit)


def cmd_submit(args: argparse.Namespace) -> int:
    from harness.studies.cluster import K8sJob, SlurmJob, submit_k8s, submit_slurm
    from harness.tracking.storage import default_storage

    url = default_storage(args.storage)
    if args.engine == "slurm":
        _positive("--array", args.array)
        _positive("--cpus-per-task", args.cpus_per_task)
        _positive("--workers-per-gpu", args.workers_per_gpu)
        if args.gpus_per_task < 0:
            raise UsageError(f"--gpus-per-task={args.gpus_per_task}: must be 0 (CPU) or more")
        if args.workers_per_gpu and not args.gpus_per_task:
            raise UsageError("--workers-per-gpu needs --gpus-per-task G (at least 1)")
        job = SlurmJob("", args.array, args.gpus_per_task, args.workers_per_gpu, args.cpus_per_task,
                       args.partition, args.time)
        return submit_slurm(args.target, job, url, args.dry_run)
    _positive("--workers", args.workers)
    _positive("--cpus-per-worker", args.cpus_per_worker)
    if args.gpus_per_pod < 0:
        raise UsageError(f"--gpus-per-pod={args.gpus_per_pod}: must be 0 (CPU) or more")
    job = K8sJob("", args.workers, args.image, args.secret, args.gpus_per_pod, args.cpus_per_worker)
    return submit_k8s(args.target, job, url, args.dry_run)

# --- end of ablate submit -----------------------------------------------------------------------


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train, _add_run, _add_search, _add_worker, _add_status, _add_report, _add_data, _add_ui, _add_submit]


def _version() -> str:
    """The installed package's version (pyproject.toml), read from its metadata: no import cost."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ablate")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ablate", description="Ablation studies of regularization in a character Transformer LM.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        # One line, always: a value with a newline in it (a prompt, a path) is shown escaped.
        print(f"ablate: error: {str(exc).replace(chr(10), chr(92) + 'n')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ablate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
