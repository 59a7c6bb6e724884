"""The book's one table style and one figure style (muonlib.book), without building the book."""

import re

import numpy as np
import pandas as pd
import pytest

from muonlib.book import COLUMN_PX, NA, FONT_PT, MIN_TEXT_PX, FIGURE_WIDTH, house_style, number_format, table
from muonlib.results.rules import REFUTED


def cells(t, part=0):
    return t.parts[part].map(str)


def test_numbers_are_formatted_by_kind():
    df = pd.DataFrame({"size": ["XS", "S"], "parameters": [19660800, 44612608], "val_loss": [3.341234, 3.290001],
                       "steps": [1992.852040, 1200.0], "gain %": [2.3456, np.nan], "ratio": [0.97, 1.202]})
    shown = cells(table(df))
    assert list(shown["parameters"]) == ["19,660,800", "44,612,608"]  # thousands separators
    assert list(shown["steps"]) == ["1,993", "1,200"]  # a step count is whole
    assert list(shown["val loss"]) == ["3.341", "3.290"]  # snake_case header as words, four digits
    assert list(shown["gain %"]) == ["2.35", NA]  # NaN as an em dash
    assert list(shown["ratio"]) == ["0.970", "1.202"]
    assert not any(re.search(r"\.\d{5,}", v) for v in shown.values.ravel())  # no six-decimal floats


def test_a_column_the_chapter_rounded_keeps_its_rounding_and_tiny_numbers_are_scientific():
    shown = cells(table(pd.DataFrame({"ms": [3.1, 4.6], "gap": [3.5e-16, 1.2e-15]})))
    assert list(shown["ms"]) == ["3.1", "4.6"] and list(shown["gap"]) == ["3.50e\u221216", "1.20e\u221215"]


def test_columns_orders_of_magnitude_apart_keep_three_digits_each():
    shown = cells(table(pd.DataFrame({"largest update": [151396.2, 0.0213, 3.21]})))
    assert list(shown["largest update"]) == ["151,396", "0.0213", "3.21"]


def test_no_index_noise_no_booleans_no_dicts():
    t = table(pd.DataFrame({"compiled": [True, False], "x": [1, 2]}))
    assert t.index_names == [] and list(cells(t)["compiled"]) == ["yes", "no"]
    labels = table(pd.DataFrame({"ms": [1.5, 2.5]}, index=pd.Index([str({"BLOCK": 128, "num_warps": 8}), True], name="config")))
    assert list(labels.parts[0].index) == ["BLOCK 128, num_warps 8", "yes"] and labels.index_names == ["config"]
    html = labels._repr_html_()
    assert "{" not in html and "True" not in html and "dtype" not in html


def test_units_names_and_formats():
    t = table(pd.DataFrame({"step_ms": [1.25], "tokens_per_s": [1e6], "x": [0.5]}), units={"x": "GB"}, formats={"x": "{:.1f}"})
    assert list(t.parts[0].columns) == ["step (ms)", "tokens/s", "x (GB)"] and cells(t)["x (GB)"][0] == "0.5"


def test_a_verdict_table_wraps_and_never_cuts_its_text():
    long = "evidence " * 40
    t = table(pd.DataFrame({"claim": ["M14"], "paper": ["x"], "ours": [long], "verdict": [REFUTED]}).set_index("claim"))
    html = t._repr_html_()
    assert t.kind == "verdicts" and 'class="book-table verdicts"' in html and len(t.parts) == 1
    assert long.strip() in html and "..." not in html


def test_a_wide_table_is_split_into_parts_that_fit_the_column():
    wide = pd.DataFrame(np.random.default_rng(0).random((3, 14)) * 1e5, columns=[f"quantity number {i} (ms)" for i in range(14)],
                        index=pd.Index(["XS", "S", "M"], name="size"))
    t = table(wide)
    assert len(t.parts) > 1 and sum(p.shape[1] for p in t.parts) == 14
    html = t._repr_html_()
    assert html.count("<table") == len(t.parts) and html.count('<th class="rowlabel">XS</th>') == len(t.parts)  # labels repeated
    for part in t.parts:  # each part's estimated width fits
        chars = sum(max(max(len(v) for v in part[c]), max(len(w) for w in str(c).split())) for c in part.columns)
        assert chars * 7.4 + 18 * part.shape[1] <= COLUMN_PX + 60


def test_transpose_and_explicit_split():
    df = pd.DataFrame({"a": [1, 2], "b": [3, 4], "c": [5, 6]}, index=["r1", "r2"])
    assert list(table(df, transpose=True).parts[0].columns) == ["r1", "r2"]
    assert [p.shape[1] for p in table(df, split=2).parts] == [2, 1]


def test_cells_are_escaped():
    assert "<b>" not in table(pd.DataFrame({"x": ["<b>bold</b>"]}))._repr_html_()


def test_number_format_handles_missing_and_negative_values():
    show = number_format([-0.5, np.nan, 2.25])
    assert show(-0.5) == "\u22120.50" and show(np.nan) == NA  # the rounding the values carry


def test_the_figure_style_keeps_text_legible_at_the_columns_width():
    import matplotlib

    matplotlib.use("Agg")
    house_style()
    rc = matplotlib.rcParams
    smallest = min(rc["xtick.labelsize"], rc["ytick.labelsize"], rc["legend.fontsize"], rc["font.size"])
    # a FIGURE_WIDTH-inch figure is 72 * FIGURE_WIDTH pt wide, shown at most COLUMN_PX px wide
    assert smallest * COLUMN_PX / (72 * FIGURE_WIDTH) >= MIN_TEXT_PX
    assert rc["figure.figsize"][0] == FIGURE_WIDTH and not rc["legend.frameon"] and rc["savefig.bbox"] == "tight"
    assert FONT_PT >= 9
