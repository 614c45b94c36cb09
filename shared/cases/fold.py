"""A case's state is the fold of its events (DESIGN.md, Documents).

:func:`fold` is a pure function of the header and the events: it sorts the events in
causal order (``casedocs.events_in_order``: HLC, then node, then id) and applies them one
by one to a state machine. Every node that holds the same documents therefore computes the
same state, whatever order they arrived in, and since nothing is edited in place two
stations acting on one case while cut off from each other never conflict: each writes its
own event, and the fold decides. An event that does not fit the state it meets (a second
delivery, a decision by a node the case has left) is kept in the timeline's ``ignored``
list with the reason, never dropped silently and never allowed to change the state.

Dates the clock needs (acceptance, clock stops) are days in China time taken from the
events' HLCs, never from the wall clock of the node folding: the fold has no "now".
Working-day arithmetic is :mod:`shared.workdays`' (see :func:`due_date`).
"""

import datetime

from shared import config as cfg
from shared.casedocs import CHINA_TIME, events_in_order, party_codes
from shared.hlc import parse_hlc
from shared.workdays import Due

# -- statuses ---------------------------------------------------------------------------

SYNCING = "syncing"              # the header is here, its first event not yet
PREAPPLIED = "preapplied"        # online pre-application waiting at a station
AWAITING = "awaiting_materials"  # one-time notice given, not accepted
HANDLING = "handling"            # accepted, in a queue (review or decision)
SUPPLEMENTING = "supplementing"  # the decider asked for a supplement: clock stopped
READY = "ready"                  # decided, the result waits at the delivery station
DONE = "done"                    # result handed over
WITHDRAWN = "withdrawn"

STATUS_LABELS = {
    SYNCING: "同步中", PREAPPLIED: "网上预申请，待到站核验", AWAITING: "已一次性告知，待补齐材料",
    HANDLING: "办理中", SUPPLEMENTING: "待申请人补正（暂停计时）", READY: "已办结，待领取",
    DONE: "已送达", WITHDRAWN: "已撤回",
}
OPEN_STATUSES = (PREAPPLIED, AWAITING, HANDLING, SUPPLEMENTING, READY)

#: How each event kind reads on the citizen's progress page.
EVENT_LABELS = {
    "preapplied": "网上预申请", "notice": "一次性告知所缺材料", "accepted": "受理",
    "attached": "上传材料扫描件", "supplemented": "补齐材料", "forwarded": "初审通过，报送上级",
    "opinion": "并联部门意见", "supplement_requested": "要求补正材料", "approved": "审批通过",
    "rejected": "不予批准", "transferred": "转办", "delivery_changed": "变更领取站点",
    "delivered": "结果送达", "rated": "评价", "complained": "投诉", "complaint_handled": "投诉处理",
    "commitment_checked": "告知承诺核查", "withdrawn": "撤回申请", "joined": "异地站点接入",
    "assigned": "分办", "card": "督办亮牌", "followed_up": "督办跟进", "extended": "延长审批期限",
    "clock_stopped": "暂停计时", "clock_resumed": "恢复计时",
}
#: Kinds written by staff. Every event, these and the citizen's own (a rating, a complaint,
#: a pre-application), must come from a node taking part in the case or one above it.
STAFF_KINDS = ("notice", "accepted", "supplemented", "forwarded", "opinion",
               "supplement_requested", "approved", "rejected", "transferred",
               "delivery_changed", "delivered", "complaint_handled", "commitment_checked",
               "card", "followed_up", "extended", "clock_stopped", "clock_resumed")
#: Card colours: yellow before the due day, red once it has passed.
CARD_LABELS = {"yellow": "黄牌（临近办理期限）", "red": "红牌（已超期）"}
#: Acceptance modes.
NORMAL, DEFICIENCY, COMMITMENT = "normal", "deficiency", "commitment"
MODE_LABELS = {NORMAL: "材料齐全受理", DEFICIENCY: "容缺受理", COMMITMENT: "告知承诺受理"}

#: Material statuses (the checklist at the window and in the fold).
PROVIDED, SHARED, ELICENCE, MISSING, DEFECTIVE, COMMITTED, NOT_NEEDED = (
    "provided", "verified_shared", "elicence", "missing", "defective", "committed",
    "not_needed")
