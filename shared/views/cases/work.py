"""The work list: what waits for the logged-in member at this station, by role."""

from flask import current_app, make_response, render_template

from shared.cases import appointments as ap
from shared.cases import fold as F
from shared.cases import worklist as lists
from shared.cases.desk import TIER_OF_LENGTH
from shared.staff import current_staff, staff_required
from shared.views.cases.common import _calendar, _days_left, _db, _node, _provisional, _today, bp


def _decorate(rows, calendar, today, ignored):
    for row in rows:
        row["status_label"] = F.STATUS_LABELS.get(row["status"], row["status"])
        row["days_left"] = _days_left(calendar, today, row.get("due"))
        row["due_provisional"] = _provisional(calendar, row.get("accepted_day"), row.get("due"))
        row["has_ignored"] = row["number"] in ignored
        if row.get("postcheck_due"):
            row["postcheck_left"] = _days_left(calendar, today, row["postcheck_due"])
    return rows


def _accepted_here_section(node, calendar, today):
    """本站受理的在办件: every open case this station accepted, wherever it is now, with
    whether it has been uploaded — what a clerk needs when the citizen phones. Shown for
    information; it is not counted as work to do here."""
    from shared import syncstatus

    rows = lists.accepted_here(_db(), node)
    unsent = set(syncstatus.unsent_cases(current_app.extensions["store"], node)["numbers"]
                 if current_app.config.get("PARENT_URL") else ())  # the county uploads to none
    section = _sections([("accepted_here", "本站受理的在办件", rows)], calendar, today)[0]
    for row in section["rows"]:
        row["uploaded"] = row["number"] not in unsent
    section["informational"] = True
    return section


def _approver_sections(node, staff):
    rows = lists.approver_queue(_db(), node, department=staff.department or None)
    title = "待审批办件" + (f"（{staff.department}）" if staff.department else "")
    return [("queue", title, rows)]


def _red_card_section(node):
    """Red cards waiting for a supervisor's follow-up (``worklist.red_cards``)."""
    county = TIER_OF_LENGTH.get(len(node)) == "county"
    rows, truncated = lists.red_cards(_db(), node, county=county)
    for row in rows:
        row["status_label"] = F.STATUS_LABELS.get(row["status"], row["status"])
    return {"id": "red_cards", "title": "红牌待跟进", "rows": rows, "truncated": truncated}


def _sections(sections, calendar, today):
    """Work-list sections, each cut at :data:`lists.LIST_LIMIT` rows (``truncated`` says so)."""
    shown = []
    for key, title, rows in sections:
        kept = rows[:lists.LIST_LIMIT]
        ignored = lists.with_ignored(_db(), (row["number"] for row in kept))
        shown.append({"id": key, "title": title,
                      "rows": _decorate(kept, calendar, today, ignored),
                      "truncated": len(rows) > lists.LIST_LIMIT})
    return shown


@bp.route("/")
@staff_required()
def worklist():
    """The station's work list for the logged-in member, by role, with counts."""
    staff = current_staff()
    node = _node()
    calendar, today = _calendar(), _today()
    shown = []
    if staff.has_role("clerk"):
        shown += _sections(lists.clerk_sections(_db(), node), calendar, today)
        shown.append(_accepted_here_section(node, calendar, today))
    if staff.has_role("approver"):
        shown += _sections(_approver_sections(node, staff), calendar, today)
    if staff.has_role("supervisor"):
        shown.append(_red_card_section(node))
        shown += _sections(lists.supervisor_sections(_db(), node), calendar, today)
    bookings = len(ap.bookings(_db(), today)) if staff.has_role("clerk") else None
    response = make_response(render_template(
        "cases/worklist.html", sections=shown, node=node, today=today,
        total=sum(len(s["rows"]) for s in shown if not s.get("informational")),
        bookings=bookings, list_limit=lists.LIST_LIMIT))
    # Cards must show the moment they are written: never a stale copy from a cache.
    response.headers["Cache-Control"] = "no-store"
    return response
