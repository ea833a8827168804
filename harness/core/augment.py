"""Text augmentation of training batches (never evaluation batches).

Inputs are corrupted; targets stay the clean next characters, except that a target an input
swap would reveal is masked out of the loss (see `augment_batch`).
"""

from __future__ import annotations

import torch

from harness.core.config import AugmentConfig
from harness.core.model import IGNORE_INDEX


def augment_batch(x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig, vocab_size: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (corrupted inputs, targets) for the input ids `x` (B, T) and their targets `y`.

    char_swap: each position is picked with probability p and swaps with its right neighbour;
    a pick whose left neighbour is picked too is dropped, so swaps never overlap and about
    2p(1-p) of the positions move. A swap at c puts x[c+1], which is y[c], at input position c:
    the model would see its own target and learn to copy it (15% probability on "next = current"
    after training at p=0.2, against 3.3% for the baseline). So y[c] becomes IGNORE_INDEX, out of
    the loss, wherever the swap changed the input (swapping two equal characters reveals nothing
    clean text does not). noise: each position is replaced by a uniformly random vocabulary
    character with probability p. Swaps happen before noise. `x` and `y` are not modified.
    """
    if cfg.char_swap <= 0 and cfg.noise <= 0:
        return x, y
    x = x.clone()
    if cfg.char_swap > 0:
        pick = torch.rand(x.shape, generator=generator) < cfg.char_swap
        pick[:, -1] = False
        # Drop a pick whose left neighbour is picked: swaps must not overlap.
        pick[:, 1:] &= ~pick[:, :-1]
        rows, cols = pick.nonzero(as_tuple=True)
        left, right = x[rows, cols], x[rows, cols + 1]
        x[rows, cols] = right
        x[rows, cols + 1] = left
        exposed = left != right
        y = y.clone()
        y[rows[exposed], cols[exposed]] = IGNORE_INDEX
    if cfg.noise > 0:
        pick = torch.rand(x.shape, generator=generator) < cfg.noise
        random_ids = torch.randint(vocab_size, x.shape, generator=generator)
        x = torch.where(pick, random_ids, x)
    return x, y
