"""Appointment pages: citizens book a slot of this station; clerks publish slots and see
the day's bookings.

The booking module (:mod:`shared.cases.appointments`) stores the booked person's name and
phone only sealed with the region key; the staff list opens them to show masked names, and
that view goes to the audit log. Citizens cancel with the booking code plus the last four
digits of the phone they gave; a wrong pair and an unknown code get the same answer.
Public bookings are throttled per client address and the booking form's request size is
capped (see :mod:`shared.views.progress`).
"""

import datetime
import logging
import re

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for

from shared import clock
from shared.cases import appointments as ap
from shared.cases import personal, web
from shared.cases.desk import CaseError
from shared.catalog import active
from shared.staff import current_staff, staff_required
from shared.views.progress import (
    BOOK_PER_ADDRESS,
    client_address,
    create_throttle_table,
    form_token_required,
    init_template_helpers,
    minutes,
    proof_matches,
    throttle_note,
    throttle_wait,
    throttled,
    wire_public,
)

logger = logging.getLogger(__name__)

bp = Blueprint("appointments", __name__)

#: Days ahead the public page offers.
DAYS_AHEAD = 14
CANCEL_MISMATCH = "预约码与手机号后四位不匹配，请核对后重试。"
DONE_MESSAGES = {"published": "时段已发布。", "cancelled": "预约已取消。", "booked": "已预约。"}
_CODE = re.compile(r"[A-Z0-9]{4,12}")
#: Bytes a public booking request may have (a few short fields, no files).
MAX_BOOKING_REQUEST = 64 * 1024
BOOK_THROTTLED = "本机提交的预约过多，请 {minutes} 分钟后再试，或致电服务站预约。"


def _db():
    return current_app.extensions["store"].db


def today():
    """Today in China time (the station's day)."""
    return clock.today()


def _int(text):
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def _item_names(db, item_ids):
    """``{item_id: name}`` of the given items in force."""
    return {i: item["name"] for i, item in
            active.active_item_map(db, [i for i in set(item_ids) if i]).items()}


def _grouped(slots, names):
    """Slots grouped by day, each with its item's name."""
    days = {}
    for slot in slots:
        slot = dict(slot, item_name=names.get(slot["item_id"], slot["item_id"] or ""))
        days.setdefault(slot["day"], []).append(slot)
    return sorted(days.items())


def book_for(form, booked_by):
    """Book the slot chosen in ``form`` for the person it names; returns the booking.

    Raises :class:`CaseError`, :class:`~shared.cases.personal.PersonalDataInvalid` or
    :class:`~shared.cases.appointments.AppointmentError`, each with its Chinese message.
    """
    desk = web.desk()
    slot_id = _int(form.get("slot"))
    if slot_id is None:
        raise ap.AppointmentError("请选择预约时段。")
    applicant_key = desk.applicant_key(form.get("id_number", ""))
    name = form.get("name", "").strip()
    if not name:
        raise CaseError("请填写姓名。")
    phone = personal.check_phone(form.get("phone", ""))
    sealed = personal.seal_profile(desk.region_key, applicant_key,
                                   {"name": name[:50], "phone": phone})
    return ap.book(_db(), slot_id, applicant_key, sealed, None, booked_by)


def _refusal_status(exc):
    return 409 if isinstance(exc, ap.AppointmentError) else 400


# -- public pages ----------------------------------------------------------------------------

def _public_page(form=None, error=None, status=200):
    db = _db()
    slots = ap.open_slots(db, today(), DAYS_AHEAD, include_full=True)
    body = render_template("appointments/public.html",
                           days=_grouped(slots, _item_names(db, [s["item_id"] for s in slots])),
                           station=web.node_name(current_app.config["NODE_CODE"]),
                           form=form or {}, error=error, days_ahead=DAYS_AHEAD)
    return current_app.response_class(body, status=status, mimetype="text/html")


