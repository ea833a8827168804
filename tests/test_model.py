import pytest
import torch

from harness.core.augment import augment_batch
from harness.core.config import AugmentConfig, ModelConfig
from harness.core.model import GPT, decay_groups


@pytest.mark.parametrize("norm", ["pre", "post", "none"])
@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_no_position_sees_a_later_one(norm, norm_type, mode):
    """In train mode too: dropout (and the attention-dropout path, which builds its own causal
    mask) must not let a later token in. Each forward draws the same dropout masks."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, norm=norm, norm_type=norm_type, dropout=0.1,
                            attn_dropout=0.3), vocab_size=20, block_size=16).train(mode == "train")
    idx = torch.randint(20, (2, 16))

    def forward(x):
        torch.manual_seed(5)
        return model(x)

    base = forward(idx)
    for t in range(15):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 7) % 20
        out = forward(changed)
        assert torch.allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-5), f"position <= {t} saw token {t + 1}"
        assert not torch.allclose(out[:, t + 1], base[:, t + 1], atol=1e-5)


def test_weight_tying_and_parameter_count():
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16), vocab_size=10, block_size=8)
    assert model.head.weight is model.tok_emb.weight
    assert model.n_params() == sum(p.numel() for p in set(model.parameters()))


def test_weight_decay_skips_biases_norms_and_positions():
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16), vocab_size=10, block_size=8)
    decay, no_decay = decay_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "tok_emb.weight" in decayed and "blocks.0.attn.qkv.weight" in decayed
    assert not any(n.endswith("bias") or "norm" in n or n.startswith("pos_emb") for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_post_and_none_norm_have_no_final_norm():
    for norm, expected in (("pre", torch.nn.LayerNorm), ("post", torch.nn.Identity), ("none", torch.nn.Identity)):
        model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, norm=norm), 10, 8)
        assert isinstance(model.norm_f, expected)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, norm="none"), 10, 8)
    assert not any(isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm)) for m in model.modules())


def test_char_swap_swaps_neighbours_at_the_given_rate():
    x = torch.arange(100_000).view(100, 1000) % 50
    gen = torch.Generator().manual_seed(0)
    out, _ = augment_batch(x, x, AugmentConfig(char_swap=0.1), 50, gen)
    assert torch.equal(out.sort(dim=1).values, x.sort(dim=1).values)  # a permutation within each row
    moved = (out != x).float().mean().item()
    # p=0.1 with overlapping picks dropped: about 2 * 0.1 * 0.9 of positions move.
    assert 0.15 < moved < 0.21
    assert torch.equal(x, torch.arange(100_000).view(100, 1000) % 50)  # input untouched


def test_noise_replaces_at_the_given_rate_and_zero_is_identity():
    x = torch.zeros(200, 500, dtype=torch.long)
    out, y = augment_batch(x, x, AugmentConfig(noise=0.2), 65, torch.Generator().manual_seed(1))
    assert y is x  # noise alone reveals no target: nothing masked
    changed = (out != 0).float().mean().item()
    assert 0.18 < changed < 0.2 * 64 / 65 + 0.01 and int(out.max()) < 65
    same_x, same_y = augment_batch(x, x, AugmentConfig(), 65, torch.Generator())
    assert same_x is x and same_y is x
