"""The pretraining text never holds the study's validation or test text, and fits its vocabulary.

Small files throughout (the study corpus is 20,000 characters of the default corpus), except one
check on the real Tiny Shakespeare text when a copy is at hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core.config import Config, build_config
from harness.core.data import load_corpus
from harness.core.errors import UsageError
from harness.core.leakage import SHINGLE, check_pretraining_text

SHARED_TINYSHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def plays() -> str:
    return load_corpus("shakespeare").text


@pytest.fixture
def study_text(plays: str) -> str:
    return plays[:20_000]


def cfg(corpus: str, **data: object) -> Config:
    return build_config({"data": {"corpus": corpus, "block_size": 16, **data}})


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return f"file:{path}"


def other_text(plays: str, study_text: str) -> str:
    """Text from elsewhere in the plays, with exactly the study's characters."""
    chars = set(study_text)
    return "".join(c for c in plays[1_000_000:1_040_000] if c in chars) + "".join(sorted(chars))


def test_the_same_corpus_and_split_is_safe_by_construction_and_reads_nothing(tmp_path: Path):
    # The corpus does not exist: reading it would raise, so nothing is read or hashed.
    missing = f"file:{tmp_path / 'absent.txt'}"
    check_pretraining_text(cfg(missing, train_chars=None), cfg(missing, train_chars=10_000))


def test_another_corpus_without_the_studys_held_out_text_is_accepted(tmp_path: Path, plays: str, study_text: str):
    study = cfg(write(tmp_path, "study.txt", study_text), train_chars=5000)
    check_pretraining_text(cfg(write(tmp_path, "other.txt", other_text(plays, study_text)), train_chars=None), study)


def test_another_corpus_holding_validation_text_is_refused_with_the_count_and_a_position(
        tmp_path: Path, plays: str, study_text: str):
    study = cfg(write(tmp_path, "study.txt", study_text))
    val_start = int(len(study_text) * 0.9)  # validation follows the first 90%
    leaked = study_text[val_start + 100:val_start + 100 + 300]
    other = other_text(plays, study_text)
    pretrain_text = other[:10_000] + leaked + other[10_000:]
    with pytest.raises(UsageError) as err:
        check_pretraining_text(cfg(write(tmp_path, "leaky.txt", pretrain_text), train_chars=None), study)
    message = str(err.value)
    assert "\n" not in message
    assert f"{300 - SHINGLE + 1} of the study's" in message  # every 64-character passage of the leak
    assert "character 10,000 of its training text" in message
    assert f"validation text at character {val_start + 100:,}" in message


def test_test_text_counts_as_held_out_too(tmp_path: Path, plays: str, study_text: str):
    study = cfg(write(tmp_path, "study.txt", study_text))
    other = other_text(plays, study_text)
    with pytest.raises(UsageError, match="test text at character 19,900"):
        check_pretraining_text(cfg(write(tmp_path, "leaky.txt", other[:10_000] + study_text[-100:] + other[10_000:]),
                                   train_chars=None), study)


def test_only_the_pretraining_text_it_trains_on_is_scanned(tmp_path: Path, plays: str, study_text: str):
    study = cfg(write(tmp_path, "study.txt", study_text))
    other = other_text(plays, study_text)
    corpus = write(tmp_path, "leaky.txt", other[:30_000] + study_text[-500:] + other[30_000:])
    check_pretraining_text(cfg(corpus, train_chars=20_000), study)  # the cap stops before the leak
    with pytest.raises(UsageError, match="occur in the pretraining text"):
        check_pretraining_text(cfg(corpus, train_chars=None), study)


def test_the_same_corpus_with_other_fractions_is_checked(tmp_path: Path, study_text: str):
    corpus = write(tmp_path, "study.txt", study_text)
    study = cfg(corpus)
    # Training on the first 96% reads the study's validation text (90%-95%).
    with pytest.raises(UsageError, match="validation text at character 18,000"):
        check_pretraining_text(cfg(corpus, train_chars=None, val_fraction=0.02, test_fraction=0.02), study)
    check_pretraining_text(cfg(corpus, train_chars=10_000, val_fraction=0.02, test_fraction=0.02), study)


def test_the_vocabularies_must_match_and_the_message_names_the_difference(tmp_path: Path, study_text: str):
    study = cfg(write(tmp_path, "study.txt", study_text))
    missing = sorted(set(study_text))[-1]
    text = study_text.replace(missing, " ") + "\u20ac"
    with pytest.raises(UsageError) as err:
        check_pretraining_text(cfg(write(tmp_path, "euro.txt", text), train_chars=None), study)
    message = str(err.value)
    assert "\n" not in message
    assert "1 character the study's corpus lacks ('\u20ac')" in message
    assert f"lacks 1 of its characters ({missing!r})" in message


@pytest.mark.skipif(not SHARED_TINYSHAKESPEARE.exists(), reason="no copy of Tiny Shakespeare at hand")
def test_tiny_shakespeare_under_another_name_is_hashed_in_full(monkeypatch: pytest.MonkeyPatch):
    """The real text (1.1M characters): the same split passes, a wider training split leaks."""
    monkeypatch.setenv("ABLATE_TINYSHAKESPEARE", str(SHARED_TINYSHAKESPEARE))
    study = build_config({"data": {"corpus": "tinyshakespeare"}})
    copy = f"file:{SHARED_TINYSHAKESPEARE}"
    check_pretraining_text(build_config({"data": {"corpus": copy, "train_chars": None}}), study)
    with pytest.raises(UsageError, match="validation text at character 1,003,854"):
        check_pretraining_text(build_config({"data": {"corpus": copy, "train_chars": None,
                                                      "val_fraction": 0.01, "test_fraction": 0.01}}), study)
