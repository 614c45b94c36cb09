"""Staff case pages: the work list, acceptance at the window, the case and its actions,
the printable receipt and one-time notice, and the handle-anywhere look-up.

The pages are thin. Every change goes through the node's desk (:func:`shared.cases.web.desk`);
a refusal (``CaseError``) is shown with the desk's own Chinese sentence and nothing is
written. Every page that shows an applicant's decrypted data writes one audit entry
(:func:`shared.cases.web.audit_view`). Uploaded scans are all checked before any is
stored, so a refused file leaves nothing behind.
"""

import datetime
import logging
import re

from flask import (Blueprint, abort, current_app, make_response, redirect, render_template,
                   request, url_for)
from markupsafe import Markup

from shared import registry
from shared.casedocs import events_in_order
from shared.cases import appointments as ap
from shared.cases import blobs as blobmod
from shared.cases import fold as F
from shared.cases import index, personal, web
from shared.cases import worklist as lists
from shared.cases.desk import TIER_OF_LENGTH, ApplicantInput, CaseError
from shared.catalog import active, schema
from shared.catalog.qr import qr_svg
from shared.staff import current_staff, message_page, staff_required
from shared.workdays import provisional_note

logger = logging.getLogger(__name__)

bp = Blueprint("cases", __name__, url_prefix="/cases")

#: Roles that work on cases (a county admin edits the catalog, not cases).
CASE_ROLES = ("clerk", "approver", "supervisor")
#: Who may take each action on the case page.
ACTIONS = {
    "supplement": ("clerk",),
    "forward": ("approver",),
    "opinion": ("approver",),
    "request_supplement": ("approver",),
    "approve": ("approver",),
    "reject": ("approver",),
    "transfer": ("approver",),
    "deliver": ("clerk",),
    "change_delivery": ("clerk", "supervisor"),
    "complaint": ("supervisor",),
    "postcheck": ("supervisor", "approver"),
    "follow_up": ("supervisor",),
    "extend": ("approver",),
    "stop_clock": ("approver",),
    "resume_clock": ("approver",),
}
#: The actions :meth:`CaseDesk.may_decide` rules on.
DECISION_ACTIONS = ("approve", "reject", "request_supplement", "transfer", "extend",
                    "stop_clock", "resume_clock")
DONE_MESSAGES = {
    "supplement": "已登记补充的材料。", "forward": "已报送上级审批。", "opinion": "已提交并联意见。",
    "request_supplement": "已要求申请人补正材料，计时暂停。", "approve": "已审批通过。",
    "reject": "已作出不予批准决定。", "transfer": "已转办。", "deliver": "结果已送达申请人。",
    "change_delivery": "已变更领取站点。", "complaint": "已登记投诉处理。",
    "postcheck": "已登记告知承诺核查结果。", "follow_up": "已登记督办跟进情况。",
    "extend": "已延长审批期限。", "stop_clock": "已暂停计时。", "resume_clock": "已恢复计时。",
}
DECISION_NAMES = {"accept": "受理", "notice": "出具一次性告知书", "deficiency": "容缺受理",
                  "commitment": "告知承诺受理"}
NOT_NOW = "该办件当前的状态或您的角色不允许此操作，请刷新页面后查看可办理的操作。"
MAX_QUERY = 100
#: The clock-stop choice that takes a typed reason instead of one of the item's.
OTHER_STOP = "其他"
#: Statuses a clerk can choose for a material at the window.
WINDOW_STATUSES = (F.PROVIDED, F.MISSING, F.DEFECTIVE, F.COMMITTED)
RECEIVED = (F.PROVIDED, F.SHARED, F.ELICENCE, F.COMMITTED)
SCAN_TYPES = ("image/jpeg", "image/png", "application/pdf")
_SHA = re.compile(r"[0-9a-f]{64}")


# -- helpers ---------------------------------------------------------------------------------

_db, _node, _today = web.store_db, web.node_code, web.china_today


def _text(name, limit=1000):
    return (request.form.get(name) or "").strip()[:limit]


