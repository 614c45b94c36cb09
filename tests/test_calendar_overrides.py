"""The county's working-day overrides: drafted at /admin/calendar, published only in a
two-person signed catalog release, verified at every node, and used there for due dates."""

import datetime
import json
import re

import pytest

from shared import clock, identity
from shared.casedocs import CHINA_TIME
from shared.catalog import active, publish, schema
from shared.catalog import calendar as cal
from shared.catalog import release as rel
from shared.catalog.sample import sample_catalog
from shared.workdays import calendar_from_db, package_years
from tests.casekit import TOWNSHIP, VILLAGE_A, Kit, applicant, clerk, full_materials
from tests.conftest import add_account, form_token, make_app, make_county, staff_login

D = datetime.date
PASSWORD = "correct-horse-42"
#: May Day 2031, before the package has any 2031 data: 1–5 May off, Saturday 10 May worked,
#: the rest of 2031 the ordinary week; 1 January 2032 listed alone (2032 not complete).
MAY_DAY_2031 = [
    *({"date": f"2031-05-0{d}", "workday": False, "reason": "劳动节"} for d in range(1, 6)),
    {"date": "2031-05-10", "workday": True, "reason": "劳动节调休"},
    {"year": 2031, "reason": "国办发明电〔2030〕1号"},
    {"date": "2032-01-01", "workday": False, "reason": "元旦"},
]
TYPHOON = {"date": "2026-03-04", "workday": False, "reason": "台风停工"}


@pytest.fixture
def county(tmp_path):
    (tmp_path / "c").mkdir()
    app = make_county(tmp_path / "c")
    add_account(app, "editor", PASSWORD, roles=("county_admin",))
    add_account(app, "editor2", PASSWORD, roles=("county_admin",))
    add_account(app, "boss", PASSWORD, roles=("approver",))
    add_account(app, "clerk1", PASSWORD, roles=("clerk",))
    yield app  # no app context held: the pages' requests each push their own
    app.extensions["store"].close()


@pytest.fixture
def village(tmp_path, county):
    (tmp_path / "v").mkdir()
    app = make_app(tmp_path / "v", TIER="village", NODE_CODE="441521101001",
                   COUNTY_PUBLIC_KEY=county.config["COUNTY_PUBLIC_KEY"])
    yield app
    app.extensions["store"].close()


def store_of(app):
    return app.extensions["store"]


def db_of(app):
    return store_of(app).db


def release(app, calendar=None):
    """Publish the working copy (the sample catalog the first time) with ``calendar``."""
    items, agencies = publish.working_copy(db_of(app))
    if not items:
        items, agencies = sample_catalog()
    return publish.publish(store_of(app), items, agencies, proposer="editor",
                           approver="boss", private_key=app.key, calendar=calendar)


def copy_docs(source, target, skip=(), replace=None):
    """Copy every document ``source`` holds to ``target`` as replication would (winning
    revision with its history); ``replace`` maps an id to a changed body sent under the
    same revision, as a tampering relay would."""
    rows, _ = store_of(source).changes(0)
    docs = []
    for row in rows:
        if row["id"] in skip:
            continue
        doc = store_of(source).get(row["id"], revs=True)
        if replace and row["id"] in replace:
            doc = dict(replace[row["id"]](doc))
        docs.append(doc)
    store_of(target).bulk_docs(docs, new_edits=False)


# -- at a village --------------------------------------------------------------------------------

