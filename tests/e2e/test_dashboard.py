"""The browser dashboard (``kernel/edge/http/dashboard``) in a real browser: the distribution's
headless Chromium driven by Playwright, against a real daemon, the page talking to it only
through the public Connect API and WebSocket streams.

Every page fixture fails its test on a console error or an uncaught exception in the page.
``FOUNDRY_SCREENSHOTS=1`` makes :func:`test_screenshots_of_the_main_pages` write
``docs/screenshots/*.png`` (otherwise they go to a temporary folder, so a test run never rewrites
tracked files). The performance figures are printed (``-s`` shows them).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.daemon import REPO, Daemon

CHROMIUM = "/usr/bin/chromium"
FOUNDRY = "foundry.Foundry"
RUNTIME = "fleetforge.runtime.v1.RuntimeService"
ANALYTICS = "foundry.analytics.v1.Analytics"

NAP = """sleep 0.8; echo '{"napped": true}'"""
# A different answer on every execution: a replay of it drifts.
CLOCK = """printf '{"ns": "%s"}' "$(date +%s%N)" """
# Runs until the file its input names exists (30 s at most, so it never outlives the test).
HOLD = """for i in $(seq 600); do [ -e "$FOUNDRY_INPUT_GATE" ] && break; sleep 0.05; done
echo '{}'"""
BROKEN = "echo 'cannot reach the tracker' >&2; exit 3"
TURNED = "echo 'err \u202e txet desrever' >&2; exit 3"  # a right-to-left override in its error
BLOCKS = "\n".join(
    f'[[blocks]]\nname = "{name}"\ntype = "shell"\nkind = "observer"\n'
    f'command = ["sh", "-c", {json.dumps(script)}]\ntimeout = 40\n'
    for name, script in (
        ("nap", NAP),
        ("clock", CLOCK),
        ("hold", HOLD),
        ("broken", BROKEN),
        ("turned", TURNED),
    )
)
# A command block in the greeting chain: its exit code and raw output show in the tree.
BLOCKS += """
[[blocks]]
name = "Archive Greeting"
type = "shell"
kind = "observer"
sinks = ["greeting_delivered"]
command = ["sh", "-c", "echo archived"]
emits = "greeting_archived"
"""


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    # Importing trio_asyncio (the suite does) makes asyncio.new_event_loop() outside trio return
    # its own loop, which Playwright's sync API cannot drive: give this thread asyncio's policy
    # while the browser runs, then hand it back.
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            yield chromium
            chromium.close()
    finally:
        asyncio.set_event_loop_policy(None)


@pytest.fixture(scope="module")
def daemon(shared_daemon: Any) -> Daemon:
    return shared_daemon(BLOCKS)


class Console:
    """What the page wrote to its console as errors, and the exceptions it did not catch.
    ``expect_refusal(path)``: an RPC the test makes fail on purpose (the browser logs every
    4xx/5xx response it loads)."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.refusals: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def expect_refusal(self, path: str) -> None:
        self.refusals.append(path)

    def _message(self, message: ConsoleMessage) -> None:
        url = message.location.get("url", "")
        if message.type != "error":
            return
        if message.text.startswith("Failed to load resource") and any(
            url.endswith(path) for path in self.refusals
        ):
            return
        self.errors.append(f"console: {message.text} at {message.location}")


@pytest.fixture
def browser_page(browser: Browser) -> Iterator[tuple[Page, Console]]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    console = Console(page)
    yield page, console
    context.close()
    assert console.errors == [], "the page logged errors"


@pytest.fixture
def page(browser_page: tuple[Page, Console]) -> Page:
    return browser_page[0]


# --- helpers --------------------------------------------------------------------------------------


def rpc(daemon: Daemon, service: str, method: str, request: dict[str, Any]) -> dict[str, Any]:
    """A Connect JSON call, as the page makes them."""
    reply = httpx.post(f"http://{daemon.http_address}/{service}/{method}", json=request, timeout=30)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def emit(daemon: Daemon, project: str, throttle: str, payload: dict[str, Any]) -> dict[str, Any]:
    request = {"eventType": "greet_requested", "project": project, "throttle": throttle,
               "payloadJson": json.dumps(payload)}  # fmt: skip
    return rpc(daemon, FOUNDRY, "Emit", request)


def submit(daemon: Daemon, steps: list[dict[str, Any]], **spec: Any) -> str:
    request = {"spec": {"dagJson": json.dumps({"steps": steps}), **spec}}
    return str(rpc(daemon, RUNTIME, "SubmitRun", request)["runId"])


def get_run(daemon: Daemon, run_id: str) -> dict[str, Any]:
    return dict(rpc(daemon, RUNTIME, "GetRun", {"runId": run_id})["run"])


