"""Appointments: a station publishes time slots; clerks or citizens book them.

A slot is a period of one day (``HH:MM`` to ``HH:MM``, China time) with a number of places,
for one catalog item or for any item (``item_id`` NULL). A booking takes one place and
gets a short code (like ``Y7K3QP``) the citizen shows at the window. The applicant's name
and phone arrive already sealed (encrypted) by the caller; this module stores the sealed
JSON as it is and never sees them in clear.

Booking checks the remaining places and inserts in one ``BEGIN IMMEDIATE`` transaction,
so two stations' pages or two citizens booking the last place at once cannot both get
it. Call the writers outside any open transaction: inside one, peewee turns ``atomic``
into a savepoint and the outer transaction's lock decides.

"Now" is the wall clock in China Standard Time unless a ``now`` (naive, China time) is
given; it only decides whether a day or slot is already past.
"""

import datetime
import json
import logging
import re
import secrets

from shared import clock

logger = logging.getLogger(__name__)

#: Booking codes avoid characters people confuse when reading them out (0/O, 1/I/L, 2/Z,
#: 5/S, 8/B).
CODE_ALPHABET = "ACDEFGHJKMNPQRTUVWXY23456789"
CODE_LENGTH = 6
CITIZEN = "citizen"

TABLES = (
    """CREATE TABLE IF NOT EXISTS appointment_slot (
        id INTEGER PRIMARY KEY, day TEXT NOT NULL, start TEXT NOT NULL, "end" TEXT NOT NULL,
        capacity INTEGER NOT NULL CHECK (capacity > 0), item_id TEXT,
        published_by TEXT NOT NULL, cancelled INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS appointment_slot_day ON appointment_slot (day, start)",
    """CREATE TABLE IF NOT EXISTS appointment_booking (
        id INTEGER PRIMARY KEY, slot INTEGER NOT NULL REFERENCES appointment_slot (id),
        code TEXT NOT NULL UNIQUE, applicant_key TEXT NOT NULL, sealed_profile TEXT NOT NULL,
        item_id TEXT, booked_by TEXT NOT NULL, created TEXT NOT NULL,
        cancelled INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS appointment_booking_slot ON appointment_booking (slot)",
    # the same check book() makes, kept by the database as well
    """CREATE UNIQUE INDEX IF NOT EXISTS appointment_booking_once
        ON appointment_booking (slot, applicant_key) WHERE cancelled = 0""",
)

_SLOT_SELECT = """SELECT s.id, s.day, s.start, s."end", s.capacity, s.item_id,
    s.published_by, s.cancelled,
    (SELECT COUNT(*) FROM appointment_booking b WHERE b.slot = s.id AND b.cancelled = 0)
    FROM appointment_slot s"""
_BOOKING_SELECT = """SELECT b.id, b.code, b.slot, s.day, s.start, s."end", b.applicant_key,
    b.sealed_profile, b.item_id, b.booked_by, b.created, b.cancelled
    FROM appointment_booking b JOIN appointment_slot s ON s.id = b.slot"""
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})")


class AppointmentError(ValueError):
    """A request the appointment rules refuse; ``message`` says why, in Chinese."""

    def __init__(self, message):
        self.message = message
        super().__init__(message)


def create_tables(db):
    """Create the appointment tables and indexes if they do not exist."""
    with db.atomic():
        for statement in TABLES:
            db.execute_sql(statement)


# -- slots ------------------------------------------------------------------------------