def test_a_published_calendar_covers_days_the_package_does_not_at_the_village(county, village):
    first = release(county, calendar=MAY_DAY_2031)
    listed = [e for e in first["entries"] if rel.is_calendar_id(e["id"])]
    assert [e["id"] for e in listed] == ["catalog:calendar@1"]
    doc = store_of(county).get("catalog:calendar@1")
    assert rel.content_hash(doc) == listed[0]["hash"]  # signed like every other document
    assert doc["overrides"][0] == {"date": "2031-05-01", "workday": False, "reason": "劳动节"}

    calendar = calendar_from_db(db_of(village))
    # Nothing received yet: the ordinary week, and not covered (a due date is 暂定).
    assert calendar.is_workday(D(2031, 5, 1)) and not calendar.covers(D(2031, 5, 1))
    copy_docs(county, village)
    assert active.active_number(db_of(village)) == 1
    # The same calendar object follows the activation (a desk needs no restart).
    assert not calendar.is_workday(D(2031, 5, 1))
    assert calendar.is_workday(D(2031, 5, 10))  # a Saturday worked
    assert calendar.is_workday(D(2031, 5, 6))  # an ordinary Tuesday of a complete year
    assert not calendar.is_workday(D(2031, 5, 11))  # an ordinary Sunday
    assert calendar.add_workdays(D(2031, 4, 30), 1) == D(2031, 5, 6)
    assert calendar.add_workdays(D(2031, 5, 9), 1) == D(2031, 5, 10)
    # 2032 is not complete: only the listed day is known.
    assert not calendar.is_workday(D(2032, 1, 1))
    assert calendar.covers(D(2032, 1, 1)) and not calendar.covers(D(2032, 1, 2))
    assert calendar.covers(D(2031, 5, 6))
    # The package still answers for the years it covers.
    assert calendar.is_workday(D(2026, 2, 14)) and not calendar.is_workday(D(2026, 2, 16))


def test_a_release_without_overrides_clears_them_at_the_village(county, village):
    release(county, calendar=MAY_DAY_2031)
    copy_docs(county, village)
    second = release(county, calendar=[])
    assert not any(rel.is_calendar_id(e["id"]) for e in second["entries"])
    copy_docs(county, village)
    assert active.active_number(db_of(village)) == 2
    assert active.calendar_entries(db_of(village)) == []
    assert calendar_from_db(db_of(village)).is_workday(D(2031, 5, 1))  # ordinary Thursday
    assert not calendar_from_db(db_of(village)).covers(D(2031, 5, 1))


def test_a_tampered_calendar_document_is_refused_and_the_last_good_release_stays(
        county, village):
    release(county, calendar=[TYPHOON])
    copy_docs(county, village)
    second = release(county, calendar=[dict(TYPHOON, workday=True, reason="台风已过，照常上班")])
    assert "catalog:calendar@2" in [e["id"] for e in second["entries"]]

    def forged(doc):  # a relay turns the working day back into a day off
        changed = json.loads(json.dumps(doc))
        changed["overrides"][0]["workday"] = False
        return changed

    copy_docs(county, village, replace={"catalog:calendar@2": forged})
    vdb = db_of(village)
    status = active.catalog_status(vdb)
    assert status["state"] == "failed" and status["active"]["number"] == 1
    assert "被篡改" in status["message"] and "catalog:calendar@2" in status["message"]
    assert "catalog:calendar@2" in status["alarms"][0]["message"]
    # The calendar of release 1 stays in force, not the forged one nor the genuine new one.
    assert active.calendar_in_force(vdb)["doc_id"] == "catalog:calendar@1"
    assert not calendar_from_db(vdb).is_workday(D(2026, 3, 4))


def test_a_signed_but_malformed_calendar_is_refused(county, village):
    first = release(county, calendar=[TYPHOON])
    copy_docs(county, village)
    bad = rel.calendar_doc({"overrides": [{"date": "2031-02-30", "workday": False,
                                           "reason": "元旦"}], "years": []}, 9)
    entries = [e for e in first["entries"] if not rel.is_calendar_id(e["id"])]
    entries.append({"id": bad["_id"], "version": 9, "hash": rel.content_hash(bad)})
    signed = rel.sign_release(county.key, number=2, time="2026-11-22T10:00:00+08:00",
                              entries=entries, proposed_by="editor", approved_by="boss")
    store_of(village).bulk_docs([bad, signed])
    status = active.catalog_status(db_of(village))
    assert status["state"] == "failed" and status["active"]["number"] == 1
    assert "工作日历格式错误" in status["message"] and "2031-02-30" in status["message"]
    assert not calendar_from_db(db_of(village)).is_workday(D(2026, 3, 4))


# -- due dates -----------------------------------------------------------------------------------