def wait_status(daemon: Daemon, run_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = get_run(daemon, run_id)
        if run["status"] == status:
            return run
        assert time.monotonic() < deadline, f"{run_id} is {run['status']}, not {status}"
        time.sleep(0.05)


def open_page(page: Page, daemon: Daemon, route: str) -> None:
    page.goto(f"http://{daemon.http_address}/{route}")


def node(page: Page, step: str) -> Any:
    return page.locator(f'svg.dag [data-step="{step}"]')


def step_output(run: dict[str, Any], step: str) -> Any:
    return next(s for s in run["steps"] if s["stepId"] == step).get("output")


def transform(step_id: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "transform", "inputs": {"value": value}, **extra}


# --- the daemon serves the page -------------------------------------------------------------------


def test_the_page_and_its_files_are_served_with_a_strict_policy(daemon):
    base = f"http://{daemon.http_address}"
    index = httpx.get(f"{base}/")
    assert index.status_code == 200
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    policy = index.headers["content-security-policy"]
    assert policy.startswith("default-src 'self'; connect-src 'self' ws://")
    assert index.headers["cache-control"] == "no-cache"
    module = httpx.get(f"{base}/dashboard/app.js")
    assert module.headers["content-type"] == "text/javascript; charset=utf-8"
    again = httpx.get(f"{base}/dashboard/app.js", headers={"if-none-match": module.headers["etag"]})
    assert again.status_code == 304
    assert httpx.get(f"{base}/dashboard/nothing.js").status_code == 404
    assert httpx.get(f"{base}/dashboard/../app.py").status_code == 404
    assert httpx.post(f"{base}/", content=b"x").status_code == 405
    # RPC paths keep their rule: no GET.
    assert httpx.get(f"{base}/{FOUNDRY}/Status").status_code == 405


# --- workflows ------------------------------------------------------------------------------------


def test_the_workflow_list_is_live_and_filters_by_project(page, daemon):
    open_page(page, daemon, "#/workflows")
    page.fill("#wf-project", "live-list")
    page.locator("#wf-project").dispatch_event("change")
    expect(page.locator("#workflow-rows tr")).to_have_count(0)
    emitted = emit(daemon, "live-list", "THROTTLE_FULL", {"name": "Ada"})
    row = page.locator(f'#workflow-rows tr[data-workflow="{emitted["workflowId"]}"]')
    expect(row).to_be_visible(timeout=10_000)  # no reload: the Watch stream brought it
    expect(row).to_contain_text("live-list")
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "completed")


@pytest.mark.parametrize(
    ("throttle", "deliver_state", "deliver_throttled", "withheld"),
    [
        ("THROTTLE_FULL", "completed", "no", 0),
        ("THROTTLE_AUDIT_ONLY", "completed", "yes", 1),
        ("THROTTLE_DRY_RUN", "skipped", "yes", 0),
    ],
)
def test_a_workflows_tree_under_each_throttle(
    page, daemon, throttle, deliver_state, deliver_throttled, withheld
):
    emitted = emit(daemon, "trees", throttle, {"name": "Bo"})
    open_page(page, daemon, "#/workflows")
    row = page.locator(f'#workflow-rows tr[data-workflow="{emitted["workflowId"]}"]')
    expect(row).to_contain_text(throttle.removeprefix("THROTTLE_").lower(), timeout=10_000)
    row.locator("a").click()

    tree = page.locator("#workflow-tree")
    expect(page.locator("main")).to_have_attribute("data-loaded", "final", timeout=10_000)
    compose = tree.locator('[data-block="Compose Greeting"]')
    deliver = tree.locator('[data-block="Deliver Greeting"]')
    expect(compose).to_have_attribute("data-state", "completed")
    expect(deliver).to_have_attribute("data-state", deliver_state)
    expect(deliver).to_have_attribute("data-throttled", deliver_throttled)
    # The chain's shape: the root event owns Compose Greeting, which emitted the event that
    # Deliver Greeting sank, which emitted greeting_delivered.
    nested = tree.locator('[data-event="greet_requested"] [data-block="Compose Greeting"] '
                          '[data-event="greeting_composed"] [data-block="Deliver Greeting"] '
                          '[data-event="greeting_delivered"]')  # fmt: skip
    expect(nested).to_have_count(1)
    expect(tree.get_by_text("throttled: not delivered")).to_have_count(withheld)
    expect(page.locator("#workflow-throttle")).to_have_text(
        throttle.removeprefix("THROTTLE_").lower()
    )
    expect(compose).to_contain_text('composed "Hello, Bo!"')
    archive = tree.locator('[data-block="Archive Greeting"]')
    if throttle == "THROTTLE_FULL":  # the delivered greeting is archived by a command
        expect(archive).to_have_attribute("data-state", "completed")
        expect(archive).to_contain_text("exit 0")
        archive.locator("summary").filter(has_text="raw output").click()
        expect(archive.locator("pre").first).to_have_text("archived\n")
        expect(archive.locator('[data-event="greeting_archived"]')).to_have_count(1)


# --- runs -----------------------------------------------------------------------------------------


def test_the_run_list_shows_status_labels_and_parent(page, daemon):
    run_id = submit(daemon, [transform("a", 1)], labels={"suite": "dashboard-list"})
    wait_status(daemon, run_id, "RUN_STATUS_SUCCEEDED")
    open_page(page, daemon, "#/runs")
    row = page.locator(f'#run-rows tr[data-run="{run_id}"]')
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text("suite=dashboard-list")
    branch = rpc(daemon, RUNTIME, "CreateBranchRun", {"runId": run_id, "fromStep": "a"})["runId"]
    branch_row = page.locator(f'#run-rows tr[data-run="{branch}"]')
    expect(branch_row).to_contain_text(run_id, timeout=10_000)  # live: the list polls ListRuns
    expect(branch_row).to_contain_text("@ a")


def test_hostile_labels_neither_turn_text_around_nor_widen_the_list(page, daemon):
    """Found by a dashboard hunt: a label ending in U+202E (right-to-left override) showed the
    text after it reversed, and one label of 20,000 letters made the run list 238,000 px wide,
    every run's later columns off-screen. The override is shown as its escape; a label wraps."""
    run_id = submit(daemon, [transform("a", 1)],
                    labels={"dir": "abc\u202e", "long": "W" * 16_000})  # fmt: skip
    wait_status(daemon, run_id, "RUN_STATUS_SUCCEEDED")
    open_page(page, daemon, "#/runs")
    row = page.locator(f'#run-rows tr[data-run="{run_id}"]')
    expect(row).to_contain_text("dir=abc\\u202e")
    assert "\u202e" not in row.inner_text()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1400, width  # the viewport's


