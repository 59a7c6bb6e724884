"""What the book's notebooks share: one figure style, numbers glued into the prose, and the
MathJax the pages load from the book itself.

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

import tarfile
from pathlib import Path
from typing import Any

from .data import Source, fetch_source, npm_pack

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
