"""One clock: every notion of now in a node reads shared.clock, in Beijing time."""

import ast
import datetime
import pathlib

import pytest

from shared import clock, errors

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "county", "township", "village", "syncd")
#: Calls that read the machine's wall clock (or its time zone) behind the node clock's back.
WALL_CLOCK = {("time", "time"), ("time", "time_ns"), ("time", "localtime"), ("time", "gmtime"),
              ("time", "ctime"), ("time", "strftime"), ("datetime", "now"),
              ("datetime", "utcnow"), ("datetime", "today"), ("date", "today")}


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            yield node, name, node.func.attr


def test_no_module_reads_the_wall_clock_but_the_clock():
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "shared" / "clock.py":
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            for node, owner, attr in _calls(ast.parse("\n".join(lines))):
                line = lines[node.lineno - 1]
                if "# real time" in line:  # file ages: the skew does not move mtimes
                    continue
                local = attr == "fromtimestamp" and len(node.args) + len(node.keywords) < 2
                if (owner, attr) in WALL_CLOCK or local:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {line.strip()}")
    assert not found, "read the time through shared.clock:\n" + "\n".join(found)


def test_the_skew_moves_every_reading_together(monkeypatch):
    monkeypatch.setenv(clock.SKEW_ENV, repr(clock.skew_for("2031-06-15")))
    assert clock.today() == datetime.date(2031, 6, 15)
    assert clock.now().hour == 9 and clock.now().utcoffset() == datetime.timedelta(hours=8)
    assert abs(clock.utcnow().timestamp() - clock.time()) < 1
    monkeypatch.setenv(clock.SKEW_ENV, repr(clock.skew_for("2027-03-01T23:30:00+08:00")))
    assert clock.today() == datetime.date(2027, 3, 1)  # Beijing's day, not UTC's
    assert clock.utcnow().date() == datetime.date(2027, 3, 1)


@pytest.mark.parametrize("raw", ["a day", "nan", "inf", "-inf"])
def test_a_bad_skew_is_a_clear_error(monkeypatch, raw):
    monkeypatch.setenv(clock.SKEW_ENV, raw)
    with pytest.raises(errors.ConfigurationError, match=clock.SKEW_ENV):
        clock.time()


@pytest.mark.real_clock
def test_a_test_that_wants_the_real_clock_gets_it():
    assert clock.skew() == 0.0


def test_the_suite_does_not_run_on_the_machines_clock():
    # conftest moves every test to its clock (TONGBAN_TEST_CLOCK, else a fixed Monday).
    assert clock.skew() != 0.0


def test_times_people_read_are_in_beijing_time_and_say_so():
    moment = datetime.datetime(2026, 12, 31, 16, 30, tzinfo=datetime.timezone.utc)
    assert clock.format_time(moment) == "2027-01-01 00:30（北京时间）"
    assert clock.format_time(moment.timestamp(), seconds=True) == "2027-01-01 00:30:00（北京时间）"
    assert clock.format_time("2026-12-31T16:30:00Z", label=False) == "2027-01-01 00:30"
    assert clock.format_time(moment.replace(tzinfo=None)) == "2027-01-01 00:30（北京时间）"
    assert clock.format_time(None) == "" and clock.format_time("garbage") == ""
