"""What the staff case pages share: the blueprint, the action tables, times and due dates
as shown, loading a case and reading uploads.

The pages are thin. Every change goes through the node's desk (:func:`shared.cases.web.desk`);
a refusal (``CaseError``) is shown with the desk's own Chinese sentence and nothing is
written. Every page that shows an applicant's decrypted data writes one audit entry
(:func:`shared.cases.web.audit_view`). Uploaded scans are all checked before any is
stored, so a refused file leaves nothing behind.
"""

import logging
import re

from flask import Blueprint, abort, current_app, request

from shared import registry
from shared.cases import blobs as blobmod
from shared.cases import fold as F
from shared.cases import web
from shared.cases.desk import CaseError
from shared.staff import message_page
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