MATERIAL_LABELS = {
    PROVIDED: "已提交", SHARED: "已通过共享数据核验（免提交）", ELICENCE: "已调用电子证照（免提交）",
    MISSING: "缺少", DEFECTIVE: "不符合要求", COMMITTED: "以书面承诺代替",
    NOT_NEEDED: "非必要，未提交",
}
#: Statuses that leave a material to be brought later.
OUTSTANDING = (MISSING, DEFECTIVE)

#: Complaint stages, in order.
COMPLAINT_STAGES = ("submitted", "accepted", "replied")
COMPLAINT_LABELS = {"submitted": "已提交，待受理", "accepted": "已受理，处理中", "replied": "已答复"}


def hlc_time(hlc):
    """The China-time datetime of an HLC string."""
    return datetime.datetime.fromtimestamp(parse_hlc(hlc).ms / 1000, CHINA_TIME)


def hlc_day(hlc):
    """The China-time date of an HLC string (the day an event happened)."""
    return hlc_time(hlc).date()


def _by(event):
    """The public part of who acted: name, office phone, department (never a password)."""
    by = event.get("by")
    if not isinstance(by, dict):
        return {}
    return {k: by[k] for k in ("username", "name", "phone", "department") if k in by}


def _blank(header):
    return {
        "number": header.get("number"), "item": header.get("item"),
        "item_name": header.get("item_name", ""), "origin": header.get("origin"),
        "handler": header.get("handler"), "applicant_key": header.get("applicant_key"),
        "applicant_kind": header.get("applicant_kind", "person"),
        "channel": header.get("channel", "window"),
        "department": header.get("department", ""),
        "status": SYNCING, "stage": None, "route": list(header.get("route") or
                                                         [header.get("handler")]),
        "route_index": 0, "mode": None, "materials": {}, "outstanding": [],
        "deficiency_due": None, "parallel": {d: None for d in header.get("parallel") or ()},
        "lead_department": header.get("lead_department", ""),
        "accepted": None, "accepted_day": None, "limit": header.get("limit"),
        "stops": [], "delivery_station": header.get("delivery_station") or header.get("origin"),
        "decision": None, "delivered": None, "rating": None, "complaints": [],
        "postcheck": None, "supplement_request": None, "proxy": header.get("proxy"),
        "licences": [], "timeline": [], "ignored": [], "visits": 0, "visit_days": [],
        # The latest sealed applicant profile (a continued case may correct it).
        "applicant": header.get("applicant"),
        "participants": sorted(c for c in {header.get("origin"), header.get("handler"),
                                           *(header.get("route") or ())} if c),
        "cards": [], "extensions": [], "paused": None, "applicant_facts": None,
    }


class _Refused(Exception):
    """An event that does not fit the state it meets (kept in ``ignored``)."""


class _Duplicate(Exception):
    """An event that repeats one already applied (a second sweep's card): skipped."""


def fold(header, events):
    """The state of a case from its header and events (any order, duplicates allowed).

    :param header: the ``case:`` document (None while it has not arrived).
    :param events: its ``event:`` documents.
    :returns: a JSON-ready dict (see :func:`_blank` for the members).
    """
    state = _blank(header or {})
    seen = set()
    for event in events_in_order(events):
        if event.get("_id") in seen:
            continue
        seen.add(event.get("_id"))
        kind = event.get("kind")
        apply = _APPLY.get(kind)
        # A refused event must leave no trace: try it on a copy, keep that on success.
        # Transitions never change a member in place (they build new dicts and lists),
        # so a shallow copy is enough and a fold stays linear in its events.
        trial = dict(state)
        try:
            if header is None:
                raise _Refused("案件信息尚未同步到本站")
            # Staff and citizen-side kinds alike: a station that takes no part in a case
            # cannot complain, rate or act on it (it could otherwise speak for its citizen).
            _require_participant(trial, event)
            if apply is not None:
                apply(trial, event)
        except _Duplicate:
            continue  # the same card from two sweeps (a node and the county): once
        except _Refused as refused:
            _ignore(state, event, str(refused))
            continue
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            # A document that passed the envelope checks but not the fold's: every node
            # refuses it the same way instead of failing on the whole case.
            _ignore(state, event, f"事件格式不正确（{type(exc).__name__}）")
            continue
        state = trial
        # Only the kinds that carry participants add any (casedocs.PARTY_KINDS).
        _add_participants(state, party_codes(event))
        if kind != "attached":
            _note(state, event)
    state["status_label"] = STATUS_LABELS.get(state["status"], state["status"])
    return state