def test_the_timeline_tooltip_does_not_turn_an_error_around(page, daemon):
    """Found by a dashboard hunt: the timeline's tooltip (the canvas' title) quoted a failed
    attempt's error as recorded, a U+202E in it reversing the rest, the duration too."""
    run_id = submit(daemon, [{"id": "turned", "type": "turned"}])
    wait_status(daemon, run_id, "RUN_STATUS_FAILED")
    open_page(page, daemon, f"#/runs/{run_id}")
    expect(page.locator("#timeline")).to_have_attribute("data-attempts", "1")
    canvas = page.locator("#timeline canvas")
    canvas.hover(position={"x": 40, "y": 6})  # the first row: its one attempt
    expect(canvas).to_have_attribute("title", re.compile(r"txet desrever"))
    title = canvas.get_attribute("title") or ""
    assert "\\u202e txet" in title  # shown as its escape
    assert "\u202e" not in title


def test_a_workflow_page_goes_on_after_a_failed_call_and_says_not_found(browser_page, daemon):
    """Found by a dashboard hunt: one failed call (the daemon restarting, a 429) stopped a
    workflow's page for good, "running" ever after; an unknown (or archived) workflow showed
    "pending", polled for ever. The page tries again; an unknown one is not_found."""
    page, console = browser_page
    console.expect_refusal(f"/{FOUNDRY}/Trace")
    console.expect_refusal(f"/{FOUNDRY}/Status")
    emitted = emit(daemon, "again", "THROTTLE_FULL", {"name": "Cy"})
    failing = [True]

    def once_away(route: Any) -> None:  # the network between the page and the daemon, once
        if failing:
            failing.clear()
            route.fulfill(status=503, content_type="application/json",
                          body='{"code": "unavailable", "message": "away"}')  # fmt: skip
        else:
            route.continue_()

    page.route(f"**/{FOUNDRY}/Trace", once_away)
    open_page(page, daemon, f"#/workflows/{emitted['workflowId']}")
    expect(page.locator("main")).to_have_attribute("data-loaded", "final", timeout=15_000)
    expect(page.locator('#workflow-tree [data-block="Compose Greeting"]')).to_have_count(1)
    assert not failing  # (it did fail once)
    page.unroute(f"**/{FOUNDRY}/Trace")

    open_page(page, daemon, "#/workflows/evt_" + "0" * 32)
    expect(page.locator("#workflow-tree .error-box")).to_contain_text("not_found")
    expect(page.locator("main")).to_have_attribute("data-loaded", "final")


def test_long_words_wrap_in_every_list_and_step_ids_fit_their_nodes(page, daemon):
    """Found by a dashboard hunt: a 256-letter project (the longest Emit takes) made the
    workflow list 3,342 px wide and its page 2,227; an error quoting a long path widened the
    run list; and a step id of 15 letters ran under its node's state word."""
    project = "P" * 256
    workflow = emit(daemon, project, "THROTTLE_FULL", {"name": "wide"})
    steps = [transform("summarize_findings", 1), transform("W" * 40, 2)]
    run_id = submit(daemon, steps)
    wait_status(daemon, run_id, "RUN_STATUS_SUCCEEDED")
    for route in ("#/workflows", f"#/workflows/{workflow['workflowId']}", "#/runs"):
        open_page(page, daemon, route)
        expect(page.locator("main")).to_contain_text("P" * 40 if "workflows" in route else run_id)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1400, (route, width)
    open_page(page, daemon, f"#/runs/{run_id}")
    for step in ("summarize_findings", "W" * 40):
        label = node(page, step).locator("text.label").bounding_box()
        state = node(page, step).locator("text.state").bounding_box()
        assert label is not None
        assert state is not None
        assert state["y"] >= label["y"] + label["height"] - 1  # its own line, below the id
        clipped = (
            node(page, step).locator("text.label").evaluate("t => t.getAttribute('clip-path')")
        )
        assert clipped == "url(#dag-node-clip)"  # a wide id stops at the node's edge


