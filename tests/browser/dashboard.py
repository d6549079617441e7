#!/usr/bin/env python3
"""The dashboard in a real browser: Debian's Chromium driven by Playwright (pinned in
tests/browser/requirements.txt; the browser is the system's, never downloaded).

Started by the Rust test `browser::` (tests/tests/e2e/browser.rs), which runs the real
`autopilot` binary against the fake model API, with the model's replies scripted in the order
this flow starts its Claude runs. Environment:

  AUTOPILOT_URL               the dashboard
  AUTOPILOT_OPERATOR_PASSWORD the operator password
  AUTOPILOT_TEST_CHROMIUM     Chromium (default /usr/bin/chromium)
  AUTOPILOT_TEST_SCREENSHOTS  where to save a desktop and a phone screenshot of each page
                              (optional; keep it outside the repository)

`dashboard.py test` runs the flow (exit 1 on the first failure); `dashboard.py bench-live
RUN_URL` opens a live run and prints how long each event took from the worker to the DOM;
`dashboard.py bench-load PAGE_URL` prints how long Chromium takes to have a page ready.
Every page is checked with axe-core (no serious or critical violation), and any console error
or Content Security Policy violation fails the flow.
"""

import json
import re
import os
import sys
import time
import urllib.request

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect, sync_playwright

URL = os.environ.get("AUTOPILOT_URL", "http://127.0.0.1:8080").rstrip("/")
PASSWORD = os.environ.get("AUTOPILOT_OPERATOR_PASSWORD", "")
CHROMIUM = os.environ.get("AUTOPILOT_TEST_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("AUTOPILOT_TEST_SCREENSHOTS")
LAUNCH_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"]
TIMEOUT_MS = 60_000
RUN_PAGE = re.compile(r"/runs/[0-9a-f-]{36}$")

axe = Axe()


class Problems:
    """Console errors, uncaught exceptions and CSP violations seen on any page."""

    def __init__(self):
        self.seen = []
        # Messages expected for a moment (the status of a page that answers a wrong password).
        self.allowed = []

    def watch(self, page):
        page.on("console", lambda m: self.console(page, m))
        page.on("response", lambda r: r.status == 404 and self.seen.append(f"404 for {r.url}"))
        page.on("pageerror", lambda e: self.seen.append(f"uncaught exception on {page.url}: {e}"))

    def console(self, page, message):
        if message.type != "error":
            return
        if any(allowed in message.text for allowed in self.allowed):
            return
        self.seen.append(f"console error on {page.url}: {message.text}")

    def check(self):
        assert not self.seen, "\n".join(self.seen)


def step(name):
    print(f"--- {name}", flush=True)


def audit(page, name):
    """axe-core on the page as it is: no serious or critical violation; then screenshots."""
    results = axe.run(page)
    bad = [v for v in results.response["violations"] if v.get("impact") in ("serious", "critical")]
    assert not bad, f"{name}: accessibility violations:\n" + "\n".join(
        f"  {v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}" for v in bad
    )
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SHOTS, f"{name}-desktop.png"), full_page=True)


def phone_shot(browser, cookies, path, name):
    if not SHOTS:
        return
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    context.add_cookies(cookies)
    page = context.new_page()
    page.goto(URL + path)
    page.screenshot(path=os.path.join(SHOTS, f"{name}-phone.png"), full_page=True)
    context.close()


