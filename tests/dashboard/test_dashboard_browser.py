"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, against ``tether demo``
as a user runs it (the local mesh, the demo application meshed with ``tether run``, its traffic), started once
for the module. Every page is watched for script errors and for anything its Content-Security-Policy
blocked (an inline script or style would be); screenshots of each page go under the test's tmp_path.

In order: the overview against ``tether stat -o json`` and the failing workload's status by its accessible
name; a foreign Host (and a rebound DNS name, as the browser sees it) refused; the workload page's secured
edges; a live tap started, streaming, stopped; a tapped ``<script>`` path shown as text; ``tether
dashboard``; the public API, then telemetry, stopped (SIGSTOP, so the mesh's supervisor does not restart
them) and resumed.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tether.shared.testing import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
REBOUND = "rebound.test"  # the attacker's name, resolved to 127.0.0.1 by the browser (DNS rebinding)
DEMO = ("emoji", "voting", "web")
# Records what the Content-Security-Policy blocked: an inline script or style, an asset from elsewhere.
WATCH_CSP = """window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(e.violatedDirective));"""


# What Chromium logs as errors for what the tests provoke: a 403 asked for, a response CORP withheld from
# another site, the Cross-Origin-Opener-Policy ignored on a non-loopback http origin (the rebound name).
EXPECTED_NOISE = (
    "status of 403",
    "ERR_BLOCKED_BY_RESPONSE",
    "Cross-Origin-Opener-Policy header has been ignored",
)


def _load_harness() -> ModuleType:
    """cli/tests/mesh_harness.py, the local-mesh tests' own: tether as a user runs it, free port ranges."""
    spec = importlib.util.spec_from_file_location("mesh_harness", ROOT / "cli" / "tests" / "mesh_harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load_harness()
tether: Callable[..., subprocess.CompletedProcess[str]] = harness.tether


@dataclass
class Demo:
    base: int
    state: Path
    output: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.base + 42}"

    def stat(self) -> dict[str, dict[str, Any]]:
        """``tether stat deployment -n demo -o json``, by name."""
        done = tether(
            "--api-addr", f"127.0.0.1:{self.base + 40}", "stat", "deploy", "-n", "demo", "-o", "json"
        )
        assert done.returncode == 0, done.stderr
        return {row["name"]: row for row in json.loads(done.stdout)}

    def pid(self, component: str) -> int:
        state = json.loads((self.state / "mesh.json").read_text())
        return int(next(c["pid"] for c in state["components"] if c["name"] == component))

    def port(self, pattern: str, text: str) -> int:
        found = re.search(pattern, text, re.MULTILINE)
        assert found, text[-2000:]
        return int(found.group(1))


def _traffic(demo: Demo) -> bool:
    """Every demo workload answered requests in the last minute, and voting has failed one (a vote for the
    doughnut, which always fails, comes at random: at the demo's low rate it may take a few seconds)."""
    if not harness.listening(demo.base + 40):
        return False
    try:
        rows = demo.stat()
    except AssertionError:  # the API not ready yet
        return False
    if not all(rows.get(name, {}).get("success_rate") is not None for name in DEMO):
        return False
    return bool(rows["voting"]["success_rate"] < 1.0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    root = tmp_path_factory.mktemp("demo")
    running = Demo(harness.free_base(), root / "state", root / "demo.out")
    argv = [harness.TETHER, "demo", "--state-dir", str(running.state), "--port-base", str(running.base)]
    with open(running.output, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=harness.clean_env())

    def traffic() -> bool:
        assert process.poll() is None, running.output.read_text()[-3000:]
        return _traffic(running)

    try:
        eventually_sync(traffic, 90, lambda: "demo traffic: " + running.output.read_text()[-3000:], 0.5)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)  # the demo's own teardown: its application, then the mesh
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        tether("down", "--state-dir", str(running.state))
        for pid in harness.mesh_pids(running.state):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")  # fails under CI=true
    with sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(WATCH_CSP)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        yield opened
        assert opened.evaluate("window.__csp") == []  # nothing inline, nothing from elsewhere
        assert [e for e in errors if not any(noise in e for noise in EXPECTED_NOISE)] == []
    finally:
        context.close()


def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot {name}: {path}")


def _percent(text: str) -> float:
    return float(text.rstrip("%"))