def test_the_run_page_shows_live_state_changes_of_a_running_dag(page, daemon, tmp_path):
    gate = tmp_path / "gate"  # the first step runs until it exists: a slow page load still sees
    steps = [{"id": "first", "type": "hold", "inputs": {"gate": str(gate)}},  # third pending
             {"id": "second", "type": "nap", "depends_on": ["first"]},
             {"id": "third", "type": "nap", "depends_on": ["second"]}]  # fmt: skip
    run_id = submit(daemon, steps)
    open_page(page, daemon, f"#/runs/{run_id}")
    expect(page.locator("main")).to_have_attribute("data-ready", "1")
    # Each transition seen on the same page, without a reload.
    expect(node(page, "first")).to_have_attribute("data-state", "running", timeout=10_000)
    expect(node(page, "third")).to_have_attribute("data-state", "pending")
    gate.touch()
    expect(node(page, "second")).to_have_attribute("data-state", "running", timeout=10_000)
    expect(node(page, "third")).to_have_attribute("data-state", "running", timeout=10_000)
    expect(node(page, "third")).to_have_attribute("data-state", "succeeded", timeout=10_000)
    expect(page.locator("#run-status [data-status]")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#timeline")).to_have_attribute("data-attempts", "3")
    node(page, "second").click()
    panel = page.locator("#step-panel")
    expect(panel).to_contain_text('"napped": true')
    expect(panel).to_contain_text("Seed")
    expect(page.locator("#attestation-status")).to_contain_text("signed")
    # three steps' attestations (announced by their completions) and the run's
    expect(page.locator("#attestation-status")).to_contain_text("4 of 4 signed")


def test_the_pages_are_live_again_after_the_daemon_restarts(browser, shared_daemon, tmp_path):
    """The run page's TapRun and the list's Watch closed with the daemon (1001) and were never
    opened again: the run page showed a run the restarted daemon finished as running for good,
    and the list, polled only, said nothing of it once Status answered again."""
    daemon = shared_daemon(BLOCKS, name="restarted")
    gate = tmp_path / "gate"  # the first step runs until it exists: seen running, however slow
    steps = [{"id": "first", "type": "hold", "inputs": {"gate": str(gate)}},
             {"id": "second", "type": "nap", "depends_on": ["first"]},
             {"id": "third", "type": "nap", "depends_on": ["second"]}]  # fmt: skip
    run_id = submit(daemon, steps)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        run_page, list_page = context.new_page(), context.new_page()
        consoles = [Console(run_page), Console(list_page)]
        for console in consoles:  # while the daemon is away, the pages' calls fail
            console.expect_refusal("/Status")
        open_page(run_page, daemon, f"#/runs/{run_id}")
        open_page(list_page, daemon, "#/workflows")
        expect(node(run_page, "first")).to_have_attribute("data-state", "running",
                                                          timeout=10_000)  # fmt: skip
        daemon.stop()
        for away in (run_page, list_page):  # (or a failed call's line, whichever came last)
            expect(away.locator("#notice")).to_be_visible()
        # a filter changed while away opens the list's stream anew: its warning goes with it
        # once that one is open (it stayed, though the stream was back)
        list_page.fill("#wf-project", "after-restart")
        list_page.dispatch_event("#wf-project", "change")
        daemon.start(same_ports=True)
        gate.touch()  # (the restart leased the first step again)
        expect(run_page.locator("#run-status [data-status]")).to_have_attribute(
            "data-status", "succeeded", timeout=30_000
        )
        for step in ("first", "second", "third"):
            expect(node(run_page, step)).to_have_attribute("data-state", "succeeded")
        expect(run_page.locator("#notice")).to_be_hidden()  # "live updates stopped" is gone
        # the list's Watch is open again, and the page says nothing is wrong only then
        expect(list_page.locator("#notice")).to_be_hidden(timeout=15_000)
        workflow = emit(daemon, "after-restart", "THROTTLE_FULL", {"name": "again"})
        row = list_page.locator(f'tr[data-workflow="{workflow["workflowId"]}"]')
        expect(row).to_be_visible(timeout=10_000)
    finally:
        context.close()
    for console in consoles:
        unexpected = [e for e in console.errors if "WebSocket" not in e]  # the restart's
        assert unexpected == [], "a page logged errors"


def test_retries_and_a_failure_on_the_timeline_and_in_the_step_panel(page, daemon):
    steps = [{"id": "flaky", "type": "broken", "retry": {"max_attempts": 2, "backoff": 0.05}},
             transform("after", 1, depends_on=["flaky"])]  # fmt: skip
    run_id = submit(daemon, steps)
    wait_status(daemon, run_id, "RUN_STATUS_FAILED")
    open_page(page, daemon, f"#/runs/{run_id}")
    expect(page.locator("#run-status [data-status]")).to_have_attribute("data-status", "failed")
    expect(node(page, "flaky")).to_have_attribute("data-state", "failed")
    expect(node(page, "after")).to_have_attribute("data-state", "skipped")
    expect(page.locator("#timeline")).to_have_attribute("data-attempts", "2")  # a retry, a failure
    expect(page.locator("#timeline")).to_have_attribute("data-outcomes", "failed retrying")
    node(page, "flaky").click()
    panel = page.locator("#step-panel")
    expect(panel.locator("dd").nth(1)).to_have_text("2")  # attempts
    expect(panel).to_contain_text("cannot reach the tracker")


def test_pause_at_a_breakpoint_patch_and_resume_from_the_page(page, daemon):
    steps = [transform("a", "upstream"), transform("b", "original", depends_on=["a"])]
    run_id = submit(daemon, steps, breakpoints=["b"])
    open_page(page, daemon, f"#/runs/{run_id}")
    expect(page.locator("#run-status [data-status]")).to_have_attribute(
        "data-status", "paused_at_step", timeout=10_000
    )
    expect(node(page, "b")).to_have_attribute("data-state", "paused")
    node(page, "b").click()

    inputs = page.locator("#patch-inputs")
    inputs.fill('{"value": ')  # the editor says what is wrong and will not send it
    expect(page.locator("#patch-inputs-error")).not_to_be_empty()
    expect(page.locator("#patch-submit")).to_be_disabled()
    inputs.fill("[1]")
    expect(page.locator("#patch-inputs-error")).to_contain_text("must be a JSON object")
    inputs.fill('{"value": "patched"}')
    expect(page.locator("#patch-submit")).to_be_enabled()
    page.fill("#patch-note", "fixed from the page")
    page.click("#patch-submit")
    expect(page.locator("#step-panel")).to_contain_text("fixed from the page", timeout=10_000)

    page.click("#resume")
    expect(page.locator("#run-status [data-status]")).to_have_attribute(
        "data-status", "succeeded", timeout=10_000
    )
    run = get_run(daemon, run_id)
    assert run["status"] == "RUN_STATUS_SUCCEEDED"
    assert step_output(run, "b") == "patched"


def test_a_breakpoint_added_and_removed_from_the_page(page, daemon, tmp_path):
    gate = tmp_path / "release"
    steps = [{"id": "slow", "type": "hold", "inputs": {"gate": str(gate)}},
             transform("next", 1, depends_on=["slow"]),
             transform("last", 2, depends_on=["next"])]  # fmt: skip
    run_id = submit(daemon, steps)
    open_page(page, daemon, f"#/runs/{run_id}")
    node(page, "last").click()
    page.click("#toggle-breakpoint")
    expect(node(page, "last")).to_have_class("node selected breakpoint")
    expect(page.locator("#toggle-breakpoint")).to_have_text("Remove breakpoint")
    page.click("#toggle-breakpoint")
    expect(node(page, "last")).to_have_class("node selected")
    node(page, "next").click()
    page.click("#toggle-breakpoint")
    expect(node(page, "next")).to_have_class("node selected breakpoint")
    gate.touch()  # the first step ends; the run stops before "next"

    expect(page.locator("#run-status [data-status]")).to_have_attribute(
        "data-status", "paused_at_step", timeout=10_000
    )
    assert get_run(daemon, run_id)["pausedStep"] == "next"
    page.click("#resume")
    expect(page.locator("#run-status [data-status]")).to_have_attribute(
        "data-status", "succeeded", timeout=10_000
    )


def test_branch_from_a_step(page, daemon):
    steps = [transform("a", "${inputs.topic}"), transform("b", "${inputs.topic}", depends_on=["a"])]
    run_id = submit(daemon, steps, inputs={"topic": "otters"}, seed="7")
    wait_status(daemon, run_id, "RUN_STATUS_SUCCEEDED")
    open_page(page, daemon, f"#/runs/{run_id}")
    expect(page.locator("#run-status [data-status]")).to_have_attribute("data-status", "succeeded")
    node(page, "b").click()
    page.select_option("#branch-seed-mode", "CUSTOM")
    page.fill("#branch-seed", "9007199254740993")  # past 2^53: a JSON number rounded it
    page.fill("#branch-inputs", '{"topic": "beavers"}')
    page.fill("#branch-note", "what about beavers")
    page.click("#branch-submit")

    page.wait_for_url(lambda url: "#/runs/" in url and run_id not in url)
    branch_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#run-status [data-status]")).to_have_attribute(
        "data-status", "succeeded", timeout=10_000
    )
    expect(node(page, "a")).to_have_attribute("data-state", "reused")
    expect(page.locator(f'.page-head a[href="#/runs/{run_id}"]')).to_be_visible()
    branch = get_run(daemon, branch_id)
    assert branch["parentRunId"] == run_id
    assert branch["branchStep"] == "b"
    assert branch["spec"]["seed"] == "9007199254740993"
    assert step_output(branch, "b") == "beavers"
    assert step_output(branch, "a") == "otters"  # reused, not re-run


