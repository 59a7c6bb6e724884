"""What the book's notebooks share: one table style (:func:`table`), one figure style
(:func:`house_style`), numbers glued into the prose, and the MathJax the pages load from the book
itself.

Prose never types a number: a notebook computes it and ``glue("name", value)`` hands it to
the page (``{glue:text}`name:.2f``` in Markdown). On Colab, where the book's builder is not
installed, ``glue`` only returns the value.

``python -m muonlib.book mathjax`` puts MathJax 3 (npm ``mathjax@3.2.2``, sha256-checked, the
``es5/tex-mml-chtml.js`` bundle, its fonts and the TeX packages it loads on demand) under
``_mathjax/mathjax/``, so formulas render without a network; ``_config.yml`` serves that folder
as static files and points the pages there. (Not ``_static/``: Jupyter Book would load every
``.js`` file there as a script of its own.)
"""

from __future__ import annotations

import ast
import html
import re
import tarfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .data import Source, fetch_source, npm_pack

OPTIMIZER_NAMES = {"adamw": "AdamW", "muon": "Muon"}
OPTIMIZER_COLORS = {"adamw": "#4C72B0", "muon": "#DD8452"}  # seaborn's first two, fixed per optimizer
PAPER_COLOR = "#7f7f7f"  # the paper's numbers, drawn beside ours
PROTOCOL_LINES = {"original": "-", "paper": "--", "tuned": ":"}  # line styles: a protocol's runs, whatever the colour


def glue(name: str, value: Any) -> Any:
    """Make ``value`` available to the page's Markdown as ``name``; returns it."""
    if hasattr(value, "item"):  # a numpy scalar: the page formats Python numbers
        value = value.item()
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # a plain Jupyter or Colab session: nothing to hand the value to
        return value
    myst_glue(name, value, display=False)
    return value


def keep_results(name: str, protocol: str = "original") -> Path:
    """Pack experiment ``name``'s results under ``protocol`` into ``<name>[-<protocol>]-results.tar``
    beside the notebook and, on Colab, download it: the runtime's disk goes when it ends.
    ``python -m muonlib.experiments unpack`` puts the archive's runs back into ``data/results/``
    on any machine."""
    from .data import on_colab
    from .experiments import pack

    archive = Path(f"{name}{'' if protocol == 'original' else '-' + protocol}-results.tar").resolve()
    pack(name, archive, protocol=protocol)
    if on_colab():
        from google.colab import files

        files.download(str(archive))
    return archive


#: the book's text column at a 1280 px wide window (px), what a table or figure must fit
COLUMN_PX = 680
#: the smallest text a figure may show at ``COLUMN_PX`` (px)
MIN_TEXT_PX = 9
#: figure widths (inches) and the font size (pt) that keeps every label at least MIN_TEXT_PX
#: when the figure is scaled to the column: 72 pt per inch, a 7.5-inch figure is 540 pt wide
FIGURE_WIDTH = 7.5
FONT_PT = 9.5
#: markers that tell lines apart where colours meet or overlap, one per line of a figure
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def house_style() -> None:
    """The book's one figure style: seaborn's white grid, vector figures at the column's width,
    fonts that stay legible when a figure is scaled to the page (none under ``MIN_TEXT_PX`` at
    1280 px), legends without frames, and figures saved tight so nothing is clipped. Lines that
    could hide one another carry markers (:data:`MARKERS`, every few points)."""
    import matplotlib as mpl
    import seaborn as sns
    from cycler import cycler

    sns.set_theme(style="whitegrid", context="notebook")
    palette = sns.color_palette("deep", 8)
    mpl.rcParams.update({
        "figure.figsize": (FIGURE_WIDTH, 3.4), "figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight",
        "font.size": FONT_PT, "axes.titlesize": FONT_PT + 0.5, "axes.labelsize": FONT_PT, "xtick.labelsize": FONT_PT - 0.5,
        "ytick.labelsize": FONT_PT - 0.5, "legend.fontsize": FONT_PT - 0.5, "legend.title_fontsize": FONT_PT,
        "figure.titlesize": FONT_PT + 1, "legend.frameon": False, "lines.markersize": 4.5, "lines.linewidth": 1.4,
        "axes.prop_cycle": cycler(color=palette),
    })
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("svg", bbox_inches="tight")
    except ImportError:
        pass


