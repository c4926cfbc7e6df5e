"""index.html of `golf-audit triage` in headless Chromium, driven over the DevTools protocol on a
pipe (`--remote-debugging-pipe`: no port, no network): the page loads from file://, has one row
per PR, sorts by claimed score (both directions), filters by text and by verdict, opens a PR's
findings with one click, logs no console error or exception, requests nothing but itself; and a
screenshot of it is a non-empty PNG (kept in the test's tmp dir)."""
from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triage_fake_repo as fake  # noqa: E402

from harness.triage.report import write_all  # noqa: E402
from harness.triage.run import TriageOptions, triage  # noqa: E402


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail("chromium is not installed but could be: run `bash install.sh` (it runs apt-get install chromium)")
    pytest.skip("chromium is not installed and cannot be installed here (not root, or no apt-get); "
                "install chromium to run the triage page test")


class CDP:
    """A minimal DevTools-protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out;
    messages are JSON terminated by NUL)."""

    def __init__(self, binary: str, profile: Path):
        cmd_r, self._cmd_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--metrics-recording-only", "--mute-audio", f"--user-data-dir={profile}",
                "--remote-debugging-pipe", "--window-size=1280,1000", "about:blank"]
        script = f'exec "$@" 3<&{cmd_r} 4>&{resp_w}'
        self.proc = subprocess.Popen(["bash", "-c", script, "bash", *args], pass_fds=(cmd_r, resp_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(cmd_r)
        os.close(resp_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._resp_r, 1 << 16)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"chromium closed the pipe: {err[-2000:]}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, timeout: float = 60, browser: bool = False) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not browser:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def js(self, expr: str):
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise AssertionError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", browser=True, timeout=10)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._cmd_w)
        os.close(self._resp_r)


def png_facts(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the decompressed image data) of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, width, height, idat = 8, 0, 0, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("triage_page")
    repo = fake.build(tmp / "repo")
    doc = triage(TriageOptions(repo=str(repo), claims=True, jobs=2))
    write_all(doc, tmp / "out")
    return tmp / "out" / "index.html", doc


def visible(cdp: CDP) -> list[int]:
    return cdp.js("[...document.querySelectorAll('#prs tbody tr.pr')].filter(tr => !tr.classList.contains('hidden'))"
                  ".map(tr => +tr.dataset.pr)")


def test_page_in_headless_chromium(page, tmp_path):
    html_path, doc = page
    binary = chromium()
    cdp = CDP(binary, tmp_path / "profile")
    try:
        target = cdp.send("Target.createTarget", {"url": "about:blank"})
        cdp.session = cdp.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                               browser=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.send(f"{domain}.enable")
        cdp.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 1000, "deviceScaleFactor": 1,
                                                        "mobile": False})
        cdp.send("Page.navigate", {"url": html_path.as_uri()})
        cdp.wait_event("Page.loadEventFired")

        prs = [r["pr"] for r in doc["prs"]]
        assert cdp.js("document.title").startswith("golf-audit triage")
        assert sorted(visible(cdp)) == prs, "one row per PR"
        assert cdp.js("document.querySelectorAll('#score-plot rect.bar').length") >= 2
        assert cdp.js("document.getElementById('shown').textContent") == f"{len(prs)} of {len(prs)} PRs shown"

        # sort by claimed score: ascending, PRs without a score last; a second click reverses
        scored = sorted((r for r in doc["prs"] if r["claimed"].get("val_bpb") is not None),
                        key=lambda r: (r["claimed"]["val_bpb"], r["pr"]))
        unscored = [r["pr"] for r in doc["prs"] if r["claimed"].get("val_bpb") is None]
        cdp.js("document.querySelector('th[data-key=bpb]').click()")
        assert visible(cdp) == [r["pr"] for r in scored] + sorted(unscored)
        shown = cdp.js("[...document.querySelectorAll('#prs tbody tr.pr')].map(tr => tr.querySelector('.bpb').textContent)")
        assert shown[:len(scored)] == [f"{r['claimed']['val_bpb']:.4f}" for r in scored]
        assert cdp.js("document.querySelector('th[data-key=bpb]').className") == "asc"
        cdp.js("document.querySelector('th[data-key=bpb]').click()")
        desc = sorted(scored, key=lambda r: (-r["claimed"]["val_bpb"], r["pr"]))
        assert visible(cdp)[:len(scored)] == [r["pr"] for r in desc]
        assert cdp.js("document.querySelector('th[data-key=bpb]').className") == "desc"

        # filter: free text, then the verdict menu
        def set_input(sel: str, value: str) -> None:
            cdp.js(f"(() => {{ const el = document.querySelector({json.dumps(sel)}); el.value = {json.dumps(value)};"
                   " el.dispatchEvent(new Event('input', {bubbles: true})); })()")
        set_input("#filter", "train-before-score")
        assert visible(cdp) == [2]
        set_input("#filter", "")
        cdp.js("(() => { const s = document.getElementById('verdict'); s.value = 'not-audited';"
               " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
        want = sorted(r["pr"] for r in doc["prs"] if r["verdict"] == "not-audited")
        assert sorted(visible(cdp)) == want == [6, 9]
        cdp.js("(() => { const s = document.getElementById('verdict'); s.value = '';"
               " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
        assert sorted(visible(cdp)) == prs

        # a PR's findings: one click on its row
        assert cdp.js("document.querySelector('tr.details[data-for=\"2\"]').classList.contains('hidden')")
        cdp.js("document.querySelector('tr.pr[data-pr=\"2\"]').click()")
        assert not cdp.js("document.querySelector('tr.details[data-for=\"2\"]').classList.contains('hidden')")
        text = cdp.js("document.querySelector('tr.details[data-for=\"2\"]').textContent")
        assert "train-before-score" in text and "train_gpt.py:" in text

        shot = base64.b64decode(cdp.send("Page.captureScreenshot", {"format": "png"})["data"])
        (tmp_path / "index.png").write_bytes(shot)
        cdp.send("Runtime.evaluate", {"expression": "1"})  # flush pending events
        errors = [e for e in cdp.events if e.get("method") == "Runtime.exceptionThrown"
                  or (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert"))
                  or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")]
        requests = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
    finally:
        cdp.close()
    assert errors == [], errors
    assert requests and all(u == html_path.as_uri() for u in requests), requests
    width, height, variety = png_facts((tmp_path / "index.png").read_bytes())
    assert (width, height) == (1280, 1000)
    assert (tmp_path / "index.png").stat().st_size > 10_000 and variety > 16, "a blank screenshot"


def test_plain_headless_screenshot(page, tmp_path):
    """`chromium --headless --screenshot` of the page, as a maintainer would take it."""
    html_path, _ = page
    out = tmp_path / "shot.png"
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}",
                           f"--screenshot={out}", "--window-size=1280,900", html_path.as_uri()],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    width, height, variety = png_facts(out.read_bytes())
    assert (width, height) == (1280, 900) and variety > 16