def publish_slots(db, day, start, end, minutes, capacity, item_id=None, *, by, now=None):
    """Split ``start``–``end`` of ``day`` into slots of ``minutes`` with ``capacity`` places.

    Refuses past days and times, malformed times, a period that does not split evenly,
    and any overlap with a slot already published for the same item or for any item
    (slots for two different items may run side by side). Returns the new slots.
    """
    day = _parse_day(day)
    first, last = _parse_time(start), _parse_time(end)
    if last <= first:
        raise AppointmentError("结束时间必须晚于开始时间。")
    if not _positive_int(minutes):
        raise AppointmentError("每个时段的时长必须是正整数分钟。")
    if (last - first) % minutes:
        raise AppointmentError(f"{_hhmm(first)}–{_hhmm(last)} 不能按每段 {minutes} 分钟整分，"
                               "请调整结束时间或每段时长。")
    if not _positive_int(capacity):
        raise AppointmentError("每个时段可预约人数必须是正整数。")
    if not by:
        raise ValueError("publish_slots needs the publishing staff member (by=...)")
    item_id = item_id or None
    now = _now(now)
    if day < now.date():
        raise AppointmentError(f"不能发布已经过去的日期（{day.isoformat()}）的时段。")
    if _at(day, first) <= now:
        raise AppointmentError(f"今天 {_hhmm(first)} 已过，不能发布已经开始的时段。")
    with db.atomic(lock_type="IMMEDIATE"):
        clash = db.execute_sql(
            'SELECT start, "end" FROM appointment_slot WHERE day = ? AND cancelled = 0 '
            'AND start < ? AND "end" > ? AND (item_id IS NULL OR ? IS NULL OR item_id = ?) '
            "ORDER BY start LIMIT 1",
            (day.isoformat(), _hhmm(last), _hhmm(first), item_id, item_id)).fetchone()
        if clash:
            raise AppointmentError(f"与已发布的时段 {clash[0]}–{clash[1]} 重叠，"
                                   "请先取消该时段或调整时间。")
        ids = []
        for begin in range(first, last, minutes):
            cursor = db.execute_sql(
                'INSERT INTO appointment_slot (day, start, "end", capacity, item_id, '
                "published_by, cancelled) VALUES (?, ?, ?, ?, ?, ?, 0)",
                (day.isoformat(), _hhmm(begin), _hhmm(begin + minutes), capacity, item_id,
                 by))
            ids.append(cursor.lastrowid)
    logger.info("%s published %d slots on %s for %s", by, len(ids), day, item_id or "any item")
    return [get_slot(db, slot_id) for slot_id in ids]


def get_slot(db, slot_id):
    """The slot ``slot_id`` with its ``booked`` and ``remaining`` places, or None."""
    row = db.execute_sql(_SLOT_SELECT + " WHERE s.id = ?", (slot_id,)).fetchone()
    return _slot_dict(row) if row else None


def open_slots(db, day_from, days=14, item_id=None, *, include_full=False, now=None):
    """Bookable slots on ``days`` days from ``day_from``, each with its ``remaining`` places.

    With ``item_id``, only slots for that item or for any item. Cancelled slots and slots
    already started are left out, and so are full ones unless ``include_full``.
    """
    first = _parse_day(day_from)
    if not _positive_int(days):
        raise AppointmentError("查询天数必须是正整数。")
    query = _SLOT_SELECT + " WHERE s.cancelled = 0 AND s.day >= ? AND s.day < ?"
    params = [first.isoformat(), (first + datetime.timedelta(days=days)).isoformat()]
    if item_id:
        query += " AND (s.item_id IS NULL OR s.item_id = ?)"
        params.append(item_id)
    now = _now(now)
    slots = [_slot_dict(row) for row in
             db.execute_sql(query + " ORDER BY s.day, s.start, s.id", params).fetchall()]
    return [slot for slot in slots
            if not _started(slot, now) and (include_full or slot["remaining"] > 0)]


# -- bookings ---------------------------------------------------------------------------

def book(db, slot_id, applicant_key, sealed_profile, item_id, booked_by, *, now=None):
    """Book one place of slot ``slot_id``; returns the booking (with its ``code``).

    ``sealed_profile`` is the already encrypted name and phone (a dict or its JSON);
    ``booked_by`` is ``"citizen"`` or the clerk's username. Refuses a slot that is full,
    cancelled, started, for another item, or already booked by the same applicant.
    """
    if not applicant_key or not booked_by:
        raise ValueError("book needs applicant_key and booked_by")
    sealed = _sealed_json(sealed_profile)
    now = _now(now)
    with db.atomic(lock_type="IMMEDIATE"):
        slot = get_slot(db, slot_id)
        if slot is None:
            raise AppointmentError("预约时段不存在，请重新选择。")
        _check_bookable(db, slot, applicant_key, item_id, now)
        code = _new_code(db)
        db.execute_sql(
            "INSERT INTO appointment_booking (slot, code, applicant_key, sealed_profile, "
            "item_id, booked_by, created, cancelled) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
            (slot["id"], code, applicant_key, sealed, item_id or slot["item_id"], booked_by,
             now.isoformat(timespec="seconds")))
        booking = find_booking(db, code)
    logger.info("slot %s booked by %s (%s)", slot["id"], booked_by, code)
    return booking


