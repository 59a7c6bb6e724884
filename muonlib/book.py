"""What the book's notebooks share: one figure style, and numbers glued into the prose.

Prose never types a number: a notebook computes it and ``glue("name", value)`` hands it to
the page (``{glue:text}`name:.2f``` in Markdown). On Colab, where the book's builder is not
installed, ``glue`` only returns the value.
"""

from __future__ import annotations

from typing import Any

OPTIMIZER_NAMES = {"adamw": "AdamW", "muon": "Muon"}
OPTIMIZER_COLORS = {"adamw": "#4C72B0", "muon": "#DD8452"}  # seaborn's first two, fixed per optimizer
PAPER_COLOR = "#7f7f7f"  # the paper's numbers, drawn beside ours


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


def house_style() -> None:
    """Seaborn's white grid, vector figures, sizes that fit the book's column."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    mpl.rcParams.update({"figure.figsize": (7.5, 3.4), "figure.dpi": 110, "savefig.dpi": 200,
                         "axes.titlesize": "medium", "legend.frameon": False})
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("svg")
    except ImportError:
        pass
