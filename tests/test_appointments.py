"""Appointment slots and bookings on a real SQLite file, including the race for the last
places of a slot."""

import threading
from datetime import date, datetime

import pytest
from peewee import SqliteDatabase

from shared.cases import appointments as ap
from shared.cases.appointments import AppointmentError
from shared.db import open_database

NOW = datetime(2026, 3, 2, 8, 0)  # Monday morning, China time
DAY = date(2026, 3, 3)
SEALED = {"v": 1, "name": "c2VhbGVk", "phone": "bm90IGNsZWFy"}
KEY_A, KEY_B, KEY_C = ("a" * 64, "b" * 64, "c" * 64)


@pytest.fixture
def db(tmp_path):
    db = open_database(tmp_path / "node.sqlite")
    ap.create_tables(db)
    yield db
    db.close()


def publish(db, start="09:00", end="10:00", minutes=30, capacity=2, item_id=None, day=DAY):
    return ap.publish_slots(db, day, start, end, minutes, capacity, item_id, by="clerk1",
                            now=NOW)


def book(db, slot, key=KEY_A, item_id="GD-LS-01", by="citizen", now=NOW):
    return ap.book(db, slot["id"], key, SEALED, item_id, by, now=now)


def refusal(call, *args, **kwargs):
    with pytest.raises(AppointmentError) as caught:
        call(*args, **kwargs)
    return caught.value.message


def test_create_tables_is_idempotent(db):
    slot = publish(db)[0]
    ap.create_tables(db)
    assert ap.get_slot(db, slot["id"])["capacity"] == 2


def test_period_is_split_into_slots(db):
    slots = publish(db, "09:00", "11:00", 30, 3)
    assert [(s["start"], s["end"]) for s in slots] == [
        ("09:00", "09:30"), ("09:30", "10:00"), ("10:00", "10:30"), ("10:30", "11:00")]
    assert {(s["day"], s["capacity"], s["remaining"], s["published_by"], s["item_id"])
            for s in slots} == {("2026-03-03", 3, 3, "clerk1", None)}


def test_single_digit_hour_is_accepted(db):
    assert publish(db, "8:30", "9:00")[0]["start"] == "08:30"


@pytest.mark.parametrize("start, end, minutes, capacity, message", [
    ("10:00", "09:00", 30, 2, "结束时间必须晚于开始时间。"),
    ("09:00", "09:00", 30, 2, "结束时间必须晚于开始时间。"),
    ("9点", "10:00", 30, 2, "时间格式不正确：9点，应为 HH:MM（如 09:30）。"),
    ("09:00", "24:00", 30, 2, "时间格式不正确：24:00，应为 HH:MM（如 09:30）。"),
    ("09:00", "09:60", 30, 2, "时间格式不正确：09:60，应为 HH:MM（如 09:30）。"),
    ("09:00", "11:30", 60, 2, "09:00–11:30 不能按每段 60 分钟整分，请调整结束时间或每段时长。"),
    ("09:00", "10:00", 0, 2, "每个时段的时长必须是正整数分钟。"),
    ("09:00", "10:00", 30, 0, "每个时段可预约人数必须是正整数。"),
])
def test_bad_period_is_refused(db, start, end, minutes, capacity, message):
    assert refusal(publish, db, start, end, minutes, capacity) == message
    assert ap.open_slots(db, DAY, now=NOW) == []


def test_past_day_and_started_time_are_refused(db):
    assert refusal(publish, db, day=date(2026, 3, 1)) == \
        "不能发布已经过去的日期（2026-03-01）的时段。"
    assert refusal(publish, db, "07:30", "08:30", day=NOW.date()) == \
        "今天 07:30 已过，不能发布已经开始的时段。"
    assert len(publish(db, "08:30", "09:30", day=NOW.date())) == 2


def test_overlapping_slots_are_refused(db):
    publish(db, "09:00", "10:00")
    assert refusal(publish, db, "09:30", "10:30") == \
        "与已发布的时段 09:30–10:00 重叠，请先取消该时段或调整时间。"
    assert refusal(publish, db, "08:00", "12:00", 60, item_id="GD-LS-01").startswith(
        "与已发布的时段 09:00–09:30 重叠")
    # adjacent periods and other days are fine
    assert len(publish(db, "10:00", "11:00")) == 2
    assert len(publish(db, "09:00", "10:00", day=date(2026, 3, 4))) == 2


