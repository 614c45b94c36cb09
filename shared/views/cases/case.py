"""The case page and its actions: approvals, supplements, transfers, complaints, delivery,
the clock; irreversible decisions are confirmed first."""

import datetime
import logging

from flask import current_app, redirect, render_template, request, url_for

from shared.cases import blobs as blobmod
from shared.cases import fold as F
from shared.cases import index, personal, web
from shared.cases.desk import CaseError
from shared.staff import current_staff, message_page, staff_required
from shared.views.cases.common import (
    _SHA,
    ACTIONS,
    CASE_ROLES,
    DECISION_ACTIONS,
    DONE_MESSAGES,
    NOT_NOW,
    OTHER_STOP,
    SCAN_TYPES,
    _audit_detail,
    _carried_card,
    _days_left,
    _deadlines,
    _due,
    _int_or_none,
    _item_or_none,
    _load,
    _node,
    _read_uploads,
    _stations,
    _text,
    _today,
    bp,
)

logger = logging.getLogger(__name__)


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
