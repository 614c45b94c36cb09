"""Acceptance at the window: look the applicant up, check the materials, decide (accept,
one-time notice, deficiency, written commitment)."""

from flask import redirect, render_template, request, url_for

from shared.cases import blobs as blobmod
from shared.cases import fold as F
from shared.cases import index, web
from shared.cases.desk import TIER_OF_LENGTH, ApplicantInput, CaseError
from shared.catalog import active, schema
from shared.staff import current_staff, message_page, staff_required
from shared.views.cases.common import (
    DECISION_NAMES,
    MAX_QUERY,
    WINDOW_STATUSES,
    _audit_detail,
    _db,
    _load,
    _node,
    _read_uploads,
    _shas,
    _stations,
    _text,
    bp,
)


def _check_tier(item):
    """The reason this station cannot accept ``item`` (None when it can)."""
    tier = TIER_OF_LENGTH.get(len(_node()))
    tiers = item.get("accept_tiers") or ()
    if tier in tiers:
        return None
    names = "、".join(schema.TIERS.get(t, t) for t in tiers)
    return f"事项“{item['name']}”只在{names}受理，本站不能受理。"


def _decisions(item):
    allowed = ["accept", "notice"]
    if item.get("deficiency_allowed"):
        allowed.append("deficiency")
    if item.get("commitment_allowed"):
        allowed.append("commitment")
    return [(key, DECISION_NAMES[key]) for key in allowed]


def _offers(earlier, existing, uploaded):
    """The scans offered for one material: earlier cases' (newest first) and this form's
    fresh uploads, each once, none already in the case."""
    offers, seen = [], set(existing)
    for entry in earlier:
        if entry.get("sha") and entry["sha"] not in seen:
            seen.add(entry["sha"])
            offers.append({"sha": entry["sha"], "case": entry.get("case"),
                           "day": entry.get("day"), "uploaded": False})
    for sha in uploaded:
        if sha not in seen:
            seen.add(sha)
            offers.append({"sha": sha, "case": None, "day": None, "uploaded": True})
    return offers


def _checklist_rows(desk, item, applicant_key, state=None, posted=False, kept=None):
    """The checklist as the form shows it: the desk's rows plus what is chosen so far.

    Values come from the submitted form (``posted``), else from the case being continued
    (``state``). Earlier cases' scans are offered with a preview link but never ticked:
    the clerk looks at each before reusing it. This form's own uploads stay ticked.
    """
    kept = kept or {}
    rows = desk.checklist(item, applicant_key)
    earlier = desk.reusable_scans(applicant_key)
    held = (state or {}).get("materials", {})
    for row in rows:
        i = row["index"]
        before = held.get(str(i), {})
        row["existing"] = list(before.get("scans") or ())
        offers = _offers(earlier.get(row["name"], ()), row["existing"], kept.get(i, ()))
        chosen = set(kept.get(i, ()))
        if posted:
            chosen |= set(request.form.getlist(f"m{i}_reuse"))
            row["status"] = request.form.get(f"m{i}_status") or ""
            row["problem"] = _text(f"m{i}_problem", 300)
        else:
            status = before.get("status")
            row["status"] = status if status in WINDOW_STATUSES else (
                F.PROVIDED if row["existing"] else "")
            row["problem"] = before.get("problem") or ""
        for offer in offers:
            offer["checked"] = offer["sha"] in chosen
        row["offered"] = offers
    return rows


def _no_visit_allowed(state, item):
    """True when a pre-applied case of an item needing no visit may be accepted without
    the applicant at the window."""
    return bool(state) and state["status"] == F.PREAPPLIED and \
        item.get("max_on_site_visits") == 0


def _window_page(error=None, status=200, **context):
    context.setdefault("q", "")
    return render_template("cases/window.html", error=error, **context), status


def _stations_context(item, delivery_station):
    node = _node()
    return {"stations": _stations(node), "delivery_station": delivery_station or node,
            "decisions": _decisions(item)}


