"""index.html as a browser shows it: headless Chromium opens the report from disk, every table
and figure loads, nothing errs in the console; a screenshot is kept in the report folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import CHROMIUM, Browser
from report_fixtures import SCRIPT_ARM, shared_store

from harness.report import build_report

pytestmark = [
    pytest.mark.service,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver"),
]

IMAGES = """Promise.all(Array.from(document.images).map(img =>
    img.decode().then(() => ({alt: img.alt, width: img.naturalWidth}), () => ({alt: img.alt, width: 0}))))"""
TABLES = """Array.from(document.querySelectorAll('table')).map(t => ({
    id: t.id, rows: t.tBodies[0].rows.length, visible: t.getBoundingClientRect().height > 0}))"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    store, _ = shared_store()
    return build_report("abl", out_dir=tmp_path_factory.mktemp("browser") / "abl", tracking_uri=store.tracking_uri)


def test_report_renders_in_chromium(report):
    with Browser() as browser:
        browser.open(report.index_html.as_uri())
        shot = browser.screenshot(report.out_dir / "screenshot.png")
        print(f"screenshot: {shot}")

        assert browser.evaluate("document.title") == "Report: abl"
        images = browser.evaluate(IMAGES)
        assert len(images) == len(report.figures)
        assert [i for i in images if i["width"] == 0] == [], "broken images"
        tables = {t["id"]: t for t in browser.evaluate(TABLES)}
        assert tables["comparison-table"]["rows"] == len(report.arms) - 1
        assert tables["arm-table"]["rows"] == len(report.arms)
        assert tables["run-table"]["rows"] == report.n_runs
        assert tables["excluded-table"]["rows"] == report.n_excluded
        assert all(t["visible"] for t in tables.values())
        # The hostile arm name is text on the page, never markup.
        assert SCRIPT_ARM in browser.evaluate("document.body.innerText")
        assert browser.evaluate("document.scripts.length") == 0
        assert browser.console_errors() == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_browser_helper_reports_broken_pages(tmp_path):
    """The checks above would catch a broken page: a missing image and a script error show up."""
    page = tmp_path / "broken.html"
    page.write_text("<title>broken</title><img src='missing.png' alt='x'>"
                    "<script>console.error('boom'); null.x</script>", encoding="utf-8")
    with Browser() as browser:
        browser.open(page.as_uri())
        assert browser.evaluate(IMAGES) == [{"alt": "x", "width": 0}]
        errors = browser.console_errors()
    assert any("missing.png" in e for e in errors)
    assert "boom" in errors
    assert any("TypeError" in e for e in errors)