def test_the_drift_view_of_a_replay(page, daemon):
    run_id = submit(daemon, [transform("steady", 3), {"id": "clock", "type": "clock"}])
    wait_status(daemon, run_id, "RUN_STATUS_SUCCEEDED")
    open_page(page, daemon, f"#/runs/{run_id}")
    page.select_option("#replay-mode", "FULL")
    page.click("#replay")

    table = page.locator("#drift-table")
    expect(table).to_be_visible(timeout=20_000)
    steady = table.locator('tr[data-step="steady"]')
    clock = table.locator('tr[data-step="clock"]')
    expect(steady.locator("[data-status]")).to_have_attribute("data-status", "ok")
    expect(steady).not_to_have_class("drift-row")
    expect(clock).to_have_class("drift-row")
    expect(clock.locator("[data-status]")).to_have_attribute("data-status", "drift")
    recorded = clock.locator("td").nth(2).inner_text()
    current = clock.locator("td").nth(3).inner_text()
    assert '"ns"' in recorded
    assert '"ns"' in current
    assert recorded != current  # side by side, and different
    expect(steady.locator("td").nth(4)).to_have_text("0")  # token delta
    expect(page.locator("#drift")).to_contain_text("1 outside tolerance")


# --- governance, SQL, token -----------------------------------------------------------------------


def record_evals_and_a_gate(daemon: Daemon) -> None:
    """Two scenarios with results at two commits (one fails at the first), and a decision."""
    scenarios = [
        {"slug": "steady", "title": "A steady value",
         "runSpec": {"dagJson": json.dumps({"steps": [transform("s", 1)]})},
         "expected": {"status": "succeeded"}},
        {"slug": "strict", "title": "The answer is two",
         "runSpec": {"dagJson": json.dumps({"steps": [transform("s", "two")]})},
         "expected": {"steps": {"s": {"equals": "two"}}}},
    ]  # fmt: skip
    rpc(daemon, RUNTIME, "SyncEvalPack", {"pack": "dash", "scenarios": scenarios})
    for commit, strict_value in (("aaaaaaa1", "one"), ("bbbbbbb2", "two")):
        for slug, value in (("steady", 1), ("strict", strict_value)):
            run_id = submit(daemon, [transform("s", value)])
            wait_status(daemon, run_id, "RUN_STATUS_SUCCEEDED")
            request = {"pack": "dash", "slug": slug, "runId": run_id, "commit": commit}
            rpc(daemon, RUNTIME, "RecordEvalResult", request)
    rpc(daemon, RUNTIME, "CheckChangeGate", {
        "changeId": "change-dash", "revision": "bbbbbbb2",
        "evals": [{"name": "pass_rate", "slug": "strict", "score": 0.5, "threshold": 1.0,
                   "direction": "METRIC_DIRECTION_HIGHER_IS_BETTER"}],
    })  # fmt: skip