class FrozenClock:
    """The time every node reads; ``at(day)`` moves it to 10:00 China time that day."""

    def __init__(self, day):
        self.at(day)

    def at(self, day):
        self.now = datetime.datetime(day.year, day.month, day.day, 10,
                                     tzinfo=CHINA_TIME).timestamp()

    def __call__(self):
        return self.now


def due_of(kit, code, number):
    return kit.store(code).db.execute_sql(
        "SELECT due FROM case_state WHERE number = ?", (number,)).fetchone()[0]


def test_a_local_day_off_moves_due_dates_at_every_node(tmp_path):
    frozen = FrozenClock(D(2026, 3, 2))  # a Monday
    kit = Kit(tmp_path, wall_clock=frozen)
    try:
        desk = kit.desk(VILLAGE_A)
        item = "GD-LS-17"  # promised 5 working days
        number = desk.receive(item, applicant(), full_materials(desk, item), "accept", clerk())
        kit.sync()
        assert due_of(kit, VILLAGE_A, number) == "2026-03-09"
        county = kit.apps["441521"]
        with county.app_context():
            release(county, calendar=[TYPHOON])  # Wednesday 4 March off
        kit.sync()
        for code in (VILLAGE_A, TOWNSHIP):
            assert due_of(kit, code, number) == "2026-03-10", code
        village_db = kit.store(VILLAGE_A).db
        assert calendar_from_db(village_db).add_workdays(D(2026, 3, 2), 5) == D(2026, 3, 10)
        # A case accepted after the release is due a day later too.
        frozen.at(D(2026, 3, 3))
        later = desk.receive(item, applicant(), full_materials(desk, item), "accept", clerk())
        assert due_of(kit, VILLAGE_A, later) == "2026-03-11"
        # A rebuild of the village's tables keeps the overrides for the cases it folds.
        kit.store(VILLAGE_A).reindex()
        assert due_of(kit, VILLAGE_A, number) == "2026-03-10"
        assert active.active_number(village_db) == 2
    finally:
        kit.close()


# -- two people ----------------------------------------------------------------------------------

def test_calendar_edits_are_drafts_until_two_people_publish_them(county):
    db, store = db_of(county), store_of(county)
    release(county)
    publish.save_calendar_entries(db, [TYPHOON], "editor")
    assert active.calendar_entries(db) == []  # a draft changes nothing in force
    assert calendar_from_db(db).is_workday(D(2026, 3, 4))
    proposal = publish.propose(db, "editor", "台风停工")
    assert [(c["kind"], c["id"], c["change"]) for c in proposal.change_list()] == [
        ("calendar", "2026-03-04", "added")]
    later = dict(TYPHOON, reason="台风停工（全县）")
    publish.save_calendar_entries(db, [later], "editor")  # after the proposal
    with pytest.raises(publish.PublishRefused, match="不能审批自己提交的发布"):
        publish.approve(store, proposal.id, "editor", county.key)
    with pytest.raises(publish.PublishRefused, match="没有审批人员角色"):
        publish.approve(store, proposal.id, "editor2", county.key)
    assert active.calendar_entries(db) == []
    publish.approve(store, proposal.id, "boss", county.key)
    # What was proposed is in force; the later edit is still a draft.
    assert active.calendar_entries(db) == [TYPHOON]
    assert not calendar_from_db(db).is_workday(D(2026, 3, 4))
    assert [(c["id"], c["fields"]) for c in publish.calendar_diff(db)] == [
        ("2026-03-04", ["原因"])]
    publish.discard_calendar_draft(db, "2026-03-04")
    with pytest.raises(publish.PublishRefused, match="没有差别"):
        publish.propose(db, "editor")


def test_an_unchanged_calendar_keeps_its_document_across_releases(county):
    db = db_of(county)
    first = release(county, calendar=[TYPHOON])
    item = publish.working_record(db, "item", "GD-LS-02")
    publish.save_draft(db, "item", dict(item, hours="全天"), "editor")
    second = release(county)
    calendar_ids = [[e for e in r["entries"] if rel.is_calendar_id(e["id"])]
                    for r in (first, second)]
    assert calendar_ids[0] == calendar_ids[1]  # same document, same hash: nothing re-sent


