"""Open a report.html in headless Chromium, as a reader would, and check what a unit test cannot see.

At a 1400 px wide window: nothing is logged as an error or warning (console, uncaught exception, failed
resource load), every figure image decodes, and the page is no wider than the window (wide tables scroll
inside their own box). Optionally saves a full-page screenshot to look at.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages
separated by NUL bytes on file descriptors 3 and 4), so no WebSocket library is needed.

``python -m harness.report.browser reports/quickstart/report.html [--screenshot shot.png]`` exits 0 when
the page passes, 1 when it does not, 2 when Chromium is not installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WIDTH = 1400
_HEIGHT = 900
_TIMEOUT_S = 60.0
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-pipe")
_PROBE = """JSON.stringify({
  images: document.images.length,
  broken: [...document.images].filter((i) => !i.complete || i.naturalWidth === 0).map((i) => i.alt),
  page_width: document.documentElement.scrollWidth,
  window_width: window.innerWidth,
})"""


def find_chromium() -> str | None:
    """The first Chromium on PATH, or None."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@dataclass(frozen=True)
class BrowserCheck:
    """What Chromium saw: error/warning lines, images (and which did not decode), page and window width."""

    console: list[str]
    images: int
    broken: list[str]
    page_width: int
    window_width: int

    @property
    def problems(self) -> list[str]:
        found = [f"console: {line}" for line in self.console]
        found += [f"figure image did not load: {alt[:80]}" for alt in self.broken]
        if self.page_width > self.window_width:
            found.append(f"page is {self.page_width} px wide in a {self.window_width} px window")
        return found


class _DevTools:
    """A DevTools-protocol session with one page, over Chromium's debugging pipe."""

    def __init__(self, browser: str) -> None:
        self._to_chrome, self._from_chrome = os.pipe(), os.pipe()
        self._profile = tempfile.TemporaryDirectory(prefix="qlora-chromium-", ignore_cleanup_errors=True)
        self._process = subprocess.Popen(
            [browser, *_FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=self._wire_pipe,
        )
        os.close(self._to_chrome[0])
        os.close(self._from_chrome[1])
        self._buffer, self._next_id, self.events = b"", 0, []
        self._session: str | None = None
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def _wire_pipe(self) -> None:
        """In the child: Chromium reads commands on fd 3 and writes replies on fd 4.

        Both ends are first moved above 10, so placing one on 3 or 4 cannot overwrite the other.
        """
        commands, replies = (
            fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (self._to_chrome[0], self._from_chrome[1])
        )
        os.dup2(commands, 3)
        os.dup2(replies, 4)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([self._from_chrome[0]], [], [], wait)[0]:
                raise TimeoutError(f"Chromium did not answer within {_TIMEOUT_S:.0f} s")
            chunk = os.read(self._from_chrome[0], 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one command and return its result; events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params or {}}
        if self._session is not None:
            command["sessionId"] = self._session
        os.write(self._to_chrome[1], json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + _TIMEOUT_S
        while True:
            message = self._read(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"DevTools {method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str) -> None:
        deadline = time.monotonic() + _TIMEOUT_S
        while not any(m.get("method") == event for m in self.events):
            self.events.append(self._read(deadline))

    def close(self) -> None:
        """Ask Chromium to quit (its helpers leave with it), kill it if it does not."""
        self._session = None
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):  # quit before answering, or hangs
            self.send("Browser.close")
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_chrome[1])
        os.close(self._from_chrome[0])
        self._profile.cleanup()


def _complaints(events: list[dict[str, Any]]) -> list[str]:
    """Errors and warnings among the page's events: console calls, uncaught exceptions, log entries."""
    lines = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            lines.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            lines.append(params["exceptionDetails"].get("text", "uncaught exception"))
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            entry = params["entry"]
            lines.append(f"{entry['text']} {entry.get('url', '')}".strip())
    return lines


def check_report(page: Path, browser: str, screenshot: Path | None = None) -> BrowserCheck:
    """Load ``page`` at 1400 px in ``browser`` and report what it saw; optionally save a screenshot."""
    tools = _DevTools(browser)
    try:
        for domain in ("Runtime", "Log", "Page"):
            tools.send(f"{domain}.enable")
        metrics = {"width": WIDTH, "height": _HEIGHT, "deviceScaleFactor": 1, "mobile": False}
        tools.send("Emulation.setDeviceMetricsOverride", metrics)
        tools.events.clear()
        tools.send("Page.navigate", {"url": page.resolve().as_uri()})
        tools.wait_for("Page.loadEventFired")
        probe = tools.send("Runtime.evaluate", {"expression": _PROBE, "returnByValue": True})
        seen = json.loads(probe["result"]["value"])
        if screenshot is not None:
            shot = tools.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        return BrowserCheck(_complaints(tools.events), **seen)
    finally:
        tools.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.report.browser", description=__doc__.split("\n")[0]
    )
    parser.add_argument("page", type=Path, help="a report.html")
    parser.add_argument("--screenshot", type=Path, default=None, help="also save a full-page screenshot")
    args = parser.parse_args(argv)
    browser = find_chromium()
    if browser is None:
        print(f"no Chromium on PATH (looked for {', '.join(BROWSERS)})", file=sys.stderr)
        return 2
    check = check_report(args.page, browser, args.screenshot)
    for problem in check.problems:
        print(f"{args.page}: {problem}", file=sys.stderr)
    print(f"{args.page}: {check.images} figure(s), {len(check.problems)} problem(s) at {WIDTH} px")
    return 1 if check.problems else 0


if __name__ == "__main__":
    sys.exit(main())