def sign_in(page, problems):
    page.goto(URL + "/")
    expect(page).to_have_url(URL + "/sign-in?next=%2F")
    audit(page, "sign-in")
    page.get_by_label("Operator password").fill("wrong password")
    # The answer to a wrong password is a 401 page, which Chromium reports on the console.
    problems.allowed.append("status of 401")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not the operator password")
    problems.allowed.clear()
    page.get_by_label("Operator password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def wait_for_status(page, statuses):
    summary = page.locator("#run-summary")
    expect(summary).to_have_attribute("data-status", statuses, timeout=TIMEOUT_MS)


def run_flow():
    problems = Problems()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        problems.watch(page)
        page.on("dialog", lambda dialog: dialog.accept())

        step("sign in")
        sign_in(page, problems)
        audit(page, "overview-empty")

        step("create a job with the cron preview")
        page.get_by_role("link", name="Jobs", exact=True).click()
        page.get_by_role("link", name="New job").click()
        page.get_by_label("Name", exact=True).fill("sprint summary")
        page.get_by_label("Prompt", exact=True).fill("Summarise the sprint, then say done.")
        page.get_by_label("Cron expression").fill("30 2 * * *")
        page.get_by_label("Time zone").fill("Europe/Berlin")
        page.get_by_label("Time zone").dispatch_event("change")
        preview = page.locator("#schedule-preview")
        expect(preview.locator("li")).to_have_count(5)
        expect(preview).to_contain_text("skip from 02:00 to 03:00")
        page.get_by_label("Cron expression").fill("61 2 * * *")
        expect(preview.get_by_role("alert")).to_contain_text("minute takes 0-59")
        expect(page.get_by_label("Cron expression")).to_have_attribute("aria-invalid", "true")
        page.get_by_label("Cron expression").fill("30 2 * * *")
        expect(preview.locator("li")).to_have_count(5)
        page.get_by_role("checkbox", name="Bash", exact=True).check()
        audit(page, "job-editor")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("heading", name="sprint summary")).to_be_visible()
        audit(page, "job")

        step("run it and watch the live transcript fill in")
        page.get_by_role("button", name="Run now").click()
        expect(page).to_have_url(RUN_PAGE)
        transcript = page.locator("#transcript")
        # The model answers after a pause: the page is open, following live, before the events
        # come.
        expect(transcript).to_have_attribute("data-live", re.compile(r"/live\?after=\d+$"))
        expect(transcript.locator(".ev-tool_use")).to_have_count(1, timeout=TIMEOUT_MS)
        expect(transcript.locator(".ev-assistant_text").last).to_contain_text("All done", timeout=TIMEOUT_MS)
        wait_for_status(page, "succeeded")
        assert page.locator("#transcript script").count() == 0, "agent markup became an element"
        step("expand a tool call")
        tool = transcript.locator("details.tool").first
        tool.locator("summary").click()
        expect(tool.locator("pre")).to_contain_text("echo hello-from-tool")
        result = transcript.locator("details.result").first
        result.locator("summary").click()
        expect(result.locator("pre")).to_contain_text("hello-from-tool")
        run_url = page.url
        audit(page, "run")

        step("rerun with edits")
        page.get_by_role("link", name="Rerun with edits").click()
        page.get_by_label("Prompt", exact=True).fill("Only say the edited words.")
        audit(page, "rerun")
        page.get_by_role("button", name="Run", exact=True).click()
        expect(page).not_to_have_url(run_url)
        expect(page).to_have_url(RUN_PAGE)
        rerun_id = page.url.rsplit("/", 1)[-1]
        wait_for_status(page, "succeeded")
        expect(page.locator("#transcript")).to_contain_text("Edited run done.")
        page.get_by_role("button", name="Copy transcript as markdown").click()
        expect(page.locator(".copied")).not_to_be_empty()

        step("kill a run")
        page.goto(URL + "/jobs/new")
        page.get_by_label("Name", exact=True).fill("long sleeper")
        page.get_by_label("Kind").select_option("shell")
        page.get_by_label("Prompt", exact=True).fill("sleep 120")
        page.get_by_label("Only when started").check()
        page.get_by_role("button", name="Save").click()
        page.get_by_role("button", name="Run now").click()
        wait_for_status(page, "running")
        page.get_by_role("button", name="Kill").click()
        wait_for_status(page, "cancelled")

        step("runs list, filters in the URL, compare")
        page.goto(URL + "/runs?status=succeeded")
        expect(page.locator("table.list tbody tr")).to_have_count(2)
        audit(page, "runs")
        page.keyboard.press("j")
        expect(page.locator("tr.selected")).to_have_count(1)
        page.goto(URL + "/runs?status=cancelled&job=long+sleeper")
        expect(page.locator("table.list tbody tr")).to_have_count(1)

        step("create a webhook, see its URL once, deliver to it and replay")
        page.goto(URL + "/webhooks")
        audit(page, "webhooks-empty")
        page.get_by_role("link", name="New webhook").click()
        page.get_by_label("Name", exact=True).fill("deploys")
        page.get_by_label("Prompt template").fill("A deploy of {{payload.service!}} happened: report it.")
        page.get_by_label("Scheme").select_option("none")
        audit(page, "webhook-new")
        page.get_by_role("button", name="Create").click()
        expect(page.get_by_text("shown only once")).to_be_visible()
        hook_url = page.locator("#url").input_value()
        assert hook_url.startswith(URL + "/hooks/"), hook_url
        audit(page, "webhook-secrets")
        page.get_by_role("link", name="Go to the webhook").click()
        expect(page.locator("body")).not_to_contain_text(hook_url)
        request = urllib.request.Request(
            hook_url,
            data=json.dumps({"service": "billing <img src=x onerror=alert(1)>"}).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request) as answer:
            assert answer.status == 202, answer.status
            delivered_run = json.loads(answer.read())["run_id"]
        page.goto(URL + f"/runs/{delivered_run}")
        wait_for_status(page, "succeeded")
        expect(page.get_by_text("Webhook payload")).to_be_visible()
        assert page.locator("img").count() == 0, "markup from the payload became an element"
        page.get_by_role("button", name="Replay payload").click()
        expect(page).not_to_have_url(URL + f"/runs/{delivered_run}")
        wait_for_status(page, "succeeded")
        page.goto(URL + "/webhooks")
        page.get_by_role("link", name="deploys").click()
        expect(page.locator("table.list tbody tr")).to_have_count(2)
        audit(page, "webhook")

        step("a quick run, saved as a job")
        page.get_by_role("link", name="Quick run").click()
        page.get_by_label("Prompt", exact=True).fill("Check the weather report once.")
        page.get_by_role("button", name="Run now").click()
        expect(page).to_have_url(RUN_PAGE)
        wait_for_status(page, "succeeded")
        page.get_by_role("link", name="Save as a job").click()
        expect(page.get_by_label("Prompt", exact=True)).to_have_value("Check the weather report once.")
        page.get_by_label("Name", exact=True).fill("weather")
        page.get_by_label("Cron expression").fill("0 7 * * *")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("heading", name="weather")).to_be_visible()

        step("usage shows the runs' cost")
        page.goto(URL + "/usage")
        expect(page.locator("#usage-cost")).not_to_have_text("$0")
        expect(page.locator('svg.chart rect.bar:not([height="0.0"])').first).to_be_visible()
        audit(page, "usage")

        step("every other page, with keyboard navigation")
        for path, name in [("/", "overview"), ("/jobs", "jobs"), ("/tools", "tools"), ("/quick-run", "quick-run"), ("/settings", "settings")]:
            page.goto(URL + path)
            audit(page, name)
        page.keyboard.press("?")
        expect(page.locator("#help")).to_be_visible()
        page.keyboard.press("Escape")
        page.keyboard.press("g")
        page.keyboard.press("r")
        expect(page).to_have_url(URL + "/runs")
        page.goto(URL + "/jobs")
        page.keyboard.press("/")
        page.keyboard.type("sleeper")
        expect(page.locator("#jobs-table tbody tr:not([hidden])")).to_have_count(1)
        page.goto(URL + f"/runs/compare?a={rerun_id}")
        expect(page.locator("table.compare tr.differs")).not_to_have_count(0)
        audit(page, "compare")

        step("screenshots on a phone")
        cookies = context.cookies()
        for path, name in [("/", "overview"), ("/jobs", "jobs"), ("/runs", "runs"), (run_url.removeprefix(URL), "run"), ("/webhooks", "webhooks"), ("/usage", "usage"), ("/tools", "tools"), ("/jobs/new", "job-editor")]:
            phone_shot(browser, cookies, path, name)

        problems.check()
        browser.close()
    print("browser flow passed", flush=True)