def test_evals_gates_and_sql(browser_page, daemon):
    page, console = browser_page
    console.expect_refusal(f"/{ANALYTICS}/Query")
    record_evals_and_a_gate(daemon)

    open_page(page, daemon, "#/governance")
    card = page.locator('[data-scenario="dash/steady"]')
    expect(card.locator("svg.chart rect")).to_have_count(2)
    expect(card.locator("svg.chart .bar-label")).to_have_text(["100%", "100%"])
    strict = page.locator('[data-scenario="dash/strict"] svg.chart .bar-label')
    expect(strict).to_have_text(["0%", "100%"])  # per commit, oldest first
    gate = page.locator("[data-gate]").filter(has_text="change-dash").first
    expect(gate).to_be_visible()
    expect(gate.locator("[data-status]").first).not_to_have_attribute("data-status", "unknown")
    expect(gate).to_contain_text("pass_rate")
    # its scorecard in words (a dashboard hunt: "[object HTMLElement],…", no <dt> at all)
    expect(gate.locator("dl.scorecard dt")).to_have_text(["Novelty", "Coverage", "Evals",
                                                         "Budgets"])  # fmt: skip
    expect(gate.locator("dl.scorecard")).not_to_contain_text("[object")

    open_page(page, daemon, "#/sql")
    # a saved question with parameters runs with their defaults (a dashboard hunt: sent as
    # its SQL, "missing parameter(s): $since", for 5 of the 6)
    page.select_option("#sql-saved", "block_health")
    page.click("#sql-run")
    expect(page.locator("#sql-summary")).to_contain_text("row")
    expect(page.locator("#sql-result .error-box")).to_have_count(0)
    page.fill(
        "#sql-text", "SELECT slug, title FROM eval_scenarios WHERE pack = 'dash' ORDER BY slug"
    )
    page.click("#sql-run")
    expect(page.locator("#sql-table tbody tr")).to_have_count(2)
    expect(page.locator("#sql-table tbody tr").first).to_contain_text("A steady value")
    expect(page.locator("#sql-summary")).to_contain_text("2 rows")
    page.fill("#sql-text", "DELETE FROM runs")
    page.click("#sql-run")
    expect(page.locator("#sql-result .error-box")).to_contain_text("invalid_argument")


def test_pass_rates_count_every_result_of_a_commit_and_gates_say_how_many(browser_page, daemon):
    """ListEvalScenarios gives a scenario's newest 100 results: a commit whose earlier results
    fell out of them showed 2/2 passed where it had 2/3 (a hunt), and leaving such a commit out
    still misread commits whose results interleave (a review): the page counts every result
    through the Analytics service. And the 50 decisions it asks for were shown as if all."""
    page, _ = browser_page
    scenario = {"slug": "cut", "title": "Cut", "expected": {"steps": {"s": {"equals": "two"}}},
                "runSpec": {"dagJson": json.dumps({"steps": [transform("s", "two")]})}}  # fmt: skip
    rpc(daemon, RUNTIME, "SyncEvalPack", {"pack": "window", "scenarios": [scenario]})
    runs = {}
    for value in ("one", "two"):
        runs[value] = submit(daemon, [transform("s", value)])
        wait_status(daemon, runs[value], "RUN_STATUS_SUCCEEDED")
    order = [("aaaa", "one"), ("aaaa", "two"), ("aaaa", "two")] + [("bbbb", "two")] * 49
    order += [("cccc", "one"), ("bbbb", "two")] * 25  # interleaved, cccc all failed
    for commit, value in order:
        request = {"pack": "window", "slug": "cut", "runId": runs[value], "commit": commit}
        rpc(daemon, RUNTIME, "RecordEvalResult", request)
    for i in range(51):
        rpc(daemon, RUNTIME, "CheckChangeGate", {"changeId": f"many-{i}"})

    open_page(page, daemon, "#/governance")
    card = page.locator('[data-scenario="window/cut"]')
    expect(card.locator("svg.chart .bar-label")).to_have_text(["67%", "100%", "0%"])
    expect(card).to_contain_text("aaaa: 2/3 passed")
    expect(card).to_contain_text("bbbb: 74/74 passed")
    expect(card).to_contain_text("cccc: 0/25 passed")
    expect(card.locator("[data-cut]")).to_have_count(0)
    # two scenarios whose pack and slug join alike ("a/b" + "c", "a" + "b/c"): apart (a review)
    for pack, slug, commit in (("a/b", "c", "x1"), ("a", "b/c", "y2")):
        rpc(
            daemon,
            RUNTIME,
            "SyncEvalPack",
            {"pack": pack, "scenarios": [{**scenario, "slug": slug}]},
        )
        request = {"pack": pack, "slug": slug, "runId": runs["two"], "commit": commit}
        rpc(daemon, RUNTIME, "RecordEvalResult", request)
    page.reload()
    cards = page.locator('[data-scenario="a/b/c"]')
    expect(cards).to_have_count(2)
    expect(cards.nth(0)).not_to_contain_text("x1: 1/1 passed y2")
    expect(cards.filter(has_text="x1")).to_have_count(1)
    expect(cards.filter(has_text="y2")).to_have_count(1)
    expect(page.locator("[data-shown]")).to_contain_text("The newest 50 decisions")
    expect(page.locator("[data-gate]")).to_have_count(50)


TOKEN = "s3/cr+t=="


def test_the_token_is_sent_on_calls_and_streams(browser, make_daemon):
    """A base64 token's "/", "+" and "=" cannot be in a WebSocket subprotocol: the page sends
    it encoded ("bearer64."), and the live list (a WebSocket stream) still fills."""
    daemon = make_daemon("[daemon]\ntoken_env = 'DASH_TOKEN'\n", env={"DASH_TOKEN": TOKEN},
                         name="token")  # fmt: skip
    context = browser.new_context()
    page = context.new_page()
    try:
        open_page(page, daemon, "#/workflows")
        expect(page.locator("#notice")).to_contain_text("unauthenticated")
        page.fill("#token", TOKEN)
        page.click("#token-form button")
        expect(page.locator("#notice")).to_be_hidden()
        emitted = httpx.post(
            f"http://{daemon.http_address}/{FOUNDRY}/Emit",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"eventType": "greet_requested", "project": "tok"},
        ).json()
        row = page.locator(f'#workflow-rows tr[data-workflow="{emitted["workflowId"]}"]')
        expect(row).to_be_visible(timeout=10_000)
        assert page.evaluate("sessionStorage.getItem('foundry.token')") == TOKEN
    finally:
        context.close()


