"""A small headless-Chromium driver for tests, speaking the Chrome DevTools Protocol.

CDP travels over a pipe (``--remote-debugging-pipe``: commands in on fd 3, replies out on fd 4,
each a JSON message ended by a NUL byte) rather than a websocket: no client library, no port
to pick or to race for. Usage::

    with Browser() as browser:
        browser.open("file:///.../index.html")
        browser.evaluate("document.title")
        browser.screenshot(path)
        assert browser.console_errors() == []
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900",
         "--remote-debugging-pipe")


_TRAMPOLINE = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
               "os.close(int(sys.argv[1])); os.close(int(sys.argv[2])); os.execv(sys.argv[3], sys.argv[3:])")


class BrowserError(RuntimeError):
    """A CDP command failed, timed out, or the browser exited."""


class Browser:
    """One headless Chromium with one page; console errors are collected from the start."""

    def __init__(self, executable: str = CHROMIUM, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="ablate-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Chromium expects the pipe on fds 3 and 4 exactly. A tiny Python trampoline moves the
        # ends there and execs Chromium (preexec_fn would do it too, but is unsafe in a process
        # with threads). The ends are parked above 9 first so neither dup2 can clobber the other.
        child_in = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r)
        os.close(from_child_w)
        self._log = Path(self._profile) / "chromium-stderr.log"
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _TRAMPOLINE, str(child_in), str(child_out), executable, *FLAGS,
                 f"--user-data-dir={self._profile}", "about:blank"],
                pass_fds=(child_in, child_out), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log)
        os.close(child_in)
        os.close(child_out)
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self._session = self._attach_page()
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    # -- protocol ---------------------------------------------------------------------------

    def _read_loop(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_child, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._cond:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self._events.append(message)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None, *, browser_level: bool = False) -> dict[str, Any]:
        """Run one CDP command on the page (or the browser) and return its result."""
        with self._cond:
            self._next_id += 1
            msg_id = self._next_id
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if not browser_level:
            message["sessionId"] = self._session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: msg_id in self._replies or self._closed, self.timeout):
                raise BrowserError(f"{method}: no reply in {self.timeout} s")
            if msg_id not in self._replies:
                raise BrowserError(f"{method}: the browser exited: {self._stderr_tail()}")
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _attach_page(self) -> str:
        targets = self.send("Target.getTargets", browser_level=True)["targetInfos"]
        pages = [t for t in targets if t["type"] == "page"]
        target = pages[0]["targetId"] if pages else \
            self.send("Target.createTarget", {"url": "about:blank"}, browser_level=True)["targetId"]
        return self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                         browser_level=True)["sessionId"]

    def _wait_event(self, method: str, after: int) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self._events[after:] if e.get("method") == method
                         and e.get("sessionId") == self._session), None)

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None or self._closed, self.timeout):
                raise BrowserError(f"no {method} in {self.timeout} s")
            event = found()
        if event is None:
            raise BrowserError(f"the browser exited waiting for {method}: {self._stderr_tail()}")
        return event

    def _stderr_tail(self) -> str:
        return self._log.read_text(errors="replace")[-2000:]

    # -- the test-facing API -------------------------------------------------------------

    def open(self, url: str) -> None:
        """Navigate and wait for the load event (images included)."""
        with self._cond:
            mark = len(self._events)
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self._wait_event("Page.loadEventFired", mark)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited), as JSON-able Python."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details["text"]
            raise BrowserError(f"JavaScript error: {text}")
        return result["result"].get("value")

    def screenshot(self, path: Path | str, full_page: bool = True) -> Path:
        """A PNG of the page (the whole scrollable page by default)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params |= {"captureBeyondViewport": True,
                       "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}
        data = self.send("Page.captureScreenshot", params)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    def console_errors(self) -> list[str]:
        """Errors seen so far: console.error calls, uncaught exceptions, failed loads (Log domain)."""
        with self._cond:
            events = list(self._events)
        errors = []
        for event in events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                errors.append(f"{entry.get('text', '')} {entry.get('url', '')}".strip())
        return errors

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self.send("Browser.close", browser_level=True)
            except BrowserError:
                pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        os.close(self._to_child)
        self._reader.join(timeout=5)
        os.close(self._from_child)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