# -- typed input ---------------------------------------------------------------------------------

def test_lines_are_parsed_and_every_bad_line_is_reported():
    entries = cal.parse_lines("# 2027 年\n2027-01-01 休 元旦\n\n2027/2/7 班 春节调休\n"
                              "2027 全年 国办发明电〔2026〕12号")
    assert entries == [{"date": "2027-01-01", "workday": False, "reason": "元旦"},
                       {"date": "2027-02-07", "workday": True, "reason": "春节调休"},
                       {"year": 2027, "reason": "国办发明电〔2026〕12号"}]
    with pytest.raises(schema.CatalogInvalid) as bad:
        cal.parse_lines("2027-01-01 休 元旦\n2027-13-01 休 元旦\n2027-01-02 放 假\n"
                        "2027-01-03 休\n2027-01-01 班 补班\n元旦 休")
    messages = [e.message for e in bad.value.errors]
    assert len(messages) == 5
    assert messages[0].startswith("第 2 行（2027-13-01 休 元旦）：日期“2027-13-01”不存在")
    assert "第 3 行" in messages[1] and "应写“休”或“班”，而不是“放”" in messages[1]
    assert "第 4 行" in messages[2] and "请写明原因" in messages[2]
    assert "第 5 行" in messages[3] and "与第 1 行重复" in messages[3]
    assert "第 6 行" in messages[4] and "不是日期" in messages[4]


def test_json_is_accepted_in_the_document_shape():
    text = json.dumps({"overrides": [TYPHOON], "years": [{"year": 2027, "reason": "通知"}]},
                      ensure_ascii=False)
    assert cal.parse_text(text) == [TYPHOON, {"year": 2027, "reason": "通知"}]
    with pytest.raises(schema.CatalogInvalid) as bad:
        cal.parse_text('[{"date": "2027-01-01", "workday": "no", "reason": ""}]')
    assert [e.message for e in bad.value.errors] == [
        "第 1 条调整：应注明是工作日（班）还是休息日（休）",
        "第 1 条调整：请写明原因（如“元旦”“台风停工”）"]
    with pytest.raises(schema.CatalogInvalid, match="JSON 格式错误（第 1 行"):
        cal.parse_text('{"overrides": [}')


def test_coverage_warns_about_a_year_nothing_covers():
    last = package_years()[1]
    today = D(last, 11, 22)
    nothing = cal.coverage([], today)
    assert len(nothing["warnings"]) == 1
    assert f"本县也没有发布 {last + 1} 年的调整" in nothing["warnings"][0]
    some = cal.coverage([{"date": f"{last + 1}-01-01", "workday": False, "reason": "元旦"}],
                        today)
    assert f"已发布 1 条 {last + 1} 年的调整，但没有标记“{last + 1} 全年”" in \
        some["warnings"][0]
    drafted = cal.coverage([], today, working=[{"year": last + 1, "reason": "通知"}])
    assert drafted["warnings"][0].endswith(f"（草稿中已标记“{last + 1} 全年”，提交发布并经审批后生效）")
    complete = cal.coverage([{"year": last + 1, "reason": "通知"}], today)
    assert complete["warnings"] == [] and complete["complete"] == [last + 1]


# -- the page ------------------------------------------------------------------------------------

def login(app, username):
    return staff_login(app, username, PASSWORD)


def token(browser):
    return form_token(browser, "/admin/calendar/")


