"""What a person sees in the dashboard, in headless Chromium: queue counts, a dead job's error and
its retry, a workflow's timeline, cancel/resume/fork, filters, a record's diff, auto-refresh,
--read-only, CSRF refusals and an unprivileged role's view. Screenshots of each page go to the
output folder (dashboard_harness.py). The tests share one seeded cluster and run in file order
(the overview's counts are read before the retry changes them)."""

import re
import time

import httpx
from dashboard_harness import start_dashboard, wait_until
from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException,
                                        WebDriverException)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.wait import WebDriverWait


def visit(browser, url, output_dir, shot=None):
    browser.get(url)
    if shot:
        browser.save_screenshot(str(output_dir / f"{shot}.png"))
    return browser


def swapped(error):
    """The element read was replaced under the reader: Chrome says so either way."""
    return isinstance(error, StaleElementReferenceException) or \
        "does not belong to the document" in (error.msg or "")


def settled(read):
    """read() again when the live part was swapped under it (auto-refresh every 2 s)."""
    for _ in range(20):
        try:
            return read()
        except WebDriverException as error:
            if not swapped(error):
                raise
            time.sleep(0.05)
    return read()


def loads_page(browser, act, timeout=10):
    """act() (a click or a submit that loads a page), then wait until the old document is gone
    and the new one loaded: read at once, Chrome may find an element in the old document and
    fail to read it while the new one replaces it."""
    old = browser.find_element(By.TAG_NAME, "html")
    act()
    WebDriverWait(browser, timeout).until(staleness_of(old))
    WebDriverWait(browser, timeout).until(
        lambda b: b.execute_script("return document.readyState") == "complete")


def text(browser, css):
    return settled(lambda: browser.find_element(By.CSS_SELECTOR, css).text.strip())


def texts(browser, css):
    return settled(lambda: [e.text.strip() for e in browser.find_elements(By.CSS_SELECTOR, css)])


def shows(browser, css, expected, timeout=10):
    """Poll until the element at css reads `expected` (a click's page may still be loading)."""
    def reads():
        try:
            return text(browser, css) == expected
        except NoSuchElementException:
            return False
    return wait_until(reads, timeout)


def click(browser, css):
    """Click a button or link (each loads a page here) and wait for the page it loads."""
    loads_page(browser, lambda: settled(lambda: browser.find_element(By.CSS_SELECTOR, css).click()))


def attrs(browser, css, name):
    return settled(lambda: [e.get_attribute(name) for e in browser.find_elements(By.CSS_SELECTOR, css)])


def no_trace(browser):
    assert "Traceback" not in browser.page_source and 'File "' not in browser.page_source


def test_overview_shows_each_queue_and_workflows_by_status(dash_cluster, dashboards, browser, output_dir):
    visit(browser, dashboards["app"].url + "/", output_dir, "overview")
    with dash_cluster.connect(user="app") as conn:
        stats = {r[0]: r[1:] for r in conn.execute(
            "SELECT queue_name, ready, scheduled, running, dead FROM eventic.queue_stats")}
    assert set(texts(browser, "#queues td:first-child a")) == set(stats) == {
        "held", "long", "mail", "story", "workflows"}
    mail = "#queues tr[data-queue=mail] "
    assert (text(browser, mail + ".scheduled"), text(browser, mail + ".dead")) == ("1", "1")
    for name, (ready, scheduled, running, dead) in stats.items():
        row = f"#queues tr[data-queue={name}] "
        assert [text(browser, row + c) for c in (".ready", ".scheduled", ".running", ".dead")] == \
            [str(ready), str(scheduled), str(running), str(dead)]
    assert "paused" in text(browser, "#queues tr[data-queue=held] .state")
    assert text(browser, "#queues tr[data-queue=held] .age").endswith(("s", "min"))
    # the plot: 60 bars (minutes), and the jobs that ran are counted
    assert len(browser.find_elements(By.CSS_SELECTOR, "#throughput svg rect.bar")) == 60
    assert int(text(browser, "#jobs-last-hour")) >= 3
    cards = dict(zip(attrs(browser, "#workflow-statuses a", "data-status"),
                     texts(browser, "#workflow-statuses a .count")))
    assert cards == {"ENQUEUED": "1", "RUNNING": "1", "SLEEPING": "2", "WAITING": "1", "SUCCESS": "1",
                     "ERROR": "1", "CANCELLED": "1"}
    assert text(browser, "#role") == "app"