def legend_outside(ax_or_fig, where: str = "right", **kwargs):
    """A legend beside the data, not on it: to the right of an axes (``where="right"``), above or
    below it (``"above"``, ``"below"``, in columns), or below all of a figure's axes (a figure)."""
    import matplotlib.pyplot as plt

    if isinstance(ax_or_fig, plt.Figure):
        fig = ax_or_fig
        handles, labels = [], []
        for ax in fig.axes:
            for h, l in zip(*ax.get_legend_handles_labels()):
                if l not in labels and not l.startswith("_"):
                    handles.append(h)
                    labels.append(l)
        kwargs.setdefault("ncol", min(len(labels), 4))
        return fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), **kwargs)
    if where == "above":
        kwargs.setdefault("ncol", 3)
        return ax_or_fig.legend(loc="lower left", bbox_to_anchor=(0.0, 1.02), borderaxespad=0, **kwargs)
    if where == "below":
        kwargs.setdefault("ncol", 3)
        return ax_or_fig.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), **kwargs)
    return ax_or_fig.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, **kwargs)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

NA = "\u2014"  # an em dash: a value that does not exist
_CHAR_PX = 7.4  # a table character's width at the book's table font (0.85 em of 16 px), generous
_HEADER_CHAR_PX = 8.6  # a bold header character
_CELL_PAD_PX = 18  # a cell's padding and border
_WRAP_CHARS = 34  # a text column wraps beyond about this many characters
_COUNT = re.compile(r"(steps|runs|seeds|steps to target|tokens to target)( \(mean\))?")  # whole headers: counts


