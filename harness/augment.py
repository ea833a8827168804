"""Text augmentation of training inputs (never targets, never evaluation batches)."""

from __future__ import annotations

import torch

from harness.config import AugmentConfig


def augment_inputs(x: torch.Tensor, cfg: AugmentConfig, vocab_size: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Return a corrupted copy of the input ids `x` (B, T); the caller keeps targets clean.

    char_swap: each position is picked with probability p and swaps with its right neighbour;
    a pick whose left neighbour is picked too is dropped, so swaps never overlap and about
    2p(1-p) of the positions move. noise: each position is replaced by a uniformly random
    vocabulary character with probability p. Swaps happen before noise.
    """
    if cfg.char_swap <= 0 and cfg.noise <= 0:
        return x
    x = x.clone()
    if cfg.char_swap > 0:
        pick = torch.rand(x.shape, generator=generator) < cfg.char_swap
        pick[:, -1] = False
        # Drop a pick whose left neighbour is picked: swaps must not overlap.
        pick[:, 1:] &= ~pick[:, :-1]
        rows, cols = pick.nonzero(as_tuple=True)
        left = x[rows, cols]
        x[rows, cols] = x[rows, cols + 1]
        x[rows, cols + 1] = left
    if cfg.noise > 0:
        pick = torch.rand(x.shape, generator=generator) < cfg.noise
        random_ids = torch.randint(vocab_size, x.shape, generator=generator)
        x = torch.where(pick, random_ids, x)
    return x