def test_a_dead_job_shows_its_error_and_retry_makes_it_run(dash_cluster, dashboards, browser, output_dir):
    url = dashboards["app"].url
    visit(browser, url + "/queues/mail?tab=dead", output_dir, "queue-dead")
    jobs = attrs(browser, "#jobs tbody tr[data-job]", "data-job")
    assert len(jobs) == 1
    job = jobs[0]
    assert "mailbox bob@example.com does not exist" in text(browser, f"tr[data-job='{job}'] .job-error")
    row = text(browser, f"tr[data-job='{job}']")
    assert "send_mail(text)" in row and '["bob@example.com"]' in row
    with dash_cluster.connect(user="app") as conn:
        conn.execute("INSERT INTO app.mailboxes VALUES ('bob@example.com')")
        click(browser, f"tr[data-job='{job}'] button.retry")
        assert shows(browser, "#flash", f"job {job} will run again")
        assert wait_until(lambda: conn.execute(
            "SELECT count(*) FROM app.sent WHERE address = 'bob@example.com'").fetchone()[0] == 1, 30)
    visit(browser, url + "/queues/mail?tab=dead", output_dir)
    assert browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-job]") == []
    visit(browser, url + "/queues/mail?tab=finished", output_dir, "queue-finished")
    assert job in texts(browser, "#jobs tbody tr[data-job] td:first-child")
    visit(browser, url + "/queues/mail", output_dir, "queue")
    assert texts(browser, "#jobs tbody tr[data-job] .badge") == ["scheduled"]


def test_pause_and_resume_a_queue(dash_cluster, dashboards, browser, output_dir):
    visit(browser, dashboards["app"].url + "/queues/story", output_dir)
    click(browser, "#pause-queue")
    assert shows(browser, "#flash", "queue story paused")
    with dash_cluster.connect(user="app") as conn:
        paused = lambda: conn.execute("SELECT paused FROM eventic.queues WHERE queue_name = 'story'").fetchone()[0]
        assert paused() is True
        assert text(browser, "#queue-counts .paused") == "paused"
        click(browser, "#resume-queue")
        assert shows(browser, "#flash", "queue story resumed") and paused() is False