@bp.route("/appointments", methods=["GET", "POST"])
@form_token_required
def public():
    """This station's open slots of the next 14 days; a POST books one."""
    if request.method == "GET":
        return _public_page()
    form = {key: request.form.get(key, "") for key in ("slot", "id_number", "name", "phone")}
    counted = [(BOOK_PER_ADDRESS, client_address())]
    wait = throttle_wait(_db(), counted)
    if wait is not None:
        logger.warning("booking from %s: throttled", client_address())
        return throttled(_public_page(form, BOOK_THROTTLED.format(minutes=minutes(wait)), 429),
                         wait)
    try:
        booking = book_for(form, ap.CITIZEN)
    except (CaseError, personal.PersonalDataInvalid, ap.AppointmentError) as exc:
        return _public_page(form, exc.message, _refusal_status(exc))
    throttle_note(_db(), counted)
    session["booking"] = booking["code"]
    return redirect(url_for("appointments.booked"))


@bp.route("/appointments/booked")
def booked():
    """The booking this browser just made, with its code."""
    booking = ap.find_booking(_db(), session.get("booking") or "")
    if booking is None or booking["cancelled"]:
        return redirect(url_for("appointments.public"))
    names = _item_names(_db(), [booking["item_id"]])
    return render_template("appointments/booked.html", booking=booking,
                           item_name=names.get(booking["item_id"], ""),
                           station=web.node_name(current_app.config["NODE_CODE"]))


def _cancel_page(form=None, error=None, status=200, cancelled=None):
    body = render_template("appointments/cancel.html", form=form or {}, error=error,
                           cancelled=cancelled)
    return current_app.response_class(body, status=status, mimetype="text/html")


@bp.route("/appointments/cancel", methods=["GET", "POST"])
@form_token_required
def cancel():
    """Cancel a booking with its code and the last 4 digits of the phone given."""
    if request.method == "GET":
        return _cancel_page({"code": request.args.get("code", "")[:20]})
    form = {"code": request.form.get("code", "")[:20], "last4": request.form.get("last4", "")}
    if not form["code"].strip() or not form["last4"].strip():
        return _cancel_page(form, "请填写预约码和手机号后四位。", 400)
    booking = ap.find_booking(_db(), form["code"])
    profile = _booking_profile(booking) if booking else {}
    last4 = "".join(form["last4"].split())
    if not (len(last4) == 4 and last4.isdigit() and proof_matches(profile, last4)):
        return _cancel_page(form, CANCEL_MISMATCH, 404)
    try:
        ap.cancel_booking(_db(), booking["code"])
    except ap.AppointmentError as exc:
        return _cancel_page(form, exc.message, 409)
    return _cancel_page(cancelled=booking)


def _booking_profile(booking):
    """The opened name and phone of a booking ({} when it cannot be opened)."""
    try:
        return personal.open_profile(web.desk().region_key, booking["applicant_key"],
                                     booking["sealed_profile"])
    except personal.ProfileUnreadable:
        logger.warning("booking %s: profile cannot be opened", booking["code"])
        return {}


# -- the station's page ----------------------------------------------------------------------

def _day_arg(text):
    """The day a staff page asks for (today when absent), or None when malformed."""
    if not text:
        return today()
    try:
        return datetime.date.fromisoformat(text.strip())
    except ValueError:
        return None


def _appointment_items(db):
    """``[(item_id, name)]`` of the items in force that take appointments (cached per
    release)."""
    release = active.active_number(db)
    cached = current_app.extensions.get("appointment_items")
    if cached is not None and cached[0] == release:
        return cached[1]
    summaries = active.active_items(db)
    full = active.active_item_map(db, [s["item_id"] for s in summaries])
    items = [(s["item_id"], s["name"]) for s in summaries
             if full.get(s["item_id"], {}).get("appointment_allowed")]
    current_app.extensions["appointment_items"] = (release, items)
    return items


