"""Pretraining text must not hold the study's held-out text, and must fit its vocabulary.

A study that fine-tunes from a pretraining run (a spec's `pretrain:` section) is judged on its
validation and test text. If the pretraining read that text, every arm that fine-tunes from it
has seen the held-out text and its held-out loss means nothing. `check_pretraining_text`
refuses such a pretraining recipe before anything is trained, with one line (UsageError).

- The same corpus split the same way (data.corpus, data.val_fraction and data.test_fraction
  equal; any data.train_chars) is safe by construction: the pretraining reads a prefix of the
  very training split the study holds its validation and test text out of. Nothing is read.
- Any other pretraining text (another corpus, or the same one split at other fractions) is
  scanned: every SHINGLE-character passage of the study's validation and test text is hashed,
  and the training text the pretraining reads (its split, its data.train_chars cap) must contain
  none of them.

The checkpoint's embedding holds one row per vocabulary character, in sorted order, so the
pretraining corpus must also have exactly the study corpus's characters.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from harness.core.config import Config, DataConfig
from harness.core.data import Dataset, Vocab
from harness.core.errors import UsageError
from harness.core.train import prepare_data

SHINGLE = 64
"""Passage length compared, in characters (a power of two: hashes double up to it).

Measured on text held out by construction (each corpus's own training split against its own
validation and test text, all Shakespeare): at 32 characters the default corpus (4.8M
characters) still shares 21 passages by chance (short lines the plays repeat), at 48 neither it
nor Tiny Shakespeare shares any; 64 leaves a margin over that and still catches any leaked
passage of two verse lines or more. The whole check of Tiny Shakespeare under another name
(1.0M training characters scanned for 111,477 held-out passages, reading and encoding
included) takes 0.2-0.4 s on the 2-core machine of benchmarks/RESULTS.md, under load."""

_BASE = 0x9E3779B97F4A7C15  # odd: multiplying by it mod 2**64 loses no information
_SHOWN_CHARS = 10


def check_pretraining_text(pretrain_cfg: Config, study_cfg: Config,
                           load: Callable[[Config], Dataset] = prepare_data) -> None:
    """Raise UsageError when the pretraining text holds any of the study's validation or test
    passages, or when its corpus's characters differ from the study corpus's. `load` gives a
    recipe's dataset (a caller that has loaded them passes its cache)."""
    pre, study = pretrain_cfg.data, study_cfg.data
    if _same_split(pre, study):
        return  # a prefix of the study's own training split: held out by construction
    pre_data, study_data = load(pretrain_cfg), load(study_cfg)
    _check_vocab(pre.corpus, pre_data.vocab, study_data.vocab)
    _check_overlap(pre.corpus, pre_data.train, study_data)


def _same_split(a: DataConfig, b: DataConfig) -> bool:
    return (a.corpus, a.val_fraction, a.test_fraction) == (b.corpus, b.val_fraction, b.test_fraction)


def _check_vocab(corpus: str, pre: Vocab, study: Vocab) -> None:
    extra = sorted(set(pre.chars) - set(study.chars))
    missing = sorted(set(study.chars) - set(pre.chars))
    if not extra and not missing:
        return
    parts = []
    if extra:
        parts.append(f"has {_count(len(extra), 'character')} the study's corpus lacks ({_show(extra)})")
    if missing:
        parts.append(f"lacks {len(missing)} of its characters ({_show(missing)})")
    raise UsageError(f"pretrain: data.corpus={corpus!r} {' and '.join(parts)}; the checkpoint's embedding has "
                     f"one row per character, so allowed: a pretraining corpus with exactly the study "
                     f"corpus's {len(study)} characters")


def _check_overlap(corpus: str, pre_train: torch.Tensor, study: Dataset) -> None:
    # Validation then test: contiguous in the corpus, so passages across their border count too.
    held = torch.cat([study.val, study.test]).numpy()
    held_hashes = shingle_hashes(held, SHINGLE)
    unique, first = np.unique(held_hashes, return_index=True)
    pre_hashes = shingle_hashes(pre_train.numpy(), SHINGLE)
    hits = np.isin(pre_hashes, unique)
    if not hits.any():
        return
    found = np.unique(pre_hashes[hits])
    at = int(np.argmax(hits))  # the first leaked passage in the pretraining text
    held_at = int(first[np.searchsorted(unique, pre_hashes[at])])
    split = "validation" if held_at < len(study.val) else "test"
    in_corpus = study.train_full + held_at  # the held-out text follows the whole training split
    passage = study.vocab.decode(held[held_at:held_at + SHINGLE].tolist())
    raise UsageError(
        f"pretrain: {len(found):,} of the study's {len(unique):,} validation and test passages "
        f"({SHINGLE} characters each) occur in the pretraining text (data.corpus={corpus!r}), e.g. at "
        f"character {at:,} of its training text, the study's {split} text at character {in_corpus:,} of "
        f"its corpus ({passage[:24]!r}...); every arm that fine-tunes from it would have seen held-out "
        f"text; allowed: a pretraining text sharing no {SHINGLE}-character passage with them (the "
        f"study's own corpus and split always qualifies)")


def shingle_hashes(ids: np.ndarray, k: int) -> np.ndarray:
    """A 64-bit polynomial hash of every k-character passage of `ids` (k a power of two).

    Built by doubling (the hash of 2m characters from two hashes of m), log2(k) vectorised passes
    instead of k. Two different passages share a hash with probability about 2**-64 per pair, so
    at a few million passages a side a false match is a one in a million-million event.
    """
    h = ids.astype(np.uint64)
    length, power = 1, _BASE
    while length < k:
        h = h[:-length] * np.uint64(power) + h[length:]  # uint64 arrays wrap around: mod 2**64
        length, power = length * 2, power * power % 2**64
    return h


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _show(chars: list[str]) -> str:
    shown = ", ".join(repr(c) for c in chars[:_SHOWN_CHARS])
    return shown + (f" and {len(chars) - _SHOWN_CHARS} more" if len(chars) > _SHOWN_CHARS else "")
