"""The book builds from scratch with zero warnings, and its pages hold executed outputs."""

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from muonlib.book import MATHJAX, install_mathjax
from muonlib.results.rules import CONDITIONAL, OPEN, REFUTED, UNTESTABLE, VERIFIED

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
        assert re.search(r'<img(?![^>]*alt="Open In Colab")[^>]+src="[^"]*_images/[^"]+\.(png|svg)"', text), f"{page.name}: no figure a cell drew"
        assert "Traceback (most recent call last)" not in text, f"{page.name}: a cell raised"


def test_every_figure_a_cell_draws_has_a_caption_and_alt_text(built_book):
    for page in sorted((built_book / "notebooks").rglob("*.html")):
        text = page.read_text()
        figures = re.findall(r"<figure.*?</figure>", text, flags=re.S)
        for figure in figures:
            assert "<figcaption" in figure and re.search(r'<img[^>]+alt="[^"]{10,}"', figure), f"{page.name}: a figure without caption or alt text"
        outside = re.sub(r"<figure.*?</figure>", "", text, flags=re.S)
        # every image but the Open in Colab badge (the book's own copy, served from _images too)
        assert not re.search(r'<img(?![^>]*alt="Open In Colab")[^>]+src="[^"]*_images/', outside), f"{page.name}: a figure a cell drew has no caption"


def test_pages_hold_no_log_lines(built_book):
    """What a reader sees is prose, tables and figures: printed lines (presets, provenance
    dumps, progress bars) belong in glued sentences or tables."""
    for page in sorted((built_book / "notebooks").rglob("*.html")):
        text = page.read_text()
        assert not re.search(r'class="output (stream|stderr)', text), f"{page.name}: a cell printed to the page"


def test_the_dashboard_and_the_ledger_show_verdict_badges(built_book):
    intro = (built_book / "book" / "intro.html").read_text()
    ledger = (built_book / "book" / "claims.html").read_text()
    for label in (VERIFIED, REFUTED, CONDITIONAL, OPEN):
        assert re.search(rf'sd-badge[^>]*>{label}<', ledger), f"the ledger shows no {label!r} badge"
    assert intro.count("sd-badge") >= 5 and "claims.html" in intro


class VerdictTables(HTMLParser):
    """The verdict tables of a built page (:func:`muonlib.book.table` marks them; with ``every``,
    all its tables, as on the ledger's page), each as its header cells, lower-cased, and its rows'
    cells, row labels included."""

    def __init__(self, every: bool = False):
        super().__init__()
        self.every, self.tables, self.cell, self.row, self.part = every, [], None, None, None

    def handle_starttag(self, tag, attrs):
        classes = dict(attrs).get("class") or ""
        if tag == "table":
            self.part = "" if self.every or "verdicts" in classes.split() else None
            if self.part is not None:
                self.tables.append({"header": [], "rows": []})
        elif self.part is not None and tag in ("thead", "tbody"):
            self.part = tag
        elif self.part is not None and tag == "tr":
            self.row = []
        elif self.row is not None and tag in ("th", "td"):
            self.cell = []

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag):
        if self.cell is not None and tag in ("th", "td"):
            self.row.append("".join(self.cell).strip())
            self.cell = None
        elif self.row is not None and tag == "tr":
            if self.part == "thead":
                self.tables[-1]["header"] = [cell.lower() for cell in self.row]  # the last header row names the columns
            else:
                self.tables[-1]["rows"].append(self.row)
            self.row = None
        elif tag == "table":
            self.part = None