def _ignore(state, event, reason):
    state["ignored"].append({"event": event.get("_id"), "kind": event.get("kind"),
                             "node": event.get("node"), "hlc": event.get("hlc"),
                             "reason": reason})


def _add_participants(state, codes):
    if isinstance(codes, list):
        found = set(state["participants"])
        found.update(c for c in codes if isinstance(c, str) and c)
        state["participants"] = sorted(found)


def _require_participant(state, event):
    """Staff actions come from a node taking part in the case or one above it."""
    node = event.get("node")
    if not isinstance(node, str) or not any(p.startswith(node) for p in state["participants"]):
        raise _Refused(f"节点 {node} 未参与该办件，不能办理")


def decision_refusal(state, node, by):
    """Why ``by`` (an event's ``by``) at ``node`` may not decide the case now, else None.

    The same rule for forward, approve, reject, request a supplement and transfer: the
    case must be in the node's queue; with parallel departments only the lead department
    decides; else a staff member with a department decides only that department's cases.
    """
    if state["status"] != HANDLING:
        return f"案件当前状态为“{STATUS_LABELS[state['status']]}”，不能办理"
    if node != state["stage"]:
        return f"案件已不在节点 {node} 办理"
    department = (by or {}).get("department") or ""
    if state["parallel"]:
        lead = state["lead_department"]
        if department != lead:
            return f"并联审批事项由牵头部门（{lead}）作出决定"
    elif department and state["department"] and department != state["department"]:
        return f"该办件属于{state['department']}，不由{department}办理"
    return None


def _note(state, event):
    kind = event.get("kind")
    entry = {"kind": kind, "label": EVENT_LABELS.get(kind, kind), "hlc": event.get("hlc"),
             "node": event.get("node"), "by": _by(event)}
    for key in ("reason", "text", "opinion", "result", "mode", "score", "to", "station",
                "department", "stage"):
        if key in event:
            entry[key] = event[key]
    state["timeline"].append(entry)


def _visit(state, event):
    """The applicant came to a station that day: a visit (two steps on one day, such as
    accepting and handing over a 即办 result, are one trip)."""
    day = hlc_day(event["hlc"]).isoformat()
    if day not in state["visit_days"]:
        state["visit_days"] = state["visit_days"] + [day]
        state["visits"] = len(state["visit_days"])


def _require(condition, reason):
    if not condition:
        raise _Refused(reason)


def _stage_node(state):
    route = state["route"]
    index = state["route_index"]
    return route[index] if 0 <= index < len(route) else None


def _set_materials(state, materials):
    """Record a checklist (index → status and scans) and recompute what is outstanding."""
    for entry in materials or ():
        if not isinstance(entry, dict) or not isinstance(entry.get("index"), int) or \
                isinstance(entry["index"], bool) or entry["index"] < 0:
            raise ValueError("material entries need a non-negative integer index")
        if entry.get("status", MISSING) not in MATERIAL_LABELS:
            raise ValueError(f"unknown material status {entry.get('status')!r}")
        key = str(entry["index"])
        held = dict(state["materials"].get(key) or {"name": entry.get("name", ""),
                                                    "status": MISSING, "scans": []})
        held["status"] = entry.get("status", held["status"])
        if entry.get("name"):
            held["name"] = entry["name"]
        for field in ("problem", "needed", "why", "licence", "shared_from"):
            if field in entry:
                held[field] = entry[field]
        held["scans"] = held["scans"] + [sha for sha in entry.get("scans") or ()
                                         if sha not in held["scans"]]
        state["materials"] = {**state["materials"], key: held}
    state["outstanding"] = sorted(
        (k for k, m in state["materials"].items() if m["status"] in OUTSTANDING), key=int)


