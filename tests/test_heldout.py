"""The held-out protocol of issue 10: validation decides, test only reports.

Each test here guards one claim a report's verdict rests on: the split, an evaluation sample
that does not depend on the batch size, no decision reading the test text, augmentation that
never shows the model its target, the applied learning rate, init pairing across arms.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.core.augment import augment_batch
from harness.core.config import AugmentConfig, ModelConfig, build_config
from harness.core.data import Corpus, make_dataset
from harness.core.metrics import Evaluation, summarize
from harness.core.model import GPT, IGNORE_INDEX
from harness.core.train import prepare_data, train


def test_split_keeps_nanogpts_training_text_and_puts_test_last():
    text = "".join(chr(97 + (i * 7) % 26) for i in range(1000))
    d = make_dataset(Corpus("t", text), 8, None)
    ids = d.vocab.encode(text)
    assert len(d.train) == 900 == int(len(text) * 0.9)  # nanoGPT's first 90%, unchanged
    assert torch.equal(torch.cat([d.train, d.val, d.test]), ids)  # contiguous, nothing lost
    assert (len(d.val), len(d.test)) == (50, 50)
    capped = make_dataset(Corpus("t", text), 8, 100, val_fraction=0.1, test_fraction=0.2)
    assert (len(capped.train), capped.train_full, len(capped.val), len(capped.test)) == (100, 700, 100, 200)


def test_split_fractions_must_leave_training_text():
    from harness.core.errors import UsageError

    with pytest.raises(UsageError, match=r"data.test_fraction=0.5: .*val_fraction \+ test_fraction must be below 1"):
        build_config({}, {"data.val_fraction": 0.5, "data.test_fraction": 0.5})


@pytest.fixture
def loss_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
    """Every (inputs, targets, training mode) that reaches GPT.loss while the test runs."""
    seen: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
    original = GPT.loss

    def spy(self: GPT, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seen.append((idx.clone(), targets.clone(), self.training))
        return original(self, idx, targets)

    monkeypatch.setattr(GPT, "loss", spy)
    return seen


def test_evaluation_windows_do_not_depend_on_batch_size(tiny, loss_calls):
    """Runs that differ in batch size evaluate on exactly the same windows (train, val and test)."""
    evaluated = []
    for bs in (8, 16, 64):
        cfg = build_config({}, {**tiny, "train.batch_size": bs, "train.eval_windows": 24, "train.max_steps": 1})
        loss_calls.clear()
        train(cfg)
        evaluated.append(torch.cat([x for x, _, training in loss_calls if not training]))
    assert len(evaluated[0]) == 3 * 24
    assert all(torch.equal(evaluated[0], e) for e in evaluated[1:])


def test_no_decision_reads_the_test_split(tiny):
    """Replacing the test text changes test_loss and nothing else: not the best epoch, not the
    plateau schedule's learning rates, not the validation curve."""
    cfg = build_config({}, {**tiny, "train.epochs": 4, "schedule.name": "plateau", "schedule.patience": 0,
                            "model.dropout": 0.1})
    data = prepare_data(cfg)
    scrambled = dataclasses.replace(data, test=data.test.flip(0))
    a, b = train(cfg, dataset=data), train(cfg, dataset=scrambled)
    strip = lambda h: [dataclasses.replace(e, test_loss=0.0, tokens_per_s=0.0) for e in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    assert a.summary.best_epoch == b.summary.best_epoch
    assert [e.test_loss for e in a.history] != [e.test_loss for e in b.history]


def test_summary_reads_test_at_the_validation_selected_evaluation():
    def ev(epoch: float, train_eval: float, val: float, test: float) -> Evaluation:
        return Evaluation(step=int(epoch), epoch=epoch, train_loss=3.0, train_eval_loss=train_eval,
                          val_loss=val, test_loss=test, lr=1e-3, grad_norm=1.0, grad_norm_max=1.0,
                          clip_frac=0.0, tokens_per_s=1.0)
    # Test is lowest at epoch 3, validation at epoch 2: the summary must follow validation.
    history = [ev(1, 2.5, 2.8, 2.9), ev(2, 2.0, 2.4, 2.6), ev(3, 1.5, 2.5, 2.3), ev(4, 1.0, 2.9, 3.0)]
    s = summarize(history, patience=2, wall_s=1.0, n_params=10)
    assert (s.best_epoch, s.test_loss, s.final_test_loss) == (2, 2.6, 3.0)
    assert s.test_gap == pytest.approx(2.6 - 2.0)
    assert (s.overfit_onset, s.onset_censored) == (2, False)


def test_onset_is_censored_at_the_budget_when_val_loss_never_rises():
    def ev(epoch: float, val: float) -> Evaluation:
        return Evaluation(step=int(epoch), epoch=epoch, train_loss=3.0, train_eval_loss=2.0,
                          val_loss=val, test_loss=val, lr=1e-3, grad_norm=1.0, grad_norm_max=1.0,
                          clip_frac=0.0, tokens_per_s=1.0)
    s = summarize([ev(1, 3.0), ev(2, 2.9), ev(3, 2.95), ev(4, 2.8)], patience=2, wall_s=1.0, n_params=1)
    assert (s.overfit_onset, s.onset_censored) == (4, True)
    assert s.metrics()["onset_censored"] == 1.0


def test_char_swap_never_shows_the_model_its_target():
    """Clean text has x[t] == y[t] at a low rate; a swap at t makes it certain. After masking, the
    positions left in the loss show the target no more often than clean text does."""
    text = torch.randint(0, 60, (400, 257), generator=torch.Generator().manual_seed(3))
    text[:, 1::25] = text[:, 0:-1:25]  # doubled letters, as in "ll": clean text's own rate
    x, y = text[:, :-1], text[:, 1:]
    clean = (x == y).float().mean().item()
    for p in (0.05, 0.1, 0.2):
        xs, ys = augment_batch(x, y, AugmentConfig(char_swap=p), 60, torch.Generator().manual_seed(0))
        kept = ys != IGNORE_INDEX
        raw_exposure = (xs == y).float().mean().item()  # what the unmasked swap would teach
        assert raw_exposure - clean > 0.7 * p  # the swap reveals targets...
        exposure = (xs[kept] == ys[kept]).float().mean().item()
        assert exposure == pytest.approx(clean, abs=0.005)  # ...and masking hides every one
        assert torch.equal(ys[kept], y[kept])  # kept targets are the clean next characters
        assert 0.5 * p < 1 - kept.float().mean().item() < 2 * p


def test_training_uses_masked_targets_and_clean_evaluation(tiny, loss_calls):
    """Inside train(): every target the loss sees is the clean next character or masked, and the
    evaluation windows reach the model unaugmented."""
    cfg = build_config({}, {**tiny, "augment.char_swap": 0.2, "augment.noise": 0.1, "train.max_steps": 3,
                            "train.eval_windows": 8})
    data = prepare_data(cfg)
    train(cfg, dataset=data)
    seen = loss_calls
    corpus = {tuple(w.tolist()) for w in torch.cat([data.train, data.val, data.test]).unfold(0, 17, 1)}
    training = [(x, y) for x, y, mode in seen if mode]
    evaluation = [(x, y) for x, y, mode in seen if not mode]
    assert len(training) == 3 and evaluation
    for x, y in evaluation:  # eval windows are corpus text, targets intact
        assert all(tuple(torch.cat([xi[:1], yi]).tolist()) in corpus for xi, yi in zip(x, y))
    masked = sum(int((y == IGNORE_INDEX).sum()) for _, y in training)
    assert masked > 0
    for x, y in training:  # some inputs corrupted, never the unmasked targets
        for yi in y:
            kept = yi[yi != IGNORE_INDEX]
            assert len(kept) and set(kept.tolist()) <= set(range(len(data.vocab)))
    assert any(not torch.equal(x[:, 1:], torch.where(y[:, :-1] == IGNORE_INDEX, x[:, 1:], y[:, :-1]))
               for x, y in training)


def test_logged_lr_is_the_lr_the_steps_applied(tiny):
    """With a step-interval schedule the lr moves after every step: the evaluation must record the
    lr of the step before it, not the next one."""
    cfg = build_config({}, {**tiny, "schedule": {"name": "step", "step_size": 1, "gamma": 0.5, "interval": "step"},
                            "train.eval_every": 2, "train.max_steps": 4, "optim.lr": 1.0})
    history = train(cfg).history
    # step k (1-based) runs at lr 0.5^(k-1): steps 2 and 4 ran at 0.5 and 0.125.
    assert [e.lr for e in history] == [0.5, 0.125]


def test_init_is_paired_across_bias_settings():
    """Two arms that differ only in model.bias start from the same weights and the same dropout stream."""
    states = []
    for bias in (True, False):
        torch.manual_seed(7)
        model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, bias=bias), 11, 8)
        states.append(({k: v for k, v in model.state_dict().items() if not k.endswith(".bias")},
                       torch.rand(4)))
    (a, ra), (b, rb) = states
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(ra, rb)