def _admin_page(day, form=None, error=None, status=200, notice=None):
    db = _db()
    staff = current_staff()
    slots = ap.open_slots(db, day, 1, include_full=True)
    rows = ap.bookings(db, day, include_cancelled=True)
    names = _item_names(db, [s["item_id"] for s in slots] + [b["item_id"] for b in rows])
    shown = []
    for booking in rows:
        profile = _booking_profile(booking)
        shown.append(dict(booking, name=personal.mask_name(profile.get("name")),
                          phone=personal.mask_phone(profile.get("phone")),
                          item_name=names.get(booking["item_id"], "")))
    if rows:
        web.audit_view(staff, "view_appointments", f"appointments:{day.isoformat()}",
                       {"day": day.isoformat(),
                        "applicants": sorted({b["applicant_key"] for b in rows})})
    body = render_template(
        "appointments/admin.html", day=day, slots=_grouped(slots, names), bookings=shown,
        items=_appointment_items(db), form=form or {}, error=error, notice=notice,
        can_book=staff.has_role("clerk"))
    return current_app.response_class(body, status=status, mimetype="text/html")


@bp.route("/appointments/admin")
@staff_required("clerk", "supervisor")
def admin():
    """Publish slots, list a day's bookings (masked), cancel, book for a citizen."""
    day = _day_arg(request.args.get("day"))
    if day is None:
        return _admin_page(today(), error="日期格式不正确，应为 YYYY-MM-DD。", status=400)
    notice = DONE_MESSAGES.get(request.args.get("done"))
    code = request.args.get("code", "")
    if notice and _CODE.fullmatch(code):
        notice += f"预约码 {code}"
    return _admin_page(day, notice=notice)


@bp.route("/appointments/admin/publish", methods=["POST"])
@staff_required("clerk", "supervisor")
def publish():
    """Split a period of a day into slots."""
    form = {key: request.form.get(key, "") for key in
            ("day", "start", "end", "minutes", "capacity", "item")}
    day = _day_arg(form["day"]) if form["day"].strip() else None
    try:
        if day is None:
            raise ap.AppointmentError("请填写正确的日期（YYYY-MM-DD）。")
        item_id = form["item"].strip() or None
        if item_id and item_id not in dict(_appointment_items(_db())):
            raise ap.AppointmentError("请选择本站现行目录中可预约的事项。")
        ap.publish_slots(_db(), day, form["start"], form["end"], _int(form["minutes"]),
                         _int(form["capacity"]), item_id, by=current_staff().username)
    except ap.AppointmentError as exc:
        return _admin_page(day or today(), form, exc.message, 400)
    return redirect(url_for("appointments.admin", day=day.isoformat(), done="published"))


@bp.route("/appointments/admin/book", methods=["POST"])
@staff_required("clerk")
def staff_book():
    """A clerk books a slot for a citizen (at the window or on the phone)."""
    form = {key: request.form.get(key, "") for key in ("slot", "id_number", "name", "phone")}
    day = _day_arg(request.form.get("day")) or today()
    try:
        booking = book_for(form, current_staff().username)
    except (CaseError, personal.PersonalDataInvalid, ap.AppointmentError) as exc:
        return _admin_page(day, form, exc.message, _refusal_status(exc))
    return redirect(url_for("appointments.admin", day=booking["day"], done="booked",
                            code=booking["code"]))


@bp.route("/appointments/admin/cancel", methods=["POST"])
@staff_required("clerk", "supervisor")
def staff_cancel():
    """Cancel a booking of the day shown."""
    day = _day_arg(request.form.get("day")) or today()
    try:
        ap.cancel_booking(_db(), request.form.get("code", ""))
    except ap.AppointmentError as exc:
        return _admin_page(day, error=exc.message, status=409)
    return redirect(url_for("appointments.admin", day=day.isoformat(), done="cancelled"))


# -- wiring ---------------------------------------------------------------------------------

wire_public(bp, {"appointments.public": MAX_BOOKING_REQUEST}, "暂不能预约",
            hint="请返回预约页面重新填写。")


def init_app(app):
    """Create the appointment and throttle tables and register the pages."""
    ap.create_tables(app.extensions["store"].db)
    create_throttle_table(app.extensions["store"].db)
    init_template_helpers(app)
    app.register_blueprint(bp)
