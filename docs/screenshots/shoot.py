"""Screenshots of a built book, offline: ``python docs/screenshots/shoot.py HTML_DIR PREFIX``.

Serves ``HTML_DIR`` (``_build/html``) on 127.0.0.1, opens pages in headless Chromium with every
other host unresolvable, waits for MathJax, and writes ``PREFIX-<name>.png`` here: the ledger,
Table 3, one verdict table and one figure, each at a 1280 px wide window (the ledger also at a
phone's 400 px). Talks to Chromium over the DevTools protocol (``websocket-client``, which
Jupyter installs).
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import websocket

HERE = Path(__file__).resolve().parent
#: name -> (page, CSS selector of what to show, window width)
SHOTS = {
    "ledger": ("book/claims.html", "#main-paper-theory-section-2", 1280),
    "ledger-phone": ("book/claims.html", "#main-paper-theory-section-2", 400),
    "table3": ("notebooks/training/attention_and_moe.html", "#table-3-measured", 1280),
    "verdicts": ("notebooks/training/muon_vs_adamw.html", "#verdicts", 1280),
    "figure": ("notebooks/theory/newton_schulz.html", "figure", 1280),
}


class Browser:
    """One headless Chromium tab driven over the DevTools protocol."""

    def __init__(self):
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if not chromium:
            sys.exit("needs Chromium (apt-get install chromium)")
        self.profile = tempfile.mkdtemp()
        self.proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        for _ in range(200):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        tabs = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json").read())
        page = next(t for t in tabs if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def open(self, url: str, width: int, height: int = 900):
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=width < 600)
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        for _ in range(300):  # the page loaded and MathJax finished typesetting
            if self.evaluate("document.readyState === 'complete' && (!window.MathJax || !MathJax.startup || "
                             "!MathJax.startup.promise || MathJax.startup.document.state() >= 200)"):
                break
            time.sleep(0.1)
        time.sleep(1.0)

    def shot(self, selector: str, path: Path, max_height: int = 1400):
        rect = self.evaluate(f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            el.scrollIntoView();
            const r = el.getBoundingClientRect();
            return {{x: 0, y: r.top + window.scrollY, width: document.documentElement.clientWidth, height: r.height}};
        }})()""")
        clip = {"x": 0, "y": max(rect["y"] - 10, 0), "width": rect["width"], "height": min(rect["height"] + 20, max_height), "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self):
        self.ws.close()
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def serve(folder: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


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
