"""A clerk on a poor link is told, on every staff page, within seconds (issue 15, item 3).

County, township and a village run as their own ``tongban serve`` and ``tongban syncd``
processes, enrolled the real way. With the township stopped, a case written at the
village is not uploaded: the village's window, workbench and case page say "本站离线，本站
受理的 1 件办件尚未上传" with the number within seconds — not after a longpoll or round
times out — and the banner goes once the township is back and the case is up.
"""

import re

import pytest
import requests
from playwright.sync_api import expect

from shared.app import create_app
from shared.cases import idnumbers, web
from shared.cases.desk import Actor, ApplicantInput
from shared.catalog import publish
from shared.catalog.sample import sample_catalog
from tests import nodeproc
from tests.conftest import needs_chromium
from tests.nodeproc import eventually, tongban

pytestmark = needs_chromium
COUNTY, TOWNSHIP, VILLAGE = "441521", "441521101", "441521101001"
PASSWORD = "pw-clerk-2026"
CITIZEN = idnumbers.make_resident_id("441521", "19610305", 52)


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    base = tmp_path_factory.mktemp("offline")
    procs = []
    county_dir = nodeproc.make_node_dir(base / "county", tier="county", code=COUNTY,
                                        name="海丰县")
    nodeproc.update_config(county_dir, NODE_OFFLINE_AFTER=8)  # a short threshold to wait for
    county = nodeproc.start_serve(county_dir)
    procs.append(county)
    tongban("user", "add", county.node_dir, "du", "--role", "supervisor",
            input_text="pw-super-2026\n")
    tongban("user", "add", county.node_dir, "editor", "--role", "county_admin",
            input_text="pw-editor-1\n")
    tongban("user", "add", county.node_dir, "boss", "--role", "approver",
            input_text="pw-boss-1\n")
    app = create_app(node_dir=county.node_dir)
    items, agencies = sample_catalog()
    with app.app_context():
        from shared import identity

        publish.publish(app.extensions["store"], items, agencies, proposer="editor",
                        approver="boss", private_key=identity.load_private_key(county.node_dir))
    app.extensions["store"].close()
    nodes = {COUNTY: county}
    for code, parent, tier in ((TOWNSHIP, COUNTY, "township"), (VILLAGE, TOWNSHIP, "village")):
        node_dir = nodeproc.enrol_node(county.node_dir, nodes[parent].url, base / code, tier,
                                       code, name=code)
        nodeproc.update_config(node_dir, SYNC_INTERVAL=300, SYNC_MAX_BACKOFF=2)
        nodes[code] = nodeproc.start_node(node_dir, create=False)
        procs += [nodes[code], nodeproc.start_syncd(node_dir)]
    tongban("user", "add", nodes[VILLAGE].node_dir, "clerk", "--role", "clerk",
            "--full-name", "王小明", input_text=PASSWORD + "\n")
    eventually(lambda: requests.get(nodes[VILLAGE].url + "/status/catalog", timeout=5).json()
               ["release"] == 1, "the catalog at the village", timeout=90)
    yield nodes
    for proc in reversed(procs):
        proc.stop()


def write_case(node_dir):
    """A one-time notice given at the village's window: a case written there."""
    app = create_app(node_dir=node_dir)
    try:
        with app.app_context():
            clerk = Actor(username="clerk", name="王小明", phone="0660-3300001",
                          roles=("clerk",))
            return web.desk(app).receive(
                "GD-LS-16", ApplicantInput(number=CITIZEN, name="陈阿婆", phone="13800138000",
                                           address="海丰县海城镇"), {}, "notice", clerk)
    finally:
        app.extensions["store"].close()


