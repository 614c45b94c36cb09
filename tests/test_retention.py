"""Retention at a village: closed cases older than RETENTION_DAYS leave the village's store
by a local purge (no tombstone), stay at the township and county, and do not come back.

The township and county are real apps on their own SQLite files; ``Kit.sync`` replicates
as the replicator does (winning revisions with their history, ``new_edits=False``). The
parent's confirmation (``_revs_diff``) is asked of the township's app in-process.
"""

import datetime

import pytest

from shared import retention
from shared.store import reads
from tests.casekit import COUNTY, TOWNSHIP, VILLAGE_A, Kit, applicant, clerk, upload


@pytest.fixture
def kit(tmp_path, frozen):
    kit = Kit(tmp_path, wall_clock=frozen)
    kit.frozen = frozen
    yield kit
    kit.close()


def accept(kit, withdraw=False):
    desk = kit.desk(VILLAGE_A)
    number = desk.receive("GD-LS-01", applicant(), {2: {"scans": [upload(desk)]}}, "accept",
                          clerk())
    if withdraw:
        desk.act(number, "withdrawn", clerk(), reason="申请人撤回")
    return number


def held(kit, code, number):
    store = kit.store(code)
    return store.db.execute_sql("SELECT COUNT(*) FROM document WHERE id = ? OR id LIKE ?",
                                (f"case:{number}", f"%:{number}:%")).fetchone()[0]


def parent_confirms(kit, monkeypatch):
    """The township answers the village's _revs_diff (its real store)."""
    def confirmed(app, docs_by_case):
        township = kit.store(TOWNSHIP)
        wanted = reads.leaf_revs(kit.store(VILLAGE_A).db,
                                 [d for ids in docs_by_case.values() for d in ids])
        missing = township.revs_diff(wanted)
        return [n for n, ids in docs_by_case.items() if not set(ids) & set(missing)]
    monkeypatch.setattr(retention, "confirmed_by_parent", confirmed)


def test_old_closed_cases_leave_the_village_only(kit, monkeypatch):
    parent_confirms(kit, monkeypatch)
    kit.frozen.at(datetime.date(2025, 1, 6))
    old_closed = accept(kit, withdraw=True)
    old_open = accept(kit)
    kit.frozen.at(datetime.date(2026, 1, 20))
    recent_closed = accept(kit, withdraw=True)
    # Pushed up, then read past by the village's pull (syncd pulls again after a push that
    # wrote something, so its pull checkpoint is beyond its own documents).
    kit.sync()
    kit.sync()
    village = kit.apps[VILLAGE_A]
    before = kit.store(VILLAGE_A).update_seq()
    docs = held(kit, VILLAGE_A, old_closed)
    assert docs == 5  # header, scan, accepted, attached, withdrawn

    kit.frozen.at(datetime.date(2026, 2, 13))
    purged = retention.purge_expired(village, datetime.date(2026, 2, 13))

    assert purged == [old_closed]
    assert held(kit, VILLAGE_A, old_closed) == 0
    assert held(kit, VILLAGE_A, old_open) and held(kit, VILLAGE_A, recent_closed)
    desk = kit.desk(VILLAGE_A)
    assert desk.state(old_open) is not None and desk.state(recent_closed) is not None
    db = kit.store(VILLAGE_A).db
    assert db.execute_sql("SELECT COUNT(*) FROM case_state WHERE number = ?",
                          (old_closed,)).fetchone()[0] == 0
    # The supervision figures no longer count it: one withdrawn case is left here.
    assert db.execute_sql("SELECT SUM(withdrawn), SUM(accepted) FROM stats_node "
                          "WHERE length(bucket) = 4").fetchone() == (1, 2)
    # Nothing replicates: no tombstone, no new sequence.
    assert kit.store(VILLAGE_A).update_seq() == before
    for code in (TOWNSHIP, COUNTY):
        assert held(kit, code, old_closed) == docs

    kit.sync()  # a later round in both directions
    assert held(kit, VILLAGE_A, old_closed) == 0
    for code in (TOWNSHIP, COUNTY):
        assert held(kit, code, old_closed) == docs
        assert kit.desk(code).state(old_closed)["status"] == "withdrawn"
    # A second run finds nothing more.
    assert retention.purge_expired(village, datetime.date(2026, 2, 13)) == []


