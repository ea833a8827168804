"""The scientific claims the README makes, each checked against an independent computation.

- The gap is val_loss - train_eval_loss, where train_eval_loss is the eval-mode loss of the
  weights at that evaluation on a fixed sample of training windows: recomputed here from the
  checkpoint's weights, outside train().
- `adam` couples weight decay into the gradient (L2), `adamw` decouples it, and neither decays
  biases, norms or the position table: checked against Adam's closed-form first step.
- Augmentation corrupts training inputs only: every target the loss sees is the training text's
  own next character (or masked), and evaluation sees the fixed windows untouched.
- Arms that share a seed share their initial weights, their data order and their evaluation
  windows, whatever they change (dropout, weight decay, optimizer, bias, norm, augmentation,
  schedule, clipping): the pairing every paired statistic of a report assumes.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from harness.core import train as train_mod
from harness.core.config import Config, build_config
from harness.core.data import eval_windows
from harness.core.metrics import EVAL_METRICS, HISTORY_COLUMNS, history_columns
from harness.core.model import GPT, IGNORE_INDEX
from harness.core.train import make_optimizer, prepare_data, train

from test_heldout import loss_calls  # noqa: F401  (the GPT.loss spy fixture)


def eval_mode_loss(cfg: Config, weights: dict[str, torch.Tensor], vocab_size: int,
                   windows: torch.Tensor) -> float:
    """Mean per-character cross-entropy of `weights` on `windows`, dropout off: computed in one
    batch, without anything from harness.core.train."""
    model = GPT(cfg.model, vocab_size, cfg.data.block_size)
    model.load_state_dict(weights)
    model.eval()
    with torch.no_grad():
        logits = model(windows[:, :-1])
        return float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1)))


def test_gap_is_measured_with_eval_mode_loss_of_the_evaluated_weights(tiny):
    """Heavy dropout and augmentation: the recorded train_eval_loss, val_loss and test_loss must be
    the eval-mode losses of the checkpointed weights on the fixed windows (no dropout, no
    augmentation), and the gap their difference, not anything the running loss touched."""
    cfg = build_config({}, {**tiny, "model.dropout": 0.5, "augment.noise": 0.2, "augment.char_swap": 0.1})
    data = prepare_data(cfg)
    result = train(cfg, dataset=data)
    last = result.history[-1]
    weights = result.checkpoint["model"]  # the state at the last evaluation
    n, block = cfg.train.eval_windows, cfg.data.block_size
    expected = {split: eval_mode_loss(cfg, weights, len(data.vocab), eval_windows(getattr(data, split), block, n))
                for split in ("train", "val", "test")}
    assert last.train_eval_loss == pytest.approx(expected["train"], rel=1e-5)
    assert last.val_loss == pytest.approx(expected["val"], rel=1e-5)
    assert last.test_loss == pytest.approx(expected["test"], rel=1e-5)
    assert last.gap == pytest.approx(expected["val"] - expected["train"], rel=1e-4, abs=1e-6)
    # The running loss is a different number (dropout and augmentation inflate it): had the gap
    # used it, the check above could not pass.
    assert abs(last.train_loss - expected["train"]) > 0.05


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_couples_weight_decay_and_adamw_decouples_it(tiny, name):
    """One optimizer step with every gradient zero isolates weight decay.

    adamw (decoupled): a decayed matrix shrinks by exactly (1 - lr * wd); the Adam update of a zero
    gradient is zero. adam (coupled L2): wd * p joins the gradient, so Adam's first step moves each
    decayed weight by lr * g / (|g| + eps) with g = wd * p, about lr * sign(p). Biases, norms and the position
    table decay in neither (harness.core.model.decay_groups)."""
    lr, wd = 0.01, 0.1
    cfg = build_config({}, {**tiny, "optim.name": name, "optim.lr": lr, "optim.weight_decay": wd,
                            "model.n_layer": 2})
    torch.manual_seed(0)
    model = GPT(cfg.model, 30, cfg.data.block_size)
    before = {k: v.clone() for k, v in model.named_parameters()}
    optimizer = make_optimizer(model, cfg)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    decayed = {k for k, v in before.items() if v.dim() >= 2 and not k.startswith("pos_emb")}
    assert {"tok_emb.weight", "blocks.1.mlp.fc.weight", "blocks.0.attn.proj.weight"} <= decayed
    for k, p in model.named_parameters():
        old = before[k]
        if k not in decayed:
            assert torch.equal(p.detach(), old), f"{k} must not decay"
        elif name == "adamw":
            assert torch.allclose(p.detach(), old * (1 - lr * wd), rtol=1e-6, atol=0), k
        else:
            g = wd * old  # the coupled gradient; Adam's first step is lr * g / (|g| + eps)
            assert torch.allclose(p.detach(), old - lr * g / (g.abs() + cfg.optim.eps), rtol=0, atol=1e-7), k


@pytest.fixture
def built_models(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """The initial weights of every model train() builds while the test runs."""
    seen: list[dict[str, torch.Tensor]] = []
    original = train_mod.build_model

    def spy(cfg: Config, vocab_size: int, init_state: dict[str, Any] | None = None) -> GPT:
        model = original(cfg, vocab_size, init_state)
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(train_mod, "build_model", spy)
    return seen


def masked_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal wherever neither side is IGNORE_INDEX (a masked target is still the same position)."""
    keep = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
    return a.shape == b.shape and torch.equal(a[keep], b[keep])


