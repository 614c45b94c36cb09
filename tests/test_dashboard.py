"""Supervision figures (issue 6, items 4-6): the dashboard, repeats, proactive service.

Cases go through the real desk and ``CaseIndex`` on the nodes of tests/casekit.py with a
frozen clock across Spring Festival and National Day 2026, so the figures are those a
supervisor would read. The aggregates are also checked against a brute-force count over
``case_state`` for 2,000 generated cases (the benchmark's generator, real fold), and the
incremental path (``apply_delta``) against a rebuild.
"""

import datetime
import io
import itertools
import json
import sys
from pathlib import Path

import pytest
from openpyxl import load_workbook

from shared.cases import fold as F
from shared.cases import idnumbers, stats
from shared.cases.index import COLUMNS
from shared.catalog import publish
from shared.views import dashboard
from shared.workdays import WorkCalendar
from tests import casekit
from tests.casekit import CITIZEN, COUNTY, TOWNSHIP, VILLAGE_A, VILLAGE_B
from tests.conftest import add_account, staff_login

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import dashboard as bench  # noqa: E402

D = datetime.date
PASSWORD = "dash-pw-123"
LOW_INCOME = "GD-LS-04"       # township item, 13 working days, decided at the township
PENSION = "GD-LS-02"          # county item via the township
DISABILITY_CARD = "GD-LS-09"  # county item; its approval issues the 残疾人证 e-licence
DISABILITY_SUBSIDY = "GD-LS-07"
SENIOR_CARD = "GD-LS-12"
#: Turns 60 on 2026-04-20: within the pension rule's 90 days ahead of 2026-02-13.
NEARLY_60 = idnumbers.make_resident_id("441521", D(1966, 4, 20), 7)
#: Turned 80 on 2026-01-05.
AGED_80 = idnumbers.make_resident_id("441521", D(1946, 1, 5), 8)





@pytest.fixture
def kit(tmp_path, frozen):
    """The region with a frozen clock, the supervision pages and their staff."""
    kit = casekit.Kit(tmp_path, wall_clock=frozen)
    for code, app in kit.apps.items():
        app.extensions["case_desk"] = kit.desk(code)
        if "dashboard" not in app.blueprints:
            dashboard.init_app(app)
    add_account(kit.apps[COUNTY], "super-c", PASSWORD, roles=("supervisor",))
    add_account(kit.apps[COUNTY], "admin-c", PASSWORD, roles=("county_admin",))
    add_account(kit.apps[TOWNSHIP], "super-t", PASSWORD, roles=("supervisor",))
    add_account(kit.apps[TOWNSHIP], "clerk-t", PASSWORD, roles=("clerk",))
    add_account(kit.apps[VILLAGE_A], "super-v", PASSWORD, roles=("supervisor",))
    yield kit
    kit.close()


def login(kit, code, username):
    return staff_login(kit.apps[code], username, PASSWORD)


def text(response):
    return response.get_data(as_text=True)


def block(html, element_id):
    """The element with ``id`` up to its closing tag."""
    start = html.index(f'id="{element_id}"')
    tag = html[html.rindex("<", 0, start) + 1:start].split()[0]
    return html[start:html.index(f"</{tag}>", start)]


def accept(kit, frozen, day, item=LOW_INCOME, number=CITIZEN, hour=10, code=VILLAGE_A):
    """Accept ``item`` for ``number`` at ``code`` on ``day``; synced everywhere."""
    frozen.at(day, hour)
    desk = kit.desk(code)
    case = desk.receive(item, casekit.applicant(number), casekit.full_materials(desk, item),
                        "accept", casekit.clerk())
    kit.sync()
    return case


def act(kit, frozen, day, code, method, *args, hour=10, **kwargs):
    frozen.at(day, hour)
    result = getattr(kit.desk(code), method)(*args, **kwargs)
    kit.sync()
    return result


def figures(kit, code=COUNTY, **kwargs):
    return stats.dashboard(kit.store(code).db, **kwargs)