def _hlc_text(hlc):
    """An event's time as staff read it (China time)."""
    try:
        return F.hlc_time(hlc).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return ""


def _hlc_date(hlc):
    try:
        return F.hlc_day(hlc).isoformat()
    except (TypeError, ValueError):
        return ""


def _days_left(calendar, today, due):
    """Signed working days until ``due`` (None when there is no due date or no calendar)."""
    if not due or calendar is None:
        return None
    return calendar.workdays_until(today, due)


def _due(state, calendar):
    """The case's due date as a ``workdays.Due`` (provisional or final), or None (no
    calendar, or the clock is stopped)."""
    if calendar is None:
        return None
    return F.due_info(state, calendar)


def _deadlines(state, calendar):
    """The 容缺 and post-check deadlines, counted under the calendar in force."""
    return {"deficiency": F.deadline_info(state, "deficiency", calendar),
            "postcheck": F.deadline_info(state, "postcheck", calendar)}


def _provisional(calendar, start, end):
    """The reason a listed date counted over ``(start, end]`` is provisional, or ''."""
    if calendar is None or not start or not end:
        return ""
    try:
        day = calendar.uncovered_in(start, end)
    except (TypeError, ValueError):
        return ""
    return provisional_note(day) if day else ""


def _calendar():
    """The desk's working-day calendar (the node's own when it cannot handle cases)."""
    try:
        return web.desk().calendar
    except CaseError:
        from shared.app import get_store, work_calendar

        return work_calendar(current_app.config, get_store().db)


def _carried_card(state, due):
    """The card the case carries now: the most severe one issued for its current due day
    (a card for an earlier due day, before an extension, no longer counts)."""
    if due is None:
        return None
    colors = {c.get("color") for c in state.get("cards") or () if c.get("due") == due.isoformat()}
    return "red" if "red" in colors else "yellow" if "yellow" in colors else None


@bp.context_processor
def _helpers():
    names = {}

    def name_of(code):
        if code not in names:
            names[code] = web.node_name(code)
        return names[code]

    return {"case_node_name": name_of, "case_time": _hlc_text,
            "case_status_label": lambda s: F.STATUS_LABELS.get(s, s or ""),
            "case_material_label": lambda s: F.MATERIAL_LABELS.get(s, s or ""),
            "case_mode_label": lambda m: F.MODE_LABELS.get(m, m or ""),
            "case_complaint_label": lambda s: F.COMPLAINT_LABELS.get(s, s or "")}


@bp.errorhandler(CaseError)
def _case_error(exc):
    """A refusal no page handled itself (e.g. the node has no region key)."""
    return message_page(exc.status, "无法办理", exc.message)


def _load(desk, number):
    """``(header, events, state)`` of a case held here, or a 404 page with the reason."""
    try:
        return desk.load(number)
    except CaseError as exc:
        abort(message_page(404, "找不到办件", exc.message))


def _item_or_none(desk, item_doc_id):
    try:
        return desk.item(item_doc_id)
    except CaseError:
        return None


def _stations(node):
    """``[(code, name)]`` of the registered stations, this one first."""
    found = [(e.code, e.name or e.code) for e in registry.all_entries(_db())
             if e.status == registry.ACTIVE]
    if node not in {code for code, _ in found}:
        found.insert(0, (node, web.node_name(node)))
    else:
        found.sort(key=lambda entry: entry[0] != node)
    return found


def _read_uploads(fields):
    """Check every uploaded file before storing any; ``{key: [sha256]}``.

    :param fields: ``{key: (form field name, material name)}``.
    :raises BlobRefused: with the material named in the message.
    """
    desk = web.desk()
    if desk.blobs is None:
        raise CaseError("本站没有配置扫描件存储，不能上传材料。")
    pending = []
    for key, (field, label) in fields.items():
        for upload in request.files.getlist(field):
            if not upload or not upload.filename:
                continue  # an empty file input
            data = upload.read()
            try:
                blobmod.check(data)
            except blobmod.BlobRefused as exc:
                raise blobmod.BlobRefused(f"“{label}”的文件 {upload.filename}：{exc.message}")
            pending.append((key, data, upload.filename))
    stored = {}
    for key, data, filename in pending:
        stored.setdefault(key, []).append(desk.blobs.put(data, filename).sha256)
    return stored