def test_slots_for_different_items_may_run_side_by_side(db):
    publish(db, "14:00", "15:00", 60, 1, item_id="GD-LS-01")
    assert len(publish(db, "14:00", "15:00", 60, 1, item_id="GD-LS-02")) == 1
    assert refusal(publish, db, "14:30", "15:30", 60, 1, item_id="GD-LS-01").startswith(
        "与已发布的时段 14:00–15:00 重叠")
    assert refusal(publish, db, "14:30", "15:30", 60, 1).startswith("与已发布的时段")


def test_cancelled_slot_does_not_block_a_new_one(db):
    slot = publish(db, "09:00", "10:00", 60)[0]
    db.execute_sql("UPDATE appointment_slot SET cancelled = 1 WHERE id = ?", (slot["id"],))
    assert len(publish(db, "09:00", "10:00", 60)) == 1


def test_booking_gets_a_short_code_and_takes_a_place(db):
    slot = publish(db)[0]
    booking = book(db, slot, by="clerk2")
    assert len(booking["code"]) == 6
    assert set(booking["code"]) <= set(ap.CODE_ALPHABET)
    assert not set(booking["code"]) & set("O0I1L")
    assert booking["day"] == "2026-03-03" and booking["start"] == "09:00"
    assert booking["sealed_profile"] == SEALED
    assert (booking["booked_by"], booking["item_id"], booking["cancelled"]) == \
        ("clerk2", "GD-LS-01", False)
    assert ap.get_slot(db, slot["id"])["remaining"] == 1
    assert ap.find_booking(db, booking["code"]) == booking


def test_sealed_profile_may_arrive_as_json(db):
    slot = publish(db)[0]
    booking = ap.book(db, slot["id"], KEY_A, '{"v": 1, "name": "eA=="}', None, "citizen",
                      now=NOW)
    assert booking["sealed_profile"] == {"v": 1, "name": "eA=="}


def test_code_is_found_whatever_the_case_and_spaces(db):
    code = book(db, publish(db)[0])["code"]
    spaced = f" {code[:3].lower()} {code[3:]} "
    assert ap.find_booking(db, spaced)["code"] == code
    assert ap.find_booking(db, "ZZZZZZ") is None


def test_full_slot_is_refused(db):
    slot = publish(db, capacity=2)[0]
    book(db, slot, KEY_A)
    book(db, slot, KEY_B)
    assert refusal(book, db, slot, KEY_C) == "该时段已约满，请选择其他时段。"


def test_same_applicant_cannot_book_a_slot_twice(db):
    slots = publish(db, capacity=5)
    book(db, slots[0], KEY_A)
    assert refusal(book, db, slots[0], KEY_A) == "该申请人已预约这个时段，无需重复预约。"
    assert book(db, slots[1], KEY_A)["start"] == "09:30"  # another slot is fine


def test_cancelled_booking_frees_its_place_and_allows_booking_again(db):
    slot = publish(db, capacity=1)[0]
    first = book(db, slot, KEY_A)
    cancelled = ap.cancel_booking(db, first["code"].lower())
    assert cancelled["cancelled"] is True
    assert ap.find_booking(db, first["code"])["cancelled"] is True
    second = book(db, slot, KEY_A)
    assert second["code"] != first["code"]
    assert refusal(book, db, slot, KEY_B) == "该时段已约满，请选择其他时段。"


def test_cancelling_twice_or_an_unknown_code_is_refused(db):
    code = book(db, publish(db)[0])["code"]
    ap.cancel_booking(db, code)
    assert refusal(ap.cancel_booking, db, code) == "该预约已经取消。"
    assert refusal(ap.cancel_booking, db, "zzzz zz") == "预约码 ZZZZZZ 不存在，请核对后重试。"


def test_cancelled_or_started_or_missing_slot_is_refused(db):
    first, second = publish(db)
    db.execute_sql("UPDATE appointment_slot SET cancelled = 1 WHERE id = ?", (first["id"],))
    assert refusal(book, db, first) == "该时段已取消，请选择其他时段。"
    assert refusal(book, db, second, now=datetime(2026, 3, 3, 9, 30)) == \
        "该时段已经开始或已过，请选择其他时段。"
    assert refusal(ap.book, db, 9999, KEY_A, SEALED, None, "citizen", now=NOW) == \
        "预约时段不存在，请重新选择。"


