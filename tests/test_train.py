import math

import pytest
import torch

from harness.core.config import build_config
from harness.core.errors import UsageError
from harness.core.metrics import Evaluation, overfit_onset, summarize
from harness.core.train import Hooks, Interrupted, NonFiniteLoss, train


def losses(result):
    return [(e.train_loss, e.train_eval_loss, e.val_loss) for e in result.history]


def test_same_config_and_seed_same_losses(tiny):
    cfg = build_config({}, {**tiny, "model.dropout": 0.1, "augment.noise": 0.05})
    a, b = train(cfg), train(cfg)
    assert losses(a) == losses(b)
    c = train(build_config({}, {**tiny, "model.dropout": 0.1, "augment.noise": 0.05, "train.seed": 1}))
    assert losses(c) != losses(a)


def test_resumed_run_ends_with_the_same_losses(tiny):
    cfg = build_config({}, {**tiny, "train.epochs": 4, "model.dropout": 0.1, "augment.char_swap": 0.05,
                            "schedule": {"name": "step", "step_size": 1, "gamma": 0.7}})
    full = train(cfg)

    def ctrl_c_after_epoch_2(ev):
        if ev.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as stop:
        train(cfg, Hooks(on_eval=ctrl_c_after_epoch_2))
    resumed = train(cfg, resume=stop.value.checkpoint)
    assert losses(resumed) == losses(full)
    assert [e.lr for e in resumed.history] == [e.lr for e in full.history]


def test_resume_mid_epoch_with_eval_every(tiny):
    cfg = build_config({}, {**tiny, "train.eval_every": 5, "model.dropout": 0.1})
    full = train(cfg)
    stop_at = full.history[2].step

    def interrupt(ev):
        if ev.step == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as stop:
        train(cfg, Hooks(on_eval=interrupt))
    assert losses(train(cfg, resume=stop.value.checkpoint)) == losses(full)


def test_divergence_fails_with_the_step(tiny):
    cfg = build_config({}, {**tiny, "optim.lr": 1e30, "optim.clip_norm": None})
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step \d+"):
        train(cfg)


def test_gap_uses_eval_mode_train_loss_not_the_running_loss(tiny):
    result = train(build_config({}, {**tiny, "model.dropout": 0.5}))
    for e in result.history:
        assert e.gap == pytest.approx(e.val_loss - e.train_eval_loss)
        assert e.gap_ratio == pytest.approx(e.val_loss / e.train_eval_loss)
    # Heavy dropout inflates the running loss above the eval-mode loss of the same weights.
    assert result.history[-1].train_loss > result.history[-1].train_eval_loss


def test_every_evaluation_metric_is_recorded(tiny):
    result = train(build_config({}, tiny))
    assert [e.epoch for e in result.history] == [1.0, 2.0, 3.0]
    steps = [e.step for e in result.history]
    assert steps == sorted(steps) and steps[0] > 0 and steps[1] == 2 * steps[0]
    assert all(e.tokens_per_s > 0 and e.grad_norm > 0 and e.grad_norm_max >= e.grad_norm for e in result.history)
    assert result.summary.best_val_loss == min(e.val_loss for e in result.history)


def test_clipping_fraction(tiny):
    always = train(build_config({}, {**tiny, "optim.clip_norm": 1e-6}))
    never = train(build_config({}, {**tiny, "optim.clip_norm": None}))
    assert all(e.clip_frac == 1.0 for e in always.history)
    assert all(e.clip_frac == 0.0 for e in never.history)


def lrs(tiny, schedule, epochs=6, **extra):
    cfg = build_config({}, {**tiny, "train.epochs": epochs, "optim.lr": 0.01, "schedule": schedule, **extra})
    return [e.lr for e in train(cfg).history]


def test_step_schedule(tiny):
    assert lrs(tiny, {"name": "step", "step_size": 2, "gamma": 0.5}) == pytest.approx(
        [0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])


def test_cosine_schedule_ends_near_eta_min(tiny):
    got = lrs(tiny, {"name": "cosine", "eta_min": 0.001})
    expected = [0.001 + 0.009 * (1 + math.cos(math.pi * k / 6)) / 2 for k in range(6)]
    assert got == pytest.approx(expected)


def test_warmup_ramps_then_hands_over(tiny):
    got = lrs(tiny, {"name": "step", "warmup": 2, "step_size": 2, "gamma": 0.5})
    assert got == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.01, 0.005, 0.005])


def test_step_interval_schedule_moves_every_step(tiny):
    cfg = build_config({}, {**tiny, "train.epochs": 2, "schedule": {"name": "cosine", "interval": "step"}})
    result = train(cfg)
    assert result.history[-1].lr < 1e-4 < result.history[0].lr


def test_plateau_cuts_lr_when_val_loss_stops_improving(tiny):
    # A high learning rate on a tiny text: val loss soon rises, and the plateau scheduler reacts.
    got = lrs(tiny, {"name": "plateau", "factor": 0.5, "patience": 0}, epochs=10,
              **{"data.train_chars": 1500, "model.n_embd": 64})
    assert got[0] == 0.01 and min(got) < 0.01
    assert all(b in (a, a * 0.5) for a, b in zip(got, got[1:]))


def test_max_steps_budget(tiny):
    result = train(build_config({}, {**tiny, "train.max_steps": 7, "train.epochs": 100}))
    assert result.history[-1].step == 7


def test_should_stop_ends_the_run_with_its_reason(tiny):
    result = train(build_config({}, tiny), Hooks(should_stop=lambda e: "pruned at epoch 1" if e.epoch >= 1 else None))
    assert result.stopped == "pruned at epoch 1" and len(result.history) == 1