# -- the transitions ------------------------------------------------------------------------

def _preapplied(state, event):
    _require(state["status"] == SYNCING, "预申请只能是案件的第一步")
    state["status"] = PREAPPLIED
    state["stage"] = event.get("station")
    state["delivery_station"] = event.get("station") or state["delivery_station"]
    state["channel"] = "online"
    _set_materials(state, event.get("materials"))


def _notice(state, event):
    _require(state["status"] in (SYNCING, PREAPPLIED, AWAITING),
             "一次性告知只能在受理之前出具")
    state["status"] = AWAITING
    state["stage"] = event.get("node")
    _visit(state, event)
    _set_materials(state, event.get("materials"))


def _accepted(state, event):
    _require(state["status"] in (SYNCING, PREAPPLIED, AWAITING), "该案件已经受理")
    mode = event.get("mode", NORMAL)
    _require(mode in MODE_LABELS, f"未知的受理方式 {mode}")
    state["mode"] = mode
    state["status"] = HANDLING
    state["accepted"] = event.get("hlc")
    state["accepted_day"] = hlc_day(event["hlc"]).isoformat()
    state["accepted_at"] = event.get("node")
    if event.get("visit", True):
        _visit(state, event)
    if isinstance(event.get("route"), list) and event["route"]:
        state["route"] = list(event["route"])
    state["route_index"] = 0
    state["stage"] = _stage_node(state)
    if event.get("delivery_station"):
        state["delivery_station"] = event["delivery_station"]
    if event.get("limit"):
        state["limit"] = event["limit"]
    state["deficiency_due"] = event.get("deficiency_due")
    # The day count the date was computed from, so a page re-dates it when the county
    # publishes a year the count walked through (events written before carry none).
    state["deficiency_days"] = _count(event.get("deficiency_days"))
    if event.get("item") and event["item"] != state["item"]:
        state["materials"] = {}  # accepted under a newer version: its own checklist
    for member in ("applicant", "proxy", "item", "item_version", "applicant_facts"):
        if event.get(member):
            state[member] = event[member]
    if mode == COMMITMENT:
        state["postcheck"] = {"due": event.get("postcheck_due"), "result": None,
                              "days": _count(event.get("postcheck_days"))}
    _set_materials(state, event.get("materials"))


def _attached(state, event):
    if isinstance(event.get("material"), int) and event["material"] < 0:
        # Not a material of the item: the proxy's authorisation document.
        state["proxy_scans"] = state.get("proxy_scans", []) + [event.get("sha256")]
        return
    key = str(event.get("material"))
    held = dict(state["materials"].get(key) or {"name": event.get("material_name", ""),
                                                "status": PROVIDED, "scans": []})
    if event.get("sha256") and event["sha256"] not in held["scans"]:
        held["scans"] = held["scans"] + [event["sha256"]]
    state["materials"] = {**state["materials"], key: held}


def _supplemented(state, event):
    _require(state["status"] in (PREAPPLIED, AWAITING, HANDLING, SUPPLEMENTING),
             "案件已办结，不能再补充材料")
    _set_materials(state, event.get("materials"))
    if event.get("visit", True):
        _visit(state, event)
    if state["status"] == SUPPLEMENTING:
        state["stops"] = state["stops"][:-1] + [[state["stops"][-1][0],
                                                 hlc_day(event["hlc"]).isoformat()]]
        state["status"] = HANDLING
        state["stage"] = state["supplement_request"]["node"]
        state["supplement_request"] = None


def _in_queue_of_author(state, event, what):
    _require(state["status"] == HANDLING, f"案件当前状态为“{STATUS_LABELS[state['status']]}”，不能{what}")
    _require(event.get("node") == state["stage"],
             f"案件已不在节点 {event.get('node')} 办理，不能{what}")


def _forwarded(state, event):
    _in_queue_of_author(state, event, "报送")
    _require_decider(state, event)
    _require(state["route_index"] + 1 < len(state["route"]), "已是决定机关，不能再报送")
    state["route_index"] += 1
    state["stage"] = _stage_node(state)


