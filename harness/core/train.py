"""The training loop: data -> model -> optimizer/schedule -> epochs -> evaluation -> summary.

`train` knows nothing of MLflow or Optuna: the caller passes `Hooks` (log an evaluation, decide
to stop early) and gets a `TrainResult`. Same config and seed give the same losses on a CPU;
a run resumed from its checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from tqdm import tqdm

from harness.core.augment import augment_batch
from harness.core.checkpoint import load_checkpoint, resolve_checkpoint
from harness.core.config import Config
from harness.core.data import (Dataset, epoch_batches, eval_windows, load_corpus, make_dataset,
                          windows_per_epoch)
from harness.core.errors import UsageError
from harness.core.metrics import Evaluation, StepStats, Summary, summarize
from harness.core.model import GPT, decay_groups
from harness.core.schedules import LRSchedule


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


class Interrupted(Exception):
    """Training stopped by Ctrl-C; `checkpoint` holds the state at the last evaluation."""

    def __init__(self, checkpoint: dict[str, Any] | None) -> None:
        super().__init__("interrupted")
        self.checkpoint = checkpoint


@dataclass
class Hooks:
    on_eval: Callable[[Evaluation], None] | None = None
    """Called after every evaluation (tracking)."""
    should_stop: Callable[[Evaluation], str | None] | None = None
    """Return a reason to stop the run after this evaluation (pruning), or None to go on."""
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None
    """Called with the resumable state after every evaluation, when set."""


@dataclass
class TrainResult:
    history: list[Evaluation]
    summary: Summary
    stopped: str | None = None
    """Why the run ended early (a pruning reason), or None when it ran its budget."""
    samples: list[str] = field(default_factory=list)
    checkpoint: dict[str, Any] | None = None
    n_params: int = 0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("train.device='cuda': no CUDA device is available; allowed here: auto, cpu")
    return torch.device(name)


def prepare_data(cfg: Config) -> Dataset:
    d = cfg.data
    return make_dataset(load_corpus(d.corpus), d.block_size, d.train_chars, d.val_fraction,
                        d.test_fraction)


def build_model(cfg: Config, vocab_size: int) -> GPT:
    model = GPT(cfg.model, vocab_size, cfg.data.block_size)
    if cfg.transfer.init_from:
        _init_from(model, cfg, vocab_size)
    if cfg.transfer.freeze_blocks > cfg.model.n_layer:
        raise UsageError(f"transfer.freeze_blocks={cfg.transfer.freeze_blocks}: the model has only "
                         f"{cfg.model.n_layer} blocks; allowed: 0..{cfg.model.n_layer}")
    if cfg.transfer.freeze_embeddings:
        # The head shares the token embedding matrix, so it is frozen with it.
        for p in (*model.tok_emb.parameters(), *model.pos_emb.parameters()):
            p.requires_grad_(False)
    for block in model.blocks[:cfg.transfer.freeze_blocks]:
        block.requires_grad_(False)
    return model


def _init_from(model: GPT, cfg: Config, vocab_size: int) -> None:
    ref = cfg.transfer.init_from
    state = load_checkpoint(resolve_checkpoint(ref))
    source_cfg = state.get("config", {})
    if len(state.get("vocab", "")) != vocab_size:
        raise UsageError(
            f"transfer.init_from={ref!r}: the checkpoint's vocabulary has {len(state.get('vocab', ''))} "
            f"characters, this corpus has {vocab_size}; fine-tune on a corpus with the same characters")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        src = source_cfg.get("model", {})
        raise UsageError(
            f"transfer.init_from={ref!r}: the checkpoint's model (n_layer={src.get('n_layer')}, "
            f"n_head={src.get('n_head')}, n_embd={src.get('n_embd')}, block_size="
            f"{source_cfg.get('data', {}).get('block_size')}) does not fit this config: "
            f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}") from None


def make_optimizer(model: GPT, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = decay_groups(model, o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    # fused: one kernel over all parameters; 4-13% faster per step than foreach on CPU
    # (benchmarks/RESULTS.md) and the fastest form on CUDA.
    return cls(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=True)


def mean_loss(model: GPT, loss_fn: Callable, windows: torch.Tensor, batch_size: int,
              device: torch.device, autocast: contextlib.AbstractContextManager) -> float:
    """Eval-mode mean loss per character over `windows` (no dropout, no augmentation).

    no_grad as a block, not a decorator: mutmut (make mutation) skips decorated functions.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in windows.split(batch_size):
            batch = batch.to(device)
            with autocast:
                loss = loss_fn(batch[:, :-1], batch[:, 1:])
            total += float(loss) * len(batch)
            count += len(batch)
    model.train(was_training)
    return total / count


