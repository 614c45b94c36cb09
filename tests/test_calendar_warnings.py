"""Issue 11, items 2 and 4: every tier warns ahead that next year's working days are not
published, a provisional due date is an alarm until the county publishes the year, and
every time a person reads is Beijing time, labelled.

The chinesecalendar package covers up to 2026-12-31, so the warning starts 60 days before
(2 November 2026). The node clock is moved with ``TONGBAN_CLOCK_SKEW_SECONDS``, as a whole
region run in another year would be.
"""

import datetime
import json
import re

import pytest
from click.testing import CliRunner

from shared import clock, identity
from shared.app import create_app
from shared.catalog import publish
from shared.catalog.sample import sample_catalog
from shared.cli import main
from shared.syncstatus import LinkStatusTable
from shared.workdays import package_years
from tests import casekit as K
from tests.conftest import add_account, make_county, staff_login

D = datetime.date
PASSWORD = "warn-ahead-42"
#: What every tier says from 60 days before the last covered day.
WARNING = "2027 年的节假日安排尚未发布"
YEAR_2027, DISABILITY_CARD = K.YEAR_2027, K.DISABILITY_CARD
ALARM = "1 件在办件的办结期限为暂定"

pytestmark = pytest.mark.skipif(package_years()[1] != 2026,
                                reason="written for the package ending with 2026")


def at(monkeypatch, day):
    """Move the node clock to 09:00 Beijing time on ``day``."""
    monkeypatch.setenv(clock.SKEW_ENV, repr(clock.skew_for(day)))


def text(response):
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def login(app, username, password=PASSWORD):
    return staff_login(app, username, password)


def publish_release(app, calendar=None):
    """Publish the county's working copy (the sample catalog the first time)."""
    store = app.extensions["store"]
    items, agencies = publish.working_copy(store.db)
    if not items:
        items, agencies = sample_catalog()
    with app.app_context():
        return publish.publish(store, items, agencies, proposer="editor", approver="boss",
                               private_key=app.key, calendar=calendar)


@pytest.fixture
def county(tmp_path):
    (tmp_path / "c").mkdir()
    app = make_county(tmp_path / "c")
    add_account(app, "editor", PASSWORD, roles=("county_admin",))
    add_account(app, "boss", PASSWORD, roles=("approver",))
    add_account(app, "super", PASSWORD, roles=("supervisor",))
    yield app
    app.extensions["store"].close()


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def county_dir(tmp_path, runner):
    """A county node directory made by ``tongban init``."""
    node = tmp_path / "county"
    result = runner.invoke(main, ["init", str(node), "--tier", "county", "--code", "441521",
                                  "--name", "海丰县"])
    assert result.exit_code == 0, result.output
    return node


def publish_in_dir(node_dir, calendar=None):
    """Publish the sample catalog (with ``calendar``) at the county of ``node_dir``."""
    from shared.models import Account

    app = create_app(node_dir=node_dir)
    app.key = identity.load_private_key(node_dir)
    for name, role in (("editor", "county_admin"), ("boss", "approver")):
        if not Account.select().where(Account.username == name).exists():
            add_account(app, name, PASSWORD, roles=(role,))
    try:
        return publish_release(app, calendar)
    finally:
        app.extensions["store"].close()


def pages(county):
    """What the county's status page, dashboard and calendar page show now."""
    staff = login(county, "editor")
    return {"status": text(county.test_client().get("/sync/status")),
            "dashboard": text(login(county, "super").get("/dashboard/")),
            "calendar": text(staff.get("/admin/calendar/"))}


# -- warn ahead --------------------------------------------------------------------------------

def test_every_page_warns_from_60_days_before_the_last_covered_day(county, monkeypatch):
    at(monkeypatch, "2026-11-15")  # 46 days before 31 December
    shown = pages(county)
    for name, html in shown.items():
        assert 'id="calendar-warning"' in html, name
        assert WARNING in html and "只覆盖到 2026-12-31（还有 46 天）" in html, name
        assert "暂按正常工作周（周一至周五）计算" in html, name
    howto = shown["calendar"][shown["calendar"].index('id="calendar-howto"'):]
    assert "国务院办公厅关于2027年部分节假日安排的通知" in howto
    assert "<code>2027-01-01 休 元旦</code>" in howto and "<code>2027 全年 " in howto
    assert "批量导入" in howto and "变更对比与提交发布" in howto and "批准签发" in howto
    # The per-year note no longer says time limits cannot be counted.
    assert "无法计算" not in shown["calendar"]
    assert "跨入 2027 年的办理时限暂按正常工作周" in shown["calendar"]

    at(monkeypatch, "2026-10-15")  # 77 days before: nothing yet
    for name, html in pages(county).items():
        assert WARNING not in html and 'id="calendar-warning"' not in html, name


