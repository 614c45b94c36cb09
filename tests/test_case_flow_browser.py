"""A case end to end in a real browser across real node processes (issue 5, item 12).

County, township and two villages run as their own ``tongban serve`` processes, the
township and villages with their ``tongban syncd``; every node was enrolled the real way.
Headless Chromium (Debian's package, driven by Playwright) is each person in turn:

1. the clerk at village A accepts a 低保 application with one material missing (容缺受理)
   and prints the one-time notice;
2. the citizen brings the material to village B, whose clerk finds the case region-wide
   (handle anywhere) and registers the supplement;
3. the township's approver finds it in the queue and approves;
4. the clerk at village A hands the result over;
5. the citizen reads the progress on village A's public page and rates the service.

The time from the accepting click until the case is in the township's store is logged
(docs/benchmarks.md); it is never asserted.
"""

import logging
import re
import time

import pytest
import requests
from playwright.sync_api import expect

from shared import config as cfg
from shared import identity
from shared.app import open_store
from shared.cases import idnumbers
from shared.catalog import publish
from shared.catalog.sample import sample_catalog
from shared.models import Account, hash_password
from tests import nodeproc
from tests.conftest import needs_chromium
from tests.nodeproc import eventually, tongban

logger = logging.getLogger(__name__)

pytestmark = needs_chromium
TIMEOUT_MS = 15_000

COUNTY, TOWNSHIP = "441521", "441521101"
VILLAGE_A, VILLAGE_B = "441521101001", "441521101002"
NAMES = {COUNTY: "海丰县", TOWNSHIP: "海城镇", VILLAGE_A: "东门村", VILLAGE_B: "西门村"}
CITIZEN = idnumbers.make_resident_id("441521", "19560412", 37)
ITEM_NAME = "最低生活保障对象认定（低保申请）"
MISSING = "家庭经济状况核对授权书"
#: (node, username, role, full name, office phone, department)
STAFF = ((VILLAGE_A, "clerk-a", "clerk", "王小明", "0660-3300101", ""),
         (VILLAGE_B, "clerk-b", "clerk", "林晓红", "0660-3300102", ""),
         (TOWNSHIP, "approver-t", "approver", "李审批", "0660-3300201", "民政"))
PASSWORD = "pw-staff-2026"


class Region:
    """Four nodes serving and syncing, the sample catalog in force, staff accounts made."""

    def __init__(self, base):
        self.procs, self.nodes = [], {}
        county = nodeproc.start_node(base / COUNTY, tier="county", code=COUNTY,
                                     name=NAMES[COUNTY])
        self._add(COUNTY, county)
        for code, parent in ((TOWNSHIP, COUNTY), (VILLAGE_A, TOWNSHIP), (VILLAGE_B, TOWNSHIP)):
            tier = "township" if len(code) == 9 else "village"
            node_dir = nodeproc.enrol_node(county.node_dir, self.nodes[parent].url,
                                           base / code, tier, code, name=NAMES[code])
            nodeproc.update_config(node_dir, SYNC_INTERVAL=300, SYNC_MAX_BACKOFF=2)
            self._add(code, nodeproc.start_node(node_dir, create=False))
        for code in (TOWNSHIP, VILLAGE_A, VILLAGE_B):
            self.procs.append(nodeproc.start_syncd(self.nodes[code].node_dir))
        for code, username, role, name, phone, department in STAFF:
            tongban("user", "add", self.nodes[code].node_dir, username, "--role", role,
                    "--full-name", name, "--phone", phone, "--department", department,
                    input_text=PASSWORD + "\n")
        store = open_store(cfg.load_config(county.node_dir))
        try:
            for username, role in (("editor", "county_admin"), ("boss", "approver")):
                Account.create(username=username, password_hash=hash_password("pw-" + username),
                               roles=role, created="2026-11-22")
            items, agencies = sample_catalog()
            publish.publish(store, items, agencies, proposer="editor", approver="boss",
                            private_key=identity.load_private_key(county.node_dir))
        finally:
            store.close()
        for code in (VILLAGE_A, VILLAGE_B):
            eventually(lambda code=code: self.catalog_release(code) == 1,
                       f"release 1 active at {code}", timeout=90)

    def _add(self, code, node):
        self.nodes[code] = node
        self.procs.append(node)

    def catalog_release(self, code):
        return requests.get(self.nodes[code].url + "/status/catalog", timeout=5).json()["release"]

    def holds(self, code, doc_id):
        node = self.nodes[code]
        return node.session().get(f"{node.db_url}/{doc_id}", timeout=5).status_code == 200

    def state(self, code, number):
        """The case's folded state at ``code`` (read from its store, as a page would)."""
        from shared.cases.index import state_of

        store = open_store(cfg.load_config(self.nodes[code].node_dir))
        try:
            return state_of(store.db, number)
        finally:
            store.close()

    def stop(self):
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    region = Region(tmp_path_factory.mktemp("caseflow"))
    yield region
    region.stop()