PAIRED_ARMS: dict[str, dict[str, Any]] = {
    "dropout": {"model.dropout": 0.3, "model.attn_dropout": 0.1},
    "adam-l2": {"optim.name": "adam", "optim.weight_decay": 0.1},
    "no-bias": {"model.bias": False},
    "post-norm": {"model.norm": "post"},
    "rmsnorm": {"model.norm_type": "rmsnorm"},
    "char-swap": {"augment.char_swap": 0.2, "augment.noise": 0.1},
    "cosine": {"schedule": {"name": "cosine"}},
    "no-clip": {"optim.clip_norm": None},
}


def test_arms_sharing_a_seed_share_init_data_order_and_evaluation(tiny, loss_calls, built_models):  # noqa: F811
    """Each arm against the baseline at seed 3: the same initial weights (on the parameters both
    have), the same training windows in the same order, the same evaluation windows. Another
    seed changes the init and the order, so the comparison can fail."""
    # 1,000 training characters: 4 steps an epoch, so 8 steps cross an epoch boundary.
    base = {**tiny, "train.seed": 3, "data.train_chars": 1000, "train.max_steps": 8, "train.eval_every": 4,
            "train.eval_windows": 8}

    def record(overrides: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list, list]:
        loss_calls.clear()
        built_models.clear()
        train(build_config({}, {**base, **overrides}))
        (init,) = built_models
        steps = [y for _, y, training in loss_calls if training]
        evals = [torch.cat([x[:, :1], y], dim=1) for x, y, training in loss_calls if not training]
        return init, steps, evals

    init0, steps0, evals0 = record({})
    assert len(steps0) == 8 and evals0
    for label, overrides in PAIRED_ARMS.items():
        init, steps, evals = record(overrides)
        shared = init0.keys() & init.keys()
        assert {k for k in shared if k.endswith(".weight") and "norm" not in k} >= {
            "tok_emb.weight", "pos_emb.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.proj.weight"}, label
        assert all(torch.equal(init0[k], init[k]) for k in shared), f"{label}: init differs"
        assert len(steps) == len(steps0) and all(masked_equal(a, b) for a, b in zip(steps0, steps)), \
            f"{label}: data order differs"
        assert len(evals) == len(evals0) and all(torch.equal(a, b) for a, b in zip(evals0, evals)), \
            f"{label}: evaluation windows differ"
    init, steps, evals = record({"train.seed": 4})
    assert not torch.equal(init["tok_emb.weight"], init0["tok_emb.weight"])
    assert not all(torch.equal(a, b) for a, b in zip(steps0, steps))
    assert all(torch.equal(a, b) for a, b in zip(evals0, evals))  # evaluation is seed-independent


def test_augmented_training_sees_the_training_text_as_targets(tiny, loss_calls):  # noqa: F811
    """Inside train(), with char_swap and noise on: each training target row, wherever it is not
    masked, is the next-character row of some window of the training split (never corrupted, never
    from validation or test), while the inputs are corrupted; evaluation rows are exactly the
    fixed evaluation windows, in order, with nothing masked."""
    cfg = build_config({}, {**tiny, "augment.char_swap": 0.2, "augment.noise": 0.2, "train.max_steps": 4,
                            "train.eval_every": 4, "train.eval_windows": 8})
    data = prepare_data(cfg)
    train(cfg, dataset=data)
    block = cfg.data.block_size
    targets_of_train_windows = data.train.unfold(0, block + 1, 1)[:, 1:]
    training = [(x, y) for x, y, mode in loss_calls if mode]
    assert len(training) == 4
    corrupted = 0
    for x, y in training:
        for xi, yi in zip(x, y):
            kept = yi != IGNORE_INDEX
            assert kept.float().mean() > 0.5
            match = ((targets_of_train_windows == yi) | ~kept).all(dim=1)
            assert match.any(), "a training target is not the training text's next character"
            clean_inputs = targets_of_train_windows[match.nonzero()[0, 0]]
            corrupted += int((xi[1:] != clean_inputs[:-1]).sum())
    assert corrupted > 0  # the inputs were augmented: the check above is not vacuous
    evaluation = torch.cat([torch.cat([x[:, :1], y], dim=1) for x, y, mode in loss_calls if not mode])
    expected = torch.cat([eval_windows(getattr(data, s), block, 8) for s in ("train", "val", "test")])
    assert torch.equal(evaluation, expected)
    evaluated_inputs = torch.cat([x for x, _, mode in loss_calls if not mode])
    assert torch.equal(evaluated_inputs, expected[:, :-1])