def test_the_overview_shows_tether_stat_and_names_the_failing_workload(
    demo: Demo, page: Page, tmp_path: Path
) -> None:
    page.goto(demo.url + "/")
    rows = page.locator("tr[data-workload]")
    for name in DEMO:
        expect(page.locator(f'tr[data-workload="demo/deployment/{name}"]')).to_be_visible()
    # The page's numbers and the CLI's, read within one refresh: the CLI before and after the page's own
    # fetch agree (no rollup came in between), the fetch was answered in between, the page shows that answer.
    for attempt in range(12):
        started = time.time()
        before = demo.stat()
        with page.expect_response(lambda r: "/api/overview" in r.url) as answer:
            page.get_by_role("button", name="Refresh now").click()
        snapshot = answer.value.json()
        after = demo.stat()
        if before != after or not started <= snapshot["generated_at"] <= time.time():
            continue
        shown = page.evaluate(
            """(at) => Number(document.body.dataset.snapshot) !== at ? null : Object.fromEntries(
                 [...document.querySelectorAll("tr[data-workload]")].map((tr) => [
                   tr.dataset.workload.split("/")[2],
                   {success: tr.querySelector('[data-col="success"]').textContent,
                    rps: tr.querySelector('[data-col="rps"]').textContent}]))""",
            snapshot["generated_at"],
        )
        if shown is None:  # the page's own refresh drew a newer answer meanwhile
            continue
        print(f"the CLI's numbers held still over refresh {attempt + 1}")
        break
    else:
        pytest.fail("the numbers changed during every one of 12 refreshes")
    rendered = {row["name"]: row for row in snapshot["workloads"]}
    for name in DEMO:
        cli, api = after[name], rendered[name]
        assert (api["success_rate"], api["rps"], api["requests"]) == (
            cli["success_rate"],
            cli["rps"],
            cli["requests"],
        )
        assert abs(_percent(shown[name]["success"]) - 100 * cli["success_rate"]) <= 0.005 + 1e-9, shown[name]
        assert abs(float(shown[name]["rps"].removesuffix("rps")) - cli["rps"]) <= 0.05 + 1e-9, shown[name]
    print("CLI and page agree: " + json.dumps({n: shown[n] for n in DEMO}))
    # VoteDoughnut always fails: voting is marked by its status element's accessible name, not by colour.
    assert after["voting"]["success_rate"] < 1.0 and after["emoji"]["success_rate"] == 1.0
    voting = page.locator('tr[data-workload="demo/deployment/voting"]')
    expect(voting.get_by_role("img", name="failing")).to_be_visible()
    expect(
        page.locator('tr[data-workload="demo/deployment/emoji"]').get_by_role("img", name="healthy")
    ).to_be_visible()
    assert rows.count() >= 3
    expect(page.locator("#updated")).not_to_have_text("not yet")
    screenshot(page, tmp_path, "overview")
    page.set_viewport_size({"width": 360, "height": 800})  # a narrow window: nothing overflows the page
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, tmp_path, "overview-narrow")
    # The keyboard alone: the skip link first, then on to a workload's link (kept focused across refreshes).
    page.reload()
    expect(voting).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    web = page.get_by_role("link", name="web", exact=True)
    for _ in range(30):
        page.keyboard.press("Tab")
        if web.evaluate("(a) => a === document.activeElement"):
            break
    expect(web).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/workloads/demo/deployment/web"))