def test_slot_for_one_item_refuses_another(db):
    slot = publish(db, item_id="GD-LS-01")[0]
    assert refusal(book, db, slot, item_id="GD-LS-02") == "该时段只办理指定事项，请选择其他时段。"
    assert book(db, slot, item_id=None)["item_id"] == "GD-LS-01"


def test_open_slots_show_remaining_places(db):
    any_item = publish(db, "09:00", "10:00", 30, 2)
    only_02 = publish(db, "14:00", "15:00", 60, 1, item_id="GD-LS-02")
    later = publish(db, "09:00", "09:30", 30, 1, day=date(2026, 3, 20))
    book(db, any_item[0], KEY_A)
    book(db, only_02[0], KEY_A, item_id="GD-LS-02")
    listed = ap.open_slots(db, DAY, now=NOW)
    assert [(s["start"], s["remaining"]) for s in listed] == [("09:00", 1), ("09:30", 2)]
    with_full = ap.open_slots(db, DAY, include_full=True, now=NOW)
    assert [(s["start"], s["remaining"]) for s in with_full] == [
        ("09:00", 1), ("09:30", 2), ("14:00", 0)]
    # the 20th is beyond the default two weeks from the 3rd
    assert ap.open_slots(db, DAY, days=18, now=NOW)[-1]["id"] == later[0]["id"]


def test_open_slots_for_an_item_include_any_item_slots(db):
    publish(db, "09:00", "09:30", 30, 1)
    publish(db, "14:00", "15:00", 60, 1, item_id="GD-LS-02")
    publish(db, "16:00", "17:00", 60, 1, item_id="GD-LS-03")
    assert [s["start"] for s in ap.open_slots(db, DAY, item_id="GD-LS-02", now=NOW)] == \
        ["09:00", "14:00"]


def test_open_slots_leave_out_started_and_cancelled_slots(db):
    first, second = publish(db)
    assert [s["id"] for s in ap.open_slots(db, DAY, now=datetime(2026, 3, 3, 9, 10))] == \
        [second["id"]]
    db.execute_sql("UPDATE appointment_slot SET cancelled = 1 WHERE id = ?", (second["id"],))
    assert ap.open_slots(db, DAY, now=NOW) == [ap.get_slot(db, first["id"])]


def test_bookings_of_a_day_in_slot_order(db):
    first, second = publish(db, capacity=3)
    b1 = book(db, second, KEY_A)
    b2 = book(db, first, KEY_B, by="clerk2")
    b3 = book(db, first, KEY_C)
    publish(db, day=date(2026, 3, 4))
    book(db, ap.open_slots(db, date(2026, 3, 4), now=NOW)[0], KEY_A)
    assert [b["code"] for b in ap.bookings(db, DAY)] == [b2["code"], b3["code"], b1["code"]]
    ap.cancel_booking(db, b3["code"])
    assert [b["code"] for b in ap.bookings(db, "2026-03-03")] == [b2["code"], b1["code"]]
    assert len(ap.bookings(db, DAY, include_cancelled=True)) == 3


def plain_db(path):
    """A database without the project's default IMMEDIATE lock: book() must take it."""
    return SqliteDatabase(str(path), pragmas={"journal_mode": "wal", "busy_timeout": 30000})


@pytest.mark.parametrize("opener", [open_database, plain_db])
def test_ten_people_racing_for_the_last_three_places(tmp_path, opener):
    path = tmp_path / "race.sqlite"
    setup = opener(path)
    ap.create_tables(setup)
    slot = publish(setup, "09:00", "09:30", 30, 5)[0]
    book(setup, slot, "0" * 64)
    book(setup, slot, "1" * 64)
    setup.close()

    shared_db = opener(path)  # peewee gives each thread its own connection
    start = threading.Barrier(10)
    results, lock = [], threading.Lock()

    def attempt(i):
        start.wait()
        try:
            outcome = book(shared_db, slot, f"{i + 100:064x}")["code"]
        except AppointmentError as exc:
            outcome = exc.message
        except Exception as exc:  # a lock error would show up here, not pass silently
            outcome = repr(exc)
        finally:
            shared_db.close()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    refused = [r for r in results if r == "该时段已约满，请选择其他时段。"]
    codes = [r for r in results if r not in refused]
    assert len(codes) == 3, results
    assert len(refused) == 7
    check = opener(path)
    assert ap.get_slot(check, slot["id"])["remaining"] == 0
    assert len(ap.bookings(check, DAY)) == 5
    assert {b["code"] for b in ap.bookings(check, DAY)} >= set(codes)
    check.close()