def test_every_chapter_gives_a_claim_the_verdict_the_ledger_gives(built_book):
    """One verdict per claim across the book: each verdict table a chapter shows, read from the
    built page, gives every claim it names whole (``M4: ...``, or a row labelled by the id) the
    ledger's label. A row about part of a claim (``A1 (cache half): ...``) judges that part."""
    ledger_rows = VerdictTables(every=True)
    ledger_rows.feed((built_book / "book" / "claims.html").read_text())
    ledger = {}
    for table in ledger_rows.tables:
        for row in table["rows"]:
            ledger[row[0]] = row[table["header"].index("verdict")]
    assert len(ledger) > 40 and set(ledger.values()) <= {VERIFIED, REFUTED, CONDITIONAL, UNTESTABLE, OPEN}
    shown, disagree = [], []
    for page in sorted((built_book / "notebooks").rglob("*.html")):
        tables = VerdictTables()
        tables.feed(page.read_text())
        for table in tables.tables:
            if "verdict" not in table["header"]:
                continue
            column = table["header"].index("verdict")
            for row in table["rows"]:
                claim = re.match(r"([MEA]\d+)(?::|$)", row[0])
                if claim:
                    shown.append((page.stem, claim.group(1)))
                    if row[column] != ledger[claim.group(1)]:
                        disagree.append(f"{page.stem}: {claim.group(1)} {row[column]!r}, the ledger {ledger[claim.group(1)]!r}")
    assert not disagree, disagree
    chapters = {page for page, _ in shown}
    assert {"newton_schulz", "convergence", "spectral_geometry", "shampoo", "anatomy", "architectures", "muon_vs_adamw",
            "scaling", "batch_sizes", "ablations", "attention_and_moe", "decode"} <= chapters, chapters


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


# --- The book's finish, as a reader meets it: every page rendered in headless Chromium --------------

