"""Handle anywhere: find an applicant's cases held anywhere in the region."""

from flask import render_template, request

from shared.cases import index, web
from shared.cases.desk import CaseError
from shared.catalog import active
from shared.staff import current_staff, staff_required
from shared.views.cases.common import CASE_ROLES, _db, _text, bp


def _found_rows(cases):
    rows = []
    for found in cases:
        state = index.state_of(_db(), found.get("number", ""))
        item = None if state else active.active_item(_db(), index.item_id_of(found.get("item")))
        rows.append({**found, "held": state is not None,
                     "item_name": (state or {}).get("item_name") or (item or {}).get("name")
                     or index.item_id_of(found.get("item")),
                     "status_label": (state or {}).get("status_label", "尚未同步到本站")})
    return rows


@bp.route("/find", methods=["GET", "POST"])
@staff_required(*CASE_ROLES)
def find():
    """Handle anywhere: a person's cases across the region, by ID number or credit code."""
    if request.method == "GET":
        return render_template("cases/find.html", rows=None, answer=None, error=None)
    desk = web.desk()
    typed = _text("applicant", 40)
    try:
        key = desk.applicant_key(typed)
    except CaseError as exc:
        return render_template("cases/find.html", rows=None, answer=None, error=exc.message,
                               applicant=typed), 400
    answer = web.find_cases(key)
    cases = answer.get("cases") or []
    web.audit_view(current_staff(), "find_cases", key,
                   {"found": len(cases), "complete": bool(answer.get("complete"))})
    return render_template("cases/find.html", rows=_found_rows(cases), answer=answer,
                           error=None, applicant=typed)