def test_the_warning_is_gone_once_the_county_publishes_the_year(county, monkeypatch):
    at(monkeypatch, "2026-11-15")
    publish_release(county)
    assert WARNING in pages(county)["status"]  # a catalog without 2027 changes nothing
    publish_release(county, calendar=YEAR_2027)
    for name, html in pages(county).items():
        assert WARNING not in html and 'id="calendar-warning"' not in html, name
    # A year later the warning comes back for 2028.
    at(monkeypatch, "2027-11-15")
    assert "2028 年的节假日安排尚未发布" in pages(county)["status"]


def test_catalog_status_warns_ahead_until_the_year_is_published(runner, county_dir,
                                                                  monkeypatch):
    at(monkeypatch, "2026-11-15")
    result = runner.invoke(main, ["catalog", "status", str(county_dir)])
    assert result.exit_code == 0, result.output
    assert f"calendar     WARNING: {WARNING}" in result.output
    assert "还有 46 天" in result.output
    machine = json.loads(runner.invoke(main, ["catalog", "status", str(county_dir),
                                              "--json"]).output)
    assert machine["calendar"]["warning"]["last_covered"] == "2026-12-31"  # ISO stays
    assert machine["calendar"]["warning"]["days_left"] == 46

    at(monkeypatch, "2026-10-15")
    assert WARNING not in runner.invoke(main, ["catalog", "status", str(county_dir)]).output

    at(monkeypatch, "2026-11-15")
    publish_in_dir(county_dir, calendar=YEAR_2027)
    output = runner.invoke(main, ["catalog", "status", str(county_dir)]).output
    assert "release      1 (published 2026-11-15 09:0" in output and "（北京时间）" in output
    assert re.search(r"activated    2026-11-15 09:0\d:\d\d（北京时间）", output), output
    assert WARNING not in output and "WARNING" not in output


# -- provisional due dates ---------------------------------------------------------------------

@pytest.fixture
def kit(tmp_path, frozen):
    kit = K.Kit(tmp_path, wall_clock=frozen)
    for code, app in kit.apps.items():
        app.extensions["case_desk"] = kit.desk(code)
    add_account(kit.apps[K.COUNTY], "super-c", PASSWORD, roles=("supervisor",))
    add_account(kit.apps[K.TOWNSHIP], "super-t", PASSWORD, roles=("supervisor",))
    # The county's directory as ``tongban`` commands open it (same store, same key).
    county = kit.apps[K.COUNTY]
    (tmp_path / K.COUNTY / "tongban.json").write_text(json.dumps({
        "TIER": "county", "NODE_CODE": K.COUNTY, "NODE_NAME": "海丰县", "SECRET_KEY": "s",
        "COUNTY_PUBLIC_KEY": county.config["COUNTY_PUBLIC_KEY"]}), encoding="utf-8")
    yield kit
    kit.close()


def test_a_provisional_due_date_is_an_alarm_until_the_county_publishes_the_year(
        kit, frozen, runner, tmp_path):
    frozen.at(D(2026, 12, 21))  # 20 working days from here run into 2027
    desk = kit.desk(K.VILLAGE_A)
    number = desk.receive(DISABILITY_CARD, K.applicant(),
                          K.full_materials(desk, DISABILITY_CARD), "accept", K.clerk())
    kit.sync()
    county = kit.apps[K.COUNTY]

    public = text(county.test_client().get("/sync/status"))
    assert ALARM in public and 'id="provisional-alarm"' in public
    assert number not in public and "工作人员登录后可查看案件编号" in public
    staff = text(login(county, "super-c").get("/sync/status"))
    assert ALARM in staff and f'<a href="/cases/{number}">{number}</a>' in staff
    dashboard = text(login(county, "super-c").get("/dashboard/"))
    assert ALARM in dashboard and number in dashboard
    # The township sees its own case too.
    assert ALARM in text(login(kit.apps[K.TOWNSHIP], "super-t").get("/dashboard/"))
    output = runner.invoke(main, ["catalog", "status", str(tmp_path / K.COUNTY)]).output
    assert f"provisional  ALARM: {ALARM}" in output and number in output
    sync_text = runner.invoke(main, ["sync", "status", str(tmp_path / K.COUNTY)]).output
    assert ALARM in sync_text and number in sync_text

    with county.app_context():
        publish.publish(kit.store(K.COUNTY), *publish.working_copy(kit.store(K.COUNTY).db),
                        proposer="editor", approver="boss", private_key=county.key,
                        calendar=YEAR_2027)
    kit.sync()
    for html in (text(county.test_client().get("/sync/status")),
                 text(login(county, "super-c").get("/dashboard/")),
                 text(login(kit.apps[K.TOWNSHIP], "super-t").get("/dashboard/"))):
        assert "办结期限为暂定" not in html and 'id="provisional-alarm"' not in html
        assert WARNING not in html
    output = runner.invoke(main, ["catalog", "status", str(tmp_path / K.COUNTY)]).output
    assert "ALARM" not in output and "暂定" not in output