def _checklist_page(desk, item, applicant_number, *, state=None, number=None, profile=None,
                    history=None, error=None, status=200, kept=None, proxy_kept=None,
                    lookup=None):
    """The window's step (b): the checklist form of ``item`` for this applicant."""
    posted = request.method == "POST" and request.form.get("step") == "decide"
    key = desk.applicant_key(applicant_number)
    rows = _checklist_rows(desk, item, key, state=state, posted=posted, kept=kept)
    if posted:
        values = {f: _text(f, 200) for f in ("name", "phone", "address", "proxy_number",
                                              "proxy_name", "proxy_phone", "commitment_note")}
        delivery = request.form.get("delivery_station")
    else:
        profile = profile or {}
        values = {f: profile.get(f, "") for f in ("name", "phone", "address")}
        delivery = (state or {}).get("delivery_station")
    return _window_page(
        error, status, step="checklist", item=item, rows=rows, values=values,
        applicant_number=applicant_number, number=number, history=history,
        proxy_kept=proxy_kept or request.form.get("proxy_authorisation", ""),
        no_visit_allowed=_no_visit_allowed(state, item),
        no_visit=posted and bool(request.form.get("no_visit")), lookup=lookup,
        **_stations_context(item, delivery))


def _search_context(q):
    q = q[:MAX_QUERY]
    results = active.search(_db(), q, limit=30) if q else []
    return {"q": q, "results": results}


@bp.route("/window", methods=["GET", "POST"])
@staff_required("clerk")
def window():
    """Acceptance at the window: choose the item and the applicant, then the checklist."""
    if request.method == "POST":
        if request.form.get("step") == "decide":
            return _window_decide()
        return _window_lookup()
    number = (request.args.get("number") or "").strip()
    if number:
        return _window_continue(number)
    item_id = (request.args.get("item") or "").strip()
    context = _search_context((request.args.get("q") or "").strip())
    if not item_id:
        return _window_page(step="search", **context)
    item = active.active_item(_db(), item_id)
    if item is None:
        return _window_page(f"事项 {item_id} 不在本站现行的事项目录中。", 404, step="search",
                            **context)
    return _window_page(step="applicant", item=item, tier_error=_check_tier(item), **context)


def _window_lookup():
    """Step (a) done: check the number, show the applicant's history and the checklist."""
    desk = web.desk()
    item_id = request.form.get("item", "")
    item = active.active_item(_db(), item_id)
    if item is None:
        return _window_page(f"事项 {item_id} 不在本站现行的事项目录中。", 404, step="search")
    tier_error = _check_tier(item)
    applicant_number = _text("applicant", 40)
    try:
        if tier_error:
            raise CaseError(tier_error)
        _, normalised = desk.check_number(applicant_number)
    except CaseError as exc:
        return _window_page(exc.message, 400, step="applicant", item=item,
                            tier_error=tier_error, applicant=applicant_number)
    key = desk.applicant_key(normalised)
    # Ask the region first: it joins this station to the person's cases elsewhere, so their
    # e-licences and scans replicate here (offline: a message, and what is held here).
    answer = web.find_cases(key)
    history = index.cases_of_applicant(_db(), key)
    profile = desk.history_profile(key)
    held = {row["number"] for row in history}
    elsewhere = [c for c in answer.get("cases") or () if c.get("number") not in held]
    web.audit_view(current_staff(), "window_applicant", key,
                   {"item": item["id"], "history": len(history),
                    "region": len(answer.get("cases") or ()),
                    "complete": bool(answer.get("complete"))})
    for row in history:
        row["status_label"] = F.STATUS_LABELS.get(row["status"], row["status"])
    lookup = {"message": None if answer.get("complete") else
              (answer.get("message") or "查询结果可能不完整。"), "elsewhere": len(elsewhere)}
    return _checklist_page(desk, item, normalised, profile=profile, history=history,
                           lookup=lookup)


