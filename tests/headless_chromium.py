"""Real headless Chromium for the report tests, driven over the DevTools protocol on a pipe.

``Chromium.find()`` returns the Debian ``chromium`` binary, installing it with apt-get when it is
missing and we are root (``ensure_chromium``); ``Browser`` starts it with
``--remote-debugging-pipe`` (requests and answers are NUL-terminated JSON on fds 3 and 4, so no
WebSocket client is needed) and offers what the tests use: open a page and wait for its load,
evaluate an expression in it, and save a PNG screenshot of the whole page or of one element.
Protocol: chromedevtools.github.io/devtools-protocol (Target, Page, Runtime).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser")
APT_TIMEOUT_S = 900


class BrowserUnavailable(RuntimeError):
    """No Chromium here and none can be installed (reason in the message)."""


def ensure_chromium() -> str:
    """Path of a Chromium binary; apt-get installs Debian's ``chromium`` if none is present."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BrowserUnavailable("no chromium on PATH and not root with apt-get to install it")
    # one installer at a time (xdist workers may both get here)
    with open(os.path.join(tempfile.gettempdir(), "snplab-chromium-install.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = shutil.which("chromium")
        if found:
            return found
        return _apt_install()


def _apt_install() -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300",
                 "chromium"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
            raise BrowserUnavailable(f"{' '.join(cmd[:2])} failed: {tail[0]}")
    found = shutil.which("chromium")
    if not found:
        raise BrowserUnavailable("apt-get installed chromium but it is not on PATH")
    return found


class Browser:
    """One headless Chromium process with one page target."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1000) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="snplab-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # the child sees our pipe ends as fds 3 (its input) and 4 (its output)
        def _fds() -> None:  # in the child, before exec; high copies first so none clobbers
            r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)
        self.proc = subprocess.Popen(
            [binary, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--hide-scrollbars", f"--window-size={width},{height}",
             f"--user-data-dir={self._profile.name}", "about:blank"],
            preexec_fn=_fds, pass_fds=(3, 4),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self._events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target,
                                  flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width,
                  height=height, deviceScaleFactor=1, mobile=False)

    # -- protocol --------------------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise BrowserUnavailable("chromium closed its DevTools pipe")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    def call(self, method: str, session: bool = False, timeout: float = 60.0,
             **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self._session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self._events.append(m)

    def _wait_event(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self._events):
                if e.get("method") == method:
                    return self._events.pop(i)
            self._events.append(self._read_message(deadline))

    # -- what the tests use ----------------------------------------------------------------------

    def open(self, url: str) -> None:
        self._events.clear()
        self.call("Page.navigate", session=True, url=url)
        self._wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", session=True, expression=expression,
                      returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    def screenshot(self, path: Path, selector: str | None = None, max_height: int = 12000) -> Path:
        """A PNG of the page (from the top, at most ``max_height`` px) or of one element."""
        if selector is None:
            box = self.eval("({x: 0, y: 0, width: document.documentElement.scrollWidth, "
                            "height: document.documentElement.scrollHeight})")
        else:
            box = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                            " e.scrollIntoView(); const r = e.getBoundingClientRect();"
                            " return {x: r.left + scrollX, y: r.top + scrollY, width: r.width,"
                            " height: r.height}; })()")
        clip = {"x": box["x"], "y": box["y"], "width": max(1, box["width"]),
                "height": max(1, min(box["height"], max_height)), "scale": 1}
        r = self.call("Page.captureScreenshot", session=True, format="png", clip=clip,
                      captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(r["data"]))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - closing a browser that is already gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