def audit_rows(kit, code):
    db = kit.store(code).db
    if not db.execute_sql("SELECT 1 FROM sqlite_master WHERE name = 'audit_log'").fetchone():
        return []
    return [tuple(r) for r in db.execute_sql(
        "SELECT staff, action, subject FROM audit_log ORDER BY seq").fetchall()]


# -- the dashboard over real cases ------------------------------------------------------------

def test_figures_follow_cases_across_spring_festival_and_national_day(kit, frozen):
    # Accepted on the Friday before Spring Festival, decided the Tuesday after it: the
    # adjusted working Saturday (14 Feb) and 24 Feb are the 2 working days in between.
    first = accept(kit, frozen, D(2026, 2, 13))
    waiting = accept(kit, frozen, D(2026, 2, 13), number=NEARLY_60, hour=11)
    act(kit, frozen, D(2026, 2, 24), TOWNSHIP, "approve", first, casekit.approver())
    act(kit, frozen, D(2026, 2, 24), VILLAGE_A, "deliver", first, casekit.clerk(), hour=11)
    act(kit, frozen, D(2026, 2, 24), VILLAGE_A, "rate", first, 5, hour=12)
    act(kit, frozen, D(2026, 2, 24), VILLAGE_A, "complain", first, "等候太久", hour=13)
    complaint = kit.desk(TOWNSHIP).state(first)["complaints"][0]["id"]
    act(kit, frozen, D(2026, 2, 24), TOWNSHIP, "handle_complaint", first, casekit.approver(),
        complaint, "replied", "已改进", hour=16)

    found = figures(kit, today=D(2026, 3, 10))
    total = found["total"]
    assert (total["accepted"], total["completed"], total["in_progress"]) == (2, 1, 1)
    assert total["avg_decide_days"] == 2.0
    assert (total["rated"], total["avg_rating"]) == (1, 5.0)
    assert (total["complaints"], total["complaints_replied"]) == (1, 1)
    assert total["avg_complaint_hours"] == 3.0
    assert total["delivered"] == 1
    # The waiting case is due on 10 March (13 working days, the festival skipped).
    assert total["overdue"] == 0
    late = figures(kit, today=D(2026, 3, 11))
    assert late["total"]["overdue"] == 1
    assert [(n["code"], n["overdue"]) for n in late["nodes"]] == [(VILLAGE_A, 1)]
    assert [(i["item_id"], i["overdue"], i["in_progress"]) for i in late["items"]] == \
        [(LOW_INCOME, 1, 1)]
    assert late["departments"][0]["name"] == "民政"
    assert late["departments"][0]["overdue"] == 1
    # The township holds the same cases and counts them the same way.
    assert figures(kit, TOWNSHIP, area=TOWNSHIP, today=D(2026, 3, 11))["total"] == late["total"]

    # National Day: 1-7 October off, Saturday 10 October worked: 8, 9 and 10 October.
    autumn = accept(kit, frozen, D(2026, 9, 30), number=AGED_80)
    act(kit, frozen, D(2026, 10, 10), TOWNSHIP, "approve", autumn, casekit.approver())
    act(kit, frozen, D(2026, 10, 12), TOWNSHIP, "approve", waiting, casekit.approver())
    whole = figures(kit, today=D(2026, 10, 12))["total"]
    assert whole["completed"] == 3 and whole["overdue"] == 0 and whole["in_progress"] == 0
    # 2 + 3 + 161 working days (13 Feb to 12 Oct): figures per period stay separate.
    assert figures(kit, since="2026-09-01", today=D(2026, 10, 12))["total"]["avg_decide_days"] \
        == 3.0
    spring = figures(kit, since="2026-02-01", until="2026-02-28", today=D(2026, 10, 12))
    assert spring["total"]["accepted"] == 2
    assert spring["total"]["decide_workdays"] == 2 + WorkCalendar().workdays_between(
        "2026-02-13", "2026-10-12")

    # A rebuild of every projection (reindex) counts each case once.
    before = figures(kit, today=D(2026, 10, 12))
    kit.store(COUNTY).reindex()
    assert figures(kit, today=D(2026, 10, 12)) == before