def bench_live(run_url):
    """Opens a live run page and records, for each event entry the page gains, how long after
    the worker read it (its `time[datetime]`) it reached the DOM. Prints JSON."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        context = browser.new_context()
        page = context.new_page()
        problems = Problems()
        problems.watch(page)
        page.goto(URL + "/sign-in")
        page.get_by_label("Operator password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.goto(run_url)
        page.evaluate(
            """() => {
              window.__latencies = [];
              const transcript = document.getElementById('transcript');
              new MutationObserver((records) => {
                const now = Date.now();
                for (const record of records) for (const node of record.addedNodes) {
                  const time = node.querySelector && node.querySelector('time[datetime]');
                  if (time && node.classList.contains('ev-output')) window.__latencies.push(now - Date.parse(time.getAttribute('datetime')));
                }
              }).observe(transcript, { childList: true });
              document.addEventListener('autopilot:end', () => { window.__ended = true; });
            }"""
        )
        page.wait_for_function("() => window.__ended === true", timeout=300_000)
        latencies = page.evaluate("() => window.__latencies")
        problems.check()
        browser.close()
    print(json.dumps({"latencies_ms": latencies}), flush=True)


def bench_load(page_url, loads=5):
    """Loads a page several times and prints how long Chromium took to have it ready (the
    navigation's `domContentLoadedEventEnd` and `loadEventEnd`), as JSON."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_context().new_page()
        problems = Problems()
        problems.watch(page)
        page.goto(URL + "/sign-in")
        page.get_by_label("Operator password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        timings = []
        for _ in range(loads):
            page.goto(page_url, wait_until="load")
            timings.append(page.evaluate(
                "() => { const n = performance.getEntriesByType('navigation')[0]; "
                "return { ready_ms: n.domContentLoadedEventEnd, load_ms: n.loadEventEnd }; }"
            ))
        problems.check()
        browser.close()
    print(json.dumps({"timings": timings}), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "test"
    if mode == "test":
        run_flow()
    elif mode == "bench-live":
        bench_live(sys.argv[2])
    elif mode == "bench-load":
        bench_load(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} [test | bench-live RUN_URL | bench-load PAGE_URL]")