def test_nothing_is_purged_that_the_parent_does_not_hold(kit, monkeypatch):
    parent_confirms(kit, monkeypatch)
    kit.frozen.at(datetime.date(2025, 1, 6))
    number = accept(kit, withdraw=True)  # never synced: the only copy is here
    assert retention.purge_expired(kit.apps[VILLAGE_A], datetime.date(2026, 6, 1)) == []
    assert held(kit, VILLAGE_A, number) == 5


def test_an_event_written_while_the_parent_answers_keeps_the_case(kit, monkeypatch):
    # The parent confirmed what it was asked about; a complaint arrives at the village
    # before the purge. That event exists only here: the case is not purged.
    kit.frozen.at(datetime.date(2025, 1, 6))
    number = accept(kit, withdraw=True)
    kit.sync()
    parent_confirms(kit, monkeypatch)
    confirm = retention.confirmed_by_parent

    def confirmed_then_a_complaint(app, docs_by_case):
        found = confirm(app, docs_by_case)
        kit.desk(VILLAGE_A).complain(number, "撤回后仍收到催办电话")
        return found
    monkeypatch.setattr(retention, "confirmed_by_parent", confirmed_then_a_complaint)
    assert retention.purge_expired(kit.apps[VILLAGE_A], datetime.date(2026, 6, 1)) == []
    assert held(kit, VILLAGE_A, number) == 6


def test_an_unreachable_parent_means_nothing_is_purged(kit):
    kit.frozen.at(datetime.date(2025, 1, 6))
    number = accept(kit, withdraw=True)
    kit.sync()
    kit.apps[VILLAGE_A].config["PARENT_URL"] = "http://127.0.0.1:9"
    assert retention.purge_expired(kit.apps[VILLAGE_A], datetime.date(2026, 6, 1)) == []
    assert held(kit, VILLAGE_A, number) == 5


def test_the_township_never_purges(kit, monkeypatch):
    parent_confirms(kit, monkeypatch)
    kit.frozen.at(datetime.date(2025, 1, 6))
    number = accept(kit, withdraw=True)
    kit.sync()
    assert retention.purge_expired(kit.apps[TOWNSHIP], datetime.date(2026, 6, 1)) == []
    assert held(kit, TOWNSHIP, number) == 5


def test_a_bad_retention_setting_is_refused(kit):
    from shared import errors

    kit.apps[VILLAGE_A].config["RETENTION_DAYS"] = "a year"
    with pytest.raises(errors.ConfigurationError, match="RETENTION_DAYS"):
        retention.purge_expired(kit.apps[VILLAGE_A], datetime.date(2026, 6, 1))


def test_the_village_schedules_the_purge_daily():
    from village.jobs import JOBS

    assert (retention.retention_job, retention.RETENTION_TRIGGER) in JOBS
    assert retention.RETENTION_TRIGGER["trigger"] == "cron"


def test_a_purge_leaves_no_tombstone_and_no_revision(stores):
    store = stores("village")
    store.put({"_id": "keep", "n": 1})
    rev = store.put({"_id": "gone", "n": 1})
    store.put({"_id": "gone", "_rev": rev, "n": 2})
    seq = store.update_seq()
    assert store.purge(["gone", "never-held"]) == ["gone"]
    assert store.update_seq() == seq
    rows, _ = store.changes(0)
    assert [row["id"] for row in rows] == ["keep"]
    assert store.db.execute_sql("SELECT COUNT(*) FROM revision WHERE doc_id = 'gone'"
                                ).fetchone()[0] == 0
    assert store.revs_diff({"gone": [rev]}) == {"gone": {"missing": [rev]}}
    assert store.meta("purge_seq") == "1"