def test_trend_weeks_and_indicators_with_targets(kit, frozen):
    accept(kit, frozen, D(2026, 2, 9))
    accept(kit, frozen, D(2026, 2, 13), number=NEARLY_60)
    found = figures(kit, since="2026-02-01", until="2026-02-28", today=D(2026, 2, 27))
    weeks = {w["week"]: w["accepted"] for w in found["trend"]}
    assert weeks == {"2026-01-26": 0, "2026-02-02": 0, "2026-02-09": 2, "2026-02-16": 0,
                     "2026-02-23": 0}
    indicators = {i["key"]: i for i in found["indicators"]}
    assert [i["target"] for i in found["indicators"]] == [0.5, 0.4, 0.7, 0.2]
    # 20 of the 26 items in force (the sample's 25 and the kit's joint item) are online.
    assert (indicators["online_items"]["part"], indicators["online_items"]["whole"]) == (20, 26)
    assert indicators["online_items"]["met"] is True
    assert indicators["online_rate"]["value"] == 0.0 and indicators["online_rate"]["met"] is False
    assert indicators["visits_le1"]["value"] is None  # nothing delivered yet
    assert indicators["visits_le1"]["met"] is None


# -- exactness ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A county store with 2,000 generated cases (bulk path) and a registry."""
    county, store = bench.make_store(tmp_path_factory.mktemp("generated"))
    bench.fill(store.db, 2000, seed=11)
    yield store
    store.close()


