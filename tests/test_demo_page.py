"""The live progress page at /demo, driven in Debian's Chromium (headless) by
Playwright for Python, against the real service started as a subprocess.

The page is opened through a TCP proxy in front of the service so that a test
can drop every connection at once (what the page sees when the server side
goes away). Skipped, with the reason, when Playwright or Chromium is missing,
or when the service does not serve /demo.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# In CI the browser tests must run: a missing piece fails there instead of skipping.
_IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
if _IN_CI:
    import playwright.sync_api as sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "test-output"
SECRET = "demo-page-secret-0123456789abcdef0123456789"
PUBLISH_KEY = "demo-page-publish-key-0123456789abcdef"


def _chromium() -> str | None:
    for candidate in (
        os.environ.get("RELAY_TEST_CHROMIUM"),
        shutil.which("chromium"),
        "/usr/bin/chromium",
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


CHROMIUM = _chromium()
if CHROMIUM is None:
    if _IN_CI:
        raise RuntimeError("Debian's chromium is not installed (scripts/test-all.sh installs it)")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, body: dict[str, Any] | None = None, key: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        status = e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


class Relay:
    def __init__(self, base: str) -> None:
        self.base = base

    def publish(self, execution_id: str, event: str, data: dict[str, Any]) -> int:
        status, body = _http(
            "POST",
            f"{self.base}/internal/v1/executions/{execution_id}/events",
            {"event": event, "data": data},
            PUBLISH_KEY,
        )
        assert status == 202, (status, body)
        return int(body["seq"])

    def token(self, execution_id: str) -> str:
        status, body = _http(
            "POST",
            f"{self.base}/internal/v1/tokens",
            {"execution_id": execution_id, "sub": "demo-page-test"},
            PUBLISH_KEY,
        )
        assert status == 201, (status, body)
        return str(body["token"])


def _start_service(port: int) -> subprocess.Popen[bytes]:
    """``python -m service`` on ``port`` (memory broker), once it answers /healthz."""
    env = {
        **os.environ,
        "RELAY_ENV": "dev",
        "RELAY_HOST": "127.0.0.1",
        "RELAY_PORT": str(port),
        "RELAY_WORKERS": "1",
        "RELAY_BROKER_URL": "memory://",
        "RELAY_JWT_SECRET": SECRET,
        "RELAY_PUBLISH_KEYS": PUBLISH_KEY,
        "RELAY_ACCESS_LOG": "false",
        "RELAY_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            out = proc.stdout.read().decode("utf-8", "replace") if proc.stdout else ""
            pytest.fail(f"the service exited at start:\n{out}")
        try:
            if _http("GET", f"{base}/healthz")[0] == 200:
                return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            _stop_service(proc)
            pytest.fail("the service did not answer /healthz within 30 s")
        time.sleep(0.1)


def _stop_service(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    port = _free_port()
    proc = _start_service(port)
    base = f"http://127.0.0.1:{port}"
    try:
        status, page = _http("GET", f"{base}/demo/")
        if status != 200 or "app.js" not in str(page):
            pytest.skip(f"the service does not serve the demo page at /demo/ yet (HTTP {status})")
        yield Relay(base)
    finally:
        _stop_service(proc)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the service; drop_all() cuts every connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._kill(s)

    def _kill(self, s: socket.socket) -> None:
        with self.lock:
            self.conns.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def drop_all(self) -> int:
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            self._kill(s)
        return len(conns)

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.drop_all()


@pytest.fixture
def proxy(relay: Relay) -> Iterator[TcpProxy]:
    p = TcpProxy(int(relay.base.rsplit(":", 1)[1]))
    yield p
    p.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _steps(execution_id: str) -> list[tuple[str, dict[str, Any]]]:
    from service.demo import diagnosis_script

    return [(s.event, s.data) for s in diagnosis_script(execution_id, seed=7, timeout_chance=0.4)]


def _log_seqs(page: Any) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all("#event-log li[data-seq]", "els => els.map(e => e.dataset.seq)")]


def _wait_bar_full(page: Any) -> None:
    """The bar's width animates; wait until it is drawn full before a screenshot."""
    page.wait_for_function(
        "document.getElementById('progress-bar').getBoundingClientRect().width >= "
        "document.getElementById('progress').getBoundingClientRect().width - 1",
        timeout=5_000,
    )


def _wait_log(page: Any, count: int, timeout: float = 30_000) -> None:
    page.wait_for_function(f"document.querySelectorAll('#event-log li[data-seq]').length >= {count}", timeout=timeout)


