"""Headless Chromium driven over the DevTools protocol (``websocket-client``, which Jupyter
installs), with every host but 127.0.0.1 unresolvable: what the book's browser test and
``docs/screenshots/shoot.py`` open the built pages with."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import websocket


class Browser:
    """One headless Chromium tab driven over the DevTools protocol."""

    def __init__(self):
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if not chromium:
            raise RuntimeError("needs Chromium: `make test` installs Debian's package (apt-get install chromium)")
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
        for _ in range(600):  # the new page has loaded
            if self.evaluate(f"document.readyState === 'complete' && location.href === {json.dumps(url)}"):
                break
            time.sleep(0.05)
        # and MathJax has typeset it (its startup promise resolves after the first typesetting)
        self.evaluate("(async () => { if (window.MathJax && MathJax.startup && MathJax.startup.promise) "
                      "await MathJax.startup.promise; return true; })()")
        time.sleep(0.3)  # layout settles (fonts, the theme's scripts)

    def shot(self, selector: str, path: Path, max_height: int = 1400):
        """A PNG of the element ``selector`` picks (at most ``max_height`` px of it), at the
        window's width, below the theme's sticky header."""
        width = self.evaluate("window.innerWidth")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=max_height + 200, deviceScaleFactor=1, mobile=width < 600)
        time.sleep(0.3)
        rect = self.evaluate(f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY - 90);  // below the sticky header
            const r = el.getBoundingClientRect();
            return {{y: r.top + window.scrollY, height: r.height}};  // the clip is in page coordinates
        }})()""")
        time.sleep(0.3)
        clip = {"x": 0, "y": max(rect["y"] - 10, 0), "width": width, "height": min(rect["height"] + 20, max_height), "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip)["data"]
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