def _opinion(state, event):
    _in_queue_of_author(state, event, "提出并联意见")
    department = event.get("department")
    _require(isinstance(department, str) and department in state["parallel"],
             f"{department} 不是本事项的并联部门")
    _require((event.get("by") or {}).get("department") == department,
             "只能以本人所在部门提出并联意见")
    _require(state["parallel"][department] is None, f"{department} 已提出意见")
    opinion = {"opinion": event.get("opinion"), "text": event.get("text", ""),
               "by": _by(event), "hlc": event.get("hlc")}
    state["parallel"] = {**state["parallel"], department: opinion}


def _supplement_requested(state, event):
    _in_queue_of_author(state, event, "要求补正")
    _require_decider(state, event)
    _require(state["paused"] is None, "计时暂停期间不能要求补正，请先恢复计时")
    state["status"] = SUPPLEMENTING
    state["supplement_request"] = {"node": event.get("node"), "reason": event.get("reason", ""),
                                   "hlc": event.get("hlc")}
    state["stops"] = state["stops"] + [[hlc_day(event["hlc"]).isoformat(), None]]
    _set_materials(state, event.get("materials"))
    state["stage"] = None


def _decided(state, event):
    kind = event["kind"]
    _in_queue_of_author(state, event, "作出决定")
    _require(state["route_index"] == len(state["route"]) - 1, "本节点负责初审，决定须由上级作出")
    _require_decider(state, event)
    if kind == "approved":
        refusal = approval_refusal(state)
        _require(refusal is None, refusal)
    state["decision"] = {"kind": kind, "hlc": event.get("hlc"), "node": event.get("node"),
                         "by": _by(event), "reason": event.get("reason", ""),
                         "result": event.get("result", "")}
    licence = event.get("licence")
    if kind == "approved" and isinstance(licence, dict):
        state["licences"] = state["licences"] + [licence]
        state["decision"]["licence"] = licence  # a dict made just above
    state["decided_day"] = hlc_day(event["hlc"]).isoformat()
    state["status"] = READY
    state["stage"] = state["delivery_station"]


def _require_decider(state, event):
    refusal = decision_refusal(state, event.get("node"), event.get("by"))
    _require(refusal is None, refusal)


def approval_refusal(state):
    """Why the case cannot be approved yet, whoever decides (None when it can): deferred
    materials not yet supplied, or parallel departments' opinions missing or against."""
    if state["outstanding"]:
        names = "、".join(state["materials"][k]["name"] for k in state["outstanding"])
        return f"仍有容缺材料未补齐（{names}），不能审批通过。"
    pending = [d for d, o in state["parallel"].items() if o is None]
    if pending:
        return "并联部门意见未齐：" + "、".join(pending) + "。"
    against = [d for d, o in state["parallel"].items() if o.get("opinion") != "agree"]
    if against:
        return "并联部门不同意：" + "、".join(against) + "，不能审批通过。"
    return None


def _transferred(state, event):
    _in_queue_of_author(state, event, "转办")
    _require_decider(state, event)
    target = event.get("to")
    _require(isinstance(target, str) and target != event.get("node"), "转办对象无效")
    index = state["route_index"]
    # The target takes this stage; later stages (the county after a review) stay.
    state["route"] = state["route"][:index] + [target] + state["route"][index + 1:]
    state["stage"] = target
    state["handler"] = state["route"][-1]


def _delivery_changed(state, event):
    _require(state["status"] in OPEN_STATUSES, "结果已送达，不能变更领取站点")
    _require(isinstance(event.get("station"), str) and event["station"], "领取站点无效")
    state["delivery_station"] = event.get("station")
    if state["status"] == READY:
        state["stage"] = event.get("station")


def _delivered(state, event):
    _require(state["status"] == READY, "案件尚未办结，或结果已经送达")
    _require(event.get("node") == state["delivery_station"],
             "结果须在申请人选定的领取站点送达（先变更领取站点）")
    state["status"] = DONE
    state["stage"] = None
    state["delivered"] = {"node": event.get("node"), "hlc": event.get("hlc"),
                          "by": _by(event), "to": event.get("to", "applicant"),
                          "id_checked": event.get("id_checked") is True}
    if event.get("visit", True):
        _visit(state, event)


