"""The training loop: data -> model -> optimizer/schedule -> epochs -> evaluation -> summary.

`train` knows nothing of MLflow or Optuna: the caller passes `Hooks` (log an evaluation, decide
to stop early) and gets a `TrainResult`. Same config and seed give the same losses on a CPU;
a run resumed from its checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from tqdm import tqdm

from harness.core.augment import augment_batch
from harness.core.checkpoint import init_checkpoint
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


def device_label(name: str) -> str:
    """Where a run of train.device=`name` trains, as its harness.device tag names it: 'cpu', or
    'cuda:N' with N the GPU's number on its machine: a worker pinned with CUDA_VISIBLE_DEVICES=3
    sees that GPU as cuda:0, and is labelled cuda:3, so workers on different GPUs read apart."""
    device = pick_device(name)
    if device.type != "cuda":
        return device.type
    index = device.index or 0
    pinned = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return f"cuda:{pinned[index] if index < len(pinned) else index}"


def prepare_data(cfg: Config) -> Dataset:
    d = cfg.data
    return make_dataset(load_corpus(d.corpus), d.block_size, d.train_chars, d.val_fraction,
                        d.test_fraction)


def build_model(cfg: Config, vocab_size: int, init_state: dict[str, Any] | None = None) -> GPT:
    """The model of `cfg`, initialised from transfer.init_from when set and frozen as it says.

    `init_state` is the checkpoint transfer.init_from names, when the caller has loaded it: a
    `runs:/` reference must be (harness.tracking.store.transfer_state), a path may be.
    """
    model = GPT(cfg.model, vocab_size, cfg.data.block_size)
    if cfg.transfer.init_from:
        _init_from(model, cfg.transfer.init_from, vocab_size, init_state)
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


def _init_from(model: GPT, ref: str, vocab_size: int, state: dict[str, Any] | None) -> None:
    if state is None:
        state = init_checkpoint(ref)
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
          progress: bool = False, dataset: Dataset | None = None,
          init_state: dict[str, Any] | None = None) -> TrainResult:
    """Train one run. Raises NonFiniteLoss on divergence, Interrupted on Ctrl-C.

    `init_state`: the checkpoint transfer.init_from names, already loaded (see build_model).
    """
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
    model = build_model(cfg, vocab_size, init_state).to(device)
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

    saved = _Resumable(cfg, data.vocab.chars, model, optimizer, schedule, augment_rng, device)
    loop = saved.restore(resume) if resume is not None else _Loop(epoch_data_rng=data_rng.get_state())
    previous_wall = (resume or {}).get("wall_s", 0.0)
    started = time.perf_counter()

    def wall() -> float:
        return previous_wall + time.perf_counter() - started

    def evaluate(loop: _Loop, n_batches: int) -> Evaluation:
        stats = loop.stats
        ev = Evaluation(
            step=loop.step,
            # At the end of an epoch the loop has rolled over to the next one's batch 0:
            # epoch + 0/n equals (epoch - 1) + n/n exactly, integers being exact floats.
            epoch=loop.epoch + loop.batch_in_epoch / n_batches,
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
        loop.history.append(ev)
        return ev

    last_checkpoint = saved.snapshot(loop, wall()) if resume is not None else None
    stopped: str | None = None
    bar = tqdm(total=total_steps, initial=loop.step, disable=not progress, unit="step", leave=False,
               dynamic_ncols=True)
    try:
        model.train()
        while loop.epoch < t.epochs and loop.step < total_steps and stopped is None:
            data_rng.set_state(loop.epoch_data_rng)
            batches = epoch_batches(data.train, block, bs, data_rng)
            for i in range(loop.batch_in_epoch, len(batches)):
                tick = time.perf_counter()
                batch = batches[i]
                x, y = augment_batch(batch[:, :-1], batch[:, 1:], cfg.augment, vocab_size, augment_rng)
                x, y = x.to(device), y.to(device)
                with autocast:
                    loss = loss_fn(x, y)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise NonFiniteLoss(loop.step + 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = float(torch.nn.utils.clip_grad_norm_(params, clip, foreach=True))
                if not math.isfinite(norm):
                    raise NonFiniteLoss(loop.step + 1)
                lr = schedule.lr  # applied by this step; a step-interval schedule moves it next
                optimizer.step()
                loop.step += 1
                if cfg.schedule.interval == "step":
                    schedule.step_unit()
                loop.stats.add(loss_value, norm, t_clip is not None and norm > t_clip, x.numel(),
                               time.perf_counter() - tick, lr)
                bar.update(1)
                loop.batch_in_epoch = i + 1
                end_of_epoch = loop.batch_in_epoch == len(batches)
                if end_of_epoch:
                    # Before the evaluation, which reads neither the schedule nor the data
                    # generator: a plateau schedule's after_eval sees the epoch counted.
                    if cfg.schedule.interval == "epoch":
                        schedule.step_unit()
                    loop.next_epoch(data_rng)
                end_of_run = loop.step >= total_steps
                if (t.eval_every is not None and loop.step % t.eval_every == 0) or \
                        (t.eval_every is None and end_of_epoch) or end_of_run:
                    ev = evaluate(loop, len(batches))
                    bar.set_postfix(val=f"{ev.val_loss:.3f}", gap=f"{ev.gap:.3f}")
                    loop.stats = StepStats()
                    schedule.after_eval(ev.val_loss)
                    last_checkpoint = saved.snapshot(loop, wall())
                    if hooks.on_eval:
                        hooks.on_eval(ev)
                    if hooks.on_checkpoint:
                        hooks.on_checkpoint(last_checkpoint)
                    if hooks.should_stop:
                        stopped = hooks.should_stop(ev)
                if stopped is not None or end_of_run:
                    break
    except KeyboardInterrupt:
        raise Interrupted(last_checkpoint) from None
    finally:
        bar.close()

    summary = summarize(loop.history, t.patience, wall(), n_params)
    return TrainResult(history=loop.history, summary=summary, stopped=stopped,
                       samples=generate_samples(model, cfg, data, device),
                       checkpoint=last_checkpoint, n_params=n_params)


@dataclass
class _Loop:
    """Where training stands; with the states _Resumable holds, all a checkpoint needs."""

    epoch_data_rng: torch.Tensor
    """The data generator's state when `epoch` began: it draws that epoch's batch order."""
    step: int = 0
    epoch: int = 0
    """Epochs completed."""
    batch_in_epoch: int = 0
    """Batches of `epoch` trained."""
    history: list[Evaluation] = field(default_factory=list)
    stats: StepStats = field(default_factory=StepStats)
    """The steps since the last evaluation."""

    def next_epoch(self, data_rng: torch.Generator) -> None:
        """The epoch's last batch is trained: the next starts where the generator is now."""
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_data_rng = data_rng.get_state()