class _OtherSite(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.end_headers()
        self.wfile.write(b"<p>another local application</p>")

    def log_message(self, *args: object) -> None:
        pass


def test_a_foreign_host_gets_403(demo: Demo, page: Page, tmp_path: Path) -> None:
    port = demo.base + 42
    for host, status in ((f"evil.example:{port}", 403), (f"localhost:{port}", 200)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/api/overview", headers={"Host": host})
        answer = conn.getresponse()
        answer.read()
        conn.close()
        assert answer.status == status, host
        assert (
            answer.getheader("x-frame-options") == "DENY"
            and answer.getheader("x-content-type-options") == "nosniff"
        )
    # What a rebinding attack looks like from the browser: the attacker's name, resolving to the dashboard.
    refused = page.goto(f"http://{REBOUND}:{port}/api/overview")
    assert refused is not None and refused.status == 403
    expect(page.locator("body")).to_contain_text("forbidden")
    # A page of another local application (localhost:<other port>: same-site, not same-origin) cannot start a
    # tap, not even with a request that needs no CORS preflight.
    other = ThreadingHTTPServer(("127.0.0.1", 0), _OtherSite)
    serving = threading.Thread(target=other.serve_forever, daemon=True)
    serving.start()
    try:
        page.goto(f"http://localhost:{other.server_address[1]}/")
        outcome = page.evaluate(
            """(url) => fetch(url, {method: "POST", mode: "no-cors",
                 headers: {"Content-Type": "text/plain"},
                 body: JSON.stringify({namespace: "demo", kind: "deployment", name: "web"})})
               .then(() => "read", (e) => String(e))""",
            f"http://localhost:{port}/api/taps",
        )
    finally:
        other.shutdown()
        other.server_close()
    # Unreadable (Cross-Origin-Resource-Policy: same-origin), and refused: a tap the dashboard had created
    # would count as active until its page attached to it.
    assert outcome == "TypeError: Failed to fetch"
    assert page.request.get(f"http://127.0.0.1:{port}/api/taps").json()["active"] == 0
    screenshot(page, tmp_path, "forbidden-host")


def test_the_workload_page_shows_its_edges_secured(demo: Demo, page: Page, tmp_path: Path) -> None:
    page.goto(demo.url + "/")
    page.get_by_role("link", name="web", exact=True).click()
    expect(page).to_have_url(re.compile(r"/workloads/demo/deployment/web"))
    expect(page.get_by_role("heading", name="deployment/web")).to_be_visible()
    for edge in ("vote-bot->web", "web->emoji", "web->voting"):
        row = page.locator(f'tr[data-edge="{edge}"]')
        expect(row).to_be_visible()
        expect(row.locator('[data-col="secured"]')).to_have_text("\u2713 secured")
        expect(row).to_contain_text("serviceaccount.identity.cluster.local")
    expect(page.locator("tr[data-pod]")).to_have_count(1)
    expect(page.locator('tr[data-window="1m"]')).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("Requests per second"))).to_be_visible()  # the chart
    # A bar per 10-second sample taken since the mesh started. The dashboard samples every 10 s, so the
    # first sample holding web's traffic may come up to 10 s after the traffic did, and the page polls every
    # 3 s: allow two sampling intervals.
    expect(page.locator("svg rect.bar").first).to_be_attached(timeout=25_000)
    screenshot(page, tmp_path, "workload")


def _tap_page(demo: Demo, page: Page, path: str = "") -> None:
    page.goto(demo.url + "/tap?namespace=demo&kind=deployment&name=web")
    if path:
        page.get_by_label("Path prefix").fill(path)
    page.get_by_role("button", name="Start").click()


def test_a_live_tap_shows_events_and_stops(demo: Demo, page: Page, tmp_path: Path) -> None:
    started = time.monotonic()
    _tap_page(demo, page)
    events = page.locator("#tap-events tbody tr")
    expect(events.first).to_be_visible(timeout=5000)
    print(f"first tap event shown {time.monotonic() - started:.2f}s after Start")
    expect(page.locator("#tap-state")).to_have_attribute("data-state", "running")
    expect(page.locator('#tap-events tr[data-phase="request"]').first).to_contain_text("/demo.")
    screenshot(page, tmp_path, "tap")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#tap-state")).to_have_attribute("data-state", "stopped")
    expect(page.locator("#tap-state")).to_contain_text("Stopped (stopped)")
    count = events.count()
    answer = page.request.get(demo.url + "/api/taps")
    assert answer.json()["active"] == 0  # the dashboard let go of the tap, and with it the gRPC stream
    page.wait_for_timeout(1000)  # the demo makes ~20 events a second: a second without one is a stopped tap
    assert events.count() == count
    expect(page.get_by_role("button", name="Start")).to_be_enabled()