def test_an_answer_to_the_page_before_the_token_does_not_bring_its_error_back(browser, make_daemon):
    """The Status asked before the token was set is answered after it (held here, as a slow
    answer would be): the page mounted again with the token must not show that stale
    "unauthenticated" (it stayed until the next route change)."""
    daemon = make_daemon("[daemon]\ntoken_env = 'DASH_TOKEN'\n", env={"DASH_TOKEN": TOKEN},
                         name="stale")  # fmt: skip
    context = browser.new_context()
    page = context.new_page()
    held: list[Any] = []

    def hold_the_first(route: Any) -> None:
        if held or route.request.headers.get("authorization"):
            route.continue_()
        else:
            held.append(route)

    try:
        page.route(f"**/{FOUNDRY}/Status", hold_the_first)
        open_page(page, daemon, "#/workflows")
        page.wait_for_function("() => document.getElementById('workflows') !== null")
        deadline = time.monotonic() + 10
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        assert held, "the page never asked for Status"
        page.fill("#token", TOKEN)
        page.click("#token-form button")
        expect(page.locator("#workflow-rows")).to_be_attached()
        with page.expect_response(lambda r: r.url.endswith("/Status") and r.status == 401):
            held[0].continue_()  # now answered: unauthenticated, to the page left behind
        # the page has read it: its handlers ran a task or two after the response arrived
        page.evaluate("() => new Promise((done) => setTimeout(() => setTimeout(done, 50), 0))")
        expect(page.locator("#notice")).to_be_hidden()
    finally:
        context.close()


# --- performance ----------------------------------------------------------------------------------


def wide_dag(chains: int, length: int) -> list[dict[str, Any]]:
    """``chains`` independent chains of ``length`` transform steps each."""
    steps = []
    for c in range(chains):
        for i in range(length):
            inputs = {"value": i} if i == 0 else {"value": f"${{steps.c{c}s{i - 1}.output}}"}
            steps.append({"id": f"c{c}s{i}", "type": "transform", "inputs": inputs})
    return steps


def test_a_1000_step_run_is_interactive_and_keeps_up_with_200_events_per_second(page, daemon):
    run_id = submit(daemon, wide_dag(100, 10))
    wait_status(daemon, run_id, "RUN_STATUS_SUCCEEDED", timeout=120)

    started = time.monotonic()
    open_page(page, daemon, f"#/runs/{run_id}")
    expect(page.locator("main")).to_have_attribute("data-ready", "1")
    node(page, "c50s5").click()
    expect(page.locator("#step-panel")).to_contain_text("c50s5")
    interactive_ms = (time.monotonic() - started) * 1000
    ready_ms = page.evaluate("foundryDashboard.metrics.run.readyMs")
    expect(page.locator("#run-status [data-status]")).to_have_attribute(
        "data-status", "succeeded", timeout=30_000
    )
    page.wait_for_function("() => foundryDashboard.metrics.run.tapEnded === true", timeout=60_000)
    # 1,000 step attestations and the run's: asked for 1,000 at a time (the first 1,000 only
    # were, the rest shown unsigned), once the tap's history reached the end (at its first run
    # event, when few were announced yet, the run showed unsigned for seconds)
    status = page.locator("#attestation-status")
    expect(status).to_contain_text("1001 of 1001 signed; the run itself is attested")
    replayed = page.evaluate("foundryDashboard.metrics.run")
    print(f"\n1,000-step run page: drawn and answering {ready_ms:.0f} ms after navigation "
          f"start (snapshot {replayed['snapshotMs']:.0f} ms, drawing "
          f"{replayed['buildMs']:.0f} ms); "
          f"a click's step panel in {replayed['selectMs']:.1f} ms; goto → click → panel seen by "
          f"the test {interactive_ms:.0f} ms; its {replayed['received']} "
          f"recorded events applied in {replayed['flushes']} frames "
          f"(longest frame {replayed['maxFlushMs']:.1f} ms)")  # fmt: skip
    # The target is 1 s; the bound here only catches a page that is badly off, as the
    # machine running the suite may be loaded.
    assert ready_ms < 3000

    # 200 events/s for 3 s into the page's stream handler (the function the WebSocket's messages
    # go to), shaped like TapRun's: lease and completion of each step in turn.
    figures = page.evaluate(FEED_200_PER_SECOND)
    print(f"200 events/s for 3 s: {figures['sent']} events, {figures['applied']} applied, "
          f"oldest queued event {figures['maxQueueAgeMs']:.1f} ms, longest frame "
          f"{figures['maxFlushMs']:.1f} ms, backlog after the last event "
          f"{figures['backlogAfterMs']} events")  # fmt: skip
    assert figures["applied"] == figures["sent"]
    assert figures["backlogAfterMs"] == 0
    assert figures["maxQueueAgeMs"] < 500  # the page never falls seconds behind


def test_a_finished_runs_attestations_are_shown_once_all_are_announced(page, daemon):
    """The page asked for them at the first run event of the tap's history, when only the
    first few were announced: a signed run showed "unsigned 130 of 136" until the rest came.
    (A history of more than one batch of the tap's, 256 events.)"""
    run_id = submit(daemon, wide_dag(10, 20))
    wait_status(daemon, run_id, "RUN_STATUS_SUCCEEDED")
    open_page(page, daemon, f"#/runs/{run_id}")
    first = page.wait_for_selector("#attestation-status", timeout=30_000)
    assert first is not None
    assert "signed 201 of 201 signed; the run itself is attested" in first.text_content()


