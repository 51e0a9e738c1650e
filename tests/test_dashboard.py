"""`protojobs dashboard` end to end: a real broker, real `protojobs run` workers and dashboards
as subprocesses, Debian's headless Chromium driven by Selenium (chromedriver given explicitly:
nothing downloads a browser).

PROTOJOBS_DASHBOARD_SCREENSHOTS=docs/dashboard saves a screenshot of every page on the way.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import read_jsonl, settings_tree, wait_for, write_config
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from protojobs import config
from protojobs.engine.dispatch import Dispatcher
from protojobs.ops import dlq
from protojobs.ops.stats import stats_data
from protojobs.testing import Cluster

pytestmark = pytest.mark.broker

TESTS = Path(__file__).resolve().parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SECRET = "s3cr3t-sasl-password"  # in jobs.toml under a secret key: never rendered
SHOTS = os.environ.get("PROTOJOBS_DASHBOARD_SCREENSHOTS")


def dashboard_port(offset: int) -> int:
    """Dashboards listen 800 above the test port base (26100 -> 26900...)."""
    return int(os.environ.get("PROTOJOBS_TEST_PORT_BASE", "26100")) + 800 + offset


class Stack:
    def __init__(self, root: Path, settings: config.Settings, config_file: Path) -> None:
        self.root, self.settings, self.config_file = root, settings, config_file
        self.record = root / "runs.jsonl"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dispatcher = Dispatcher(settings)
        self.worker: subprocess.Popen[bytes] | None = None

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PROTOJOBS_TEST_RECORD=str(self.record), PYTHONPATH=str(TESTS))
        env.pop("PROTOJOBS_DASHBOARD_TOKEN", None)
        with open(self.root / f"{name}.log", "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "protojobs.cli", *args, "--config", str(self.config_file)],
                                    env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def dashboard(self, name: str, port: int, *args: str) -> str:
        proc = self.spawn(name, "dashboard", "--port", str(port), "--sample-every", "1", *args)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _status(url + "/static/style.css") == 200, 30, f"dashboard {name} listening")
        assert proc.poll() is None, f"dashboard {name} exited (port {port} taken?): {self.log(name)}"
        return url

    def runs(self) -> list[dict[str, Any]]:
        return read_jsonl(self.record)

    def dispatch(self, queue: str, data: dict[str, Any], delay: str | None = None) -> str:
        return self.dispatcher.dispatch(queue, data, delay=delay)

    def stop(self) -> None:
        self.dispatcher.close(5)
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _get(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, the URL answered after redirects); 0 when nothing answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers or {}), timeout=5) as r:
            return int(r.status), str(r.url)
    except urllib.error.HTTPError as exc:
        return exc.code, url
    except OSError:
        return 0, url


def _status(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    return _get(url, data, headers)[0]


@pytest.fixture(scope="module")
def stack(kafka: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("dashboard")
    prefix = f"dash-{uuid.uuid4().hex[:8]}-"
    tree = settings_tree(kafka.bootstrap, prefix, {
        "work": {"handler": "dashboard_jobs:work"},
        "flaky": {"handler": "dashboard_jobs:fails_until_fixed", "partitions": 1},
        "idle": {"handler": "dashboard_jobs:work", "partitions": 2},
        "spare": {"handler": "dashboard_jobs:work", "partitions": 1},
    }, schedules={"nightly": {"queue": "idle", "cron": "0 3 * * *", "tz": "Europe/Paris", "data": {"n": 0}}})
    tree["retry"]["default"]["dead_letter_on"] = ["ValueError"]
    tree["kafka"]["producer"]["sasl.password"] = SECRET
    config_file = write_config(root / "jobs.toml", tree)
    settings = config.load(config_file, import_handlers=False)
    s = Stack(root, settings, config_file)
    try:
        s.worker = s.spawn("worker", "run", "--queue", "work", "--queue", "flaky")
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def urls(stack: Stack) -> dict[str, str]:
    return {"rw": stack.dashboard("dashboard", dashboard_port(0)),
            "ro": stack.dashboard("dashboard-ro", dashboard_port(1), "--read-only")}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), "make install installs chromium"
    profile = tempfile.mkdtemp(prefix="protojobs-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver: Any, name: str) -> None:
    """The whole page (at most 2,400 px high) as docs-ready PNG, when SHOTS names a directory."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": 1400, "height": min(int(size["height"]) + 20, 2400), "scale": 1}
        png = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "clip": clip})
        (Path(SHOTS) / f"{name}.png").write_bytes(base64.b64decode(png["data"]))


