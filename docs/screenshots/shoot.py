"""Screenshots of a built book, offline: ``python docs/screenshots/shoot.py HTML_DIR PREFIX``.

Serves ``HTML_DIR`` (``_build/html``) on 127.0.0.1, opens pages in headless Chromium with every
other host unresolvable, waits for MathJax, and writes ``PREFIX-<name>.png`` here: the ledger,
Table 3, one verdict table and one figure, each at a 1280 px wide window (the ledger also at a
phone's 400 px). Talks to Chromium over the DevTools protocol (``websocket-client``, which
Jupyter installs).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))
from book_browser import Browser, serve  # noqa: E402

#: name -> (page, CSS selector of what to show, window width)
SHOTS = {
    "ledger": ("book/claims.html", "#main-paper-theory-section-2", 1280),
    "ledger-phone": ("book/claims.html", "#main-paper-theory-section-2", 400),
    "table3": ("notebooks/training/attention_and_moe.html", "#table-3-measured", 1280),
    "verdicts": ("notebooks/training/muon_vs_adamw.html", "#verdicts", 1280),
    "figure": ("notebooks/theory/newton_schulz.html", "figure", 1280),
}


def main(argv: list[str]) -> None:
    html_dir, prefix = Path(argv[0]), argv[1]
    names = argv[2:] or list(SHOTS)
    server = serve(html_dir)
    browser = Browser()
    try:
        for name in names:
            page, selector, width = SHOTS[name]
            browser.open(f"http://127.0.0.1:{server.server_address[1]}/{page}", width)
            out = HERE / f"{prefix}-{name}.png"
            browser.shot(selector, out)
            print(f"wrote {out}")
    finally:
        browser.close()
        server.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