def train(cfg: Config, hooks: Hooks | None = None, resume: dict[str, Any] | None = None,
          progress: bool = False, dataset: Dataset | None = None) -> TrainResult:
    """Train one run. Raises NonFiniteLoss on divergence, Interrupted on Ctrl-C."""
    hooks = hooks or Hooks()
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = pick_device(t.device)
    data = dataset or prepare_data(cfg)
    vocab_size = len(data.vocab)

    torch.manual_seed(t.seed)  # init and dropout
    data_rng = torch.Generator().manual_seed(t.seed)
    augment_rng = torch.Generator().manual_seed(t.seed + 1_000_003)
    model = build_model(cfg, vocab_size).to(device)
    n_params = model.n_params()
    optimizer = make_optimizer(model, cfg)
    # Compile the loss, not the module: `model.loss` on a compiled module would call the
    # original, uncompiled forward.
    loss_fn = torch.compile(model.loss) if t.compile else model.loss

    block, bs = cfg.data.block_size, t.batch_size
    steps_per_epoch = math.ceil(windows_per_epoch(len(data.train), block) / bs)
    total_steps = t.epochs * steps_per_epoch if t.max_steps is None else min(t.max_steps, t.epochs * steps_per_epoch)
    total_units = total_steps if cfg.schedule.interval == "step" else math.ceil(total_steps / steps_per_epoch)
    schedule = LRSchedule(optimizer, cfg.schedule, total_units)

    # The same windows whatever the batch size, seed or arm: paired runs see the same text.
    train_sample = eval_windows(data.train, block, t.eval_windows)
    val_sample = eval_windows(data.val, block, t.eval_windows)
    test_sample = eval_windows(data.test, block, t.eval_windows)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if t.precision == "bf16"
                else contextlib.nullcontext())
    params = [p for p in model.parameters() if p.requires_grad]
    clip = t_clip = cfg.optim.clip_norm
    if t_clip is None:
        clip = float("inf")  # still measure the norm

    history: list[Evaluation] = []
    step, epoch, start_batch = 0, 0, 0
    epoch_rng_state = data_rng.get_state()
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        torch.set_rng_state(resume["rng"]["torch"])
        if device.type == "cuda" and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume["rng"]["cuda"], device)
        augment_rng.set_state(resume["rng"]["augment"])
        p = resume["progress"]
        step, epoch, start_batch = p["step"], p["epoch"], p["batch_in_epoch"]
        epoch_rng_state = p["epoch_data_rng"]
        history = [Evaluation(**e) for e in resume["history"]]

    def snapshot(batch_in_epoch: int) -> dict[str, Any]:
        return {
            "config": cfg.to_dict(),
            "vocab": data.vocab.chars,
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": _clone(optimizer.state_dict()),
            "schedule": schedule.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "augment": augment_rng.get_state(),
                    # dropout on a GPU draws from its own generator
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "progress": {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                         "epoch_data_rng": epoch_rng_state.clone()},
            "history": [asdict(e) for e in history],
            "wall_s": previous_wall + time.perf_counter() - started,
        }

    previous_wall = (resume or {}).get("wall_s", 0.0)
    started = time.perf_counter()
    last_checkpoint = snapshot(start_batch) if resume is not None else None
    stats = StepStats()
    stopped: str | None = None
    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", leave=False,
               dynamic_ncols=True)

    def evaluate(batch_in_epoch: int, n_batches: int) -> Evaluation:
        ev = Evaluation(
            step=step,
            epoch=epoch + batch_in_epoch / n_batches,
            train_loss=stats.loss_sum / max(stats.steps, 1),
            train_eval_loss=mean_loss(model, loss_fn, train_sample, bs, device, autocast),
            val_loss=mean_loss(model, loss_fn, val_sample, bs, device, autocast),
            test_loss=mean_loss(model, loss_fn, test_sample, bs, device, autocast),
            lr=stats.lr,
            grad_norm=stats.norm_sum / max(stats.steps, 1),
            grad_norm_max=stats.norm_max,
            clip_frac=stats.clipped / max(stats.steps, 1),
            tokens_per_s=stats.tokens / stats.seconds if stats.seconds > 0 else 0.0,
        )
        history.append(ev)
        return ev

    try:
        model.train()
        while epoch < t.epochs and step < total_steps and stopped is None:
            data_rng.set_state(epoch_rng_state)
            batches = epoch_batches(data.train, block, bs, data_rng)
            for i in range(start_batch, len(batches)):
                tick = time.perf_counter()
                batch = batches[i]
                x, y = augment_batch(batch[:, :-1], batch[:, 1:], cfg.augment, vocab_size, augment_rng)
                x, y = x.to(device), y.to(device)
                with autocast:
                    loss = loss_fn(x, y)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise NonFiniteLoss(step + 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = float(torch.nn.utils.clip_grad_norm_(params, clip, foreach=True))
                if not math.isfinite(norm):
                    raise NonFiniteLoss(step + 1)
                lr = schedule.lr  # applied by this step; a step-interval schedule moves it next
                optimizer.step()
                step += 1
                if cfg.schedule.interval == "step":
                    schedule.step_unit()
                stats.add(loss_value, norm, t_clip is not None and norm > t_clip, x.numel(),
                          time.perf_counter() - tick, lr)
                bar.update(1)
                end_of_epoch = i + 1 == len(batches)
                end_of_run = step >= total_steps
                due = (t.eval_every is not None and step % t.eval_every == 0) or \
                      (t.eval_every is None and end_of_epoch) or end_of_run
                if due:
                    ev = evaluate(i + 1, len(batches))
                    bar.set_postfix(val=f"{ev.val_loss:.3f}", gap=f"{ev.gap:.3f}")
                    stats = StepStats()
                    if cfg.schedule.interval == "epoch" and end_of_epoch:
                        schedule.step_unit()
                    schedule.after_eval(ev.val_loss)
                    if end_of_epoch:
                        epoch += 1
                        epoch_rng_state = data_rng.get_state()
                    last_checkpoint = snapshot(0 if end_of_epoch else i + 1)
                    if hooks.on_eval:
                        hooks.on_eval(ev)
                    if hooks.on_checkpoint:
                        hooks.on_checkpoint(last_checkpoint)
                    if hooks.should_stop:
                        stopped = hooks.should_stop(ev)
                elif end_of_epoch:
                    if cfg.schedule.interval == "epoch":
                        schedule.step_unit()
                    epoch += 1
                    epoch_rng_state = data_rng.get_state()
                if stopped is not None or end_of_run:
                    break
            start_batch = 0
    except KeyboardInterrupt:
        raise Interrupted(last_checkpoint) from None
    finally:
        bar.close()

    wall = previous_wall + time.perf_counter() - started
    summary = summarize(history, t.patience, wall, n_params)
    return TrainResult(history=history, summary=summary, stopped=stopped,
                       samples=generate_samples(model, cfg, data, device),
                       checkpoint=last_checkpoint, n_params=n_params)


def _clone(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone(v) for v in tree)
    return tree


def generate_samples(model: GPT, cfg: Config, data: Dataset, device: torch.device) -> list[str]:
    s = cfg.sample
    if s.count == 0 or s.chars == 0:
        return []
    prompt = s.prompt or "\n"
    ids = data.vocab.encode(prompt)[None, :].to(device)
    rng = torch.Generator(device=device).manual_seed(cfg.train.seed)
    model.eval()
    out = [data.vocab.decode(model.generate(ids, s.chars, s.temperature, rng)[0].tolist())
           for _ in range(s.count)]
    model.train()
    return out