def test_evaluation_mode_is_restored_for_training(tiny, loss_calls):  # noqa: F811
    """After each evaluation the model trains with dropout again (mean_loss restores train mode)."""
    cfg = build_config({}, {**tiny, "model.dropout": 0.2, "train.max_steps": 6, "train.eval_every": 2})
    train(cfg)
    modes = [training for _, _, training in loss_calls]
    steps_after_first_eval = modes[modes.index(False):]
    assert modes[0] and sum(modes) == 6 and any(steps_after_first_eval)


def test_summary_fields_follow_the_history(tiny):
    """The summary of a real run, recomputed from its own history by the definitions in
    docs/tracking.md (best = lowest validation loss; the gap there; the last evaluation's numbers)."""
    result = train(build_config({}, {**tiny, "train.epochs": 4, "optim.lr": 0.02}))
    h, s = result.history, result.summary
    best = min(range(len(h)), key=lambda i: h[i].val_loss)
    assert s.best_val_loss == h[best].val_loss and s.best_epoch == h[best].epoch
    assert s.gap_at_best == pytest.approx(h[best].val_loss - h[best].train_eval_loss)
    assert s.test_loss == h[best].test_loss
    assert s.test_gap == pytest.approx(h[best].test_loss - h[best].train_eval_loss)
    assert s.final_gap == pytest.approx(h[-1].val_loss - h[-1].train_eval_loss)
    assert s.final_test_loss == h[-1].test_loss and s.final_val_loss == h[-1].val_loss
    assert s.max_gap == pytest.approx(max(e.val_loss - e.train_eval_loss for e in h))
    assert s.n_params == result.n_params > 0
    # history.json's columns and the live metrics are the evaluations' own values, in order.
    cols = history_columns(h)
    assert list(cols) == ["step", *HISTORY_COLUMNS] and cols["step"] == [e.step for e in h]
    assert cols["gap"] == pytest.approx([e.val_loss - e.train_eval_loss for e in h])
    assert cols["test_loss"] == [e.test_loss for e in h] and cols["epoch"] == [e.epoch for e in h]
    assert list(h[-1].metrics()) == list(EVAL_METRICS) and "test_loss" not in h[-1].metrics()
    assert h[-1].metrics()["gap_ratio"] == pytest.approx(h[-1].val_loss / h[-1].train_eval_loss)


@pytest.mark.parametrize("schedule", [{"name": "cosine", "warmup": 1, "eta_min": 0.001},
                                      {"name": "step", "step_size": 2, "gamma": 0.5}], ids=["cosine", "step-2"])
def test_a_resumed_run_keeps_its_schedule(tiny, schedule):
    """The scheduler's own state travels in the checkpoint: a resumed cosine (whose next rate
    depends on how far it is) or step-2 schedule applies the learning rates of the run never
    interrupted, and so ends with its losses."""
    from harness.core.train import Hooks, Interrupted

    cfg = build_config({}, {**tiny, "train.epochs": 5, "optim.lr": 0.01, "schedule": schedule})
    full = train(cfg)

    def ctrl_c_after_epoch_2(ev: Any) -> None:
        if ev.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as stop:
        train(cfg, Hooks(on_eval=ctrl_c_after_epoch_2))
    resumed = train(cfg, resume=stop.value.checkpoint)
    assert [e.lr for e in resumed.history] == pytest.approx([e.lr for e in full.history])
    assert [e.val_loss for e in resumed.history] == [e.val_loss for e in full.history]


def test_plateau_counts_the_evaluation_that_ends_the_warmup():
    """ReduceLROnPlateau starts judging at the evaluation where warmup has just ended: after a
    best value there, one worse evaluation (patience 0) halves the rate."""
    from harness.core.config import PlateauSchedule
    from harness.core.schedules import LRSchedule

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    schedule = LRSchedule(optimizer, PlateauSchedule(name="plateau", warmup=1, patience=0, factor=0.5), 10)
    assert schedule.lr == pytest.approx(0.05)  # warmup: (0 + 1) / (1 + 1) of the base rate
    schedule.step_unit()
    assert schedule.lr == pytest.approx(0.1)
    schedule.after_eval(1.0)  # the best so far, counted
    schedule.after_eval(2.0)  # worse: cut
    assert schedule.lr == pytest.approx(0.05)