def _audit_detail(state, **extra):
    """The audit detail of a view of a case: whose data it shows (applicant, agent)."""
    detail = {"applicant_key": state.get("applicant_key")}
    proxy = state.get("proxy")
    if isinstance(proxy, dict) and proxy.get("agent_key"):
        detail["agent_key"] = proxy["agent_key"]
    detail.update(extra)
    return detail


def _shas(values):
    return list(dict.fromkeys(v for v in values if isinstance(v, str) and _SHA.fullmatch(v)))


def _int_or_none(text):
    return int(text) if isinstance(text, str) and text.isdigit() and len(text) < 6 else None


# -- the work list ---------------------------------------------------------------------------

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


# -- the window ------------------------------------------------------------------------------

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


# -- the case --------------------------------------------------------------------------------

def _at_stage(state, staff, node):
    """True when the case waits for a decision-maker at this node and ``staff`` is one."""
    return staff.has_role("approver") and state["status"] == F.HANDLING and \
        state["stage"] == node


def _is_last_stage(state):
    return state["route_index"] == len(state["route"]) - 1


def _approver_actions(desk, state, staff, found):
    last = _is_last_stage(state)
    if not last:
        found.add("forward")
    department = staff.department
    if department and state["parallel"].get(department, False) is None:
        found.add("opinion")
    # Who may decide here is the desk's rule (lead department, stage …); it enforces it too.
    if desk.may_decide(state, web.actor(staff)) is not None:
        return
    found.update({"transfer", "extend"})
    # While the clock is stopped the fold refuses a supplement request: resume first.
    found.update({"resume_clock"} if state["paused"] else {"request_supplement", "stop_clock"})
    if last:
        found.add("reject")
        if F.approval_refusal(state) is None:
            found.add("approve")


def available_actions(desk, state, staff, node):
    """The actions ``staff`` may take on the case now, at ``node`` (a set of names)."""
    status, found = state["status"], set()
    if staff.has_role("clerk"):
        if status == F.SUPPLEMENTING or (status == F.HANDLING and state["outstanding"]):
            found.add("supplement")
        if status == F.READY:
            found.add("deliver")
    if staff.has_role("clerk", "supervisor") and status in F.OPEN_STATUSES:
        found.add("change_delivery")
    if _at_stage(state, staff, node):
        _approver_actions(desk, state, staff, found)
    if staff.has_role("supervisor") and any(c["stage"] != "replied"
                                            for c in state["complaints"]):
        found.add("complaint")
    if staff.has_role("supervisor", "approver") and state["postcheck"] and \
            state["postcheck"].get("result") is None:
        found.add("postcheck")
    if staff.has_role("supervisor") and _waiting_red_cards(state):
        found.add("follow_up")
    return found


def _waiting_red_cards(state):
    """The case's red cards that still wait for a supervisor's follow-up note."""
    return [c for c in state.get("cards") or ()
            if c.get("color") == "red" and c.get("followed_up") is None]


def _clock_exclusions(desk, state):
    """The steps the item's guide leaves out of the time limit (the clock-stop choices)."""
    item = _item_or_none(desk, state["item"]) or {}
    return [e for e in item.get("clock_exclusions") or () if e and e != OTHER_STOP]


def _decision_notes(desk, state, staff, node):
    """``(decide_blocked, approve_blocked)``: why this approver may not decide here, and
    why the case cannot be approved yet (each None when there is nothing to say)."""
    if not _at_stage(state, staff, node):
        return None, None
    blocked = F.approval_refusal(state) if _is_last_stage(state) else None
    return desk.may_decide(state, web.actor(staff)), blocked


def _supplement_targets(state):
    """The materials a supplement is asked for: those outstanding, else all of them."""
    keys = state["outstanding"] or sorted((k for k in state["materials"] if int(k) >= 0),
                                          key=int)
    return [{"index": int(k), **state["materials"][k]} for k in keys]