def test_the_calendar_page_drafts_imports_and_reports_bad_lines(county):
    db = db_of(county)
    release(county)
    assert login(county, "clerk1").get("/admin/calendar/").status_code == 403
    editor = login(county, "editor")
    page = editor.get("/admin/calendar/").get_data(as_text=True)
    first, last = package_years()
    assert f"覆盖 {first}—{last} 年" in page
    next_year = clock.today().year + 1
    assert next_year > last  # the installed package data ends before next year
    assert f"本县也没有发布 {next_year} 年的调整" in page

    bad = editor.post("/admin/calendar/import", data={
        "csrf_token": token(editor),
        "text": f"{next_year}-01-01 休 元旦\n{next_year}-02-30 休 春节\n{next_year}-02-07 上 班\n"
                f"{next_year}-01-01 休 元旦"})
    assert bad.status_code == 422
    html = bad.get_data(as_text=True)
    assert "有 3 处问题，没有做任何改动" in html
    assert "第 2 行" in html and "不存在" in html and "第 3 行" in html
    assert "第 4 行" in html and "与第 1 行重复" in html  # a day listed twice
    assert f"{next_year}-02-30 休 春节" in html  # the input is kept to be corrected
    assert publish.calendar_diff(db) == []  # nothing changed

    good = editor.post("/admin/calendar/import", data={
        "csrf_token": token(editor),
        "text": f"{next_year}-01-01 休 元旦\n{next_year}-02-07 班 春节调休\n"
                f"{next_year} 全年 国办发明电"})
    assert good.status_code == 302
    page = editor.get("/admin/calendar/").get_data(as_text=True)
    assert "已导入 3 条调整为草稿" in page and "未发布的调整共 3 项" in page
    assert re.search(rf'id="day-{next_year}-01-01">.*?草稿新增', page, re.S)
    assert active.calendar_entries(db) == []

    no_reason = editor.post("/admin/calendar/day", data={
        "csrf_token": token(editor), "date": "2026-03-04", "kind": "dayoff", "reason": ""})
    assert no_reason.status_code == 422
    assert "请写明原因" in no_reason.get_data(as_text=True)
    editor.post("/admin/calendar/day", data={"csrf_token": token(editor), "date": "2026-03-04",
                                             "kind": "dayoff", "reason": "台风停工"})
    diff = editor.get("/admin/catalog/diff").get_data(as_text=True)
    assert "工作日历（4 项调整）" in diff and "2026-03-04（周三）休息日：台风停工" in diff

    proposed = editor.post("/admin/catalog/propose", data={"csrf_token": token(editor),
                                                           "note": "2027 年节假日"})
    assert proposed.status_code == 302
    approver = login(county, "boss")
    approve_url = proposed.location.rstrip("/") + "/approve"
    assert approver.post(approve_url, data={"csrf_token": token(approver)}).status_code == 302
    page = editor.get("/admin/calendar/").get_data(as_text=True)
    assert "现行工作日历：catalog:calendar@1" in page and "未发布的调整共 0 项" in page
    assert f"本县也没有发布 {next_year} 年的调整" not in page
    assert f"{next_year}-02-07 班 春节调休" in page  # the published lines, to copy
    assert not calendar_from_db(db).is_workday(D(2026, 3, 4))
    monday = next(D(next_year, 2, d) for d in range(8, 15) if D(next_year, 2, d).weekday() == 0)
    assert calendar_from_db(db).is_workday(monday)  # an ordinary day of a complete year


def test_removing_an_entry_on_the_page_is_a_draft_too(county):
    db = db_of(county)
    release(county, calendar=[TYPHOON])
    editor = login(county, "editor")
    editor.post("/admin/calendar/remove", data={"csrf_token": token(editor),
                                                "key": "2026-03-04"})
    page = editor.get("/admin/calendar/").get_data(as_text=True)
    assert re.search(r'id="day-2026-03-04">.*?待删除', page, re.S)
    assert not calendar_from_db(db).is_workday(D(2026, 3, 4))  # still in force
    editor.post("/admin/calendar/discard", data={"csrf_token": token(editor),
                                                 "key": "2026-03-04"})
    assert publish.calendar_diff(db) == []


def test_a_release_signed_with_another_key_never_brings_its_calendar(county, village):
    release(county)
    copy_docs(county, village)
    doc = rel.calendar_doc(cal.document_body([TYPHOON]), 1)
    entries = [{"id": doc["_id"], "version": 1, "hash": rel.content_hash(doc)}]
    forged = rel.sign_release(identity.new_private_key(), number=2, time="2026-11-22",
                              entries=entries, proposed_by="x", approved_by="y")
    store_of(village).bulk_docs([doc, forged])
    assert active.catalog_status(db_of(village))["state"] == "failed"
    assert calendar_from_db(db_of(village)).is_workday(D(2026, 3, 4))