def _label(value: Any) -> str:
    """A row or column label as a reader should see it: no True/False, no dicts, no snake_case."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_label(v)}" for k, v in value.items()) or NA
    if isinstance(value, float):
        if np.isnan(value):
            return NA
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1e4 else f"{value:g}"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}" if abs(value) >= 1e4 else str(value)
    text = str(value)
    if text.startswith("{") and text.endswith("}"):  # a dict printed as text
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, dict):
            return _label(parsed)
    if text in OPTIMIZER_NAMES:
        return OPTIMIZER_NAMES[text]
    if "_" in text and " " not in text and re.fullmatch(r"[a-z0-9_]+", text):
        text = text.replace("_", " ")
    return text


def _header(name: Any) -> str:
    """A column name: snake_case as words, unit suffixes (``_ms``, ``_gb``, ``_per_s``) in parentheses."""
    if isinstance(name, tuple):
        return " ".join(_header(n) for n in name if n != "")
    text = str(name)
    if text in OPTIMIZER_NAMES:
        return OPTIMIZER_NAMES[text]
    if re.fullmatch(r"[A-Za-z0-9_]+", text) and "_" in text:
        text = re.sub(r"_per_s$", "/s", text)
        match = re.search(r"_(ms|gb|mb|s|tb|pct)$", text)
        unit = {"ms": "ms", "gb": "GB", "mb": "MB", "s": "s", "tb": "TB", "pct": "%"}[match.group(1)] if match else None
        text = text[: match.start()] if match else text
        text = text.replace("_", " ")
        if unit:
            text = f"{text} ({unit})"
    return text


def number_format(values: Any, name: str = "") -> Callable[[Any], str]:
    """How a column of numbers is shown, from what it holds: whole numbers (and step counts)
    without decimals and with thousands separators, other numbers with as many decimals as their
    size needs (four significant digits for numbers near 1, none from 1,000), tiny ones in
    scientific notation, and a missing value as an em dash."""
    arr = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return lambda v: NA
    biggest = float(np.abs(finite).max())
    whole = bool(np.all(finite == np.round(finite)))
    percent = "%" in name
    nonzero = np.abs(finite[finite != 0])
    if whole or _COUNT.fullmatch(name.lower()):
        spec = ",.0f"
    elif nonzero.size and biggest >= 100 and nonzero.min() < 1:  # orders of magnitude apart: three digits each
        spec = "mixed"
    elif biggest < 1e-3:
        spec = ".2e"
    else:
        magnitude = int(np.floor(np.log10(biggest)))
        decimals = (2 if magnitude <= 0 else 1 if magnitude == 1 else 0) if percent else \
            (4 if magnitude <= -2 else 3 if magnitude <= 0 else 2 if magnitude == 1 else 1 if magnitude == 2 else 0)
        rounded = next((k for k in range(7) if np.allclose(finite, np.round(finite, k), rtol=0, atol=1e-9)), decimals)
        spec = f",.{min(decimals, rounded)}f"  # a column the chapter rounded keeps its rounding

    def show(v: Any) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return NA
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if not isinstance(v, (int, float, np.integer, np.floating)):
            return _label(v)
        if spec == "mixed":
            text = f"{float(v):,.0f}" if abs(v) >= 100 else f"{float(v):.3g}"
        else:
            text = format(float(v), spec)
        return "0" if re.fullmatch(r"-0(\.0*)?", text) else text.replace("-", "\u2212")  # a true minus sign

    return show


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return NA
    if isinstance(value, (float, np.floating)):
        return number_format([value])(value)
    return _label(value)


class Table:
    """A table as the book shows it (``table(...)`` makes one): cells already formatted, split into
    parts that each fit the page. ``parts`` holds them as DataFrames of strings."""

    def __init__(self, parts: list[pd.DataFrame], numeric: list[list[bool]], kind: str, caption: str | None,
                 index_names: list[str]):
        self.parts, self.numeric, self.kind, self.caption, self.index_names = parts, numeric, kind, caption, index_names

    def _part_html(self, part: pd.DataFrame, numeric: list[bool], caption: str | None) -> str:
        esc = html.escape
        n_index = len(self.index_names)
        cols = part.columns
        levels = cols.nlevels
        rows = []
        if cols.names[0] is not None and levels == 1 and n_index:  # a columns axis name: a spanning header
            rows.append("<tr>" + "<th></th>" * n_index + f'<th class="group" colspan="{len(cols)}">{esc(str(cols.names[0]))}</th></tr>')
        for level in range(levels):
            cells = []
            last = level == levels - 1
            if n_index:
                cells += [f'<th class="index-name">{esc(n) if last else ""}</th>' for n in self.index_names]
            labels = [c[level] if levels > 1 else c for c in cols]
            i = 0
            while i < len(labels):  # upper levels span the columns that share them
                j = i + 1
                if not last:
                    while j < len(labels) and labels[j] == labels[i] and \
                            (level == 0 or all(cols[j][k] == cols[i][k] for k in range(level))):
                        j += 1
                cls = ' class="num"' if last and numeric[i] else (' class="group"' if not last else "")
                span = f' colspan="{j - i}"' if j - i > 1 else ""
                cells.append(f"<th{cls}{span}>{esc(str(labels[i]))}</th>")
                i = j
            rows.append("<tr>" + "".join(cells) + "</tr>")
        head = "<thead>" + "".join(rows) + "</thead>"
        body = []
        index = part.index
        previous: tuple = ()
        for r in range(len(part)):
            label = index[r] if isinstance(index[r], tuple) else (index[r],)
            cells = []
            if n_index:
                for k, value in enumerate(label):
                    same = len(previous) > k and previous[: k + 1] == label[: k + 1] and k < n_index - 1
                    cells.append(f'<th class="rowlabel">{"" if same else esc(str(value))}</th>')
            for c, value in enumerate(part.iloc[r]):
                cells.append(f'<td class="{"num" if numeric[c] else "text"}">{esc(str(value))}</td>')
            previous = label
            body.append("<tr>" + "".join(cells) + "</tr>")
        cap = f"<caption>{esc(caption)}</caption>" if caption else ""
        return (f'<div class="book-table-wrap"><table class="book-table {self.kind}">{cap}{head}'
                f'<tbody>{"".join(body)}</tbody></table></div>')

    def _repr_html_(self) -> str:
        many = len(self.parts) > 1
        html_parts = []
        for k, (part, numeric) in enumerate(zip(self.parts, self.numeric)):
            caption = self.caption if k == 0 else None
            if many:
                caption = f"{self.caption + ' ' if self.caption and k == 0 else ''}({k + 1} of {len(self.parts)})"
            html_parts.append(self._part_html(part, numeric, caption))
        return "\n".join(html_parts)

    def __repr__(self) -> str:  # a plain console: the parts as text
        return "\n\n".join(p.to_string() for p in self.parts)


def _width_px(strings: list[str], header: str, wrap: bool) -> float:
    longest = max([len(s) for s in strings] + [1])
    if wrap:
        longest = min(longest, _WRAP_CHARS)
    words = max((len(w) for w in header.split()), default=1)  # a header wraps at its spaces, in bold
    return max(longest * _CHAR_PX, max(words, min(len(header), 10)) * _HEADER_CHAR_PX) + _CELL_PAD_PX


def table(data: Any, *, names: dict | None = None, units: dict | None = None, formats: dict | None = None,
          number: str | None = None, index: bool | None = None, transpose: bool = False, split: int | None = None,
          caption: str | None = None, verbatim: bool = False, width: float = COLUMN_PX) -> Table:
    """Show ``data`` (a DataFrame, a Series or a pandas Styler) the book's one way.

    - headers: ``names`` renames columns, ``units`` adds a unit in parentheses (``{"step": "ms"}``
      gives "step (ms)"), snake_case becomes words;
    - numbers by kind (:func:`number_format`): counts whole with thousands separators, other
      numbers with the decimals their size needs, NaN as an em dash; ``formats`` overrides a
      column with a format spec (``"{:.1f}"``) or a function, ``number`` every numeric column
      that ``formats`` does not name;
    - no dtype, no default 0..n-1 index (``index=False`` drops any index, ``True`` keeps it),
      True/False as yes/no, dicts as words;
    - text wraps (never cut with "..."); a table with a ``verdict`` column is a verdict table:
      its columns wrap at the page's width;
    - ``verbatim=True``: text cells are samples shown as they are (line breaks kept), such as a
      model's continuations;
    - a table wider than the page (``width`` px, estimated from its cells) is split into parts
      that repeat the row labels (``split`` columns per part forces it), or, with
      ``transpose=True``, turned on its side first.
    """
    from pandas.io.formats.style import Styler

    if isinstance(data, Styler):
        data = data.data
    if isinstance(data, pd.Series):
        data = data.to_frame(data.name if data.name is not None else "")
    df = data.copy()
    if transpose:
        df = df.T
    formats = dict(formats or {})
    names = dict(names or {})
    units = dict(units or {})
    if index is None:
        index = not (isinstance(df.index, pd.RangeIndex) and df.index.name is None)
    # headers
    columns_name = df.columns.name if df.columns.nlevels == 1 else None

    def header(c):
        key = c
        text = names.get(key, _header(c))
        if key in units:
            text = f"{text} ({units[key]})"
        return text

    raw_columns = list(df.columns)
    if df.columns.nlevels > 1:
        shown_cols = pd.MultiIndex.from_tuples([tuple(header(x) if isinstance(x, str) else _label(x) for x in c)
                                                for c in raw_columns])
    else:
        shown_cols = pd.Index([header(c) for c in raw_columns], name=columns_name)
    # cells
    cells, numeric = {}, []
    for k, c in enumerate(raw_columns):
        col = df.iloc[:, k]
        fmt = formats.get(c, formats.get(header(c) if not isinstance(c, tuple) else c))
        is_number = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        if fmt is None and number is not None and is_number:
            finite = pd.to_numeric(col, errors="coerce").dropna()
            if not (finite == finite.round()).all():  # whole numbers keep their own format
                fmt = number
        if fmt is not None:
            show = fmt.format if isinstance(fmt, str) else fmt
            values = [NA if (v is None or (isinstance(v, float) and np.isnan(v))) else re.sub(r"^-(?=\d)", "\u2212", show(v))
                      for v in col]
            is_number = is_number or all(re.fullmatch(r"[\s\d,.+\-\u2212%×x e]*", str(v) or "") for v in values)
        elif is_number:
            show = number_format(col.values, header(c) if not isinstance(c, tuple) else header(c[-1]))
            values = [show(v) for v in col]
        else:
            values = [_cell(v) for v in col]
            # numbers carried as text ("3.341 ± 0.002", "4.6 (seeds 4.5 to 4.7)") align as numbers
            is_number = all(v == NA or (re.match(r"^[+\-\u2212]?\d", v) and len(v) <= 28) for v in values) and \
                any(v != NA for v in values)
        cells[k] = values
        numeric.append(bool(is_number))
    shown = pd.DataFrame({k: v for k, v in cells.items()}, index=df.index)
    shown.columns = shown_cols
    # row labels
    if index:
        index_names = [_label(n) if n is not None else "" for n in df.index.names]
        labels = [tuple(_label(x) for x in (i if isinstance(i, tuple) else (i,))) for i in df.index]
        shown.index = pd.MultiIndex.from_tuples(labels) if len(index_names) > 1 else pd.Index([l[0] for l in labels])
    else:
        index_names = []
        shown = shown.reset_index(drop=True)
    kind = "verdicts" if any("verdict" in str(c).lower() for c in raw_columns) else ""
    text_columns = [not n for n in numeric]
    # split what does not fit
    widths = [_width_px(list(shown.iloc[:, k]), str(shown.columns[k][-1] if isinstance(shown.columns[k], tuple) else shown.columns[k]),
                        text_columns[k]) for k in range(shown.shape[1])]
    label_px = sum(_width_px([str(l[i]) if isinstance(l, tuple) else str(l) for l in shown.index], index_names[i], True)
                   for i in range(len(index_names))) if index else 0
    groups: list[list[int]] = []
    if split:
        groups = [list(range(i, min(i + split, shown.shape[1]))) for i in range(0, shown.shape[1], split)]
    elif kind == "verdicts":
        groups = [list(range(shown.shape[1]))]  # text wraps to the width
    else:
        current, used = [], label_px
        for k, w in enumerate(widths):
            if current and used + w > width and not (shown.columns.nlevels > 1):
                groups.append(current)
                current, used = [], label_px
            current.append(k)
            used += w
        groups.append(current)
        if shown.columns.nlevels > 1 and label_px + sum(widths) > width:  # split at the top level's groups
            groups, current, used = [], [], label_px
            for top in dict.fromkeys(c[0] for c in shown.columns):
                ks = [k for k, c in enumerate(shown.columns) if c[0] == top]
                w = sum(widths[k] for k in ks)
                if current and used + w > width:
                    groups.append(current)
                    current, used = [], label_px
                current += ks
                used += w
            groups.append(current)
    if kind == "" and any(text_columns) and sum(widths) + label_px > width:
        kind = "wrap"
    if verbatim:
        kind = f"{kind} verbatim".strip()
    parts = [shown.iloc[:, g] for g in groups]
    return Table(parts, [[numeric[k] for k in g] for g in groups], kind, caption, index_names)


MATHJAX = Source("mathjax", "mathjax@3.2.2", "mathjax-3.2.2.tgz",
                 "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09", npm_pack("mathjax@3.2.2"))
MATHJAX_FILES = ("es5/tex-mml-chtml.js", "es5/output/chtml/fonts/woff-v2/", "es5/input/tex/extensions/")  # the bundle, its fonts, the TeX packages it loads on demand
BOOK_ROOT = Path(__file__).resolve().parents[1]


def install_mathjax(static: Path = BOOK_ROOT / "_mathjax", root: Path | None = None) -> Path:
    """MathJax's bundle and what it loads under ``static/mathjax/`` (kept where the same
    version is there already); returns the bundle's path."""
    folder = static / "mathjax"
    stamp = folder / "VERSION"
    bundle = folder / "tex-mml-chtml.js"
    if bundle.exists() and stamp.exists() and stamp.read_text() == MATHJAX.sha256:
        return bundle
    archive = fetch_source(MATHJAX, root, None)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("package/")
            if member.isfile() and any(name == f or (f.endswith("/") and name.startswith(f)) for f in MATHJAX_FILES):
                target = folder / name.removeprefix("es5/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    stamp.write_text(MATHJAX.sha256)
    return bundle


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m muonlib.book", description="Assets the book needs to build offline.")
    parser.add_argument("what", choices=["mathjax"])
    args = parser.parse_args(argv)
    if args.what == "mathjax":
        print(f"MathJax at {install_mathjax()}")


if __name__ == "__main__":
    main()
