"""report.md stays a valid Markdown document whatever text the runs carry.

Arm labels, run names and error messages are the user's (or a library's) text: a `|` would cut
a table cell, a trailing `\\` would escape the cell's closing `|`, a newline would end the row.
"""

from __future__ import annotations

import re
from pathlib import Path

from report_fixtures import Store, make_ablation

from harness.report import build_report
from harness.report.render import _md_table, md

ARM = "wd|0.1 \\ try <b>\nnext line\\"
"""A label with a pipe, a backslash, an HTML tag, a newline, and a backslash at its very end."""
ERROR = "ValueError: a | b \\ c\nsecond line\\"


def cells(row: str) -> list[str]:
    """Split a Markdown table row on its unescaped pipes (a backslash escapes the next character)."""
    out, cell, chars = [], "", iter(row)
    for ch in chars:
        if ch == "\\":
            cell += ch + next(chars, "")
        elif ch == "|":
            out.append(cell)
            cell = ""
        else:
            cell += ch
    return out[1:] + ([cell] if cell.strip() else [])


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def tables(markdown: str) -> list[list[str]]:
    """Each block of consecutive lines starting with '|'."""
    blocks: list[list[str]] = []
    previous = False
    for line in markdown.splitlines():
        is_row = line.startswith("|")
        if is_row and not previous:
            blocks.append([])
        if is_row:
            blocks[-1].append(line)
        previous = is_row
    return blocks


def test_a_cell_of_any_text_keeps_its_row_and_its_text() -> None:
    """md() and _md_table directly (the fast check; the test below goes through a whole report)."""
    texts = [ARM, ERROR, "plain", "\\", "|", "a\r\nb", "<script>x</script>", ""]
    header, *rows = _md_table(["a", "b"], [[md(t), md("x")] for t in texts])
    assert len(rows) == len(texts) + 1 and all("\n" not in r for r in rows)
    for text, row in zip(texts, rows[1:]):
        first, second = cells(row)
        assert unescape(first.strip()) == " ".join(text.split()) and second.strip() == "x"
        assert "<" not in first.replace("\\<", "") and ">" not in first.replace("\\>", "")
    assert cells(header) == [" a ", " b "]


def test_markdown_tables_survive_pipes_backslashes_and_newlines(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    ids = make_ablation(store, "esc", seeds=range(2), arms={"baseline": {}, ARM: {"model.dropout": 0.3}},
                        broken=False)
    store.training_run(ids["experiment_id"], study="esc", arm=ARM, seed=7, parent_id=ids["parent"],
                       overrides={"model.dropout": 0.3}, status="FAILED", extra_tags={"harness.error": ERROR})
    result = build_report("esc", out_dir=tmp_path / "out", tracking_uri=store.tracking_uri)
    markdown = result.report_md.read_text(encoding="utf-8")
    blocks = tables(markdown)
    assert len(blocks) >= 3  # verdicts, secondary view, per arm (and the excluded runs)
    for block in blocks:
        width = len(cells(block[0]))
        for row in block:
            assert len(cells(row)) == width, f"a cell broke the row: {row!r}"
    collapsed = " ".join(ARM.split())  # one line: the newline becomes a space
    shown = [unescape(c.strip()) for block in blocks for row in block[2:] for c in cells(row)]
    assert sum(collapsed in c for c in shown) >= 3, "the arm label is not shown intact in each table"
    assert any(" ".join(ERROR.split()) in c for c in shown), "the error message is not shown intact"
    assert "<b>" not in markdown  # no raw tag opens in the document
