import pytest
import torch

import harness.core.data as data_mod
from harness.core.data import (TINYSHAKESPEARE_SHA256, Vocab, epoch_batches, eval_windows, load_corpus,
                          make_dataset, markdown_play_to_tiny, windows, windows_per_epoch)
from harness.core.errors import UsageError

from conftest import SHARED_DATA

SHAKESPEARE_SHA256 = "6b0d58f12bf1c3205983ace4b99267b42f072e2ed8b413d207ee945ece86d6df"


def test_default_corpus_is_offline_and_byte_identical():
    corpus = load_corpus("shakespeare")
    assert corpus.sha256 == SHAKESPEARE_SHA256
    assert corpus.text.startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\n")
    assert "**" not in corpus.text and "##" not in corpus.text


def test_markdown_play_becomes_tiny_shakespeare_layout():
    play = ("# Macbeth\n\n## ACT I\n\n_Thunder. Enter three Witches_\n\n**First Witch**  \n"
            "When shall we three meet again  \nIn thunder?\n\n_Exit_\n\n**DUNCAN**  \nWhat bloody man\n\n"
            "_Exit Sergeant, attended\nby soldiers_\n\nWho comes here?\n")
    assert markdown_play_to_tiny(play) == (
        "First Witch:\nWhen shall we three meet again\nIn thunder?\n\n"
        "DUNCAN:\nWhat bloody man\nWho comes here?\n\n")


def test_tinyshakespeare_through_the_loading_code(monkeypatch):
    monkeypatch.setenv("ABLATE_TINYSHAKESPEARE", str(SHARED_DATA))
    corpus = load_corpus("tinyshakespeare")
    assert len(corpus.text) == 1_115_394 and corpus.sha256 == TINYSHAKESPEARE_SHA256
    ds = make_dataset(corpus, 64, None)
    # nanoGPT's training text exactly; its 111,540 validation characters split into val and test.
    assert (len(ds.train), len(ds.val), len(ds.test), len(ds.vocab)) == (1_003_854, 55_769, 55_771, 65)


def test_tinyshakespeare_with_a_wrong_checksum_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "input.txt"
    fake.write_text("not shakespeare")
    monkeypatch.setenv("ABLATE_TINYSHAKESPEARE", str(fake))
    with pytest.raises(UsageError, match="expected 86c4e6aa"):
        load_corpus("tinyshakespeare")


def test_tinyshakespeare_offline_says_how_to_place_it(project, monkeypatch):
    monkeypatch.delenv("ABLATE_TINYSHAKESPEARE", raising=False)
    monkeypatch.setattr(data_mod, "TINYSHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")  # closed port
    with pytest.raises(UsageError) as err:
        load_corpus("tinyshakespeare")
    assert "place the file by hand" in str(err.value)
    assert str(project / ".data" / "tinyshakespeare" / "input.txt") in str(err.value)
    assert not list((project / ".data").rglob("*.part"))


def test_file_corpus_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_corpus(f"file:{tmp_path / 'nope.txt'}")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 " .encode("latin-1") * 100)
    with pytest.raises(UsageError, match="not UTF-8"):
        load_corpus(f"file:{latin1}")
    short = tmp_path / "short.txt"
    short.write_text("a tiny text " * 20)
    with pytest.raises(UsageError, match=r"data.block_size=64: larger than the validation text"):
        make_dataset(load_corpus(f"file:{short}"), 64, None)
    with pytest.raises(UsageError, match="unknown corpus; allowed: shakespeare, tinyshakespeare, file:PATH"):
        load_corpus("wikipedia")


def test_split_is_contiguous_and_train_chars_caps_training_only(small_corpus):
    corpus = load_corpus(f"file:{small_corpus}")
    full = make_dataset(corpus, 16, None)
    capped = make_dataset(corpus, 16, 1000)
    assert len(full.train) == int(len(corpus.text) * 0.9)
    assert len(full.train) + len(full.val) + len(full.test) == len(corpus.text)
    assert full.vocab.decode(full.val[:50].tolist()) == corpus.text[len(full.train):len(full.train) + 50]
    assert full.vocab.decode(full.test[-50:].tolist()) == corpus.text[-50:]
    assert torch.equal(capped.train, full.train[:1000]) and torch.equal(capped.val, full.val)
    assert torch.equal(capped.test, full.test)


def test_vocab_round_trip_and_unknown_character():
    vocab = Vocab.from_text("hello world")
    assert vocab.decode(vocab.encode("hello").tolist()) == "hello"
    with pytest.raises(UsageError, match="'z' is not in the vocabulary"):
        vocab.encode("hez")


def test_epoch_covers_each_window_once_and_is_seeded():
    data = torch.arange(1000)
    gen = torch.Generator().manual_seed(0)
    batches = epoch_batches(data, 10, 8, gen)
    rows = torch.cat(batches)
    assert len(rows) == windows_per_epoch(1000, 10)
    starts = rows[:, 0]
    assert len(set(starts.tolist())) == len(starts)  # no window twice
    assert set((starts % 10).tolist()) == {int(starts[0] % 10)}  # one phase: non-overlapping
    assert torch.equal(rows[:, 1:], rows[:, :-1] + 1)  # contiguous text
    again = torch.cat(epoch_batches(data, 10, 8, torch.Generator().manual_seed(0)))
    assert torch.equal(rows, again)
    # Every character of the epoch's span is a target exactly once (data[i] == i here).
    offset = int(starts.min())
    assert torch.equal(rows[:, 1:].flatten().sort().values, torch.arange(offset + 1, offset + 1 + len(rows) * 10))
    # The phase moves from epoch to epoch, over the offsets that still fit every window.
    phases = {int(torch.cat(epoch_batches(data, 10, 8, gen))[:, 0].min()) for _ in range(30)}
    assert len(phases) > 3 and phases <= set(range(10))


def test_eval_windows_are_fixed_and_spread():
    data = torch.arange(10_000)
    a, b = eval_windows(data, 16, 32), eval_windows(data, 16, 32)
    assert torch.equal(a, b) and a.shape == (32, 17)
    assert a[0, 0] == 0 and a[-1, 0] > 9000
    assert len(eval_windows(data, 16, 10_000)) == len(windows(data, 16))