def test_a_reference_with_spaces_inside_its_braces_is_an_edge(page, daemon):
    """The daemon reads ``${ steps.a.output }`` as a dependency on a; the graph drew no edge."""
    steps = [transform("a", 1), transform("b", "${ steps.a.output }"),
             transform("c", "${steps.b.output}")]  # fmt: skip
    run_id = submit(daemon, steps)
    wait_status(daemon, run_id, "RUN_STATUS_SUCCEEDED")
    open_page(page, daemon, f"#/runs/{run_id}")
    expect(page.locator("main")).to_have_attribute("data-ready", "1")
    boxes = [node(page, step).bounding_box() for step in ("a", "b", "c")]
    assert all(box is not None for box in boxes)
    xs = [box["x"] for box in boxes if box is not None]
    assert xs[0] < xs[1] < xs[2], xs  # a layer each: a → b → c


def test_a_long_chain_listed_child_first_is_drawn(page, daemon):
    """Steps were ranked by a recursive walk up their parents, as deep as the chain: a run of
    6,000 steps listed child-first overflowed the browser's stack (its page showed an error)."""
    count = 5_000
    chain = [transform(f"s{i}", i, **({"depends_on": [f"s{i - 1}"]} if i else {}))
             for i in range(count)]  # fmt: skip
    run_id = submit(daemon, chain[::-1], breakpoints=["s0"])
    wait_status(daemon, run_id, "RUN_STATUS_PAUSED_AT_STEP")
    open_page(page, daemon, f"#/runs/{run_id}")
    expect(page.locator("main")).to_have_attribute("data-ready", "1", timeout=30_000)
    expect(page.locator("svg.dag g.node")).to_have_count(count)
    first, last = (node(page, step).bounding_box() for step in ("s0", f"s{count - 1}"))
    assert first is not None
    assert last is not None
    assert last["x"] > first["x"]  # the chain runs left to right: a layer a step
    rpc(daemon, RUNTIME, "CancelRun", {"runId": run_id, "reason": "drawn"})


FEED_200_PER_SECOND = """async () => {
  const metrics = foundryDashboard.metrics.run;
  const ingest = foundryDashboard.ingestRunEvent;
  const base = metrics.received, appliedBase = metrics.applied;
  metrics.maxQueueAgeMs = 0; metrics.maxFlushMs = 0;
  const ids = [...document.querySelectorAll("svg.dag [data-step]")].map((n) => n.dataset.step);
  let sent = 0;
  const started = performance.now();
  await new Promise((done) => {
    const tick = () => {
      const due = Math.min(600, Math.floor((performance.now() - started) / 5));
      for (; sent < due; sent++) {
        const id = ids[Math.floor(sent / 2) % ids.length];
        const now = new Date().toISOString();
        const payload = sent % 2 === 0
          ? { attempt: 2, inputs: {}, seed: 1 } : { attempt: 2, output: sent };
        const kind = sent % 2 === 0 ? "step_leased" : "step_completed";
        ingest({ runId: "x", stepId: id, kind, payload, occurredAt: now });
      }
      if (sent < 600) setTimeout(tick, 5); else done();
    };
    tick();
  });
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const applied = metrics.applied - appliedBase;
  return { sent, applied, maxQueueAgeMs: metrics.maxQueueAgeMs, maxFlushMs: metrics.maxFlushMs,
           backlogAfterMs: metrics.received - base - applied };
}"""


# --- screenshots ----------------------------------------------------------------------------------


def test_screenshots_of_the_main_pages(page, daemon, tmp_path):
    """Writes docs/screenshots/ only with FOUNDRY_SCREENSHOTS=1."""
    folder = REPO / "docs" / "screenshots" if os.environ.get("FOUNDRY_SCREENSHOTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    for throttle in ("THROTTLE_FULL", "THROTTLE_AUDIT_ONLY"):
        emitted = emit(daemon, "demo", throttle, {"name": "Ada"})
    text = "${steps.outline.output.text}"
    steps = [{"id": "outline", "type": "llm", "inputs": {"prompt": "Outline ${inputs.topic}"}},
             {"id": "count", "type": "tool",
              "inputs": {"tool": "word_count", "args": {"text": text}}},
             {"id": "draft", "type": "llm", "inputs": {"prompt": f"Expand {text}"}},
             {"id": "clock", "type": "clock", "depends_on": ["count"]},
             {"id": "report", "type": "transform", "inputs": {"merge": [
                 {"topic": "${inputs.topic}"}, {"words": "${steps.count.output.words}"}]},
              "depends_on": ["draft", "clock"]}]  # fmt: skip
    run_id = submit(daemon, steps, inputs={"topic": "otters"}, labels={"team": "docs"})
    wait_status(daemon, run_id, "RUN_STATUS_SUCCEEDED")
    record_evals_and_a_gate(daemon)

    shots = [("workflows", "#/workflows", "#workflow-rows tr"),
             ("workflow", f"#/workflows/{emitted['workflowId']}", "[data-loaded=final]"),
             ("runs", "#/runs", "#run-rows tr"),
             ("run", f"#/runs/{run_id}", "#attestation-status"),
             ("governance", "#/governance", "[data-scenario] svg.chart"),
             ("sql", "#/sql", "#sql-text")]  # fmt: skip
    for name, route, ready in shots:
        open_page(page, daemon, route)
        page.locator(ready).first.wait_for()
        if name == "governance":
            page.locator("[data-gate]").first.wait_for()
        if name == "run":
            node(page, "draft").click()
            page.click("#replay")
            page.locator("#drift-table").wait_for()
        if name == "sql":
            page.click("#sql-run")
            page.locator("#sql-table").wait_for()
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
        assert (folder / f"{name}.png").stat().st_size > 5000