#: what a page reports about itself once MathJax has typeset it
MEASURE_JS = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const article = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
  const style = getComputedStyle(article);
  const column = article.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const where = el => { const s = el.closest("section[id]"); return s ? s.id : ""; };
  const tables = [...article.querySelectorAll("table")].map(t => ({
    where: where(t), width: t.getBoundingClientRect().width,
    verdicts: t.classList.contains("verdicts") || [...t.querySelectorAll("th")].some(h => /verdict/i.test(h.innerText)),
    cut: [...t.querySelectorAll("td, th")].map(c => c.innerText.trim()).filter(x => /(\.\.\.|\u2026)$/.test(x)),
    // a row whose cells do not sit side by side (a theme's class on a cell can turn it into a block)
    broken_rows: [...t.querySelectorAll("tr")].filter(r => new Set([...r.children].map(c => Math.round(c.getBoundingClientRect().top))).size > 1).length,
  }));
  const skip = "code, pre, script, style, mjx-container, .cell_input, .highlight, kbd, samp, textarea, .verbatim";
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT,
    {acceptNode: n => n.parentElement.closest(skip) ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
  const literal = [];
  while (walker.nextNode()) {
    const text = walker.currentNode.textContent;
    if (/[$`]/.test(text)) literal.push(text.trim().slice(0, 160));
  }
  const figures = [...article.querySelectorAll(".cell_output img")].filter(i => /_images\//.test(i.getAttribute("src")))
    .map(i => ({src: i.getAttribute("src"), width: i.getBoundingClientRect().width, where: where(i)}));
  const clipped = e => { for (let a = e.parentElement; a && a !== article.parentElement; a = a.parentElement) {
    if (/auto|hidden|scroll/.test(getComputedStyle(a).overflowX)) return a.getBoundingClientRect().right <= window.innerWidth + 1; }
    return false; };
  const overflow = [...article.querySelectorAll("*")].filter(e => !e.closest("mjx-assistive-mml")  // MathJax's hidden copy for screen readers
      && e.getBoundingClientRect().right > window.innerWidth + 1 && !clipped(e))
    .map(e => `${where(e)}: <${e.tagName.toLowerCase()} class="${e.getAttribute("class") || ""}"> ${(e.textContent || "").trim().slice(0, 60)}`);
  return {column, tables, literal, figures, overflow, window: window.innerWidth};
})()
"""


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module's pages (tests/book_browser.py)."""
    from book_browser import Browser

    try:
        chromium = Browser()
    except RuntimeError as error:
        pytest.fail(str(error))
    yield chromium
    chromium.close()


def measure(browser, served_book: str, page: str, width: int) -> dict:
    """Open ``page`` at a ``width`` px wide window with the network off, wait for MathJax, and
    return what MEASURE_JS reports."""
    browser.open(f"{served_book}/{page}", width)
    report = browser.evaluate(MEASURE_JS)
    assert report, f"{page}: the page did not render in the browser"
    return report


def svg_text_sizes(svg: str) -> tuple[float, list[float]]:
    """A matplotlib SVG's width and the size of each text it draws, both in its own units: glyphs
    drawn as paths are scaled from 100-unit outlines (``scale(s -s)``), text kept as text has a
    font size."""
    width = float(re.search(r'viewBox="([-\d.\s]+)"', svg).group(1).split()[2])
    sizes = [100 * float(s) for s in re.findall(r"scale\(([\d.]+) -\1\)", svg)]
    sizes += [float(s) for s in re.findall(r"font(?:-size)?:\s*(?:[a-z]+\s+)*([\d.]+)px", svg)]
    return width, sizes


def test_svg_text_sizes_reads_the_fonts_matplotlib_draws(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for fonttype in ("path", "none"):
        with matplotlib.rc_context({"svg.fonttype": fonttype}):
            fig, ax = plt.subplots(figsize=(5, 2))
            ax.set_title("title", fontsize=14)
            ax.tick_params(labelsize=7)
            fig.savefig(tmp_path / "f.svg")
            plt.close(fig)
        width, sizes = svg_text_sizes((tmp_path / "f.svg").read_text())
        assert width == pytest.approx(360) and min(sizes) == pytest.approx(7) and max(sizes) == pytest.approx(14)


#: raw markup the pages still show, each with where it comes from
KNOWN_RAW_MARKUP = {
    # muonlib/optim.py's Muon docstring nests a literal in bold (**What ``lr`` means.**), which reST
    # cannot render; left to the owner of that module
    "book/api.html": ("What ``lr`` means.",),
}


def book_pages(built_book: Path) -> list[str]:
    pages = sorted(built_book.glob("notebooks/*/*.html")) + sorted(built_book.glob("book/*.html"))
    return [str(p.relative_to(built_book)) for p in pages]


def small_figure_text(built_book: Path, page: str, figures: list[dict]) -> list[str]:
    """The figures of ``page`` whose smallest text, at the width the browser shows them, is under
    MIN_TEXT_PX (or cannot be read: a raster figure)."""
    from muonlib.book import MIN_TEXT_PX

    problems = []
    for f in figures:
        image = (built_book / page).parent / f["src"]
        if image.suffix != ".svg":
            problems.append(f"{page}#{f['where']}: {image.name} is not a vector figure (its text cannot be checked)")
            continue
        width, sizes = svg_text_sizes(image.read_text())
        smallest = min(sizes, default=float("inf")) * f["width"] / width  # a figure without text passes
        if smallest < MIN_TEXT_PX:
            problems.append(f"{page}#{f['where']}: {image.name}'s smallest text renders at {smallest:.1f} px")
    return problems


def test_every_page_reads_whole_at_desktop_width(built_book, served_book, browser):
    """At 1280 px: no table is wider than the text column, every table row lines up, no cell is
    cut with "...", no "$" or backtick is left raw in the text, and no figure's text renders
    under 9 px."""
    problems, verdict_tables, figures = [], 0, 0
    for page in book_pages(built_book):
        m = measure(browser, served_book, page, 1280)
        for t in m["tables"]:
            verdict_tables += t["verdicts"]
            if t["width"] > m["column"] + 1:
                problems.append(f"{page}#{t['where']}: a table {t['width']:.0f} px wide in a {m['column']:.0f} px column")
            if t["broken_rows"]:
                problems.append(f"{page}#{t['where']}: {t['broken_rows']} table rows whose cells do not line up")
            if t["cut"]:
                problems.append(f"{page}#{t['where']}: cells cut short: {t['cut'][:3]}")
        problems += [f"{page}: raw markup in the text: {text!r}" for text in m["literal"] if text not in KNOWN_RAW_MARKUP.get(page, ())]
        figures += len(m["figures"])
        problems += small_figure_text(built_book, page, m["figures"])
    assert verdict_tables >= 10 and figures >= 30, (verdict_tables, figures)  # the pages were read
    assert not problems, "\n".join(problems)


def test_every_page_fits_a_phone(built_book, served_book, browser):
    """On a 400 px phone nothing in the text runs off the screen (wide tables and figures scroll
    inside their own boxes) and no figure's text renders under 9 px."""
    problems = []
    for page in book_pages(built_book):
        m = measure(browser, served_book, page, 400)
        assert m["window"] == 400
        problems += [f"{page}#{e}" for e in m["overflow"][:5]]
        problems += small_figure_text(built_book, page, m["figures"])
    assert not problems, "\n".join(problems)


def test_the_colab_badge_is_served_by_the_book(built_book):
    for page in sorted((built_book / "notebooks").rglob("*.html")):
        text = page.read_text()
        assert "colab.research.google.com/assets" not in text, f"{page.name}: the Colab badge comes from the network"
        badge = re.search(r'<img[^>]+alt="Open In Colab"[^>]+src="([^"]+)"|<img[^>]+src="([^"]+)"[^>]+alt="Open In Colab"', text)
        assert badge, f"{page.name}: no Open in Colab badge"
        assert (page.parent / (badge.group(1) or badge.group(2))).resolve().is_file()


LEDGER_JS = r"""
(() => {
  const cells = [...document.querySelectorAll(".ledger tbody tr")];
  const lines = node => { const r = document.createRange(); r.selectNodeContents(node);
    return Math.round(r.getBoundingClientRect().height / parseFloat(getComputedStyle(node).lineHeight)); };
  const opaque = c => c !== "rgba(0, 0, 0, 0)" && c !== "transparent";
  return {
    ids_wrapped: cells.map(tr => tr.children[0]).filter(td => lines(td) > 1).map(td => td.innerText.trim()),
    formulas_out_of_their_cell: [...document.querySelectorAll(".ledger mjx-container")].filter(m =>
      m.getBoundingClientRect().right > m.closest("td").getBoundingClientRect().right + 1).map(m => m.closest("tr").children[0].innerText.trim()),
    formulas_that_scroll: [...document.querySelectorAll(".ledger mjx-container:not([display='true'])")].filter(m =>
      /auto|scroll/.test(getComputedStyle(m).overflowX)).length,
    badges: [...document.querySelectorAll(".ledger .sd-badge")].map(b => { const cs = getComputedStyle(b);
      return {label: b.innerText.trim(), color: cs.color, background: cs.backgroundColor, border: parseFloat(cs.borderTopWidth),
              border_color: cs.borderTopColor, opaque: opaque(cs.backgroundColor)}; }),
  };
})()
"""


def test_the_ledger_reads_in_a_browser(built_book, served_book, browser):
    """At 1280 px: every ID on one line, every formula inside its cell (long ones break between
    formulas) and none with a scroll box of its own, every badge's text a colour apart from its
    background, and a white badge outlined."""
    browser.open(f"{served_book}/book/claims.html", 1280)
    m = browser.evaluate(LEDGER_JS)
    assert not m["ids_wrapped"], m["ids_wrapped"]
    assert not m["formulas_out_of_their_cell"], m["formulas_out_of_their_cell"]
    assert m["formulas_that_scroll"] == 0
    assert len(m["badges"]) >= 40
    for badge in m["badges"]:
        assert badge["color"] != badge["background"], badge
        if badge["background"] in ("rgb(255, 255, 255)", "rgb(248, 249, 250)") or not badge["opaque"]:  # white or near it
            assert badge["border"] >= 1 and badge["border_color"] != badge["background"], badge
