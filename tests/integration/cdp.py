"""A small client of the Chrome DevTools Protocol over a pipe, to drive headless Chromium
from a test: open a page at a given viewport, run script in it, click, wait.

Chromium started with ``--remote-debugging-pipe`` reads commands on its file descriptor 3
and writes answers and events on 4, each a JSON object ended by a NUL byte. No port is
opened and no package beyond the standard library is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Browser", "CDPError"]


_NAVIGATING = ("Inspected target navigated or closed", "Execution context was destroyed",
               "Cannot find context with specified id")
"""What Chrome answers an evaluation that a navigation interrupted."""


class CDPError(Exception):
    """Chromium answered a command with an error, or did not answer in time."""


class Browser:
    """One headless Chromium with one page; a context manager."""

    def __init__(self, chromium: str, profile: Path, *, width: int = 1400,
                 height: int = 1000, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Chromium expects its pipe ends as descriptors 3 (commands) and 4 (answers). The
        # child moves them there (through fresh numbers, should either be 3 or 4 already);
        # Python's other descriptors are not inheritable and do not reach it.

        def child_fds() -> None:
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-sync",
             "--disable-component-update", "--disable-default-apps", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._next_id = 0
        self.session = ""
        try:
            target = self.command("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.command("Target.attachToTarget", targetId=target,
                                        flatten=True)["sessionId"]
            self.viewport(width, height)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)

    def command(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command (to the page once attached) and return its result."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            for answer in self._read(deadline):
                if answer.get("id") == self._next_id:
                    if "error" in answer:
                        raise CDPError(f"{method}: {answer['error']}")
                    result: dict[str, Any] = answer.get("result", {})
                    return result

    def _read(self, deadline: float) -> list[dict[str, Any]]:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise CDPError("Chromium did not answer")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise CDPError("Chromium closed its pipe")
            self._buf += chunk
        *whole, self._buf = self._buf.split(b"\0")
        return [json.loads(m) for m in whole if m]

    def viewport(self, width: int, height: int) -> None:
        self.command("Emulation.setDeviceMetricsOverride", width=width, height=height,
                     deviceScaleFactor=1, mobile=False)

    def js(self, expression: str) -> Any:
        """The value of a script expression in the page (promises awaited)."""
        got = self.command("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in got:
            raise CDPError(f"{expression}: {got['exceptionDetails']}")
        return got["result"].get("value")

    def _poll(self, expression: str) -> Any:
        """:meth:`js` for a polling loop: an evaluation that a navigation cut short (the
        page it ran in went away) is no value yet, not an error."""
        try:
            return self.js(expression)
        except CDPError as exc:
            if any(m in str(exc) for m in _NAVIGATING):
                return None
            raise

    def wait(self, what: str, expression: str, timeout_s: float | None = None) -> Any:
        """Poll a script expression until it is truthy; return its value."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            value = self._poll(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CDPError(f"timed out waiting for {what} ({expression})")
            time.sleep(0.1)

    def open(self, url: str) -> None:
        """Load ``url`` and wait until the dashboard says it is ready."""
        self.command("Page.navigate", url=url)
        self.wait("the page to load",
                  "document.readyState === 'complete' && document.body"
                  " && document.body.dataset.state === 'ready'")

    def settle(self, expression: str, check: Callable[[Any], bool] = bool) -> Any:
        """Wait until the page is ready again after a click and ``expression`` passes
        ``check``; return its value."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            value = self._poll("document.body && document.body.dataset.state === 'ready' "
                               f"? ({expression}) : null")
            if value is not None and check(value):
                return value
            if time.monotonic() > deadline:
                raise CDPError(f"timed out waiting for {expression}: {value!r}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> bytes:
        """A PNG of the whole page at the current viewport width."""
        import base64
        data = base64.b64decode(self.command("Page.captureScreenshot", format="png",
                                             captureBeyondViewport=True)["data"])
        path.write_bytes(data)
        return data
