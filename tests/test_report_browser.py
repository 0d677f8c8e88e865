"""report.html in a real browser: headless Chromium driven over the DevTools protocol (a small stdlib
websocket client below, so no test dependency), clicking headers and typing into the filter as a reader would.

Ids, class names and column names carry HTML and script-breaking characters: the page must show them as text,
run its script without errors and hold no element they would have injected."""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from influence_signals.debug import main

NASTY_IDS = ["</script><b>x", "\"'&<>", "<img src=x onerror=alert(1)>", "{{ 7*7 }}"]
NASTY_CLASSES = ["ant", "<b>bee</b>", "c&t \"q\""]
NASTY_COLUMN = "\"'&<col>"


class DevTools:
    """The Chrome DevTools protocol over one websocket (RFC 6455 text frames, client-masked)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._chunk()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _chunk(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("DevTools closed the connection")
        return data

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self._chunk()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
                                         bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                         bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _message(self) -> dict[str, Any]:
        parts: list[bytes] = []
        while True:
            first, second = self._exactly(2)
            n = second & 0x7F
            n = struct.unpack(">H", self._exactly(2))[0] if n == 126 else struct.unpack(">Q", self._exactly(8))[0] if n == 127 else n
            payload = self._exactly(n)
            opcode = first & 0x0F
            if opcode == 0x9:  # ping
                self._send(0xA, payload)
            elif opcode == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            elif opcode in (0x0, 0x1):
                parts.append(payload)
                if first & 0x80:
                    message: dict[str, Any] = json.loads(b"".join(parts))
                    return message

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self._send(0x1, json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            message = self._message()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for seen in self.events:
                if seen.get("method") == event:
                    return seen
            self.events.append(self._message())
        raise TimeoutError(event)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the centre of the element."""
        box = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
                            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y --no-install-recommends chromium)")
    return found


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[DevTools]:
    profile = tmp_path_factory.mktemp("chromium")
    process = subprocess.Popen([chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1280,900",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        deadline, printed = time.monotonic() + 60, b""
        while b"DevTools listening on " not in printed:
            assert time.monotonic() < deadline and process.poll() is None, printed.decode(errors="replace")
            if select.select([process.stderr], [], [], 1.0)[0]:
                printed += os.read(process.stderr.fileno(), 4096)
        browser_url = printed.split(b"DevTools listening on ", 1)[1].split()[0].decode()
        port = urllib.parse.urlsplit(browser_url).port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            pages = [t for t in json.load(response) if t["type"] == "page"]
        tools = DevTools(pages[0]["webSocketDebuggerUrl"])
        tools.call("Page.enable")
        tools.call("Runtime.enable")
        tools.call("Page.addScriptToEvaluateOnNewDocument",  # an injected alert() would block the page: count it
                   source="window.alerts = 0; window.alert = function () { window.alerts += 1; };")
        yield tools
        tools.sock.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory) -> DevTools:
    """A debug run on a table whose ids, class names and a column name would break unescaped HTML; the
    nasty ids are on flipped rows, so they are flagged and in the table."""
    from sklearn.datasets import make_classification

    folder = tmp_path_factory.mktemp("browser_report")
    x, y = make_classification(n_samples=150, n_features=5, n_informative=4, n_redundant=0, n_classes=3,
                               n_clusters_per_class=1, class_sep=3.0, random_state=3)
    frame = pd.DataFrame(x, columns=[NASTY_COLUMN, "b", "c", "d", "e"])
    ids = [f"row-{i}" for i in range(len(frame))]
    observed = y.copy()
    for row, nasty in enumerate(NASTY_IDS):
        ids[row] = nasty
        observed[row] = (y[row] + 1) % 3
    frame[NASTY_COLUMN] = frame[NASTY_COLUMN].where(np.arange(len(frame)) != 10, 60.0)  # an anomaly
    frame.insert(0, "key", ids)
    frame["target"] = np.array(NASTY_CLASSES)[observed]
    frame.to_csv(folder / "nasty.csv", index=False)
    out = folder / "report"
    assert main(["debug", str(folder / "nasty.csv"), "--label", "target", "--id", "key", "--seeds", "1", "--folds", "3",
                 "--cores", "2", "--out", str(out)]) == 0
    browser.events.clear()
    browser.call("Page.navigate", url=(out / "report.html").as_uri())
    browser.wait_for("Page.loadEventFired")
    return browser


def column(page: DevTools, index: int, attribute: str | None = None) -> list[Any]:
    """The visible rows' cells of a column of the rows table, in page order (text, or an attribute's value)."""
    read = f"c.getAttribute({json.dumps(attribute)})" if attribute else "c.textContent.trim()"
    return page.evaluate("Array.from(document.querySelectorAll('#top-rows tbody tr')).filter(r => !r.hidden)"
                         f".map(r => r.cells[{index}]).map(c => {read})")


def test_the_page_runs_its_script_and_shows_every_nasty_value_as_text(page):
    assert not [e for e in page.events if e.get("method") == "Runtime.exceptionThrown"]
    assert page.evaluate("document.scripts.length") == 1 and page.evaluate("window.alerts") == 0
    assert page.evaluate("document.querySelectorAll('b, img').length") == 0  # nothing injected by an id or a label
    ids = column(page, 1)
    assert set(NASTY_IDS) <= set(ids), ids[:10]
    text = page.evaluate("document.body.textContent")
    assert NASTY_COLUMN in text and all(name in text for name in NASTY_CLASSES)
    assert page.evaluate("document.getElementById('filter-count').textContent") == f"{len(ids)} of {len(ids)} rows"


def test_clicking_a_header_sorts_the_rows_numerically_and_again_reverses(page):
    before = column(page, 1)
    page.click("#top-rows thead th:nth-child(5) button")  # confidence: highest first
    confidence = [float(v) for v in column(page, 4, "data-sort")]
    assert confidence == sorted(confidence, reverse=True) and column(page, 1) != before
    assert page.evaluate("document.querySelector('#top-rows thead th:nth-child(5)').getAttribute('aria-sort')") == "descending"
    page.click("#top-rows thead th:nth-child(5) button")
    assert [float(v) for v in column(page, 4, "data-sort")] == sorted(confidence)
    page.click("#top-rows thead th:nth-child(2) button")  # ids: row-9 before row-10 (numeric-aware text)
    numbered = [int(i.split("-")[1]) for i in column(page, 1) if i.startswith("row-")]
    assert numbered == sorted(numbered) and len(numbered) > 5
    page.click("#top-rows thead th:nth-child(1) button")  # back to the ranking
    assert [int(r) for r in column(page, 0)] == list(range(1, len(before) + 1)) and column(page, 1) == before


def test_the_filter_box_and_the_type_selector_hide_rows(page):
    total = len(column(page, 1))
    page.click("#filter-text")
    page.call("Input.insertText", text="</script>")
    assert column(page, 1) == [NASTY_IDS[0]]
    assert page.evaluate("document.getElementById('filter-count').textContent") == f"1 of {total} rows"
    page.evaluate("const f = document.getElementById('filter-text'); f.value = ''; f.dispatchEvent(new Event('input'))")
    page.click("#issue-mislabel button.show")  # the card's button selects its rows
    kinds = column(page, 2)
    assert kinds and set(kinds) == {"label issue"} and len(kinds) < total
    assert page.evaluate("document.getElementById('filter-type').value") == "mislabel"
    page.evaluate("const s = document.getElementById('filter-type'); s.value = 'all'; s.dispatchEvent(new Event('change'))")
    assert len(column(page, 1)) == total