def test_freeze_blocks_keeps_them_fixed(tiny):
    from harness.core.train import build_model, prepare_data

    with pytest.raises(UsageError, match="freeze_blocks=3"):
        train(build_config({}, {**tiny, "transfer.freeze_blocks": 3}))
    cfg = build_config({}, {**tiny, "model.n_layer": 2, "transfer.freeze_blocks": 1})
    torch.manual_seed(cfg.train.seed)  # as train() does before building the model
    initial = build_model(cfg, len(prepare_data(cfg).vocab)).state_dict()
    trained = train(cfg).checkpoint["model"]
    assert torch.equal(trained["blocks.0.attn.qkv.weight"], initial["blocks.0.attn.qkv.weight"])
    assert torch.equal(trained["blocks.0.mlp.fc.bias"], initial["blocks.0.mlp.fc.bias"])
    assert not torch.equal(trained["blocks.1.attn.qkv.weight"], initial["blocks.1.attn.qkv.weight"])


def ev(step, val, train_eval=1.0):
    return Evaluation(step=step, epoch=float(step), train_loss=1.0, train_eval_loss=train_eval, val_loss=val,
                      test_loss=val + 0.1, lr=0.1, grad_norm=1.0, grad_norm_max=1.0, clip_frac=0.0, tokens_per_s=1.0)


def test_a_run_reference_initialises_from_the_state_given_without_a_store(tiny, tmp_path, monkeypatch):
    """The core never resolves `runs:/<run id>` (that is the tracking layer's, which passes the
    loaded checkpoint as init_state), and refuses one it is not given the state of."""
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    source = train(build_config({}, {**tiny, "train.epochs": 1}))
    cfg = build_config({}, {**tiny, "train.epochs": 1, "transfer.init_from": "runs:/0123abcd",
                            "transfer.freeze_embeddings": True})
    fine = train(cfg, init_state=source.checkpoint)
    assert torch.equal(fine.checkpoint["model"]["tok_emb.weight"], source.checkpoint["model"]["tok_emb.weight"])
    assert fine.history[0].val_loss < source.history[0].val_loss  # it started from trained weights
    assert list(tmp_path.iterdir()) == []  # no store was looked for or made
    with pytest.raises(ValueError, match="names an MLflow run"):
        train(cfg)


def test_overfit_onset_and_summary():
    assert overfit_onset([3.0, 2.5, 2.4, 2.45, 2.6, 2.7], [1, 2, 3, 4, 5, 6], patience=2) == 3
    assert overfit_onset([3.0, 2.5, 2.6, 2.4, 2.5], [1, 2, 3, 4, 5], patience=2) is None
    history = [ev(1, 3.0, 2.9), ev(2, 2.5, 2.2), ev(3, 2.6, 1.8), ev(4, 2.8, 1.5)]
    s = summarize(history, patience=2, wall_s=1.0, n_params=10)
    assert (s.best_val_loss, s.best_epoch) == (2.5, 2.0)
    assert s.gap_at_best == pytest.approx(0.3) and s.final_gap == pytest.approx(1.3)
    assert s.max_gap == pytest.approx(1.3) and s.overfit_onset == 2.0
    # Val loss never rose twice in a row: the onset is censored at the budget (the last epoch).
    censored = summarize(history[:2], 2, 1.0, 10).metrics()
    assert (censored["overfit_onset"], censored["onset_censored"]) == (2.0, 1.0)


def test_every_named_metric_is_a_summary_metric_and_the_summary_has_them_all():
    """harness.core.metrics owns the metric names: every selection of them (the arm runs', the
    report's table, a trial's, a search objective's, the comparable ones) names a summary metric."""
    from dataclasses import fields

    from harness.core.metrics import (ARM_METRICS, ARM_SUMMARY_METRICS, COMPARABLE_METRICS, SUMMARY_AT,
                                      SUMMARY_METRICS, TRIAL_METRICS, Summary)

    assert SUMMARY_METRICS == tuple(f.name for f in fields(Summary))
    for names in (ARM_SUMMARY_METRICS, ARM_METRICS, TRIAL_METRICS, tuple(SUMMARY_AT.values()),
                  tuple(COMPARABLE_METRICS)):
        assert set(names) <= set(SUMMARY_METRICS), names
    assert ARM_METRICS[:2] == TRIAL_METRICS[:2] == ("test_loss", "test_gap")  # the verdicts' axes first
    assert set(ARM_METRICS) <= set(COMPARABLE_METRICS)  # the report words every metric it tabulates


def test_bf16_autocast_trains_close_to_fp32(tiny):
    fp32 = train(build_config({}, {**tiny, "train.epochs": 2}))
    bf16 = train(build_config({}, {**tiny, "train.epochs": 2, "train.precision": "bf16"}))
    assert all(math.isfinite(e.val_loss) for e in bf16.history)
    assert bf16.history[-1].val_loss == pytest.approx(fp32.history[-1].val_loss, abs=0.1)


def test_cuda_is_refused_where_there_is_none(tiny):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError, match="train.device='cuda': no CUDA device"):
        train(build_config({}, {**tiny, "train.device": "cuda"}))


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny):
    eager = train(build_config({}, {**tiny, "train.epochs": 1}))
    compiled = train(build_config({}, {**tiny, "train.epochs": 1, "train.compile": True}))
    assert compiled.history[-1].val_loss == pytest.approx(eager.history[-1].val_loss, abs=1e-3)