def test_a_workflow_timeline_shows_its_steps(dashboards, browser, output_dir):
    visit(browser, dashboards["app"].url + "/workflows/order-1-success", output_dir, "workflow")
    assert text(browser, "#workflow-status") == "SUCCESS"
    assert texts(browser, "#steps .step-name") == ["fetch_order", "stage", "charge"]
    assert texts(browser, "#steps .kind") == ["step", "set_event", "step"]
    assert all(re.fullmatch(r"[\d.]+ (ms|s)", d) for d in texts(browser, "#steps .duration"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#steps .tbar")) == 3
    assert '"charged": 1' in text(browser, "#steps tr[data-position='2']")
    assert '"done": 1' in text(browser, "#workflow-output")
    assert texts(browser, "#events td:first-child") == ["stage"]
    visit(browser, dashboards["app"].url + "/workflows/order-2-error", output_dir, "workflow-error")
    assert text(browser, "#workflow-status") == "ERROR"
    assert "card declined for order 2" in text(browser, "#workflow-error")
    assert browser.find_elements(By.ID, "cancel") == [] and browser.find_elements(By.ID, "resume")


def test_cancel_resume_and_fork_change_what_the_page_shows(dash_cluster, dashboards, browser, output_dir):
    url = dashboards["app"].url
    visit(browser, url + "/workflows/order-8-to-cancel", output_dir)
    assert text(browser, "#workflow-status") == "SLEEPING"
    click(browser, "#cancel")
    assert shows(browser, "#flash", "workflow order-8-to-cancel cancelled")
    assert shows(browser, "#workflow-status", "CANCELLED")
    with dash_cluster.connect(user="app") as conn:
        status = lambda wid: conn.execute("SELECT eventic.workflow_status(%s)", (wid,)).fetchone()[0]
        assert status("order-8-to-cancel") == "CANCELLED"
        click(browser, "#resume")
        assert shows(browser, "#flash", "workflow order-8-to-cancel resumed")
        assert wait_until(lambda: status("order-8-to-cancel") == "SLEEPING", 30)
        # fork the finished workflow from its last step: a new workflow, which the page (auto-
        # refreshed, not reloaded) shows finishing
        visit(browser, url + "/workflows/order-1-success", output_dir)
        click(browser, "#steps tr[data-position='2'] button.fork")
        assert shows(browser, "#flash", "forked from order-1-success at step 2")
        new_id = text(browser, "#workflow-id")
        assert new_id != "order-1-success"
        browser.execute_script("window.__same_page = true")
        assert wait_until(lambda: text(browser, "#workflow-status") == "SUCCESS", 30)
        assert browser.execute_script("return window.__same_page") is True
        assert status(new_id) == "SUCCESS"
        assert texts(browser, "#steps .step-name") == ["fetch_order", "stage", "charge"]


def test_workflow_list_filters_by_status_and_name(dashboards, browser, output_dir):
    url = dashboards["app"].url
    visit(browser, url + "/workflows?status=ERROR", output_dir)
    assert texts(browser, "#workflows tbody tr[data-workflow] td:first-child") == ["order-2-error"]
    visit(browser, url + "/workflows", output_dir)
    browser.find_element(By.CSS_SELECTOR, "#status-filter option[value='']").click()
    name = browser.find_element(By.ID, "name-filter")
    name.send_keys("app.checkout")
    loads_page(browser, name.submit)
    shown = texts(browser, "#workflows tbody tr[data-workflow] td:first-child")
    assert "order-7-running" in shown and "viewer-own" not in shown and len(shown) >= 8
    browser.save_screenshot(str(output_dir / "workflows.png"))
    visit(browser, url + "/workflows?name=nosuchflow", output_dir)
    assert "no workflow function named" in text(browser, "#error .message")


def test_a_record_history_highlights_each_change(dash_cluster, dashboards, browser, output_dir):
    url, story = dashboards["app"].url, dash_cluster.data["story"]
    visit(browser, url + "/records", output_dir, "records")
    box = browser.find_element(By.ID, "q")
    box.send_keys(story)
    loads_page(browser, box.submit)
    assert text(browser, "#record-id") == story and text(browser, "#latest-version") == "3"
    browser.save_screenshot(str(output_dir / "record.png"))
    v2 = "section[data-version='2'] "
    assert text(browser, v2 + "tr[data-field=title] del") == '"The Hare"'
    assert text(browser, v2 + "tr[data-field=title] ins") == '"The Hare and the Tortoise"'
    assert text(browser, v2 + "tr[data-field=words] ins") == "4"
    assert browser.find_elements(By.CSS_SELECTOR, v2 + "tr[data-field=words] del") == []
    assert texts(browser, "section[data-version='1'] tr[data-field] .field") == ["body"]
    # a version's full document, with that version's changes highlighted
    visit(browser, url + f"/records/{story}/versions/2", output_dir, "record-version")
    changed = set(attrs(browser, "#document .changed", "data-field"))
    assert changed == {"title", "words"}
    assert '"body": "Once upon a time"' in text(browser, "#document")
    # a class: its JSON Schema and records
    visit(browser, url + "/records?q=Story", output_dir, "class")
    assert '"minimum": 0' in text(browser, "#json-schema")
    assert texts(browser, "#class-records td:first-child") == [story]


def test_the_live_part_refreshes_without_a_reload(dash_cluster, dashboards, browser, output_dir):
    visit(browser, dashboards["app"].url + "/", output_dir)
    browser.execute_script("window.__same_page = true")
    before = int(text(browser, "#queues tr[data-queue=held] .ready"))
    with dash_cluster.connect(user="app") as conn:
        conn.execute("SELECT eventic.enqueue('held', 'app.send_mail(text)', '[\"ada@example.com\"]')")
    assert wait_until(lambda: text(browser, "#queues tr[data-queue=held] .ready") == str(before + 1), 15)
    assert browser.execute_script("return window.__same_page") is True


def test_read_only_hides_and_refuses_actions(dash_cluster, dashboards, browser, output_dir):
    url = dashboards["read_only"].url
    visit(browser, url + "/queues/held", output_dir, "read-only-queue")
    assert text(browser, "#read-only") == "read-only"
    assert browser.find_elements(By.CSS_SELECTOR, "form, button.retry, #pause-queue") == []
    visit(browser, url + "/workflows/order-3-sleeping", output_dir)
    assert browser.find_elements(By.CSS_SELECTOR, "#cancel, button.fork, form") == []
    # a hand-made POST is refused by the server too, and changes nothing
    r = httpx.post(url + "/workflow-actions/cancel", data={"workflow_id": "order-3-sleeping"})
    assert r.status_code == 403 and "read-only" in r.text
    r = httpx.post(url + "/queues/held/pause", data={"paused": "false"})
    assert r.status_code == 403
    with dash_cluster.connect(user="app") as conn:
        assert conn.execute("SELECT eventic.workflow_status('order-3-sleeping')").fetchone()[0] == "SLEEPING"
        assert conn.execute("SELECT paused FROM eventic.queues WHERE queue_name = 'held'").fetchone()[0]


def test_actions_need_the_pages_token_and_origin(dash_cluster, dashboards):
    url = dashboards["app"].url
    page = httpx.get(url + "/workflows/order-3-sleeping").text
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    form = {"workflow_id": "order-3-sleeping"}
    r = httpx.post(url + "/workflow-actions/cancel", data=form)
    assert r.status_code == 403 and "security token" in r.text
    r = httpx.post(url + "/workflow-actions/cancel", data={**form, "csrf": token},
                   headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "another site" in r.text
    # the message after an action is the dashboard's own: a link cannot make a page say more
    r = httpx.get(url + "/queues/held?msg=Your+session+expired,+log+in+at+evil.example")
    assert r.status_code == 200 and "evil.example" not in r.text
    # a page whose name was rebound to 127.0.0.1 (DNS rebinding) gets nothing, not even the token
    r = httpx.get(url + "/workflows/order-3-sleeping", headers={"Host": "evil.example:6201"})
    assert r.status_code == 400 and "csrf" not in r.text
    with dash_cluster.connect(user="app") as conn:
        assert conn.execute("SELECT eventic.workflow_status('order-3-sleeping')").fetchone()[0] == "SLEEPING"


def test_a_database_that_cannot_be_reached_is_a_message(dash_cluster, browser, output_dir):
    dash = start_dashboard(f"host={dash_cluster.directory} port=1 dbname=dash user=app connect_timeout=2",
                           dash_cluster.port + 8)
    try:
        visit(browser, dash.url + "/workflows", output_dir, "no-database")
        assert "cannot connect to the database" in text(browser, "#error .message")
        no_trace(browser)
    finally:
        dash.proc.terminate()
        dash.proc.wait(10)


def test_an_unprivileged_role_sees_only_its_own(dash_cluster, dashboards, browser, output_dir):
    url = dashboards["viewer"].url
    visit(browser, url + "/", output_dir, "viewer-overview")
    assert text(browser, "#role") == "viewer"
    assert text(browser, "#queues tr[data-queue=mail] .dead") == "0"
    cards = dict(zip(attrs(browser, "#workflow-statuses a", "data-status"),
                     texts(browser, "#workflow-statuses a .count")))
    assert cards["SUCCESS"] == "1" and sum(map(int, cards.values())) == 1
    visit(browser, url + "/workflows", output_dir)
    assert texts(browser, "#workflows tbody tr[data-workflow] td:first-child") == ["viewer-own"]
    visit(browser, url + "/workflows/order-1-success", output_dir, "viewer-not-found")
    assert "does not exist" in text(browser, "#error .message")
    no_trace(browser)
    visit(browser, url + f"/records/{dash_cluster.data['story']}", output_dir)
    assert "does not exist" in text(browser, "#error .message")
    no_trace(browser)
    # its buttons are there, and the database refuses what it may not do, in words
    visit(browser, url + "/queues/mail", output_dir)
    click(browser, "#pause-queue")
    assert shows(browser, "h1", "Not allowed")
    assert "mail" in text(browser, "#error .message") and text(browser, "#error .sqlstate") == "SQLSTATE 42501"
    browser.save_screenshot(str(output_dir / "viewer-refused.png"))
    no_trace(browser)
    with dash_cluster.connect(user="app") as conn:
        assert conn.execute("SELECT paused FROM eventic.queues WHERE queue_name = 'mail'").fetchone()[0] is False


def test_a_long_history_is_paged_and_each_page_diffs_its_oldest_version(dash_cluster, dashboards, browser, output_dir):
    with dash_cluster.connect(user="app") as conn:
        rid = conn.execute("""SELECT eventic.create('Story', '{"words": 0}')""").fetchone()[0]
        for n in range(1, 25):
            conn.execute("SELECT eventic.set_field(%s, 'words', %s::jsonb)", (rid, str(n)))
    visit(browser, dashboards["app"].url + f"/records/{rid}", output_dir)
    assert attrs(browser, "section.version", "data-version") == [str(v) for v in range(24, 4, -1)]
    click(browser, "#older")
    assert wait_until(lambda: attrs(browser, "section.version", "data-version") == ["4", "3", "2", "1", "0"], 10)
    assert text(browser, "section[data-version='4'] tr[data-field=words] del") == "3"
    assert text(browser, "section[data-version='4'] tr[data-field=words] ins") == "4"
