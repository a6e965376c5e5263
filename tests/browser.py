"""A real headless Chromium for the tests, driven over the DevTools protocol (no mock, no new
dependency: ``websockets`` comes with ``uvicorn[standard]``).

Debian's ``chromium`` package (``make test`` installs it where it can: root or sudo).  Without it
the test skips, saying why, unless ``TINY_DANCER_REQUIRE_SERVICES=1`` (then it fails: a CI run
cannot pass with the page untested).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from pg import service_unavailable


def chromium_path() -> str:
    found = os.environ.get("TINY_DANCER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        service_unavailable("no chromium on PATH: the browser test needs Debian's chromium (make test installs it "
                            "as root or with sudo: apt-get install -y chromium)")
    return str(found)


class Browser:
    """One headless Chromium and one page of it."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 1500) -> None:
        from websockets.sync.client import connect

        args = [chromium_path(), "--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
                "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(p for p in pages if p["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024)
        self._id = 0
        self.send("Page.enable")
        self.send("Network.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_loaded(url.split("?")[0])

    def wait_loaded(self, prefix: str = "") -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = self.evaluate("[document.readyState, location.href]")
            if state and state[0] == "complete" and state[1].startswith(prefix) and state[1] != "about:blank":
                return
            time.sleep(0.05)
        raise TimeoutError(f"the page at {prefix} did not load")

    def submit(self, form_js: str, then: str) -> None:
        """Run ``form_js`` (which submits a form) and wait for the page that answers it at ``then``."""
        self.evaluate("window.__old = true")
        self.evaluate(form_js)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.evaluate("window.__old === undefined && document.readyState === 'complete'") and \
                    self.evaluate("location.href").startswith(then):
                return
            time.sleep(0.05)
        raise TimeoutError(f"the form did not lead to {then}")

    def cookies(self, url: str) -> list[dict[str, Any]]:
        return list(self.send("Network.getCookies", urls=[url])["cookies"])

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