@dataclass(frozen=True)
class _Resumable:
    """What a checkpoint saves besides the loop's position, and how it is saved and restored."""

    cfg: Config
    vocab: str
    model: GPT
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    augment_rng: torch.Generator
    device: torch.device

    def snapshot(self, loop: _Loop, wall_s: float) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "vocab": self.vocab,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": _clone(self.optimizer.state_dict()),
            "schedule": self.schedule.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "augment": self.augment_rng.get_state(),
                    # dropout on a GPU draws from its own generator
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None},
            "progress": {"step": loop.step, "epoch": loop.epoch, "batch_in_epoch": loop.batch_in_epoch,
                         "epoch_data_rng": loop.epoch_data_rng.clone()},
            "history": [asdict(e) for e in loop.history],
            "wall_s": wall_s,
        }

    def restore(self, state: dict[str, Any]) -> _Loop:
        """Load `state` (a snapshot) into the model, optimizer, schedule and generators; the loop
        resumes where it was taken."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.augment_rng.set_state(state["rng"]["augment"])
        p = state["progress"]
        return _Loop(epoch_data_rng=p["epoch_data_rng"], step=p["step"], epoch=p["epoch"],
                     batch_in_epoch=p["batch_in_epoch"], history=[Evaluation(**e) for e in state["history"]])


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