def _materials_view(state):
    return [{"index": int(k), "number": int(k) + 1, **m}
            for k, m in sorted(state["materials"].items(), key=lambda kv: int(kv[0]))
            if int(k) >= 0]


def _agent(desk, state):
    """The agent's decrypted name and number of a proxied case (None without proxy)."""
    proxy = state.get("proxy")
    if not isinstance(proxy, dict) or not proxy.get("agent"):
        return None
    try:
        return personal.open_profile(desk.region_key, proxy["agent_key"], proxy["agent"])
    except (personal.ProfileUnreadable, KeyError, TypeError):
        return {}


def _ignored_view(state):
    """The events of the case that did not take effect, as the page lists them."""
    return [{"label": F.EVENT_LABELS.get(entry.get("kind"), entry.get("kind") or "未知操作"),
             "node": entry.get("node"), "hlc": entry.get("hlc"),
             "reason": entry.get("reason", "")}
            for entry in state.get("ignored") or ()]


def _case_page(number, error=None, status=200):
    desk = web.desk()
    header, _, state = _load(desk, number)
    staff = current_staff()
    node = _node()
    actions = available_actions(desk, state, staff, node)
    decide_blocked, approve_blocked = _decision_notes(desk, state, staff, node)
    due = _due(state, desk.calendar)
    days_left = _days_left(desk.calendar, _today(), due)
    profile, agent = desk.open_profile(state), _agent(desk, state)
    web.audit_view(staff, "view_case", number, _audit_detail(state))
    body = render_template(
        "cases/case.html", header=header, state=state, item_id=index.item_id_of(header["item"]),
        profile=profile, agent=agent, actions=actions,
        agent_scans=state.get("proxy_scans", []), error=error, node=node,
        done=DONE_MESSAGES.get(request.args.get("done", "")), due=due, days_left=days_left,
        **_deadlines(state, desk.calendar),
        card=_carried_card(state, due), materials=_materials_view(state),
        decide_blocked=decide_blocked, approve_blocked=approve_blocked,
        supplement_targets=_supplement_targets(state) if "supplement" in actions else [],
        stations=_stations(node) if "change_delivery" in actions else [],
        transfer_targets=desk.transfer_targets() if "transfer" in actions else [],
        ignored=_ignored_view(state),
        open_complaints=[c for c in state["complaints"] if c["stage"] != "replied"],
        waiting_cards=_waiting_red_cards(state) if "follow_up" in actions else [],
        clock_exclusions=_clock_exclusions(desk, state) if "stop_clock" in actions else [],
        other_stop=OTHER_STOP)
    return current_app.response_class(body, status=status, mimetype="text/html")


@bp.route("/<number>")
@staff_required(*CASE_ROLES)
def case(number):
    """The case: applicant, status, materials, timeline and the actions open to this member."""
    return _case_page(number)


@bp.route("/<number>/scans/<sha>")
@staff_required(*CASE_ROLES)
def scan(number, sha):
    """One scanned material of a case (audited: scans show personal data)."""
    if not _SHA.fullmatch(sha):
        return message_page(404, "找不到扫描件", "扫描件编号无效。")
    desk = web.desk()
    _, _, state = _load(desk, number)
    try:
        data, mime = desk.scan(number, sha)
    except CaseError as exc:
        return message_page(404, "找不到扫描件", exc.message)
    web.audit_view(current_staff(), "view_scan", number, _audit_detail(state, sha256=sha))
    response = current_app.response_class(
        data, mimetype=mime if mime in SCAN_TYPES else "application/octet-stream")
    # A scan is the applicant's file, not ours: never let a browser run or sniff it.
    response.headers["Content-Security-Policy"] = "sandbox"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    disposition = "inline" if mime in SCAN_TYPES else "attachment"
    response.headers["Content-Disposition"] = f'{disposition}; filename="{sha[:12]}"'
    return response