T = TypeVar("T")


def swapped(exc: WebDriverException) -> bool:
    """The element was replaced between finding and using it (the live refresh swaps a page's
    fragment every second): Selenium says stale, or Chromium's inspector says it left the document."""
    return isinstance(exc, StaleElementReferenceException) or "does not belong to the document" in str(exc)


def settled(action: Callable[[], T], timeout: float = 10.0) -> T:
    """`action`, found and used again while the live refresh replaces its element under it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except WebDriverException as exc:
            if not swapped(exc) or time.monotonic() > deadline:
                raise


def go(driver: Any, by: str, value: str) -> None:
    """Click what loads another page (a link, a form's button) and wait until it replaced this one:
    a click returns before the navigation it starts."""
    old = driver.find_element(By.TAG_NAME, "html")
    settled(lambda: driver.find_element(by, value).click())
    WebDriverWait(driver, 30).until(lambda _: gone(old))


def gone(element: Any) -> bool:
    """Whether the element has left the page. Selenium's `staleness_of` knows only the stale error;
    Chromium sometimes answers a detached node with "does not belong to the document" instead."""
    try:
        element.is_enabled()
    except WebDriverException as exc:
        if swapped(exc):
            return True
        raise
    return False


def cell(driver: Any, selector: str) -> str:
    return settled(lambda: str(driver.find_element(By.CSS_SELECTOR, selector).text))


def page_shows(driver: Any, selector: str, text: str) -> bool:
    """Whether the element shows `text` now (False while it is not on the page yet, or while the
    live refresh swaps its fragment: the caller looks again)."""
    try:
        return cell(driver, selector) == text
    except (StaleElementReferenceException, NoSuchElementException):
        return False


# --- the tests ------------------------------------------------------------------------------


def test_overview_numbers_equal_what_the_broker_says(stack: Stack, urls: dict[str, str], browser: Any) -> None:
    for n in range(7):
        stack.dispatch("idle", {"n": n})
    for n in range(2):
        stack.dispatch("idle", {"n": 100 + n}, delay="1h")
    wait_for(lambda: len(stats_data(stack.settings)["members"]) == 1, 60, "the worker joined its group")
    browser.get(urls["rw"] + "/")
    broker = stats_data(stack.settings)
    assert cell(browser, 'tr[data-queue="idle"] .depth') == str(broker["queues"]["idle"]["depth"]) == "7"
    for topic, waiting in broker["delayed"].items():
        assert cell(browser, f'#tiers tr[data-topic="{topic}"] .waiting') == str(waiting)
    assert sum(broker["delayed"].values()) >= 2
    for topic, count in broker["dead_letter"].items():
        assert cell(browser, f'#dead tr[data-topic="{topic}"] .records') == str(count)
    shown = set(browser.execute_script(  # in one call: the live refresh may swap the rows meanwhile
        "return [...document.querySelectorAll('.member td:first-child')].map(e => e.textContent)"))
    assert shown == {m["client_id"] for m in broker["members"]}
    brokers = browser.find_elements(By.CSS_SELECTOR, "#brokers .broker")
    assert len(brokers) == len(stack.settings.kafka.brokers.split(","))
    # live refresh: the number follows the broker without a reload
    for n in range(3):
        stack.dispatch("idle", {"n": 10 + n})
    wait_for(lambda: page_shows(browser, 'tr[data-queue="idle"] .depth', "10"), 30, "the overview refreshed")
    assert SECRET not in browser.page_source
    shot(browser, "overview")
    browser.get(urls["rw"] + "/queues/idle")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".jobs tr")) >= 1 + 10
    shot(browser, "queue")
    go(browser, By.LINK_TEXT, "explore")
    assert "pj-id" in browser.page_source
    shot(browser, "records")
    browser.get(urls["rw"] + "/schedules")
    row = cell(browser, 'tr[data-schedule="nightly"]')
    assert "CET" in row or "CEST" in row  # next fire times in the schedule's zone
    shot(browser, "schedules")
    go(browser, By.XPATH, "//tr[@data-schedule='nightly']//button[text()='pause']")
    assert "paused nightly" in cell(browser, "#message")
    assert "paused" in cell(browser, 'tr[data-schedule="nightly"]')
    go(browser, By.XPATH, "//tr[@data-schedule='nightly']//button[text()='resume']")
    assert "active" in cell(browser, 'tr[data-schedule="nightly"]')


def test_open_a_dead_letter_replay_it_and_see_it_processed(stack: Stack, urls: dict[str, str], browser: Any) -> None:
    fixed = stack.root / "fixed"
    job_id = stack.dispatch("flaky", {"n": 500, "fixed": str(fixed), "note": SECRET})
    wait_for(lambda: any(r["id"] == job_id and not r["ok"] for r in stack.runs()), 60, "the job failed")
    wait_for(lambda: bool(dlq.read(stack.settings, ids=[job_id])), 60, "the job was dead-lettered")
    browser.get(urls["rw"] + "/dead-letters?queue=flaky")
    shot(browser, "dead_letters")
    go(browser, By.LINK_TEXT, job_id)
    assert "ValueError" in cell(browser, "#detail")
    assert SECRET not in browser.page_source and "***" in cell(browser, "#payload")
    shot(browser, "dead_letter")
    fixed.touch()
    go(browser, By.ID, "replay")
    assert "replayed 1" in cell(browser, "#message")
    wait_for(lambda: any(r["id"] == job_id and r["ok"] for r in stack.runs()), 60, "the replayed job ran")
    # the loop guard holds in the dashboard too: the record replayed is now superseded or counted
    assert "dashboard action by local: replay" in stack.log("dashboard")


def test_pause_piles_up_and_resume_drains(stack: Stack, urls: dict[str, str], browser: Any) -> None:
    browser.get(urls["rw"] + "/queues/work")
    go(browser, By.ID, "pause")
    assert cell(browser, "#state") == "paused"
    wait_for(lambda: "queue work paused across the group: not fetching" in stack.log("worker"), 30,
             "the worker saw the pause")
    ids = {stack.dispatch("work", {"n": 1000 + n}) for n in range(5)}
    browser.get(urls["rw"] + "/")
    wait_for(lambda: page_shows(browser, 'tr[data-queue="work"] .depth', "5"), 30, "the jobs piled up")
    assert stats_data(stack.settings)["queues"]["work"]["depth"] == 5
    assert not ids & {r["id"] for r in stack.runs()}
    browser.get(urls["rw"] + "/queues/work")
    go(browser, By.ID, "resume")
    assert cell(browser, "#state") == "running"
    wait_for(lambda: ids <= {r["id"] for r in stack.runs()}, 60, "the queue drained")
    browser.get(urls["rw"] + "/")
    wait_for(lambda: page_shows(browser, 'tr[data-queue="work"] .depth', "0"), 30, "the overview shows it drained")


def test_read_only_shows_no_action_and_refuses_posts(stack: Stack, urls: dict[str, str], browser: Any) -> None:
    ro = urls["ro"]
    entries = dlq.read_all(stack.settings)
    pages = ["/", "/queues/work", "/dead-letters", "/schedules"]
    if entries:
        e = entries[-1]
        pages.append(f"/dead-letters/{e.topic}/{e.partition}/{e.offset}")
    for page in pages:
        browser.get(ro + page)
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-read-only") == "yes"
        assert browser.find_elements(By.CSS_SELECTOR, "button.action, form[method=post]") == [], page
    for path in ("/dead-letters/replay", "/dead-letters/purge", "/queues/work/pause", "/schedules/nightly/pause"):
        assert _status(ro + path, data=b"all=1") == 403
    # and the read-write one refuses a POST without its CSRF token
    assert _status(urls["rw"] + "/dead-letters/purge", data=b"confirm=purge") == 403
    assert stats_data(stack.settings)["dead_letter"] != {}


def test_tokens_guard_a_dashboard_and_a_public_bind_needs_one(stack: Stack, browser: Any) -> None:
    refused = subprocess.run([sys.executable, "-m", "protojobs.cli", "dashboard", "--config", str(stack.config_file),
                              "--host", "0.0.0.0", "--port", str(dashboard_port(2))],
                             capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(TESTS)))
    assert refused.returncode == 1 and "without a token" in refused.stderr
    url = stack.dashboard("dashboard-token", dashboard_port(3), "--token", "ops:let-me-in")
    assert _get(url + "/dead-letters", headers={"Authorization": "Bearer let-me-in"}) == (200, url + "/dead-letters")
    assert _get(url + "/dead-letters", headers={"Authorization": "Bearer wrong"})[1] == url + "/login"
    assert "dashboard login" not in stack.log("dashboard-token")
    browser.get(url + "/")
    assert browser.current_url.endswith("/login")
    shot(browser, "login")
    browser.find_element(By.ID, "token").send_keys("let-me-in")
    go(browser, By.ID, "login")
    assert "ops" in cell(browser, "header .who")
    assert browser.find_elements(By.ID, "queues")


def test_workers_report_through_kafka_and_leave_with_a_tombstone(stack: Stack, urls: dict[str, str],
                                                                  browser: Any) -> None:
    assert stack.worker is not None
    browser.get(urls["rw"] + "/workers")
    wait_for(lambda: page_shows(browser, f'tr[data-pid="{stack.worker.pid}"] .state', "alive"), 30,
             "the worker's heartbeat")
    spare = stack.spawn("worker-spare", "run", "--queue", "spare", "--no-scheduler")
    wait_for(lambda: page_shows(browser, f'tr[data-pid="{spare.pid}"] .state', "alive"), 60, "the second worker")
    shot(browser, "workers")
    spare.terminate()
    assert spare.wait(30) == 0
    wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, f'tr[data-pid="{spare.pid}"]'), 30,
             "the tombstone of the worker that stopped")
    assert browser.find_elements(By.CSS_SELECTOR, f'tr[data-pid="{stack.worker.pid}"]')
    # a worker whose heartbeats stopped (killed, host gone) is shown as lost
    from protojobs.dashboard.pages import worker_problems
    from protojobs.ops import browse
    later = browse.workers(browse.Browser(stack.settings), now_s=time.time() + 60)
    assert [w["pid"] for w in later if w["lost"]] == [stack.worker.pid]
    assert any("lost" in p for p in worker_problems(later))


def test_purge_asks_for_confirmation(stack: Stack, urls: dict[str, str], browser: Any) -> None:
    before = sum(stats_data(stack.settings)["dead_letter"].values())
    assert before >= 1  # the dead letter of the replay test is still there (replay keeps it)
    browser.get(urls["rw"] + "/dead-letters")
    # a selection is replayed too (the job now succeeds, so no new dead letter)
    job_id = settled(lambda: browser.find_element(By.CSS_SELECTOR, "tr.dl").get_attribute("data-id"))
    runs_before = sum(r["id"] == job_id for r in stack.runs())
    settled(lambda: browser.find_element(By.CSS_SELECTOR, f'tr.dl[data-id="{job_id}"] input[name=ref]').click())
    go(browser, By.ID, "replay-selected")
    assert "replayed 1" in cell(browser, "#message")
    wait_for(lambda: sum(r["id"] == job_id for r in stack.runs()) == runs_before + 1, 60, "the selection ran")
    go(browser, By.ID, "purge")
    assert f"{before} record(s)" in browser.page_source
    shot(browser, "purge")
    go(browser, By.ID, "purge-confirm")  # not confirmed: nothing is deleted
    assert sum(stats_data(stack.settings)["dead_letter"].values()) == before
    settled(lambda: browser.find_element(By.ID, "confirm").send_keys("purge"))
    go(browser, By.ID, "purge-confirm")
    assert f"purged {before}" in cell(browser, "#message")
    assert sum(stats_data(stack.settings)["dead_letter"].values()) == 0
    assert "dashboard action by local: purge" in stack.log("dashboard")