def test_overfit_onset_at_its_edges():
    """The onset is the evaluation before validation loss rose `patience` times in a row, and
    rose means strictly: from the very first evaluation on, never counting a flat step, and one
    rise short of `patience` is no onset."""
    from harness.core.metrics import overfit_onset

    epochs = [1.0, 2.0, 3.0, 4.0]
    assert overfit_onset([3.0, 3.1, 3.2, 2.0], epochs, 2) == 1.0
    assert overfit_onset([3.0, 3.1, 2.5, 2.0], epochs, 2) is None
    assert overfit_onset([3.0, 3.0, 3.0, 2.0], epochs, 2) is None
    assert overfit_onset([3.0, 2.0, 2.5, 2.6], epochs, 2) == 2.0


def test_step_stats_accumulate_between_evaluations():
    """The per-evaluation numbers (mean loss and gradient norm, max norm, clipped fraction,
    tokens per second, the applied lr) come from these sums; the summary keeps the wall time."""
    from harness.core.metrics import Evaluation, StepStats, summarize

    stats = StepStats()
    stats.add(2.0, 1.0, False, 10, 0.5, 0.1)
    stats.add(4.0, 3.0, True, 30, 1.5, 0.05)
    assert (stats.loss_sum, stats.norm_sum, stats.norm_max, stats.clipped) == (6.0, 4.0, 3.0, 1)
    assert (stats.steps, stats.tokens, stats.seconds, stats.lr) == (2, 40, 2.0, 0.05)
    history = [Evaluation(step=1, epoch=1.0, train_loss=3.0, train_eval_loss=2.0, val_loss=2.5, test_loss=2.6,
                          lr=0.1, grad_norm=2.0, grad_norm_max=3.0, clip_frac=0.5, tokens_per_s=20.0)]
    assert summarize(history, patience=2, wall_s=12.5, n_params=7).metrics()["wall_s"] == 12.5


def test_cosine_after_warmup_anneals_over_the_rest_of_the_run(tiny):
    """Warmup ramps for its units, then cosine runs its period over what is left of the run
    (6 epochs, 2 of warmup: a period of 4), in closed form."""
    import math

    cfg = build_config({}, {**tiny, "train.epochs": 6, "optim.lr": 0.01,
                            "schedule": {"name": "cosine", "warmup": 2, "eta_min": 0.001}})
    cosine = [0.001 + 0.009 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    assert [e.lr for e in train(cfg).history] == pytest.approx([0.01 / 3, 0.02 / 3, *cosine])


def test_the_optimizer_and_plateau_take_their_configured_constants(tiny):
    """betas and eps reach the optimizer, and the plateau scheduler's threshold decides what an
    improvement is (defaults would pass for every other value)."""
    from harness.core.config import PlateauSchedule
    from harness.core.schedules import LRSchedule

    cfg = build_config({}, {**tiny, "optim.betas": [0.8, 0.95], "optim.eps": 1e-6})
    optimizer = make_optimizer(GPT(cfg.model, 30, cfg.data.block_size), cfg)
    assert all(g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6 for g in optimizer.param_groups)
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = LRSchedule(sgd, PlateauSchedule(name="plateau", patience=0, threshold=0.5), 10)
    schedule.after_eval(1.0)
    schedule.after_eval(0.9)  # 10% better: no improvement at a relative threshold of 50%
    assert schedule.lr == pytest.approx(0.05)


def test_augmentation_draws_only_from_its_own_generator():
    """Swaps and noise come from the generator train() gives them (seeded from train.seed, saved
    in checkpoints), never from torch's global one, whose stream is dropout's: an augmentation
    arm keeps the baseline's dropout masks, and the same generator state gives the same batch."""
    from harness.core.augment import augment_batch
    from harness.core.config import AugmentConfig

    x = torch.arange(4000).view(40, 100) % 37
    cfg = AugmentConfig(char_swap=0.2, noise=0.2)
    outputs, global_draws = [], []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        outputs.append(augment_batch(x, x, cfg, 37, torch.Generator().manual_seed(5)))
        global_draws.append(torch.rand(3))
    (xa, ya), (xb, yb) = outputs
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and not torch.equal(xa, x)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), global_draws[0])  # the global stream was not advanced
