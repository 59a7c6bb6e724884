"""The book builds from scratch with zero warnings, and its pages hold executed outputs."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from muonlib.book import MATHJAX, install_mathjax

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    install_mathjax()  # what `make book` does first
    jb = Path(sys.executable).with_name("jupyter-book")
    if not jb.exists():
        jb = Path(shutil.which("jupyter-book") or "jupyter-book")
    cmd = [str(jb), "build", str(ROOT), "--all", "-W", "-n", "--keep-going", "--path-output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    html = out / "_build" / "html"
    if proc.returncode != 0:
        logs = "\n".join(p.read_text() for p in (out / "_build" / "html" / "reports").rglob("*.log")) if (html / "reports").exists() else ""
        pytest.fail(f"jupyter-book build failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}\n{logs[-6000:]}")
    return html


def test_book_builds_without_warnings(built_book):
    assert (built_book / "index.html").exists() or (built_book / "book" / "intro.html").exists()


def test_notebook_pages_hold_executed_outputs_and_figures(built_book):
    pages = sorted((built_book / "notebooks").rglob("*.html"))
    assert pages, "no notebook pages were built"
    for page in pages:
        text = page.read_text()
        assert "cell_output" in text, f"{page.name}: no executed output"
        assert re.search(r'<img[^>]+src="[^"]*_images/[^"]+\.(png|svg)"', text), f"{page.name}: no figure a cell drew"
        assert "Traceback (most recent call last)" not in text, f"{page.name}: a cell raised"


def test_every_figure_a_cell_draws_has_a_caption_and_alt_text(built_book):
    for page in sorted((built_book / "notebooks").rglob("*.html")):
        text = page.read_text()
        figures = re.findall(r"<figure.*?</figure>", text, flags=re.S)
        for figure in figures:
            assert "<figcaption" in figure and re.search(r'<img[^>]+alt="[^"]{10,}"', figure), f"{page.name}: a figure without caption or alt text"
        outside = re.sub(r"<figure.*?</figure>", "", text, flags=re.S)
        assert not re.search(r'<img[^>]+src="[^"]*_images/', outside), f"{page.name}: a figure a cell drew has no caption"


def test_pages_hold_no_log_lines(built_book):
    """What a reader sees is prose, tables and figures: printed lines (presets, provenance
    dumps, progress bars) belong in glued sentences or tables."""
    for page in sorted((built_book / "notebooks").rglob("*.html")):
        text = page.read_text()
        assert not re.search(r'class="output (stream|stderr)', text), f"{page.name}: a cell printed to the page"


def test_the_dashboard_and_the_ledger_show_verdict_badges(built_book):
    intro = (built_book / "book" / "intro.html").read_text()
    ledger = (built_book / "book" / "claims.html").read_text()
    for label in ("verified", "refuted", "holds only under conditions", "open"):
        assert re.search(rf'sd-badge[^>]*>{label}<', ledger), f"the ledger shows no {label!r} badge"
    assert intro.count("sd-badge") >= 5 and "claims.html" in intro


def test_proofs_math_and_citations_render(built_book):
    page = (built_book / "notebooks" / "theory" / "newton_schulz.html").read_text()
    assert 'class="proof definition' in page or "proof definition" in page
    assert "mehta2025muon" in page or "Mehta" in page
    api = (built_book / "book" / "api.html").read_text()
    for name in ("newton_schulz", "msign", "build_optimizer", "Shampoo", "Muon"):
        assert name in api


def test_maths_is_rendered_by_the_books_own_mathjax(built_book):
    """No page asks a CDN for MathJax: formulas render offline, from the pinned package."""
    for page in [built_book / "notebooks" / "theory" / "newton_schulz.html", built_book / "book" / "claims.html"]:
        text = page.read_text()
        assert "cdn.jsdelivr.net" not in text and "mathjax@3" not in text
        scripts = re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', text)
        assert scripts and all(s.split("?")[0].endswith("_static/mathjax/tex-mml-chtml.js") for s in scripts)
    static = built_book / "_static" / "mathjax"
    assert (static / "tex-mml-chtml.js").stat().st_size > 1e6 and (static / "VERSION").read_text() == MATHJAX.sha256
    assert list((static / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))


@pytest.fixture(scope="module")
def served_book(built_book):
    """The built book over HTTP on this machine (a browser may not load fonts from file://)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_book))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("page", ["notebooks/theory/newton_schulz.html", "notebooks/theory/convergence.html"])
def test_formulas_render_in_a_browser_with_the_network_off(served_book, page):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the browser test needs Chromium: `make test` installs Debian's package (apt-get install chromium)"
    dom = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # every other host is unreachable
         "--dump-dom", f"{served_book}/{page}"],
        capture_output=True, text=True, timeout=120).stdout
    body = dom[dom.index("<body"):]
    body = re.sub(r"<script.*?</script>|<style.*?</style>", "", body, flags=re.S)
    assert body.count("<mjx-container") >= 5, "MathJax rendered nothing"
    assert "\\(" not in body and "\\[" not in body, "raw TeX left on the page"
    assert "<mjx-merror" not in body, "MathJax could not parse a formula"


def test_the_ledger_fits_the_page_and_the_pages_have_one_search_box(built_book):
    from muonlib.ledger import read_claims

    ledger = (built_book / "book" / "claims.html").read_text()
    assert len(re.findall(r'<div class="ledger[^"]*"', ledger)) == len(read_claims())  # every part's table
    assert "_static/muonlib.css" in ledger and 'id="pst-secondary-sidebar"' not in ledger  # the table takes the width
    css = (built_book / "_static" / "muonlib.css").read_text()
    assert "#pst-header" in css and "@media (max-width" in css  # the header's second search box; a phone's layout