def _window_continue(number):
    """Continue a pre-applied case, or one that got a one-time notice."""
    desk = web.desk()
    header, _, state = _load(desk, number)
    if state["status"] not in (F.PREAPPLIED, F.AWAITING):
        return message_page(409, "不能在窗口继续受理",
                            f"办件 {number} 当前状态为“{state['status_label']}”，"
                            "请在办件页面办理。")
    item = desk.item(header["item"])
    profile = desk.open_profile(state)
    web.audit_view(current_staff(), "window_continue", number, _audit_detail(state))
    if not profile.get("number"):
        return message_page(409, "不能在窗口继续受理", "本站无法读取该办件的申请人信息。")
    return _checklist_page(desk, item, profile["number"], state=state, number=number,
                           profile=profile)


def _posted_materials(rows, uploads):
    """``{index: {"status", "scans", "problem"}}`` of the submitted checklist."""
    materials = {}
    for row in rows:
        if row["auto"]:
            continue
        i = row["index"]
        status = request.form.get(f"m{i}_status") or ""
        entry = {"problem": _text(f"m{i}_problem", 300)}
        if status:
            entry["status"] = status
        if status not in (F.MISSING, F.COMMITTED):
            entry["scans"] = _shas(request.form.getlist(f"m{i}_reuse") + uploads.get(i, []))
        materials[i] = entry
    return materials


def _posted_proxy(item, uploads):
    fields = {f: _text(f"proxy_{f}", 100) for f in ("number", "name", "phone")}
    if not item.get("proxy_allowed") or not (fields["number"] or fields["name"]):
        return None
    fields["authorisation"] = (uploads.get("proxy") or [None])[0] or \
        (_shas([request.form.get("proxy_authorisation", "")]) or [None])[0]
    return fields


def _posted_visit(state, item):
    """False when the clerk ticked "the applicant did not come" (allowed cases only)."""
    if not request.form.get("no_visit"):
        return True
    if not _no_visit_allowed(state, item):
        raise CaseError("只有无需到场事项的网上预申请办件，才能在申请人未到场时受理。")
    return False


def _window_decide():
    """Step (b): the decision. Success goes to the receipt or the notice."""
    desk = web.desk()
    number = request.form.get("number") or None
    state = None
    if number:
        header, _, state = _load(desk, number)
        item = desk.item(header["item"])
    else:
        item = active.active_item(_db(), request.form.get("item", ""))
        if item is None:
            return _window_page("请先选择事项。", 400, step="search")
    applicant_number = _text("applicant", 40)
    try:
        _, applicant_number = desk.check_number(applicant_number)
    except CaseError as exc:
        return _window_page(exc.message, 400, step="applicant", item=item,
                            applicant=applicant_number)
    rows = desk.checklist(item, desk.applicant_key(applicant_number))
    fields = {row["index"]: (f"m{row['index']}_files", row["name"])
              for row in rows if not row["auto"]}
    if item.get("proxy_allowed"):
        fields["proxy"] = ("proxy_file", "授权委托书")
    try:
        uploads = _read_uploads(fields)
    except (blobmod.BlobRefused, CaseError) as exc:
        return _checklist_page(desk, item, applicant_number, state=state, number=number,
                               error=exc.message, status=400)
    kept = {k: v for k, v in uploads.items() if k != "proxy"}
    proxy_kept = (uploads.get("proxy") or [""])[0]
    try:
        station = request.form.get("delivery_station") or _node()
        if station not in {code for code, _ in _stations(_node())}:
            raise CaseError("请选择正确的领取站点。")
        applicant = ApplicantInput(number=applicant_number, name=_text("name", 100),
                                   phone=_text("phone", 40), address=_text("address", 200))
        number = desk.receive(
            item["id"], applicant, _posted_materials(rows, uploads),
            request.form.get("decision", ""), web.actor(current_staff()),
            delivery_station=station, proxy=_posted_proxy(item, uploads), number=number,
            commitment_note=_text("commitment_note", 500), visit=_posted_visit(state, item))
    except CaseError as exc:
        return _checklist_page(desk, item, applicant_number, state=state,
                               number=request.form.get("number") or None, error=exc.message,
                               status=400, kept=kept, proxy_kept=proxy_kept)
    target = "cases.notice" if request.form.get("decision") == "notice" else "cases.receipt"
    return redirect(url_for(target, number=number))