def _rated(state, event):
    _require(state["status"] == DONE, "结果送达后才能评价")
    _require(state["rating"] is None, "该案件已评价，不能重复评价")
    state["rating"] = {"score": event.get("score"), "text": event.get("text", ""),
                       "hlc": event.get("hlc")}


def _complained(state, event):
    _require(state["status"] != SYNCING, "案件信息尚未同步")
    complaint = {"id": event.get("_id"), "text": event.get("text", ""), "hlc": event.get("hlc"),
                 "stage": "submitted", "steps": []}
    state["complaints"] = state["complaints"] + [complaint]


def _complaint_handled(state, event):
    target = next((c for c in state["complaints"] if c["id"] == event.get("complaint")), None)
    _require(target is not None, "找不到该投诉")
    stage = event.get("stage")
    _require(stage in COMPLAINT_STAGES[1:], f"未知的投诉处理阶段 {stage}")
    _require(COMPLAINT_STAGES.index(stage) > COMPLAINT_STAGES.index(target["stage"]),
             "该投诉已处于这一阶段或之后")
    step = {"stage": stage, "text": event.get("text", ""), "hlc": event.get("hlc"),
            "node": event.get("node"), "by": _by(event)}
    handled = dict(target, stage=stage, steps=target["steps"] + [step])
    state["complaints"] = [handled if c is target else c for c in state["complaints"]]


def _commitment_checked(state, event):
    _require(state["postcheck"] is not None, "该案件不是告知承诺受理")
    _require(state["postcheck"]["result"] is None, "核查结果已经登记")
    state["postcheck"] = {**state["postcheck"], "result": event.get("result"),
                          "text": event.get("text", "")}


def _joined(state, event):
    """Handle anywhere: only the county answers a look-up, so only it joins a station."""
    _require(cfg.tier_of(event.get("node")) == "county", "只有县级节点答复通办查询时才能接入站点")
    _require(len(event.get("parties") or ()) == 1, "接入事件须指明一个站点")


def _withdrawn(state, event):
    _require(state["status"] in (PREAPPLIED, AWAITING, HANDLING, SUPPLEMENTING),
             "案件已作出决定，不能撤回")
    state["status"] = WITHDRAWN
    state["stage"] = None


def _card(state, event):
    _require(state["status"] in (HANDLING, SUPPLEMENTING), "办件不在办理中，不亮牌")
    color = event.get("color")
    _require(color in CARD_LABELS, f"未知的督办牌 {color}")
    if any(c["color"] == color and c["due"] == event.get("due") for c in state["cards"]):
        raise _Duplicate()
    card = {"id": event.get("_id"), "color": color, "due": event.get("due"),
            "days_left": event.get("days_left"), "hlc": event.get("hlc"),
            "node": event.get("node"), "followed_up": None}
    state["cards"] = state["cards"] + [card]


def _followed_up(state, event):
    target = next((c for c in state["cards"] if c["id"] == event.get("card")), None)
    _require(target is not None, "找不到该督办牌")
    _require(target["followed_up"] is None, "该督办牌已有跟进记录")
    _require(isinstance(event.get("note"), str) and event["note"].strip(), "跟进须写明情况")
    done = dict(target, followed_up={"note": event["note"], "by": _by(event),
                                     "hlc": event.get("hlc")})
    state["cards"] = [done if c is target else c for c in state["cards"]]


def _extended(state, event):
    _in_queue_of_author(state, event, "延长期限")
    _require_decider(state, event)
    days = event.get("days")
    _require(isinstance(days, int) and not isinstance(days, bool) and 1 <= days <= 365,
             "延长的工作日数须在 1 到 365 之间")
    _require(isinstance(event.get("reason"), str) and event["reason"].strip(),
             "延长审批期限须写明理由")
    extension = {"days": days, "reason": event["reason"], "by": _by(event),
                 "hlc": event.get("hlc")}
    state["extensions"] = state["extensions"] + [extension]


def _clock_stopped(state, event):
    _in_queue_of_author(state, event, "暂停计时")
    _require_decider(state, event)
    _require(state["paused"] is None, "计时已经暂停")
    _require(isinstance(event.get("reason"), str) and event["reason"].strip(),
             "暂停计时须写明环节（如听证、现场勘查、专家评审）")
    day = hlc_day(event["hlc"]).isoformat()
    state["paused"] = {"reason": event["reason"], "since": day}
    state["stops"] = state["stops"] + [[day, None]]