def test_demo_page_shows_a_whole_diagnosis(relay: Relay, proxy: TcpProxy, browser: Any) -> None:
    execution_id = f"demo-page-{os.getpid()}-full"
    token = relay.token(execution_id)
    page = browser.new_page(viewport={"width": 1100, "height": 1400})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"http://127.0.0.1:{proxy.port}/demo/?execution_id={execution_id}&token={token}")
    page.wait_for_function("document.querySelector('#conn-state').dataset.state === 'connected'", timeout=15_000)
    assert page.inner_text("[data-testid=mode]") == "WebSocket 实时推送"

    steps = _steps(execution_id)

    def publish_all() -> None:
        for event, data in steps:
            relay.publish(execution_id, event, data)
            time.sleep(0.05)

    t = threading.Thread(target=publish_all)
    t.start()
    page.wait_for_function("document.querySelector('#progress-pct').textContent === '100%'", timeout=60_000)
    t.join()
    page.wait_for_selector("[data-testid=report]:not([hidden])", timeout=10_000)
    assert page.inner_text("[data-testid=status-text]") == "诊断完成"
    assert page.inner_text("[data-testid=report-score]").isdigit()
    assert "示例品牌" in page.inner_text("[data-testid=report-summary]")
    assert page.get_attribute("[data-testid=progress]", "aria-valuenow") == "100"
    results = page.inner_text("[data-testid=results]")
    for name in ("文心一言", "通义千问", "Kimi", "豆包", "DeepSeek"):
        assert name in results
    log = page.inner_text("[data-testid=event-log]")
    assert "正在查询文心一言" in log
    assert _log_seqs(page) == list(range(1, len(steps) + 1))
    assert page.evaluate("document.characterSet") == "UTF-8"
    assert page.inner_text("[data-testid=conn-state]") == "已完成"
    assert errors == []
    _wait_bar_full(page)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "demo-page.png"), full_page=True)
    page.close()


def test_demo_page_recovers_from_a_dropped_connection_and_switches_modes(
    relay: Relay, proxy: TcpProxy, browser: Any
) -> None:
    execution_id = f"demo-page-{os.getpid()}-drop"
    token = relay.token(execution_id)
    steps = _steps(execution_id)
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{proxy.port}/demo/?execution_id={execution_id}&token={token}")
    page.wait_for_function("document.querySelector('#conn-state').dataset.state === 'connected'", timeout=15_000)

    n = 0

    def publish(count: int) -> None:
        nonlocal n
        for event, data in steps[n : n + count]:
            relay.publish(execution_id, event, data)
        n = min(len(steps), n + count)

    publish(3)
    _wait_log(page, 3)
    # the server side goes away: every connection through the proxy is cut
    assert proxy.drop_all() >= 2
    page.wait_for_function("document.querySelector('#conn-state').dataset.state === 'reconnecting'", timeout=10_000)
    publish(3)  # published while the page is disconnected
    page.wait_for_function("document.querySelector('#conn-state').dataset.state === 'connected'", timeout=20_000)
    _wait_log(page, 6)
    assert "从 #3 之后继续" in page.inner_text("[data-testid=event-log]")

    page.click("[data-testid=mode-switch]")
    page.wait_for_function("document.querySelector('#mode-badge').dataset.mode === 'polling'", timeout=5_000)
    assert page.inner_text("[data-testid=mode]") == "轮询模式"
    publish(3)
    _wait_log(page, 9)
    page.click("[data-testid=mode-switch]")
    page.wait_for_function("document.querySelector('#mode-badge').dataset.mode === 'websocket'", timeout=5_000)
    page.wait_for_function("document.querySelector('#conn-state').dataset.state === 'connected'", timeout=15_000)
    publish(len(steps))
    page.wait_for_function("document.querySelector('#progress-pct').textContent === '100%'", timeout=30_000)
    page.wait_for_selector("[data-testid=report]:not([hidden])", timeout=10_000)
    seqs = _log_seqs(page)
    assert seqs == list(range(1, len(steps) + 1)), seqs
    _wait_bar_full(page)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "demo-page-after-recovery.png"), full_page=True)
    page.close()


def test_demo_page_starts_a_demo_execution(relay: Relay, browser: Any) -> None:
    status, _ = _http("POST", f"{relay.base}/demo/api/executions", {"pace": 0.05})
    if status in (404, 405):
        pytest.skip("the service has no dev-mode POST /demo/api/executions yet")
    page = browser.new_page()
    page.goto(f"{relay.base}/demo/")
    page.click("[data-testid=start-demo]")
    page.wait_for_function("document.querySelector('#progress-pct').textContent === '100%'", timeout=90_000)
    page.wait_for_selector("[data-testid=report]:not([hidden])", timeout=10_000)
    seqs = _log_seqs(page)
    assert seqs == list(range(1, len(seqs) + 1))
    page.close()


