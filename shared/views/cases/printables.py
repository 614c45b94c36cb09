"""Printables: the acceptance receipt (with its progress QR code) and the one-time notice."""

from flask import current_app, render_template, request
from markupsafe import Markup

from shared.casedocs import events_in_order
from shared.cases import fold as F
from shared.cases import web
from shared.catalog.qr import qr_svg
from shared.staff import current_staff, message_page, staff_required
from shared.views.cases.case import _materials_view
from shared.views.cases.common import (
    CASE_ROLES,
    RECEIVED,
    _audit_detail,
    _deadlines,
    _due,
    _hlc_date,
    _item_or_none,
    _load,
    bp,
)


def _accepted_by(state):
    return next((e["by"] for e in state["timeline"] if e["kind"] == "accepted"), {})


def _progress_url(number):
    """The public progress page of a case: on the public site (``PUBLIC_URL``) when one
    is set, else on this node as the browser reached it."""
    base = current_app.config.get("PUBLIC_URL")
    if base:
        return base.rstrip("/") + "/progress/" + number
    return request.host_url + "progress/" + number


@bp.route("/<number>/receipt")
@staff_required(*CASE_ROLES)
def receipt(number):
    """The printable receipt (受理回执) with a QR code to the public progress page."""
    desk = web.desk()
    header, _, state = _load(desk, number)
    if not state.get("accepted"):
        return message_page(409, "尚未受理", f"办件 {number} 尚未受理，没有受理回执。"
                            "如已出具一次性告知书，请打印告知书。")
    profile = desk.open_profile(state)
    web.audit_view(current_staff(), "print_receipt", number, _audit_detail(state))
    progress_url = _progress_url(number)
    materials = _materials_view(state)
    due = _due(state, desk.calendar)
    return render_template(
        "cases/receipt.html", header=header, state=state, due=due,
        **_deadlines(state, desk.calendar),
        # The applicant's own paper: the name in full (pages others may see mask it).
        applicant=profile.get("name", ""),
        item=_item_or_none(desk, header["item"]) or {}, accepted_by=_accepted_by(state),
        received=[m for m in materials if m["status"] in RECEIVED],
        outstanding=[m for m in materials if m["status"] in F.OUTSTANDING],
        progress_url=progress_url,
        qr=Markup(qr_svg(progress_url, title="扫码查询办理进度")))


@bp.route("/<number>/notice")
@staff_required(*CASE_ROLES)
def notice(number):
    """The printable one-time notice (一次性告知书) of everything missing or defective."""
    desk = web.desk()
    header, events, state = _load(desk, number)
    # A notice before acceptance, or the one given when accepting with a deficiency (容缺).
    notices = [e for e in events_in_order(events) if e.get("kind") == "notice" or
               (e.get("kind") == "accepted" and e.get("mode") == F.DEFICIENCY)]
    if not notices:
        return message_page(409, "没有一次性告知书", f"办件 {number} 没有出具一次性告知书。")
    event = notices[-1]
    missing = sorted((m for m in event.get("materials") or ()
                      if m.get("status") in F.OUTSTANDING), key=lambda m: m.get("index", 0))
    profile = desk.open_profile(state)
    web.audit_view(current_staff(), "print_notice", number, _audit_detail(state))
    return render_template(
        "cases/notice.html", header=header, state=state, missing=missing, event=event,
        deficiency_due=(_notice_deadline(state, event, desk.calendar)
                        if event.get("kind") == "accepted" else None),
        date=_hlc_date(event.get("hlc")), by=event.get("by") or {},
        applicant=profile.get("name", ""),
        item=_item_or_none(desk, header["item"]) or {})


def _notice_deadline(state, event, calendar):
    """The 容缺 deadline a notice given at acceptance prints (counted under the calendar in
    force when the event recorded its day count)."""
    found = F.deadline_info(state, "deficiency", calendar)
    if found is None and event.get("deficiency_due"):
        return F.deadline_info({"deficiency_due": event["deficiency_due"]}, "deficiency", None)
    return found