def test_a_tapped_script_in_a_path_is_shown_as_text(demo: Demo, page: Page, tmp_path: Path) -> None:
    marker = "/dashboard-test/"
    path = marker + "<script>window.__tapped=1</script><img/src=x/onerror=window.__tapped=2>"
    _tap_page(demo, page, marker)
    expect(page.locator("#tap-state")).to_have_attribute("data-state", "running")
    web = demo.port(r"^\s+web\s+app port (\d+)", demo.output.read_text())
    bot = demo.port(
        r"proxy outbound 127\.0\.0\.1:(\d+)", (demo.state / "logs" / "demo-vote-bot.log").read_text()
    )
    shown = page.locator("#tap-events td.details", has_text=path)

    def sent_and_shown() -> bool:
        """The tap reaches the proxies within a report or two: send, let the page update, until it shows."""
        if shown.count():
            return True
        conn = http.client.HTTPConnection("127.0.0.1", bot, timeout=5)  # vote-bot's sidecar, through the mesh
        conn.request("GET", f"http://web.demo.svc.cluster.local:{web}{path}")
        conn.getresponse().read()
        conn.close()
        page.wait_for_timeout(300)  # the pause between polls, taken by Playwright (not time.sleep)
        return False

    eventually_sync(sent_and_shown, 15, "the tapped request in the tap's events", interval=0)
    expect(shown.first).to_be_visible()
    assert page.evaluate("window.__tapped") is None  # neither the script nor the onerror handler ran
    assert page.locator("#tap-events script, #tap-events img").count() == 0
    screenshot(page, tmp_path, "tap-script-as-text")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#tap-state")).to_have_attribute("data-state", "stopped")


def test_tether_dashboard_opens_or_prints_the_url(demo: Demo, tmp_path: Path) -> None:
    printed = tether("dashboard", "--url", "--state-dir", str(demo.state))
    assert printed.returncode == 0 and printed.stdout == f"{demo.url}/\n"
    opened_file = tmp_path / "opened"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened_file}\n')
    browser.chmod(0o755)
    done = subprocess.run(
        [harness.TETHER, "dashboard", "--state-dir", str(demo.state)],
        capture_output=True,
        text=True,
        env={**harness.clean_env(), "BROWSER": str(browser), "DISPLAY": ""},
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert opened_file.read_text() == f"{demo.url}/\n"  # webbrowser ran $BROWSER with the URL
    missing = tether("dashboard", "--url", "--state-dir", str(tmp_path / "none"))
    assert missing.returncode == 1 and missing.stdout == ""
    assert "no local mesh runs" in missing.stderr and "port-forward" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_the_banner_shows_while_the_public_api_is_stopped(demo: Demo, page: Page, tmp_path: Path) -> None:
    page.goto(demo.url + "/")
    banner = page.locator("#banner")
    expect(page.locator("tr[data-workload]").first).to_be_visible()
    expect(banner).to_be_hidden()
    api = demo.pid("public-api")
    os.kill(api, signal.SIGSTOP)  # it serves the dashboard too: the page's own requests go unanswered
    try:
        expect(banner).to_have_attribute("data-problems", "dashboard", timeout=20_000)
        expect(banner).to_contain_text("The dashboard does not answer")
        expect(page.locator("#updated")).to_contain_text("(stale)")
        expect(page.locator('tr[data-workload="demo/deployment/web"]')).to_be_visible()  # the last numbers
        screenshot(page, tmp_path, "api-stopped")
    finally:
        os.kill(api, signal.SIGCONT)
    expect(banner).to_be_hidden(timeout=20_000)
    expect(page.locator("#updated")).not_to_contain_text("(stale)")


def test_the_banner_shows_while_telemetry_is_stopped(demo: Demo, page: Page, tmp_path: Path) -> None:
    page.goto(demo.url + "/")
    banner = page.locator("#banner")
    expect(page.locator("tr[data-workload]").first).to_be_visible()
    expect(banner).to_be_hidden()
    telemetry = demo.pid("telemetry")
    os.kill(telemetry, signal.SIGSTOP)  # stopped, not exited: the mesh's supervisor does not restart it
    try:
        stopped = time.monotonic()
        expect(banner).to_be_visible(timeout=20_000)  # its heartbeats age out after 6 s
        print(f"banner shown {time.monotonic() - stopped:.1f}s after telemetry stopped")
        expect(banner).to_have_attribute("data-problems", re.compile("telemetry"))
        expect(banner).to_contain_text("Telemetry is unreachable")
        # The dashboard keeps working: it refreshes, with the last numbers, under the banner.
        last = page.locator("#updated").get_attribute("datetime")
        expect(page.locator("#updated")).not_to_have_attribute("datetime", last or "", timeout=10_000)
        expect(page.locator('tr[data-workload="demo/deployment/web"]')).to_be_visible()
        screenshot(page, tmp_path, "telemetry-stopped")
    finally:
        os.kill(telemetry, signal.SIGCONT)
    resumed = time.monotonic()
    expect(banner).to_be_hidden(timeout=20_000)
    print(f"banner gone {time.monotonic() - resumed:.1f}s after telemetry resumed")
    screenshot(page, tmp_path, "telemetry-back")