def _clock_resumed(state, event):
    _in_queue_of_author(state, event, "恢复计时")
    _require(state["paused"] is not None, "计时没有暂停")
    state["paused"] = None
    state["stops"] = state["stops"][:-1] + [[state["stops"][-1][0],
                                             hlc_day(event["hlc"]).isoformat()]]


_APPLY = {
    "preapplied": _preapplied, "notice": _notice, "accepted": _accepted,
    "attached": _attached, "supplemented": _supplemented, "forwarded": _forwarded,
    "opinion": _opinion, "supplement_requested": _supplement_requested,
    "approved": _decided, "rejected": _decided, "transferred": _transferred,
    "delivery_changed": _delivery_changed, "delivered": _delivered, "rated": _rated,
    "complained": _complained, "complaint_handled": _complaint_handled,
    "commitment_checked": _commitment_checked, "withdrawn": _withdrawn, "joined": _joined,
    "card": _card, "followed_up": _followed_up, "extended": _extended,
    "clock_stopped": _clock_stopped, "clock_resumed": _clock_resumed,
}


# -- the clock --------------------------------------------------------------------------

def stops_as_dates(state):
    """The clock stops as ``(stop date, resume date or None)``."""
    return [(datetime.date.fromisoformat(a), datetime.date.fromisoformat(b) if b else None)
            for a, b in state["stops"]]


def _count(value):
    """A recorded day count, or None when absent or malformed."""
    return value if isinstance(value, int) and not isinstance(value, bool) and \
        0 <= value <= 3650 else None


def due_date(state, calendar):
    """The due date of an accepted case under ``calendar`` (a ``workdays.WorkCalendar``).

    None before acceptance, while the clock is stopped, or when the item has no time limit
    recorded. Calendar limits (``自然日``) count calendar days; stops (supplements,
    hearings, inspections, expert review) and approved extensions (延长审批) extend both.
    """
    found = due_info(state, calendar)
    return found.day if found else None


def forwarded_immediate(state):
    """True for a 即办件 accepted at a station that does not decide it (a village passing a
    township's item up): it is decided on arrival, due the next working day rather than
    the day of acceptance, which at the decider would read 当日到期 and then overdue."""
    limit = state.get("limit") or {}
    route = state.get("route") or []
    return not limit.get("days") and bool(route) and route[-1] != state.get("accepted_at")


def due_info(state, calendar):
    """:func:`due_date` as a ``workdays.Due``: the date and whether it is provisional
    (counted through days no published arrangement covers yet)."""
    limit = state.get("limit")
    if not state.get("accepted_day") or not limit:
        return None
    start = datetime.date.fromisoformat(state["accepted_day"])
    stops = stops_as_dates(state)
    days = int(limit.get("days", 0)) + sum(e["days"] for e in state.get("extensions") or ())
    if days == 0 and forwarded_immediate(state):
        days = 1  # 即办 where it is decided: the next working day, never overdue in transit
    if limit.get("unit") == "自然日":
        if any(resume is None for _, resume in stops):
            return None
        paused = sum((resume - stop).days for stop, resume in stops)
        return Due(start + datetime.timedelta(days=days + paused))
    return calendar.due_info(start, days, stops)


def deadline_info(state, which, calendar):
    """The 容缺 (``which="deficiency"``) or 告知承诺 post-check (``"postcheck"``) deadline as
    a ``workdays.Due``, counted again under ``calendar`` when the event recorded its day
    count; the recorded date as it stands otherwise. None when the case has none."""
    if which == "deficiency":
        recorded, days = state.get("deficiency_due"), state.get("deficiency_days")
    else:
        check = state.get("postcheck") or {}
        recorded, days = check.get("due"), check.get("days")
    if not recorded:
        return None
    if days is not None and calendar is not None and state.get("accepted_day"):
        return calendar.add_workdays_info(state["accepted_day"], days)
    try:
        return Due(datetime.date.fromisoformat(recorded))
    except (TypeError, ValueError):
        return None