# -- Beijing time, labelled --------------------------------------------------------------------

def unix(text_):
    return datetime.datetime.fromisoformat(text_).timestamp()


def save_link(db, last_success):
    now = clock.time()
    LinkStatusTable(db).save({
        "link": "parent", "peer": "http://127.0.0.1:9/db", "state": "up",
        "last_success": last_success, "last_pull": last_success, "last_push": last_success,
        "last_attempt": last_success, "error_kind": None, "error": None, "failures": 0,
        "doc_failures": 0, "pending_push": 0, "pending_pull": 0, "next_retry": None,
        "updated": now})


def test_the_status_page_shows_beijing_time_labelled(county, monkeypatch):
    at(monkeypatch, "2026-11-15")
    # 00:30 UTC is 08:30 in Beijing, half an hour before the node's 09:00.
    save_link(county.extensions["store"].db, unix("2026-11-15T00:30:00+00:00"))
    html = text(county.test_client().get("/sync/status"))
    assert "2026-11-15 08:30:00（北京时间，30 分钟前）" in html
    assert re.search(r'id="clock"[^>]*>本站时间：2026-11-15 09:0\d:\d\d（北京时间）', html)
    assert "00:30:00" not in html


def test_the_catalog_pages_show_beijing_time_labelled(county, monkeypatch):
    at(monkeypatch, "2026-11-15")
    publish_release(county)
    editor = login(county, "editor")
    listing = text(editor.get("/admin/catalog/"))
    assert re.search(r"签发时间 2026-11-15 09:0\d（北京时间），本站生效时间 2026-11-15 09:0\d"
                     r"（北京时间）", listing), listing
    proposal = re.search(r'href="(/admin/catalog/proposals?/[^"]+)"', listing).group(1)
    facts = text(editor.get(proposal))
    assert re.search(r"<th>提交时间</th><td>2026-11-15 09:0\d（北京时间）</td>", facts)
    assert re.search(r"boss（2026-11-15 09:0\d（北京时间））", facts)
    # The station's figures on the home page are for staff: the release time among them.
    assert re.search(r"签发于 2026-11-15 09:0\d（北京时间）",
                     text(editor.get("/", headers={"Accept": "text/html"})))


def test_sync_status_and_info_print_beijing_time_labelled(runner, county_dir, monkeypatch):
    at(monkeypatch, "2026-11-15")
    app = create_app(node_dir=county_dir)
    save_link(app.extensions["store"].db, unix("2026-11-15T00:30:00+00:00"))
    app.extensions["store"].close()
    output = runner.invoke(main, ["sync", "status", str(county_dir)]).output
    assert "last success   2026-11-15 08:30:00（北京时间，30 分钟前）" in output
    assert "last attempt   2026-11-15 08:30:00（北京时间）" in output
    assert re.search(r"^clock     2026-11-15 09:0\d:\d\d（北京时间）$", output, re.MULTILINE), output
    machine = json.loads(runner.invoke(main, ["sync", "status", str(county_dir),
                                              "--json"]).output)
    assert machine["links"][0]["last_success"] == unix("2026-11-15T00:30:00+00:00")

    publish_in_dir(county_dir)
    info = runner.invoke(main, ["info", str(county_dir)]).output
    assert re.search(r"^clock        2026-11-15 09:0\d:\d\d（北京时间）, shifted ", info,
                     re.MULTILINE), info
    assert re.search(r"release 1 active, 25 items \(已生效\), published 2026-11-15 09:0\d"
                     r"（北京时间）", info), info
    machine = json.loads(runner.invoke(main, ["info", str(county_dir), "--json"]).output)
    assert "北京时间" not in json.dumps(machine, ensure_ascii=False)
