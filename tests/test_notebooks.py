"""Notebook conventions (CONTRIBUTING.md): badge, Colab setup, no stored outputs."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))
BOOK_PAGES = ROOT / "book"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"]


def test_there_are_notebooks_and_all_are_in_the_toc():
    assert NOTEBOOKS
    toc = (ROOT / "_toc.yml").read_text()
    for path in NOTEBOOKS:
        assert str(path.relative_to(ROOT).with_suffix("")) in toc, f"{path} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and first.startswith("# "), "first cell: a title"
    colab = f"https://colab.research.google.com/github/{REPO_URL.removeprefix('https://github.com/')}/blob/{CONFIG['repository']['branch']}/{path.relative_to(ROOT)}"
    assert colab in first, f"first cell needs the Open in Colab badge linking {colab}"
    setup = "".join(cells[1]["source"])
    assert '"google.colab" in sys.modules' in setup and f'"git", "clone", "--depth", "1", "{REPO_URL}"' in setup, \
        "second cell: on Colab only, clone the repository and install muonlib from it"
    ids = [cell.get("id") for cell in cells]  # nbformat 4.5 requires them; a tool that adds them rewrites the file
    assert None not in ids and len(set(ids)) == len(ids), "every cell needs an id of its own"
    for cell in cells:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, "commit notebooks without outputs"


def test_repository_url_appears_nowhere_else():
    # the URL lives in _config.yml; notebooks use it as checked above, nothing else hard-codes it
    offenders = [
        p for p in ROOT.rglob("*")
        if p.is_file() and p.suffix in {".py", ".md", ".yml", ".toml"} and ".venv" not in p.parts and "_build" not in p.parts
        and p.name != "_config.yml" and p.parent.name != "tests" and re.search(re.escape(REPO_URL), p.read_text(errors="ignore"))
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_setup_survives_a_restart(path, monkeypatch):
    """After "Restart session" the clone exists: the setup must still put it first on the
    path, or the clone's folder in the working directory shadows the installed package."""
    import subprocess
    import sys
    import types

    setup = "".join(json.loads(path.read_text())["cells"][1]["source"])
    ran = []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != "/content/muonlib"])
    monkeypatch.setattr("os.path.exists", lambda p: p == "/content/muonlib")  # the clone is there from before
    exec(compile(setup, str(path), "exec"), {})
    assert ran == [] and sys.path[0] == "/content/muonlib"


def markdown_sources():
    for path in NOTEBOOKS:
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "markdown":
                yield f"{path.name} cell {i}", "".join(cell["source"])
    for path in sorted((ROOT / "book").glob("*.md")):
        yield path.name, path.read_text()


def test_no_line_inside_inline_maths_starts_like_a_list_item():
    """Markdown reads a line that starts with '+ ', '- ' or '* ' as a bullet even inside
    $...$, which tears the formula apart (it did in two theory chapters)."""
    offenders = []
    for where, text in markdown_sources():
        inside = False
        for number, line in enumerate(text.splitlines(), 1):
            if inside and re.match(r"\s*[-+*]\s", line):
                offenders.append(f"{where}, line {number}: {line.strip()[:60]}")
            if not line.strip() or line.lstrip().startswith("$$"):
                inside = False  # a blank line or display maths ends any paragraph
                continue
            inside ^= len(re.findall(r"(?<![$\\])\$(?!\$)", line)) % 2 == 1
    assert not offenders, offenders


def test_display_maths_sits_on_lines_of_its_own():
    """``$$...$$`` on one line inside a directive renders as stray dollars around inline maths."""
    offenders = [f"{where}: {line.strip()[:60]}" for where, text in markdown_sources() for line in text.splitlines()
                 if re.match(r"\s*\$\$.+\$\$\s*$", line)]
    assert not offenders, offenders


def test_no_code_cell_types_a_verdict_label():
    """Labels come from :func:`muonlib.results.label` and the chapter modules, computed from the
    evidence; a string that starts with one in a code cell is a verdict typed by hand."""
    from muonlib.results import CONDITIONAL, REFUTED, UNTESTABLE, VERIFIED

    typed = re.compile(r"""["'](%s)\b""" % "|".join(map(re.escape, (VERIFIED, REFUTED, CONDITIONAL, UNTESTABLE))))
    offenders = [f"{path.name} cell {i}: {m.group(0)}" for path in NOTEBOOKS
                 for i, cell in enumerate(json.loads(path.read_text())["cells"]) if cell["cell_type"] == "code"
                 for m in typed.finditer("".join(cell["source"]))]
    assert not offenders, offenders


