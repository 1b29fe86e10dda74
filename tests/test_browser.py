"""End-to-end: the real server in a real (headless) browser.

Starts ``streamlit run app.py`` and headless Chromium, drives Chromium through the DevTools protocol
(websocket client: the ``websockets`` package, a dependency of Streamlit), opens the Ranks page, waits
until a plotly chart and the params/MACs metrics are on screen, and saves a screenshot. Skipped when
``/usr/bin/chromium`` is missing. Set ``LRVIZ_SCREENSHOT=/path/file.png`` to keep the screenshot.
"""

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (localhost only)
        return r.read().decode()


def wait_for(fn, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    last_exc = None
    while time.time() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # not up yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_exc!r})")


def stop(proc: subprocess.Popen) -> None:
    """End a process started by this test, with the process group it leads (chromium's helpers)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class DevTools:
    """Minimal Chrome DevTools protocol client over one websocket."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(ws_url, max_size=64 * 2**20, open_timeout=20))
        self.ids = itertools.count(1)

    def call(self, method: str, timeout: float = 60.0, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.time() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.time())))
            if reply.get("id") == msg_id:  # skip events
                if "error" in reply:
                    raise AssertionError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return res.get("result", {}).get("value")

    def close(self):
        self._stack.close()


def test_ranks_page_renders_in_chromium(tmp_path):
    pytest.importorskip("websockets.sync.client")
    app_port, dbg_port = free_port(), free_port()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.address", "127.0.0.1",
         "--server.port", str(app_port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    profile = tempfile.mkdtemp(prefix="lrviz-chromium-")
    browser = None
    try:
        base = f"http://127.0.0.1:{app_port}"
        wait_for(lambda: http_get(f"{base}/_stcore/health") == "ok", 90, "the Streamlit server")
        browser = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", f"--remote-debugging-port={dbg_port}", "--window-size=1500,2200", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        targets = wait_for(
            lambda: [t for t in json.loads(http_get(f"http://127.0.0.1:{dbg_port}/json/list")) if t.get("type") == "page"],
            60, "Chromium's DevTools endpoint",
        )
        cdp = DevTools(targets[0]["webSocketDebuggerUrl"])
        try:
            cdp.call("Page.enable")
            cdp.call("Runtime.enable")
            cdp.call("Emulation.setDeviceMetricsOverride", width=1500, height=2200, deviceScaleFactor=1, mobile=False)
            cdp.call("Page.navigate", url=f"{base}/ranks")
            probe = (
                "(() => { const t = document.body ? document.body.innerText : '';"
                " return JSON.stringify({plots: document.querySelectorAll('.js-plotly-plot').length,"
                " params: t.includes('Params'), macs: t.includes('MACs / image'), flops: t.includes('FLOPs / image'),"
                " running: !!document.querySelector('[data-testid=\"stStatusWidget\"]'),"
                " error: !!document.querySelector('[data-testid=\"stException\"]')}); })()"
            )

            def ready():
                state = json.loads(cdp.js(probe) or "{}")
                assert not state.get("error"), "the page shows an exception"
                return state if state.get("plots", 0) >= 2 and state["params"] and state["macs"] and state["flops"] else None

            state = wait_for(ready, 150, "the Ranks page with plotly charts and the params/MACs metrics", interval=1.0)
            time.sleep(2.0)  # let plotly finish drawing
            shot = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
        finally:
            cdp.close()
        path = tmp_path / "ranks.png"
        path.write_bytes(shot)
        if os.environ.get("LRVIZ_SCREENSHOT"):
            shutil.copy(path, os.environ["LRVIZ_SCREENSHOT"])
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 30_000, len(shot)
        from PIL import Image, ImageStat

        img = Image.open(path).convert("L")
        assert img.size == (1500, 2200)
        assert ImageStat.Stat(img).stddev[0] > 10  # not a blank page
        assert state["plots"] >= 2
    finally:
        if browser is not None:
            stop(browser)
        stop(server)
        shutil.rmtree(profile, ignore_errors=True)