def test_the_home_page_is_the_stations_front_page(region, browser):
    # What a citizen sees first: what the station offers, its hours, where to go next —
    # never the store's internals (those are for staff, in Chinese).
    page = browser.new_context(base_url=region[VILLAGE].url, locale="zh-CN").new_page()
    page.goto("/")
    expect(page.locator("header h1")).to_contain_text("· 通办服务站")
    expect(page.locator("#intro")).to_contain_text("个民生事项")
    expect(page.locator("#hours")).to_contain_text("周一至周五")
    for name in ("办事指南", "办理进度查询", "网上预申请", "预约办理"):
        expect(page.locator("#citizen-links")).to_contain_text(name)
    body = page.locator("body").inner_text()
    assert "更新序号" not in body and "built-in method" not in body
    page.locator("#citizen-links").get_by_text("办事指南").click()
    expect(page).to_have_url(re.compile(r"/catalog$"))
    page.goto("/login?next=/")
    page.get_by_label("用户名").fill("clerk")
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page.locator("#staff-figures")).to_contain_text("现行目录")


def test_every_staff_page_says_the_station_is_offline_and_what_waits(region, tmp_path,
                                                                    browser):
    village, township = region[VILLAGE], region[TOWNSHIP]
    page = browser.new_context(base_url=village.url, locale="zh-CN").new_page()
    page.set_default_timeout(15_000)
    page.goto("/cases/")
    page.get_by_label("用户名").fill("clerk")
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page.locator("#staff-user")).to_have_text("clerk")
    assert page.locator("#offline-banner").count() == 0  # online: nothing to say

    port = int(township.url.rsplit(":", 1)[1])
    township.stop()
    number = write_case(village.node_dir)

    def banner_names_the_case():
        page.goto("/cases/")
        banner = page.locator("#offline-banner")
        return banner.count() == 1 and number in banner.inner_text()

    eventually(banner_names_the_case, "the offline banner on the workbench", timeout=20)
    text = page.locator("#offline-banner").inner_text()
    assert "本站离线" in text and "本站受理的 1 件办件尚未上传" in text
    for path in ("/cases/window", f"/cases/{number}"):
        page.goto(path)
        expect(page.locator("#offline-banner")).to_contain_text(number)
    # Citizens' pages carry no staff banner.
    citizen = browser.new_context(base_url=village.url).new_page()
    citizen.goto("/progress")
    assert citizen.locator("#offline-banner").count() == 0

    # The county's supervisor sees at a glance that the township is offline, and
    # that nothing can be known of the village below it.
    supervisor = browser.new_context(base_url=region[COUNTY].url, locale="zh-CN").new_page()
    supervisor.goto("/sync/status")
    supervisor.goto("/login?next=/sync/status")
    supervisor.get_by_label("用户名").fill("du")
    supervisor.get_by_label("密码").fill("pw-super-2026")
    supervisor.get_by_role("button", name="登录").click()

    def township_offline():
        supervisor.goto("/sync/status")
        row = supervisor.locator(f"#node-{TOWNSHIP}")
        return row.count() == 1 and row.get_attribute("data-online") == "0"

    eventually(township_offline, "the township listed offline at the county", timeout=30)
    expect(supervisor.locator(f"#node-{TOWNSHIP} td.state")).to_contain_text("离线")
    expect(supervisor.locator(f"#node-{VILLAGE} td.state")).to_contain_text("状态不明")
    expect(supervisor.locator("#nodes-summary")).to_contain_text("2 个站点离线")

    # The township comes back on its port: the case goes up and the banner goes.
    region[TOWNSHIP] = nodeproc.start_serve(township.node_dir, port=port)

    def banner_gone():
        page.goto("/cases/")
        return page.locator("#offline-banner").count() == 0

    eventually(banner_gone, "the banner gone once the case is uploaded", timeout=60)

    def township_online():
        supervisor.goto("/sync/status")
        return supervisor.locator(f"#node-{TOWNSHIP}").get_attribute("data-online") == "1"

    eventually(township_online, "the township online again at the county", timeout=90)
    town = region[TOWNSHIP]
    assert town.session().get(f"{town.db_url}/case:{number}", timeout=5).status_code == 200