def test_no_caption_or_legend_types_a_band_the_papers_state():
    """A band quoted from the papers lives in ``muonlib.results.paper.QUOTES``; a figure's caption
    names it, and its legend formats it from there: typed twice, the two could disagree."""
    from muonlib.results import PAPER_R, QUOTES

    bands = [q.value for q in QUOTES.values() if isinstance(q.value, tuple) and len(q.value) == 2]
    bands += [band for q in QUOTES.values() if isinstance(q.value, dict) for band in q.value.values()
              if isinstance(band, tuple) and len(band) == 2 and all(isinstance(x, (int, float)) for x in band)]
    spellings = {f"{low:g}-{high:g}%" for low, high in bands} | {f"({low:g}, {high:g})" for low, high in bands}
    fewer = sorted(round(100 * (1 - 1 / r)) for r in PAPER_R["section 3.1"])  # section 3.1's band, stated as fewer tokens, quoted as R
    spellings.add("{}-{}%".format(*fewer))
    offenders = []
    for path in NOTEBOOKS:
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            caption = ((cell.get("metadata", {}).get("mystnb") or {}).get("figure") or {}).get("caption", "")
            code = "".join(cell["source"]) if cell["cell_type"] == "code" else ""
            legends = " ".join(re.findall(r"label=(f?\"[^\"]*\"|f?'[^']*')", code))
            offenders += [f"{path.name} cell {i}: {s}" for s in spellings if s in caption or s in legends]
    assert not offenders, offenders


def test_no_markdown_cell_types_a_number_the_papers_state():
    """The prose quotes the papers' numbers through glue roles, glued from ``QUOTES`` in a code
    cell; a number typed in a markdown cell could disagree with the registry the verdicts read."""
    from muonlib.results import PAPER_R, QUOTES

    def numbers(value):  # a quote's value: a number, a band, a table's row, or a dict of them
        if isinstance(value, dict):
            for part in value.values():
                yield from numbers(part)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield value
        elif isinstance(value, tuple) and len(value) == 2 and all(isinstance(x, (int, float)) for x in value):
            yield value
        elif isinstance(value, tuple):  # a table's row, or a tuple of coefficients
            for part in value:
                yield from numbers(part)

    spellings = set()
    for quote in QUOTES.values():
        for number in numbers(quote.value):
            if isinstance(number, tuple):
                spellings |= {"{:g}-{:g}%".format(*number), "({:g}, {:g})".format(*number)}
            else:
                spellings |= {f"{abs(number):g}%", f"{abs(number):g}x", f"{abs(number):g} GB"}
                if len(f"{abs(number):g}".partition(".")[2]) >= 2:  # a table's 8.462 or 3.4445 is no section number
                    spellings.add(f"{abs(number):g}")
    fewer = sorted(round(100 * (1 - 1 / r)) for r in PAPER_R["section 3.1"])  # section 3.1's band, stated as fewer tokens
    spellings.add("{}-{}%".format(*fewer))
    spellings.add(f"{QUOTES['E4'].value['dense']:g}M")  # E4's dense model, in millions of parameters
    # ordinary text, not quotes: the recipe's clipping norm 1.0 is neither a share nor a factor, M29's
    # 100 is a count of runs, and A2's 2% is a change, never "2x" (a symmetric kernel does "at most 2x"
    # a general one's tiles, fast_muon)
    spellings -= {"1%", "1x", "100%", "2x"}
    typed = re.compile("|".join(rf"(?<![\d.]){re.escape(s)}(?!\d)" for s in sorted(spellings, key=len, reverse=True)))
    offenders = [f"{path.name} cell {i}: {m.group(0)}" for path in NOTEBOOKS
                 for i, cell in enumerate(json.loads(path.read_text())["cells"]) if cell["cell_type"] == "markdown"
                 for m in typed.finditer(re.sub(r"\{glue:[a-z]+\}`[^`]*`", "", "".join(cell["source"])))]
    # the book's plain pages cannot glue; the ledger's page is written from the registry
    offenders += [f"{page.name}: {m.group(0)}" for page in sorted(BOOK_PAGES.glob("*.md")) if page.name != "claims.md"
                  for m in typed.finditer(page.read_text())]
    assert not offenders, offenders
