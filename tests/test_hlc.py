"""The hybrid logical clock and the case/event document shapes.

The clock tests use injected wall clocks (a list of readings, or real time shifted by a
day); the persistence and ordering tests use real SQLite files, two processes on one file,
and real replication between two stores.
"""

import datetime
import logging
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import casedocs, errors
from shared.hlc import (
    HLC,
    MAX_COUNTER,
    MAX_MS,
    SKEW_ENV,
    ClockObserver,
    NodeClock,
    Timestamp,
    format_hlc,
    parse_hlc,
    wall_clock_from_env,
)
from shared.store.store import Store
from syncd.peers import LocalPeer
from syncd.replicator import replicate

DAY = 86400.0
VILLAGE_A = "441521101001"
VILLAGE_B = "441521102003"
TOWNSHIP = "441521101"
APPLICANT = "ab" * 32


class Readings:
    """A wall clock that returns the given readings in turn (the last one forever)."""

    def __init__(self, *seconds):
        self.seconds = list(seconds)

    def __call__(self):
        return self.seconds.pop(0) if len(self.seconds) > 1 else self.seconds[0]


def shifted(seconds):
    """Real time, off by ``seconds`` (a station whose clock is wrong)."""
    return lambda: time.time() + seconds


# -- the clock ----------------------------------------------------------------------------


