"""A decoder-only character Transformer (nanoGPT's shape) with configurable norm and dropout.

Causality comes from ``scaled_dot_product_attention(is_causal=True)`` (or, with attention dropout
on a CPU, from masking the scores above the diagonal): position t attends to positions <= t only
(tests/test_model.py perturbs token t+1 and checks logits 0..t).

Speed notes (benchmarks/throughput.py measures them against benchmarks/reference_gpt.py):
- Dropout on a CPU goes through `dropout` below, not torch's, which draws one random number per
  element from a serial generator (its vectorised MKL path runs on Intel CPUs only) and cost
  the textbook step 20-30% at dropout 0.2.
- Exact (erf) GELU, as nanoGPT: on a CPU its forward and backward cost a third of the tanh
  approximation's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.config import ModelConfig

IGNORE_INDEX = -100
"""A target the loss skips (torch's cross-entropy default); augmentation masks with it."""


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "none":
        return nn.Identity()
    if cfg.norm_type == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd)
    return nn.LayerNorm(cfg.n_embd, bias=cfg.bias)


def dropout(x: torch.Tensor, p: float, training: bool,
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """Inverted dropout of `x`, plus `residual` when given (fused into one addcmul).

    On a CPU each 64-bit draw of torch's generator is cut into four 16-bit uniforms, a quarter of
    the draws of torch's dropout; p is rounded to a multiple of 1/65536 (0.2 -> 0.199997). The
    draws come from torch's global generator, so `torch.manual_seed` still fixes them. Elsewhere
    (CUDA, torch.compile) torch's own dropout is fast and is used.
    """
    if not training or p == 0:
        return x if residual is None else residual + x
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        x = F.dropout(x, p, training=True)
        return x if residual is None else residual + x
    n = x.numel()
    cut = min(round(p * 65536), 65535)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None)
    keep = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    torch.ge(words.view(torch.int16)[:n].view(x.shape), cut - 32768, out=keep)
    scale = 65536 / (65536 - cut)
    if residual is None:
        return x * keep.mul_(scale)
    return torch.addcmul(residual, x, keep, value=scale)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H, hs = self.n_head, C // self.n_head
        p = self.attn_dropout if self.training else 0.0
        if p == 0 or x.device.type != "cpu":
            # split + transpose rather than view + permute: the backward is then one cat, no copy.
            q, k, v = (t.view(B, T, H, hs).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            # torch's CPU attention with dropout falls back to this same math, with its slow
            # dropout. One copy makes q, k, v contiguous for bmm; the causal mask is added.
            q, k, v = self.qkv(x).view(B, T, 3, H, hs).permute(2, 0, 3, 1, 4).reshape(3, B * H, T, hs)
            later = torch.full((T, T), float("-inf"), device=x.device).triu_(1)
            att = torch.baddbmm(later, q, k.transpose(1, 2), alpha=hs ** -0.5).softmax(dim=-1)
            y = torch.bmm(dropout(att, p, True), v).view(B, H, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """One Transformer block; `norm` decides where normalisation sits.

    pre:  x + drop(f(norm(x)))      (GPT-2)
    post: norm(x + drop(f(x)))      (the original Transformer)
    none: x + drop(f(x))
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.post = cfg.norm == "post"
        self.norm1, self.norm2 = make_norm(cfg), make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, training = self.dropout, self.training
        if self.post:
            x = self.norm1(dropout(self.attn(x), p, training, residual=x))
            return self.norm2(dropout(self.mlp(x), p, training, residual=x))
        x = dropout(self.attn(self.norm1(x)), p, training, residual=x)
        return dropout(self.mlp(self.norm2(x)), p, training, residual=x)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, block_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.block_size = block_size
        # torch's default initialisers draw from the global generator, and a Linear with a bias
        # draws more than one without: with model.bias changed, every later draw (weights,
        # dropout masks) would shift and the arm would lose its pairing with the baseline.
        # Their draws are thrown away (the generator is restored); `_init_weights` draws the
        # weights in the same order whatever the bias and norm settings.
        with torch.random.fork_rng(devices=[]):
            self.tok_emb = nn.Embedding(vocab_size, cfg.n_embd)
            self.pos_emb = nn.Embedding(block_size, cfg.n_embd)
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
            # Post-norm blocks end normalised already; a final norm belongs to pre-norm only.
            self.norm_f = make_norm(cfg) if cfg.norm == "pre" else nn.Identity()
            self.head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * cfg.n_layer) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def n_params(self) -> int:
        """Parameters, counting the tied embedding once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab)."""
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size={self.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = dropout(self.tok_emb(idx) + self.pos_emb(pos), self.cfg.dropout, self.training)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm_f(x))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, new_tokens: int, temperature: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        for _ in range(new_tokens):
            logits = self(idx[:, -self.block_size:])[:, -1, :] / temperature
            probs = F.softmax(logits.float(), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases, norms and position embeddings are excluded.

    The tied token embedding/head matrix is decayed (it is the output projection).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2 or name.startswith("pos_emb"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