def _act_supplement(desk, number, state, actor):
    targets = _supplement_targets(state)
    uploads = _read_uploads({t["index"]: (f"s{t['index']}_files", t["name"]) for t in targets})
    materials = {}
    for target in targets:
        i = target["index"]
        if uploads.get(i) or request.form.get(f"s{i}_original"):
            materials[i] = uploads.get(i, [])
    return desk.supplement(number, materials, actor)


def _act_request_supplement(desk, number, state, actor):
    indexes = [_int_or_none(v) for v in request.form.getlist("materials")]
    if None in indexes:
        raise CaseError("材料序号无效。")
    return desk.request_supplement(number, actor, _text("reason"), indexes)


def _act_approve(desk, number, state, actor):
    licence = {f: _text(f"licence_{f}", 200) for f in ("name", "number", "valid_until")}
    if licence["valid_until"]:
        try:
            datetime.date.fromisoformat(licence["valid_until"])
        except ValueError:
            raise CaseError("证照有效期请按 年-月-日 填写，如 2030-12-31。")
    return desk.approve(number, actor, _text("result", 500),
                        licence=licence if any(licence.values()) else None)


def _act_transfer(desk, number, state, actor):
    to = request.form.get("to", "")
    if to not in {code for code, _ in desk.transfer_targets()}:
        raise CaseError("请从列表中选择转办站点。")
    return desk.transfer(number, actor, to, _text("reason"))


def _act_complaint(desk, number, state, actor):
    stage = request.form.get("stage")
    if stage not in F.COMPLAINT_STAGES[1:]:
        raise CaseError("请选择受理或答复投诉。")
    return desk.handle_complaint(number, actor, request.form.get("complaint", ""), stage,
                                 _text("text"))


def _collector(state):
    """``(to, ID number)`` of who collects the result, as the form gives them."""
    to = request.form.get("to") or "applicant"
    if to not in ("applicant", "agent") or (to == "agent" and not state.get("proxy")):
        raise CaseError("请选择领取人。")
    number = _text("collector_id", 40)
    if not number:
        raise CaseError("请填写领取人的证件号码，核验后才能送达。")
    return to, number


def _act_deliver(desk, number, state, actor):
    to, id_number = _collector(state)
    return desk.deliver(number, actor, to=to, id_number=id_number)


def _act_change_delivery(desk, number, state, actor):
    station = request.form.get("station", "")
    if station not in {code for code, _ in _stations(_node())}:
        raise CaseError("请选择正确的领取站点。")
    return desk.change_delivery(number, actor, station)


def _act_follow_up(desk, number, state, actor):
    card = request.form.get("card", "")
    if card not in {c["id"] for c in _waiting_red_cards(state)}:
        raise CaseError("请选择待跟进的红牌。")
    return desk.follow_up(number, actor, card, _text("note"))


def _act_extend(desk, number, state, actor):
    days = _int_or_none((request.form.get("days") or "").strip())
    if days is None:
        raise CaseError("延长的工作日数须在 1 到 365 之间。")
    return desk.extend(number, actor, days, _text("reason", 500))


def _act_stop_clock(desk, number, state, actor):
    choice = (request.form.get("reason") or "").strip()
    if choice == OTHER_STOP:
        reason = _text("other", 120)
    elif not choice or choice in _clock_exclusions(desk, state):
        reason = choice  # none chosen: the desk says what to write
    else:
        raise CaseError("请从列表中选择暂停计时的环节，或选择“其他”并填写。")
    return desk.stop_clock(number, actor, reason)


HANDLERS = {
    "supplement": _act_supplement,
    "forward": lambda desk, n, s, a: desk.forward(n, a, _text("text", 500)),
    "opinion": lambda desk, n, s, a: desk.opinion(
        n, a, request.form.get("opinion") == "agree", _text("text")),
    "request_supplement": _act_request_supplement,
    "approve": _act_approve,
    "reject": lambda desk, n, s, a: desk.reject(n, a, _text("reason")),
    "transfer": _act_transfer,
    "deliver": _act_deliver,
    "change_delivery": _act_change_delivery,
    "complaint": _act_complaint,
    "postcheck": lambda desk, n, s, a: desk.check_commitment(
        n, a, request.form.get("truthful") == "yes", _text("text")),
    "follow_up": _act_follow_up,
    "extend": _act_extend,
    "stop_clock": _act_stop_clock,
    "resume_clock": lambda desk, n, s, a: desk.resume_clock(n, a),
}