def test_demo_page_explains_a_refused_token(relay: Relay, browser: Any) -> None:
    page = browser.new_page()
    page.goto(f"{relay.base}/demo/?execution_id=demo-page-refused&token=not-a-jwt")
    page.wait_for_function("document.querySelector('#conn-state').dataset.state === 'failed'", timeout=15_000)
    assert "Token 无效" in page.inner_text("[data-testid=error]")
    assert page.inner_text("[data-testid=conn-state]") == "连接被拒绝"
    time.sleep(1)
    assert page.eval_on_selector_all("#event-log li[data-seq]", "els => els.length") == 0
    page.close()


def test_chromium_decodes_compressed_frames_with_context(relay: Relay, browser: Any) -> None:
    """Chromium negotiates permessage-deflate with the relay (context takeover on the server side, the
    default) and decodes every frame intact: replayed and live, Chinese text, frames longer than
    the window and frames too short to be compressed.
    """
    eid = "demo-page-deflate"
    texts = [
        f"第{i}条：" + "文心一言通义千问 Kimi 豆包 DeepSeek " * size for i, size in enumerate([0, 3, 40, 1, 900, 7])
    ]
    for i, text in enumerate(texts[:3]):
        relay.publish(eid, "result", {"i": i, "text": text})
    page = browser.new_page()
    page.goto(f"{relay.base}/healthz")
    page.evaluate(
        """([url]) => new Promise((resolve) => {
            window.frames_ = []; window.ext_ = null;
            const ws = new WebSocket(url);
            ws.onopen = () => { window.ext_ = ws.extensions; resolve(); };
            ws.onmessage = (m) => window.frames_.push(JSON.parse(m.data));
            ws.onclose = (e) => { window.closed_ = e.code; };
        })""",
        [f"{relay.base.replace('http', 'ws')}/ws/executions/{eid}?token={relay.token(eid)}"],
    )
    for i, text in enumerate(texts[3:], start=3):
        relay.publish(eid, "result", {"i": i, "text": text})
    relay.publish(eid, "complete", {"report": {"summary": "完成"}})
    page.wait_for_function("window.closed_ === 1000", timeout=15_000)
    assert page.evaluate("window.ext_").startswith("permessage-deflate")
    assert "server_no_context_takeover" not in page.evaluate("window.ext_")
    frames = page.evaluate("window.frames_")
    assert [f["data"]["text"] for f in frames if f.get("event") == "result"] == texts
    assert frames[-1]["event"] == "complete" and frames[-1]["data"]["report"]["summary"] == "完成"
    page.close()


def test_demo_page_clears_and_rebuilds_after_a_stream_reset(browser: Any) -> None:
    """A memory relay restarted under the page: onReset clears it, the new epoch's events rebuild it."""
    port = _free_port()
    proc = _start_service(port)
    relay = Relay(f"http://127.0.0.1:{port}")
    execution_id = f"demo-page-{os.getpid()}-reset"
    page = browser.new_page()
    try:
        token = relay.token(execution_id)
        relay.publish(execution_id, "progress", {"progress": 40, "stage": "ai_fetching", "status_text": "旧数据流"})
        relay.publish(execution_id, "result", {"platform": "kimi", "platform_name": "Kimi", "score": 80})
        page.goto(f"{relay.base}/demo/?execution_id={execution_id}&token={token}")
        _wait_log(page, 2)
        _stop_service(proc, signal.SIGKILL)
        proc = _start_service(port)
        relay.publish(execution_id, "progress", {"progress": 5, "stage": "queued", "status_text": "新数据流"})
        page.wait_for_function("document.querySelector('#event-log li.reset') !== null", timeout=30_000)
        _wait_log(page, 1)
        page.wait_for_function("document.getElementById('status-text').textContent === '新数据流'", timeout=10_000)
        assert _log_seqs(page) == [1], "the old stream's lines are gone, the new one starts at 1"
        assert "数据流已重置" in page.inner_text("[data-testid=event-log]")
        assert page.inner_text("#progress-pct") == "5%"
        assert page.eval_on_selector_all("#results tbody tr", "rows => rows.length") == 0
    finally:
        page.close()
        _stop_service(proc)