def open_page(browser, url):
    context = browser.new_context(base_url=url, locale="zh-CN",
                                  viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    return context.new_page()


def log_in(page, path, username):
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("用户名").fill(username)
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page.locator("#staff-user")).to_have_text(username)


def scan_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"%PDF-1.4\n% " + name.encode() + b"\n%%EOF\n")
    return str(path)


def test_accept_notice_supplement_elsewhere_approve_deliver_rate(region, browser, tmp_path):
    # 1. Village A: the clerk accepts with the authorisation form missing (容缺受理).
    clerk_a = open_page(browser, region.nodes[VILLAGE_A].url)
    log_in(clerk_a, "/cases/window", "clerk-a")
    clerk_a.locator("#item-search input[name=q]").fill("低保")
    clerk_a.locator("#item-search button").click()
    clerk_a.locator("#item-results").get_by_role("link", name=ITEM_NAME).click()
    clerk_a.locator("#applicant-form input[name=applicant]").fill(CITIZEN)
    clerk_a.get_by_role("button", name="下一步：核对材料").click()
    checklist = clerk_a.locator("#checklist-form")
    expect(checklist.locator("#material-2")).to_contain_text("免提交：已通过共享数据核验")
    checklist.locator("input[name=name]").fill("陈阿婆")
    checklist.locator("input[name=phone]").fill("13800138000")
    checklist.locator("#material-0 input[value=provided]").check()
    checklist.locator("#material-0 input[type=file]").set_input_files(
        scan_file(tmp_path, "application.pdf"))
    checklist.locator("#material-1 input[value=missing]").check()
    accepted_at = time.monotonic()
    checklist.locator("#decide-deficiency").click()
    expect(clerk_a).to_have_url(re.compile(r"/receipt$"))
    number = clerk_a.locator("#case-number").inner_text().strip()
    assert re.fullmatch(rf"{VILLAGE_A}-\d{{8}}-\d{{4}}", number)
    expect(clerk_a.locator("#qr svg")).to_be_visible()
    expect(clerk_a.locator("#outstanding")).to_contain_text(MISSING)
    clerk_a.locator("#notice-link").click()
    expect(clerk_a.locator("#one-time")).to_contain_text("一次性告知")
    expect(clerk_a.locator("#notice-materials .material-name")).to_have_text([MISSING])
    expect(clerk_a.locator("#deficiency-due")).to_have_text(re.compile(r"\d{4}-\d{2}-\d{2}"))

    # The case reaches the township that decides it (the figure for docs/benchmarks.md).
    eventually(lambda: region.holds(TOWNSHIP, f"case:{number}") and
               (region.state(TOWNSHIP, number) or {}).get("status") == "handling",
               "the case reaches the township", timeout=60)
    logger.info("case %s reached the deciding township %.2f s after the accepting click",
                number, time.monotonic() - accepted_at)
    # When the citizen phones, the clerk finds it among her station's cases in progress:
    # where it is now, its deadline, and that it has been uploaded.
    def listed_as_uploaded():
        clerk_a.goto("/cases/")
        row = clerk_a.locator(f"#section-accepted_here tr[data-number='{number}']")
        return row.count() == 1 and "已上传" in row.inner_text()

    eventually(listed_as_uploaded, "the case listed as uploaded at village A", timeout=30)
    row = clerk_a.locator(f"#section-accepted_here tr[data-number='{number}']")
    expect(row.locator("td.stage")).to_have_text(NAMES[TOWNSHIP])
    expect(row.locator("td.due")).to_have_text(re.compile(r"\d{4}-\d{2}-\d{2}"))

    # 2. Village B: the citizen brings the missing form; the clerk finds the case.
    clerk_b = open_page(browser, region.nodes[VILLAGE_B].url)
    log_in(clerk_b, "/cases/find", "clerk-b")
    clerk_b.locator("#find-form input[name=applicant]").fill(CITIZEN)
    clerk_b.locator("#find-form button").click()
    expect(clerk_b.locator("#found")).to_contain_text(number)
    # The lookup made village B a participant: the case replicates down to it.
    eventually(lambda: (region.state(VILLAGE_B, number) or {}).get("status") == "handling",
               "the case replicates to village B", timeout=60)
    clerk_b.goto(f"/cases/{number}")
    expect(clerk_b.locator("#applicant-name")).to_have_text("陈阿婆")
    supplement = clerk_b.locator("#action-supplement")
    supplement.locator("input[type=file]").first.set_input_files(
        scan_file(tmp_path, "authorisation.pdf"))
    supplement.get_by_role("button", name="登记补充材料").click()
    expect(clerk_b.locator("#done")).to_be_visible()

    # 3. Township: the supplement arrives; the approver approves from the queue.
    approver = open_page(browser, region.nodes[TOWNSHIP].url)
    log_in(approver, "/cases/", "approver-t")
    eventually(lambda: (region.state(TOWNSHIP, number) or {}).get("outstanding") == [],
               "village B's supplement reaches the township", timeout=60)
    approver.reload()
    row = approver.locator(f"tr.case-row[data-number='{number}']")
    expect(row).to_be_visible()
    row.get_by_role("link", name=number).click()
    expect(approver.locator("#status")).to_have_attribute("data-status", "handling")
    approver.locator("#action-approve input[name=result]").fill("准予纳入低保，每月发放")
    approver.locator("#action-approve").get_by_role("button", name="审批通过").click()
    # Irreversible: a confirmation page says what will be done before it is.
    expect(approver.locator("#confirm-title")).to_have_text("请确认：审批通过")
    expect(approver.locator("#confirm-summary")).to_contain_text("准予纳入低保，每月发放")
    approver.get_by_role("button", name="审批通过（确认）").click()
    expect(approver.locator("#status")).to_have_attribute("data-status", "ready")

    # 4. Village A: the result arrives and is handed over.
    eventually(lambda: (region.state(VILLAGE_A, number) or {}).get("status") == "ready",
               "the decision reaches village A", timeout=60)
    clerk_a.goto(f"/cases/{number}")
    clerk_a.locator("#action-deliver input[name=collector_id]").fill(CITIZEN)
    clerk_a.locator("#action-deliver").get_by_role("button", name="确认送达").click()
    expect(clerk_a.locator("#confirm-summary")).to_contain_text("申请人本人")
    clerk_a.get_by_role("button", name="确认送达（确认）").click()
    expect(clerk_a.locator("#status")).to_have_attribute("data-status", "done")
    expect(clerk_a.locator("#delivered")).to_contain_text("已核验证件")

    # 5. The citizen, no login: progress on village A's public page, then a rating.
    citizen = open_page(browser, region.nodes[VILLAGE_A].url)
    citizen.goto(f"/progress/{number}")
    citizen.locator("#proof").fill("陈阿婆")
    citizen.locator("#query-submit").click()
    expect(citizen.locator("#status")).to_have_attribute("data-status", "done")
    steps = citizen.locator("#timeline .step")
    expect(steps.locator(".step-node")).to_contain_text([NAMES[VILLAGE_A], NAMES[VILLAGE_B],
                                                        NAMES[TOWNSHIP], NAMES[VILLAGE_A]])
    expect(steps.locator(".step-name")).to_contain_text(["王小明", "林晓红", "李审批", "王小明"])
    expect(citizen.locator("#timeline")).to_contain_text("0660-3300201")
    citizen.locator("#rate-form input[name=score][value='5']").check()
    citizen.locator("#rate-text").fill("跑一次就办好了")
    citizen.locator("#rate-submit").click()
    expect(citizen.locator("#rating")).to_contain_text("非常满意")

    # Every node folds the same finished case.
    eventually(lambda: (region.state(COUNTY, number) or {}).get("rating"),
               "the rating reaches the county", timeout=60)
    states = [region.state(code, number) for code in (COUNTY, TOWNSHIP, VILLAGE_A, VILLAGE_B)]
    eventually(lambda: all(region.state(code, number) == states[0]
                           for code in (TOWNSHIP, VILLAGE_A, VILLAGE_B)),
               "every node folds the same state", timeout=60)
    assert states[0]["status"] == "done" and states[0]["rating"]["score"] == 5
    assert states[0]["delivered"]["node"] == VILLAGE_A and states[0]["ignored"] == []


def test_one_browser_stays_logged_in_at_two_nodes_on_one_host(region, browser):
    # The demo's nodes all live on 127.0.0.1 and cookies are per host, not per port: each
    # node names its own cookies, so logging in at the township keeps the village session.
    context = browser.new_context(locale="zh-CN")
    context.set_default_timeout(TIMEOUT_MS)
    village, township = region.nodes[VILLAGE_A].url, region.nodes[TOWNSHIP].url
    page = context.new_page()
    log_in(page, village + "/cases/", "clerk-a")
    log_in(page, township + "/cases/", "approver-t")
    page.goto(village + "/cases/")
    expect(page.locator("#staff-user")).to_have_text("clerk-a")
    page.goto(township + "/cases/")
    expect(page.locator("#staff-user")).to_have_text("approver-t")
    names = {c["name"] for c in context.cookies()}
    assert {f"tongban_session_{VILLAGE_A}", f"tongban_session_{TOWNSHIP}"} <= names
    context.close()