def _refusal(desk, state, staff, action):
    """Why ``action`` is not open to ``staff`` on this case now, in Chinese."""
    if action in DECISION_ACTIONS:
        decide_blocked, approve_blocked = _decision_notes(desk, state, staff, _node())
        reason = decide_blocked or (approve_blocked if action == "approve" else None)
        if reason:
            return reason
    return NOT_NOW


#: Irreversible decisions: the first submit shows what will be done, the second does it.
CONFIRM = {
    "approve": ("审批通过", "审批通过后结果即送往领取站点，不能撤回。"),
    "reject": ("不予批准", "不予批准决定作出后即告知申请人，不能撤回。"),
    "deliver": ("确认送达", "送达后办件即办结，不能撤回。请当面核对领取人证件。"),
}
#: The form fields each confirmed action carries over to its second submit.
CONFIRM_FIELDS = {"approve": ("result", "licence_name", "licence_number", "licence_valid_until"),
                  "reject": ("reason",), "deliver": ("to", "collector_id")}


def _confirm_details(desk, state, action):
    """What the confirmation page lists; a CaseError when the input is already wrong."""
    if action == "approve":
        licence = " ".join(v for v in (_text("licence_name", 200), _text("licence_number", 200))
                           if v)
        until = _text("licence_valid_until", 200)
        return [("办理结果", _text("result", 500) or "准予办理"),
                ("出具证照", (licence + (f"，有效期至 {until}" if until else "")) or "不出具")]
    if action == "reject":
        if not _text("reason"):
            raise CaseError("不予批准须写明理由。")
        return [("理由（申请人可见）", _text("reason"))]
    to, id_number = _collector(state)
    desk.check_collector(state, to, id_number)
    who = "申请人本人" if to == "applicant" else "代办人"
    return [("领取人", f"{who}（证件号码已核验：{id_number[:6]}********{id_number[-4:]}）")]


def _confirm_page(desk, state, action, staff):
    label, warning = CONFIRM[action]
    details = _confirm_details(desk, state, action)
    profile = desk.open_profile(state)
    fields = [(name, request.form.get(name, "")) for name in CONFIRM_FIELDS[action]
              if request.form.get(name) is not None]
    return render_template(
        "cases/confirm.html", state=state, action=action, label=label, warning=warning,
        details=details, fields=fields, applicant=personal.mask_name(profile.get("name", "")),
        staff_name=staff.full_name or staff.username)


@bp.route("/<number>/<action>", methods=["POST"])
@staff_required(*CASE_ROLES)
def act(number, action):
    """One action on the case; a refusal re-renders the case with the reason (409).

    Approval, refusal and delivery are confirmed first (:data:`CONFIRM`)."""
    if action not in ACTIONS:
        return message_page(404, "找不到页面", f"没有“{action}”这项操作。")
    staff = current_staff()
    if not staff.has_role(*ACTIONS[action]):
        return message_page(403, "没有权限", "您的角色不能执行此操作。")
    desk = web.desk()
    _, _, state = _load(desk, number)
    if action not in available_actions(desk, state, staff, _node()):
        return _case_page(number, error=_refusal(desk, state, staff, action), status=409)
    try:
        if action in CONFIRM and request.form.get("confirm") != "1":
            return _confirm_page(desk, state, action, staff)
        HANDLERS[action](desk, number, state, web.actor(staff))
    except blobmod.BlobRefused as exc:
        return _case_page(number, error=exc.message, status=400)
    except CaseError as exc:
        return _case_page(number, error=exc.message, status=409)
    logger.info("case %s: %s by %s", number, action, staff.username)
    return redirect(url_for("cases.case", number=number, done=action))


# -- printables ------------------------------------------------------------------------------

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


# -- handle anywhere -------------------------------------------------------------------------

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


def init_app(app):
    """Register the staff case pages."""
    app.register_blueprint(bp)