def brute_force(db, area=None, since=None, until=None, today=bench.TODAY):
    """Figures by node, item and in total, counted row by row from case_state."""
    calendar = WorkCalendar()
    by_node, by_item, total, weeks = {}, {}, {}, {}
    rows = db.execute_sql(f"SELECT {','.join(COLUMNS)} FROM case_state").fetchall()
    for values in rows:
        row = dict(zip(COLUMNS, values))
        day = row["accepted_day"]
        if not day or (area and not row["origin"].startswith(area)):
            continue
        if (since and day < since) or (until and day > until):
            continue
        state = json.loads(row["state"])
        decided = row["status"] in ("ready", "done")
        replied = [c for c in state["complaints"] if c["stage"] == "replied"]
        minutes = sum((F.hlc_time(next(s["hlc"] for s in c["steps"] if s["stage"] == "replied"))
                       - F.hlc_time(c["hlc"])).total_seconds() // 60 for c in replied)
        red = [c for c in state["cards"] if c["color"] == "red"]
        counts = {
            "accepted": 1, "online": row["channel"] == "online",
            "in_progress": row["status"] in ("handling", "supplementing"),
            "completed": decided, "withdrawn": row["status"] == "withdrawn",
            "decide_workdays": calendar.workdays_between(day, row["decided_day"])
            if decided else 0,
            "delivered": row["status"] == "done",
            "visits_le1": row["status"] == "done" and row["visits"] <= 1,
            "visits_0": row["status"] == "done" and row["visits"] == 0,
            "yellow": sum(c["color"] == "yellow" for c in state["cards"]), "red": len(red),
            "red_followed": sum(bool(c["followed_up"]) for c in red),
            "rated": row["rating"] is not None, "rating_sum": row["rating"] or 0,
            "complaints": len(state["complaints"]), "complaints_replied": len(replied),
            "complaint_minutes": minutes,
            "overdue": row["status"] == "handling" and row["due"] is not None
            and row["due"] < today.isoformat(),
        }
        monday = (D.fromisoformat(day) - datetime.timedelta(
            days=D.fromisoformat(day).weekday())).isoformat()
        for table, key in ((by_node, row["origin"]), (by_item, (row["item_id"],
                                                                 row["department"])),
                           (total, "all"), (weeks, monday)):
            held = table.setdefault(key, {})
            for name, value in counts.items():
                held[name] = held.get(name, 0) + int(value)
    return by_node, by_item, total.get("all", {}), weeks


def counted(row):
    return {name: row[name] for name in (*stats.COUNTERS, "overdue")}


@pytest.mark.parametrize("area, since, until", [
    (None, None, None),
    ("441521101", None, None),
    (None, "2025-03-15", "2026-06-20"),
    ("441521105", "2026-01-31", "2026-03-01"),
])
def test_aggregates_equal_a_brute_force_count(generated, area, since, until):
    db = generated.db
    found = stats.dashboard(db, area=area, since=since, until=until, today=bench.TODAY)
    by_node, by_item, total, weeks = brute_force(db, area, since, until)
    assert total["accepted"] > 0  # the period holds cases
    assert counted(found["total"]) == total
    assert {n["code"]: counted(n) for n in found["nodes"]} == by_node
    assert {(i["item_id"], i["department"]): counted(i) for i in found["items"]} == by_item
    if since:
        for week in found["trend"]:
            inside = since <= week["week"] and \
                (D.fromisoformat(week["week"]) + datetime.timedelta(days=6)).isoformat() <= until
            if inside:
                assert week["accepted"] == weeks.get(week["week"], {}).get("accepted", 0)


def test_the_generated_region_has_what_the_figures_are_about(generated):
    total = brute_force(generated.db)[2]
    # Late cases, cards, ratings, complaints, online applications: every column is exercised.
    for name in ("overdue", "yellow", "red", "red_followed", "rated", "complaints_replied",
                 "online", "withdrawn", "visits_le1", "visits_0", "in_progress"):
        assert total[name] > 0, name


def table_rows(db):
    found = {}
    for table in (*stats.DIMENSIONS, "stats_requests", "person_facts", "stats_repeat"):
        found[table] = sorted(tuple(r) for r in db.execute_sql(
            f"SELECT * FROM {table}").fetchall())
    return found


def earlier_version(row):
    """The same case as it stood while still in handling (no decision, cards or rating)."""
    state = json.loads(row["state"])
    state.update(status="handling", cards=[], complaints=[], rating=None, timeline=[])
    return dict(row, status="handling", decided_day=None, rating=None, due="2000-01-01",
                state=json.dumps(state, ensure_ascii=False))


def test_apply_delta_as_cases_progress_equals_a_rebuild(tmp_path):
    county, store = bench.make_store(tmp_path)
    db = store.db
    generator = bench.Generator(seed=5, cases=300)
    insert = (f"INSERT OR REPLACE INTO case_state ({','.join(COLUMNS)}) "
              f"VALUES ({','.join('?' * len(COLUMNS))})")
    finals = [row for row, _ in generator.rows(300)]
    with db.atomic():
        for row in finals:  # each case arrives while in handling ...
            young = earlier_version(row)
            stats.apply_delta(db, stats.held_row(db, row["number"]), young)
            db.execute_sql(insert, [young[c] for c in COLUMNS])
        for row in finals:  # ... and is decided, carded, rated later
            stats.apply_delta(db, stats.held_row(db, row["number"]), row)
            db.execute_sql(insert, [row[c] for c in COLUMNS])
        moved = dict(finals[0], item_id="GD-LS-99", department="测试部门")
        stats.apply_delta(db, stats.held_row(db, moved["number"]), moved)
        db.execute_sql(insert, [moved[c] for c in COLUMNS])
    incremental = table_rows(db)
    with db.atomic():
        stats.rebuild(db)
    assert table_rows(db) == incremental
    assert incremental["stats_node"] and incremental["person_facts"]
    assert incremental["stats_repeat"]
    # A key nothing counts under any more is dropped, not kept at zero.
    assert not db.execute_sql("SELECT 1 FROM stats_item WHERE accepted = 0").fetchone()
    store.close()


def test_a_case_that_fails_to_fold_leaves_no_figures_behind(kit, frozen, monkeypatch):
    accept(kit, frozen, D(2026, 6, 15))
    db = kit.store(COUNTY).db
    before = table_rows(db)
    desk = kit.desk(VILLAGE_A)
    second = desk.receive(LOW_INCOME, casekit.applicant(NEARLY_60),
                          casekit.full_materials(desk, LOW_INCOME), "accept", casekit.clerk())
    real_delta = stats.apply_delta

    def delta_then_fail(*args, **kwargs):
        real_delta(*args, **kwargs)
        raise ValueError("a malformed event")
    monkeypatch.setattr(stats, "apply_delta", delta_then_fail)
    kit.sync()
    # The case's documents arrived (replication is not blocked), but nothing of its fold
    # is left: no row, and the figures still those of the first case alone (before the
    # fix they counted a case the work lists did not show).
    assert kit.store(COUNTY).get(f"case:{second}")
    assert not db.execute_sql("SELECT 1 FROM case_state WHERE number = ?",
                              (second,)).fetchone()
    assert table_rows(db) == before


def test_the_benchmarks_bulk_path_matches_apply_delta(tmp_path):
    found = []
    for name, incremental in (("bulk", False), ("delta", True)):
        (tmp_path / name).mkdir()
        county, store = bench.make_store(tmp_path / name)
        bench.fill(store.db, 400, seed=4, through_apply_delta=incremental)
        found.append(table_rows(store.db))
        store.close()
    assert found[0] == found[1]
    assert found[0]["stats_repeat"] and found[0]["stats_requests"]


def test_repeat_links_do_not_depend_on_the_order_cases_arrive_in(tmp_path):
    county, store = bench.make_store(tmp_path)
    db = store.db
    insert = (f"INSERT OR REPLACE INTO case_state ({','.join(COLUMNS)}) "
              f"VALUES ({','.join('?' * len(COLUMNS))})")
    rows = [row for row, _ in bench.Generator(seed=9, cases=10).rows(4)]
    # One applicant, one item, four acceptances; two of the days are corrected later.
    days = ["2026-03-02", "2026-03-20", "2026-03-20", "2026-05-30"]
    same = [dict(row, applicant_key="a" * 64, item_id=LOW_INCOME, accepted_day=day)
            for row, day in zip(rows, days)]
    corrections = [dict(same[3], accepted_day="2026-03-01"),
                   dict(same[0], accepted_day="2026-06-15")]
    expected = None
    for order in itertools.permutations(range(4)):
        with db.atomic():
            db.execute_sql("DELETE FROM case_state")
            stats.clear(db)
            for index in order:
                stats.apply_delta(db, stats.held_row(db, same[index]["number"]), same[index])
                db.execute_sql(insert, [same[index][c] for c in COLUMNS])
            for corrected in corrections:
                stats.apply_delta(db, stats.held_row(db, corrected["number"]), corrected)
                db.execute_sql(insert, [corrected[c] for c in COLUMNS])
        links = table_rows(db)["stats_repeat"]
        with db.atomic():
            stats.rebuild_repeats(db)
        assert table_rows(db)["stats_repeat"] == links, order
        expected = expected or links
        assert links == expected
    # 1 March, 20 March twice, 15 June: three links, 19, 0 and 87 days apart.
    assert sorted(link[-1] for link in expected) == [0, 19, 87]
    store.close()


def test_cards_are_counted_from_the_state(tmp_path):
    county, store = bench.make_store(tmp_path)
    db = store.db
    row = next(bench.Generator(seed=3, cases=10).rows(1))[0]
    state = json.loads(row["state"])
    card = {"id": "event:x", "color": "yellow", "due": "2026-03-10", "hlc": "x", "node": COUNTY,
            "followed_up": None}
    red = dict(card, id="event:y", color="red")
    with db.atomic():
        carded = dict(row, state=json.dumps(dict(state, cards=[card, red])))
        stats.apply_delta(db, None, carded)
        db.execute_sql(f"INSERT INTO case_state ({','.join(COLUMNS)}) VALUES "
                       f"({','.join('?' * len(COLUMNS))})", [carded[c] for c in COLUMNS])
    total = stats.dashboard(db, today=bench.TODAY)["total"]
    assert (total["yellow"], total["red"], total["red_followed"]) == (1, 1, 0)
    followed = dict(red, followed_up={"note": "已督促", "by": {}, "hlc": "z"})
    with db.atomic():
        after = dict(row, state=json.dumps(dict(state, cards=[card, followed])))
        stats.apply_delta(db, stats.held_row(db, row["number"]), after)
    total = stats.dashboard(db, today=bench.TODAY)["total"]
    assert (total["yellow"], total["red"], total["red_followed"]) == (1, 1, 1)
    store.close()


def test_a_store_holding_cases_before_the_tables_existed_gets_its_figures(generated, tmp_path):
    db = generated.db
    before = stats.dashboard(db, today=bench.TODAY)
    with db.atomic():
        for table in (*stats.DIMENSIONS, "stats_item_name", "stats_requests", "person_facts",
                      "stats_repeat", "stats_meta"):
            db.execute_sql(f"DROP TABLE {table}")
    del db._tongban_stats
    assert stats.dashboard(db, today=bench.TODAY) == before


def test_period_buckets_cover_every_day_once():
    found = stats.buckets("2025-12-30", "2027-03-02")
    assert found[:3] == ["2025-12-30", "2025-12-31", "2026"]
    assert found[3:6] == ["2027-01", "2027-02", "2027-03-01"]
    days = set()
    for bucket in found:
        if len(bucket) == 10:
            days.add(bucket)
        else:
            first = D.fromisoformat(bucket + "-01-01"[len(bucket) - 4:])
            day = first
            while day.isoformat().startswith(bucket):
                days.add(day.isoformat())
                day += datetime.timedelta(days=1)
    assert len(days) == (D(2027, 3, 2) - D(2025, 12, 30)).days + 1


# -- repeats and proactive service ------------------------------------------------------------

def test_repeated_applications_and_materials_requested_twice(kit, frozen):
    first = accept(kit, frozen, D(2026, 2, 2), item=SENIOR_CARD)
    again = accept(kit, frozen, D(2026, 2, 12), item=SENIOR_CARD, code=VILLAGE_B)
    accept(kit, frozen, D(2026, 2, 12), item=SENIOR_CARD, number=NEARLY_60)
    db = kit.store(TOWNSHIP).db
    rows, more = stats.repeats(db, area=TOWNSHIP, days=30, today=D(2026, 2, 13))
    assert [(r["number"], r["earlier"], r["days_apart"]) for r in rows] == [(again, first, 10)]
    assert more is False
    assert stats.repeats(db, days=5, today=D(2026, 2, 13))[0] == []

    # One-time notice, then accepted, then the decider asks for a supplement: twice.
    frozen.at(D(2026, 2, 13))
    desk = kit.desk(VILLAGE_A)
    noticed = desk.receive(LOW_INCOME, casekit.applicant(AGED_80), {}, "notice", casekit.clerk())
    desk.receive(LOW_INCOME, casekit.applicant(AGED_80),
                 casekit.full_materials(desk, LOW_INCOME), "accept", casekit.clerk(),
                 number=noticed)
    kit.sync()
    once = accept(kit, frozen, D(2026, 2, 13), number=NEARLY_60, hour=11)
    for number in (noticed, once):
        act(kit, frozen, D(2026, 2, 24), TOWNSHIP, "request_supplement", number,
            casekit.approver(), "户口簿复印件不清晰")
    twice, _ = stats.requested_twice(db, area=TOWNSHIP)
    assert [(r["number"], r["notices"], r["supplement_requests"]) for r in twice] == \
        [(noticed, 1, 1)]

    supervisor = login(kit, TOWNSHIP, "super-t")
    frozen.at(D(2026, 2, 24))
    page = text(supervisor.get("/dashboard/repeats?since=2026-01-01&until=2026-02-28"))
    assert again in block(page, "repeats") and first in block(page, "repeats")
    assert noticed in block(page, "twice") and once not in block(page, "twice")
    key = kit.desk(VILLAGE_A).state(first)["applicant_key"]
    assert stats.masked_key(key) in page and key not in page and "陈阿婆" not in page
    assert ("super-t", "repeat_list", TOWNSHIP) in audit_rows(kit, TOWNSHIP)


def issue_disability_card(kit, frozen, number):
    case = accept(kit, frozen, D(2026, 1, 5), item=DISABILITY_CARD, number=number)
    act(kit, frozen, D(2026, 1, 6), TOWNSHIP, "forward", case, casekit.approver())
    act(kit, frozen, D(2026, 1, 7), COUNTY, "approve", case, casekit.approver(), licence={
        "name": "中华人民共和国残疾人证（第二代）", "number": "44152119500301123X11",
        "valid_until": "2036-01-07"})
    return case


def test_proactive_rules_list_people_at_the_station_that_last_served_them(kit, frozen):
    issue_disability_card(kit, frozen, CITIZEN)
    accept(kit, frozen, D(2026, 2, 2), number=NEARLY_60)
    latest = accept(kit, frozen, D(2026, 2, 3), number=AGED_80, code=VILLAGE_B)
    db = kit.store(TOWNSHIP).db
    today = D(2026, 2, 13)
    found = {(p["rule"], p["station"], p["age"]) for p in stats.proactive(db, today=today)}
    # 陈阿婆 (75) holds a disability card without the subsidy; 59 turns 60 in April; 80.
    assert found == {("disability", VILLAGE_A, 75), ("pension", VILLAGE_A, 59),
                     ("old_age", VILLAGE_B, 80)}
    summary = {s["station"]: s["counts"] for s in stats.proactive_summary(db, today=today)}
    assert summary == {VILLAGE_A: {"pension": 1, "old_age": 0, "disability": 1},
                       VILLAGE_B: {"pension": 0, "old_age": 1, "disability": 0}}

    # Cases accepted before birth dates were recorded: the licence's station still knows.
    with db.atomic():
        held = db.execute_sql("SELECT * FROM person_facts").fetchall()
        db.execute_sql("DELETE FROM person_facts")
        assert [(p["rule"], p["station"]) for p in stats.proactive(db, today=today)] == \
            [("disability", VILLAGE_A)]
        db.connection().executemany("INSERT INTO person_facts VALUES (?, ?, ?, ?, ?, ?)", held)

    # Applying is what takes a person off the list.
    accept(kit, frozen, D(2026, 2, 13), item=DISABILITY_SUBSIDY)
    accept(kit, frozen, D(2026, 2, 13), item=PENSION, number=NEARLY_60, hour=11)
    assert {p["rule"] for p in stats.proactive(db, today=today)} == {"old_age"}

    supervisor = login(kit, TOWNSHIP, "super-t")
    frozen.at(today)
    page = text(supervisor.get("/dashboard/proactive"))
    assert 'data-station="441521101002"' in block(page, "summary")
    assert "高龄老人津贴申领" in block(page, "rules")
    assert not [r for r in audit_rows(kit, TOWNSHIP) if r[1] == "proactive_list"]
    listing = text(supervisor.get(f"/dashboard/proactive?station={VILLAGE_B}"))
    people = block(listing, "people")
    assert 'data-rule="old_age"' in people and latest in people
    key = kit.desk(VILLAGE_B).state(latest)["applicant_key"]
    assert stats.masked_key(key) in people and key not in listing and "陈阿婆" not in listing
    assert ("super-t", "proactive_list", VILLAGE_B) in audit_rows(kit, TOWNSHIP)
    other = supervisor.get("/dashboard/proactive?station=441521102001")
    assert other.status_code == 403 and dashboard.BAD_STATION in text(other)


def republish(kit, change):
    """Publish the county's catalog again with ``change(items)`` applied; synced."""
    county = kit.apps[COUNTY]
    items, agencies = publish.working_copy(kit.store(COUNTY).db)
    change(items)
    with county.app_context():
        publish.publish(kit.store(COUNTY), items, agencies, proposer="editor",
                        approver="boss", private_key=county.key)
    kit.sync()


def test_proactive_rules_come_from_the_catalog_in_force_not_from_item_ids(kit, frozen):
    def own_ids(items):
        # This county numbers its old-age allowance HF-GL-80 and lists it a year ahead.
        aged = next(i for i in items if i["id"] == "GD-LS-11")
        aged.update(id="HF-GL-80", proactive=dict(aged["proactive"], code="hf_aged",
                                                  label="八十周岁高龄津贴", ahead_days=365))
    republish(kit, own_ids)
    accept(kit, frozen, D(2026, 2, 3), number=AGED_80, code=VILLAGE_B)
    db = kit.store(TOWNSHIP).db
    today = D(2026, 2, 13)
    assert stats.rules(db)["hf_aged"]["items"] == ("HF-GL-80",)
    assert {p["rule"] for p in stats.proactive(db, today=today)} == {"hf_aged"}
    # Applying for the county's own item is what takes the person off the list.
    accept(kit, frozen, D(2026, 2, 13), item="HF-GL-80", number=AGED_80, code=VILLAGE_B)
    assert stats.proactive(db, today=today) == []

    def no_rules(items):
        for item in items:
            item.pop("proactive", None)
    republish(kit, no_rules)
    assert stats.rules(db) == {} and stats.proactive_summary(db, today=today) == []
    frozen.at(today)
    page = text(login(kit, TOWNSHIP, "super-t").get("/dashboard/proactive"))
    assert "没有设置主动服务条件" in block(page, "no-rules")


# -- pages ---------------------------------------------------------------------------------

def test_dashboard_pages_roles_scope_and_charts(kit, frozen):
    accept(kit, frozen, D(2026, 2, 9))
    number = accept(kit, frozen, D(2026, 2, 13), number=NEARLY_60)
    act(kit, frozen, D(2026, 2, 24), TOWNSHIP, "approve", number, casekit.approver())
    frozen.at(D(2026, 2, 25))

    assert kit.apps[TOWNSHIP].test_client().get("/dashboard/").status_code == 302
    clerk = login(kit, TOWNSHIP, "clerk-t")
    assert clerk.get("/dashboard/").status_code == 403
    village = login(kit, VILLAGE_A, "super-v").get("/dashboard/")
    assert village.status_code == 404 and dashboard.NOT_HERE in text(village)

    county = login(kit, COUNTY, "super-c")
    page = text(county.get("/dashboard/?since=2026-02-01&until=2026-02-28"))
    assert 'id="total-accepted">2<' in page and 'id="total-completed">1<' in page
    assert 'id="total-avg_decide_days">2.0<' in page  # 13 Feb -> 24 Feb: 14 Feb and 24 Feb
    assert "海城镇" in block(page, "by-area")
    assert 'data-code="GD-LS-04"' in block(page, "by-item")
    assert "达标" in block(page, "met-online_items")
    assert "未达标" in block(page, "met-online_rate")
    charts = block(page, "charts")
    assert charts.count("<svg") == 3 and "2026-02-09 当周 受理：2" in charts
    township = text(county.get(f"/dashboard/?area={TOWNSHIP}"))
    assert 'id="scope">海城镇<' in township and VILLAGE_A in block(township, "by-node")
    assert county.get("/dashboard/?area=441599101").status_code == 400
    wrong = county.get("/dashboard/?since=2026-03-01&until=2026-02-01")
    assert wrong.status_code == 400 and dashboard.BAD_PERIOD in text(wrong)
    assert login(kit, COUNTY, "admin-c").get("/dashboard/").status_code == 200

    own = text(login(kit, TOWNSHIP, "super-t").get("/dashboard/"))
    assert 'id="scope">海城镇<' in own and 'id="area"' not in own

    response = county.get("/dashboard/export.xlsx?since=2026-02-01&until=2026-02-28")
    assert response.status_code == 200
    book = load_workbook(io.BytesIO(response.data))
    assert book.sheetnames == ["概览", "按乡镇", "按站点", "按事项", "按部门", "周趋势"]
    nodes = list(book["按站点"].iter_rows(values_only=True))
    assert nodes[0][:3] == ("代码", "站点", "受理")
    assert nodes[1][:4] == (VILLAGE_A, "东门村", 2, 1)
    overview = [row[:6] for row in book["概览"].iter_rows(values_only=True)]
    assert ("网上申请率", 0, 0, 2, 0.4, "未达标") in overview