def test_now_never_goes_backwards_when_the_wall_clock_does():
    clock = HLC(Readings(1000.0, 1000.0, 999.0, 500.0, 1000.5, 1000.5))
    stamps = [clock.now() for _ in range(6)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 6
    # While the wall clock is behind, logical time holds and the counter moves on.
    assert stamps[:4] == [Timestamp(1000000, 0), Timestamp(1000000, 1),
                          Timestamp(1000000, 2), Timestamp(1000000, 3)]
    assert stamps[4] == Timestamp(1000500, 0)


def test_observing_a_remote_ahead_puts_later_local_events_after_it():
    clock = HLC(Readings(1000.0))
    clock.now()
    remote = "000000002000000-00007"
    received = clock.observe(remote)
    assert received > parse_hlc(remote)
    # The local wall clock is still at 1000 s, yet the next local event sorts after.
    assert format_hlc(clock.now()) > remote


def test_observing_a_remote_behind_keeps_local_time():
    clock = HLC(Readings(1000.0))
    first = clock.now()
    received = clock.observe(Timestamp(5, 3))
    assert received > first and received.ms == 1000000


def test_a_full_counter_carries_into_the_next_millisecond():
    clock = HLC(Readings(0.001), last=Timestamp(5, MAX_COUNTER))
    assert clock.now() == Timestamp(6, 0)
    assert clock.observe(Timestamp(6, MAX_COUNTER)) == Timestamp(7, 0)


timestamps = st.builds(Timestamp, st.integers(0, MAX_MS), st.integers(0, MAX_COUNTER))


@given(timestamps, timestamps)
def test_string_order_is_time_order(a, b):
    assert (format_hlc(a) < format_hlc(b)) == (a < b)
    assert parse_hlc(format_hlc(a)) == a


@pytest.mark.parametrize("text", [
    "", "1-1", "00000000000001-00001", "000000000000001-0001", "000000000000001_00001",
    "000000000000001-00001 ", "\u0661" * 15 + "-00001", None, 12,
])
def test_malformed_timestamps_are_refused(text):
    with pytest.raises(errors.DocValidation, match="invalid HLC"):
        parse_hlc(text)


def test_a_remote_too_far_ahead_is_observed_with_a_warning(caplog):
    clock = HLC(Readings(1000.0))
    with caplog.at_level(logging.WARNING, logger="shared.hlc"):
        received = clock.observe(Timestamp(int((1000 + DAY) * 1000), 0), "event:x")
    assert received > Timestamp(int((1000 + DAY) * 1000), 0)
    assert any(r.levelno == logging.WARNING and "event:x" in r.getMessage()
               for r in caplog.records)


def test_an_absurd_remote_is_refused_and_does_not_drag_the_clock(caplog):
    clock = HLC(Readings(1000.0))
    with caplog.at_level(logging.ERROR, logger="shared.hlc"):
        received = clock.observe(Timestamp(MAX_MS, MAX_COUNTER))
    assert received.ms == 1000000
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_skew_from_the_environment(monkeypatch):
    monkeypatch.setenv(SKEW_ENV, "-86400")
    skewed = wall_clock_from_env()
    assert abs((time.time() - skewed()) - DAY) < 60
    monkeypatch.setenv(SKEW_ENV, "a day")
    with pytest.raises(errors.ConfigurationError, match=SKEW_ENV):
        wall_clock_from_env()


# -- the persisted clock ------------------------------------------------------------------


def test_a_restart_with_a_clock_set_back_never_goes_backwards(tmp_path):
    path = tmp_path / "node.sqlite"
    store = Store(path)
    before = [NodeClock(store, Readings(2000.0)).now() for _ in range(3)]
    store.close()
    store = Store(path)
    after = NodeClock(store, Readings(500.0)).now()
    store.close()
    assert before == sorted(before)
    assert after > before[-1]


def test_two_store_objects_on_one_file_share_the_clock(tmp_path):
    serve, syncd = Store(tmp_path / "node.sqlite"), Store(tmp_path / "node.sqlite")
    try:
        a, b = NodeClock(serve, Readings(1000.0)), NodeClock(syncd, Readings(1000.0))
        stamps = [a.now(), b.now(), a.now(), b.observe("000000001000000-00009"), a.now()]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert stamps[-1] > "000000001000000-00009"
        assert a.last() == b.last() == stamps[-1]
    finally:
        serve.close()
        syncd.close()


ISSUE = textwrap.dedent("""
    import sys
    from shared.hlc import NodeClock
    from shared.store.store import Store
    clock = NodeClock(Store(sys.argv[1]), lambda: 1000.0)
    print("\\n".join(clock.now() for _ in range(int(sys.argv[2]))))
""")


def test_two_processes_on_one_file_never_issue_the_same_timestamp(tmp_path):
    path = tmp_path / "node.sqlite"
    Store(path).close()
    # A frozen wall clock makes every stamp depend on the persisted counter alone.
    procs = [subprocess.Popen([sys.executable, "-P", "-c", ISSUE, str(path), "150"],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=120)[0].split() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    for stamps in outputs:
        assert stamps == sorted(stamps) and len(stamps) == 150
    assert len(set(outputs[0]) | set(outputs[1])) == 300


# -- the observer: events ordered across nodes whose clocks are off by a day --------------


def node(make, name, wall_clock):
    """A store with the clock observer registered, and its clock."""
    store = make(name)
    store.add_projection(ClockObserver(wall_clock))
    return store, NodeClock(store, wall_clock)


def write_event(store, clock, number, code, kind):
    """Stamp and write one event in one transaction; returns the stored document."""
    with store.db.atomic():
        doc = casedocs.case_event(number, kind, code, clock.now())
        store.put(doc)
    return store.get(doc["_id"])


def test_a_village_a_day_behind_writes_after_what_it_received(stores):
    number = casedocs.case_number(VILLAGE_A, datetime.date(2026, 11, 22), 1)
    behind = shifted(-DAY)
    a, a_clock = node(stores, "village", behind)
    b, b_clock = node(stores, "township", time.time)
    accepted = write_event(b, b_clock, number, TOWNSHIP, "accepted")
    # Its own wall clock alone would stamp the village's event a day before the township's.
    assert format_hlc(HLC(behind).now()) < accepted["hlc"]

    replicate(LocalPeer(b), LocalPeer(a))
    supplemented = write_event(a, a_clock, number, VILLAGE_A, "supplemented")

    assert supplemented["hlc"] > accepted["hlc"]
    in_a = [a.get(accepted["_id"]), a.get(supplemented["_id"])]
    assert [e["kind"] for e in casedocs.events_in_order(reversed(in_a))] == \
        ["accepted", "supplemented"]


def test_a_node_with_a_right_clock_writes_after_a_village_a_day_ahead(stores):
    number = casedocs.case_number(VILLAGE_A, datetime.date(2026, 11, 22), 2)
    a, a_clock = node(stores, "village", shifted(DAY))
    b, b_clock = node(stores, "township", time.time)
    accepted = write_event(a, a_clock, number, VILLAGE_A, "accepted")
    assert format_hlc(HLC(time.time).now()) < accepted["hlc"]

    replicate(LocalPeer(a), LocalPeer(b))
    approved = write_event(b, b_clock, number, TOWNSHIP, "approved")
    replicate(LocalPeer(b), LocalPeer(a))

    assert approved["hlc"] > accepted["hlc"]
    for store in (a, b):
        events = [store.get(approved["_id"]), store.get(accepted["_id"])]
        assert [e["kind"] for e in casedocs.events_in_order(events)] == ["accepted", "approved"]


def test_the_observer_skips_malformed_stamps_and_survives_a_reindex(stores):
    store, clock = node(stores, "village", Readings(1000.0))
    stamp = clock.now()
    # A malformed hlc must not refuse the write (it would refuse a whole replicated batch).
    store.put({"_id": "event:odd", "type": "event", "hlc": "yesterday"})
    store.put({"_id": "note", "type": "note", "hlc": "000000009000000-00000"})
    assert clock.last() == stamp
    store.put({"_id": "case:x", "type": "case", "hlc": "000000005000000-00004"})
    assert clock.last() > "000000005000000-00004"
    advanced = clock.last()
    store.reindex()
    assert clock.last() == advanced


# -- case documents -----------------------------------------------------------------------


def test_case_numbers_round_trip():
    number = casedocs.case_number(VILLAGE_A, datetime.date(2026, 11, 22), 7)
    assert number == "441521101001-20261122-0007"
    assert casedocs.parse_case_number(number) == (VILLAGE_A, datetime.date(2026, 11, 22), 7)
    big = casedocs.case_number(VILLAGE_A, datetime.datetime(2026, 1, 2, 23, 59), 12345)
    assert big == "441521101001-20260102-12345"
    assert casedocs.parse_case_number(big)[2] == 12345


@pytest.mark.parametrize("number, message", [
    ("441521101001-20261122-007", "expected"),
    ("441521101001-20261122-00007", "canonical"),
    ("441521101001-20261122-0000", "canonical"),
    ("441521101001-20261332-0001", "not a date"),
    ("4415211010-20261122-0001", "6, 9 or 12 digits"),
    ("44152110100A-20261122-0001", "expected"),
    (None, "expected"),
])
def test_bad_case_numbers_are_refused(number, message):
    with pytest.raises(errors.DocValidation, match=message):
        casedocs.parse_case_number(number)


@pytest.mark.parametrize("args, message", [
    (("44152x", datetime.date(2026, 1, 1), 1), "digits"),
    ((VILLAGE_A, "20260101", 1), "date"),
    ((VILLAGE_A, datetime.date(2026, 1, 1), 0), "positive"),
    ((VILLAGE_A, datetime.date(2026, 1, 1), True), "positive"),
])
def test_case_number_builder_validates(args, message):
    with pytest.raises(errors.DocValidation, match=message):
        casedocs.case_number(*args)


def test_day_of_is_china_time():
    # 2026-11-21 16:30 UTC is already 22 November in China.
    ms = int(datetime.datetime(2026, 11, 21, 16, 30, tzinfo=datetime.timezone.utc).timestamp())
    assert casedocs.day_of(format_hlc(Timestamp(ms * 1000, 0))) == datetime.date(2026, 11, 22)


HLC_1 = "001795000000000-00000"
HLC_2 = "001795000000000-00001"
NUMBER = "441521101001-20261122-0001"


def test_case_header_shape():
    doc = casedocs.case_header(NUMBER, "item:44152100001", VILLAGE_A, TOWNSHIP, APPLICANT,
                               HLC_1)
    assert doc == {"_id": f"case:{NUMBER}", "type": "case", "number": NUMBER,
                   "item": "item:44152100001", "origin": VILLAGE_A, "handler": TOWNSHIP,
                   "applicant_key": APPLICANT, "hlc": HLC_1}
    assert casedocs.check_doc(doc) == NUMBER


@pytest.mark.parametrize("change, message", [
    ({"origin": VILLAGE_B}, "not issued by its origin"),
    ({"item_id": "44152100001"}, "item:"),
    ({"handler": "4415"}, "6, 9 or 12"),
    ({"applicant_key": "AB" * 32}, "applicant_key"),
    ({"hlc": "now"}, "invalid HLC"),
    ({"type": "event"}, "set by the builder"),
])
def test_case_header_validates(change, message):
    args = dict(number=NUMBER, item_id="item:1", origin=VILLAGE_A, handler=TOWNSHIP,
                applicant_key=APPLICANT, hlc=HLC_1)
    args.update(change)
    with pytest.raises(errors.DocValidation, match=message):
        casedocs.case_header(**args)


def test_case_event_shape():
    doc = casedocs.case_event(NUMBER, "transferred", TOWNSHIP, HLC_1,
                              parties=[VILLAGE_B, VILLAGE_B], reason="管辖调整")
    assert doc == {"_id": f"event:{NUMBER}:{HLC_1}:{TOWNSHIP}", "type": "event",
                   "case": NUMBER, "kind": "transferred", "node": TOWNSHIP, "hlc": HLC_1,
                   "parties": [VILLAGE_B], "reason": "管辖调整"}
    assert "parties" not in casedocs.case_event(NUMBER, "accepted", VILLAGE_A, HLC_1)
    assert casedocs.check_doc(doc) == NUMBER


@pytest.mark.parametrize("args, fields, message", [
    ((NUMBER, "closed", VILLAGE_A, HLC_1), {}, "unknown event kind 'closed'.*accepted"),
    ((NUMBER, "accepted", "x", HLC_1), {}, "event node"),
    ((NUMBER, "accepted", VILLAGE_A, "1"), {}, "invalid HLC"),
    (("bad", "accepted", VILLAGE_A, HLC_1), {}, "invalid case number"),
    ((NUMBER, "joined", VILLAGE_A, HLC_1, VILLAGE_B), {}, "one string"),
    ((NUMBER, "joined", VILLAGE_A, HLC_1, ["12"]), {}, "party"),
    ((NUMBER, "accepted", VILLAGE_A, HLC_1), {"case": "other"}, "set by the builder"),
    ((NUMBER, "accepted", VILLAGE_A, HLC_1), {"_deleted": True}, "set by the builder"),
])
def test_case_event_validates(args, fields, message):
    with pytest.raises(errors.DocValidation, match=message):
        casedocs.case_event(*args, **fields)


def test_check_doc_refuses_an_id_that_names_another_author():
    doc = casedocs.case_event(NUMBER, "approved", TOWNSHIP, HLC_1)
    forged = dict(doc, _id=casedocs.event_id(NUMBER, HLC_1, "441521"))
    with pytest.raises(errors.DocValidation, match="does not match"):
        casedocs.check_doc(forged)
    with pytest.raises(errors.DocValidation, match="non-empty list"):
        casedocs.check_doc(dict(doc, parties=[]))
    with pytest.raises(errors.DocValidation, match="not a case document"):
        casedocs.check_doc({"_id": "item:1", "type": "item"})


@pytest.mark.parametrize("doc_id, number", [
    (f"case:{NUMBER}", NUMBER),
    (f"event:{NUMBER}:{HLC_1}:{VILLAGE_A}", NUMBER),
    (f"event:{NUMBER}:{HLC_1}", None),
    (f"event:{NUMBER}:now:{VILLAGE_A}", None),
    (f"event:{NUMBER}:{HLC_1}:{VILLAGE_A}:x", None),
    ("case:441521101001-20261122-01", None),
    (f"status:{VILLAGE_A}", None),
    (None, None),
])
def test_case_number_of(doc_id, number):
    assert casedocs.case_number_of(doc_id) == number


def test_participants_and_order():
    header = casedocs.case_header(NUMBER, "item:1", VILLAGE_A, TOWNSHIP, APPLICANT, HLC_1)
    joined = casedocs.case_event(NUMBER, "joined", VILLAGE_B, HLC_2, parties=[VILLAGE_B])
    accepted_b = casedocs.case_event(NUMBER, "accepted", VILLAGE_B, HLC_1)
    accepted_a = casedocs.case_event(NUMBER, "accepted", VILLAGE_A, HLC_1)
    assert casedocs.participants(header, [joined, accepted_a]) == \
        sorted([VILLAGE_A, TOWNSHIP, VILLAGE_B])
    assert casedocs.participants(None, [joined]) == [VILLAGE_B]
    # Equal stamps from two nodes: the node code decides, the same way everywhere.
    assert casedocs.events_in_order([joined, accepted_b, accepted_a]) == \
        [accepted_a, accepted_b, joined]