def _check_bookable(db, slot, applicant_key, item_id, now):
    """Raise :class:`AppointmentError` unless ``slot`` can take this booking now."""
    if slot["cancelled"]:
        raise AppointmentError("该时段已取消，请选择其他时段。")
    if _started(slot, now):
        raise AppointmentError("该时段已经开始或已过，请选择其他时段。")
    if slot["item_id"] and item_id and item_id != slot["item_id"]:
        raise AppointmentError("该时段只办理指定事项，请选择其他时段。")
    taken = db.execute_sql(
        "SELECT 1 FROM appointment_booking WHERE slot = ? AND applicant_key = ? "
        "AND cancelled = 0", (slot["id"], applicant_key)).fetchone()
    if taken:
        # the code is not repeated here: knowing an ID number must not reveal a booking
        raise AppointmentError("该申请人已预约这个时段，无需重复预约。")
    if slot["remaining"] <= 0:
        raise AppointmentError("该时段已约满，请选择其他时段。")


def cancel_booking(db, code):
    """Cancel the booking ``code`` (its place becomes free again); returns it."""
    with db.atomic(lock_type="IMMEDIATE"):
        booking = find_booking(db, code)
        if booking is None:
            raise AppointmentError(f"预约码 {_clean_code(code)} 不存在，请核对后重试。")
        if booking["cancelled"]:
            raise AppointmentError("该预约已经取消。")
        db.execute_sql("UPDATE appointment_booking SET cancelled = 1 WHERE id = ?",
                       (booking["id"],))
    logger.info("booking %s cancelled", booking["code"])
    return dict(booking, cancelled=True)


def bookings(db, day, *, include_cancelled=False):
    """The bookings of ``day`` in slot order (the window's list for that day)."""
    query = _BOOKING_SELECT + " WHERE s.day = ?"
    if not include_cancelled:
        query += " AND b.cancelled = 0"
    rows = db.execute_sql(query + " ORDER BY s.start, b.created, b.id",
                          (_parse_day(day).isoformat(),)).fetchall()
    return [_booking_dict(row) for row in rows]


def find_booking(db, code):
    """The booking with ``code`` (case and spaces do not matter), or None."""
    row = db.execute_sql(_BOOKING_SELECT + " WHERE b.code = ?", (_clean_code(code),)).fetchone()
    return _booking_dict(row) if row else None


# -- helpers ----------------------------------------------------------------------------

def _now(now):
    return now or clock.now().replace(tzinfo=None)


def _parse_day(day):
    if isinstance(day, datetime.datetime):
        return day.date()
    if isinstance(day, datetime.date):
        return day
    try:
        return datetime.date.fromisoformat(str(day).strip())
    except ValueError:
        raise AppointmentError(f"日期格式不正确：{day}，应为 YYYY-MM-DD。") from None


def _parse_time(text):
    """Minutes since midnight of ``HH:MM`` (or ``H:MM``)."""
    match = _TIME.fullmatch(str(text).strip())
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise AppointmentError(f"时间格式不正确：{text}，应为 HH:MM（如 09:30）。")
    return int(match[1]) * 60 + int(match[2])


def _hhmm(minutes):
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _at(day, minutes):
    return datetime.datetime.combine(day, datetime.time(minutes // 60, minutes % 60))


def _started(slot, now):
    return _at(datetime.date.fromisoformat(slot["day"]), _parse_time(slot["start"])) <= now


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _sealed_json(sealed_profile):
    """The sealed profile as stored JSON text (a JSON object)."""
    value = json.loads(sealed_profile) if isinstance(sealed_profile, str) else sealed_profile
    if not isinstance(value, dict):
        raise ValueError("sealed_profile must be a JSON object")
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _clean_code(code):
    return "".join(str(code or "").split()).upper()


def _new_code(db):
    """A booking code no booking has (called inside the booking's write transaction)."""
    for _ in range(20):
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        if not db.execute_sql("SELECT 1 FROM appointment_booking WHERE code = ?",
                              (code,)).fetchone():
            return code
    raise RuntimeError("could not find a free booking code")


def _slot_dict(row):
    slot = dict(zip(("id", "day", "start", "end", "capacity", "item_id", "published_by",
                     "cancelled", "booked"), row))
    slot["cancelled"] = bool(slot["cancelled"])
    slot["remaining"] = max(0, slot["capacity"] - slot["booked"])
    return slot


def _booking_dict(row):
    booking = dict(zip(("id", "code", "slot", "day", "start", "end", "applicant_key",
                        "sealed_profile", "item_id", "booked_by", "created", "cancelled"), row))
    booking["sealed_profile"] = json.loads(booking["sealed_profile"])
    booking["cancelled"] = bool(booking["cancelled"])
    return booking
