"""Public case pages (no login): progress by case number, rating, complaint, online pre-application.

A citizen proves they are the applicant with the case number plus the applicant's name or
the last four digits of the phone, checked against the decrypted profile in the case's
folded state (the latest one: a window may correct what was typed online). A wrong proof
and a number this node does not hold get the same answer (404, one message), so the page
never tells whether a number exists. A proof is kept for
:data:`PROOF_SECONDS` in the signed Flask session, so the rating and complaint forms work
without asking again.

Public forms have no staff session: :func:`form_token_field` puts a random token kept in
the Flask session into each form, and :func:`form_token_required` refuses a POST that does
not send it back, which a form on another site cannot do.

Case numbers are sequential and the phone's last four digits have only 10^4 values, so
failed proofs are throttled per case number and per client address; online
pre-applications and bookings are throttled per client address. The counters live in the
``public_throttle`` table of the node's store (one row per scope and key, purged once
their window is over). The address is ``request.remote_addr`` only: a forwarded-for
header is set by the client and proves nothing.
"""

import functools
import hmac
import logging
import math
import secrets
import unicodedata
from typing import NamedTuple

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from markupsafe import Markup, escape

from shared import casedocs, clock, errors, registry
from shared.cases import fold as F
from shared.cases import idnumbers, personal, web
from shared.cases.blobs import MAX_BLOB_BYTES, MIB, BlobRefused
from shared.cases.blobs import check as check_blob
from shared.cases.desk import ApplicantInput, CaseError
from shared.catalog import active
from shared.staff import message_page

logger = logging.getLogger(__name__)

bp = Blueprint("progress", __name__)

#: How long a proven case stays open in this browser (seconds).
PROOF_SECONDS = 30 * 60
#: Proven cases one browser session keeps (the oldest are dropped).
MAX_PROOFS = 10
FORM_TOKEN = "form_token"
MISMATCH = "办件编号与姓名或手机号后四位不匹配"
FORM_REJECTED = "请求无效：页面已过期或来源不明，请刷新页面后重试。"
PROOF_NEEDED = "请先输入办件编号和申请人姓名（或手机号后四位）查询后再操作。"
#: The five levels of 好差评, best first.
RATINGS = ((5, "非常满意"), (4, "满意"), (3, "基本满意"), (2, "不满意"), (1, "非常不满意"))
RATING_NAMES = dict(RATINGS)
MAX_RATING_TEXT = 500
MAX_COMPLAINT_TEXT = 1000
MAX_ADDRESS = 200
#: Messages a redirect may ask a page to show (never text from the query string itself).
DONE_MESSAGES = {"rated": "感谢您的评价！", "complained": "投诉已提交，受理和答复情况会显示在本页。",
                 "exited": "已退出查询，本机不再保留您的查询记录。"}
DECISION_LABELS = {"approved": "审批通过", "rejected": "不予批准"}
OPINION_LABELS = {"agree": "同意", "disagree": "不同意"}
APPLY_TIERS = ("village", "township")
#: Files one material of a pre-application may carry.
MAX_FILES_PER_MATERIAL = 3
#: Bytes a whole pre-application request may have (the form and every file).
MAX_APPLY_REQUEST = 20 * MIB


def _db():
    return current_app.extensions["store"].db


def client_address():
    """The address the request came from (never a forwarded-for header, which the client
    writes itself)."""
    return request.remote_addr or "unknown"


# -- throttles ----------------------------------------------------------------------------

class Limit(NamedTuple):
    """At most ``count`` events of ``scope`` per key within ``seconds``."""

    scope: str
    count: int
    seconds: int


PROOF_PER_NUMBER = Limit("proof-number", 5, 15 * 60)
PROOF_PER_ADDRESS = Limit("proof-address", 20, 15 * 60)
APPLY_PER_ADDRESS = Limit("apply-address", 10, 60 * 60)
BOOK_PER_ADDRESS = Limit("book-address", 10, 60 * 60)
#: Every limit's window ends within this many seconds: older rows are purged.
LONGEST_WINDOW = max(limit.seconds for limit in (PROOF_PER_NUMBER, PROOF_PER_ADDRESS,
                                                 APPLY_PER_ADDRESS, BOOK_PER_ADDRESS))
#: Rows the table keeps at most, should a flood of keys arrive within one window.
MAX_THROTTLE_ROWS = 100_000
#: Longest key stored (case numbers and addresses are far shorter).
MAX_THROTTLE_KEY = 64
PROOF_THROTTLED = "查询失败次数过多，请 {minutes} 分钟后再试。"
APPLY_THROTTLED = "本机提交的网上预申请过多，请 {minutes} 分钟后再试，或直接到服务站办理。"

THROTTLE_TABLES = (
    """CREATE TABLE IF NOT EXISTS public_throttle (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        started REAL NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (scope, key)
    )""",
    "CREATE INDEX IF NOT EXISTS public_throttle_started ON public_throttle (started)",
)


def create_throttle_table(db):
    """Create the table of public throttle counters if it does not exist."""
    with db.atomic():
        for statement in THROTTLE_TABLES:
            db.execute_sql(statement)


def throttle_wait(db, checks, at=None):
    """Seconds until every ``(limit, key)`` of ``checks`` allows another event; None when
    all allow one now."""
    at = clock.time() if at is None else at
    waits = []
    for limit, key in checks:
        row = db.execute_sql("SELECT started, count FROM public_throttle "
                             "WHERE scope = ? AND key = ?",
                             (limit.scope, key[:MAX_THROTTLE_KEY])).fetchone()
        if row is not None and row[1] >= limit.count and row[0] + limit.seconds > at:
            waits.append(row[0] + limit.seconds - at)
    return max(waits) if waits else None


def throttle_note(db, checks, at=None):
    """Count one event against each ``(limit, key)`` of ``checks``; a window that is over
    starts again. Rows whose window is over are purged."""
    at = clock.time() if at is None else at
    with db.atomic():
        db.execute_sql("DELETE FROM public_throttle WHERE started <= ?", (at - LONGEST_WINDOW,))
        for limit, key in checks:
            expired = at - limit.seconds
            db.execute_sql(
                "INSERT INTO public_throttle (scope, key, started, count) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (scope, key) DO UPDATE SET "
                "count = CASE WHEN started <= ? THEN 1 ELSE count + 1 END, "
                "started = CASE WHEN started <= ? THEN excluded.started ELSE started END",
                (limit.scope, key[:MAX_THROTTLE_KEY], at, expired, expired))
        _bound_throttle_rows(db)


def _bound_throttle_rows(db):
    # Only a flood of distinct keys within one window gets here; the oldest rows go.
    (rows,) = db.execute_sql("SELECT count(*) FROM public_throttle").fetchone()
    if rows > MAX_THROTTLE_ROWS:
        logger.warning("public throttle table over %d rows: oldest dropped", MAX_THROTTLE_ROWS)
        db.execute_sql("DELETE FROM public_throttle WHERE rowid IN (SELECT rowid FROM "
                       "public_throttle ORDER BY started LIMIT ?)", (rows - MAX_THROTTLE_ROWS,))


def throttle_clear(db, limit, key):
    """Forget the events counted against ``key`` (a proof that succeeded)."""
    db.execute_sql("DELETE FROM public_throttle WHERE scope = ? AND key = ?",
                   (limit.scope, key[:MAX_THROTTLE_KEY]))


def minutes(seconds):
    """Whole minutes to wait, rounded up (at least 1)."""
    return max(1, math.ceil(seconds / 60))


def throttled(response, seconds):
    """``response`` (a 429 page) with its Retry-After header."""
    response.headers["Retry-After"] = str(max(1, math.ceil(seconds)))
    return response


# -- request size -------------------------------------------------------------------------

def size_text(size):
    """``20 MB`` / ``64 KB``: a byte limit as people read it."""
    return f"{size // MIB} MB" if size >= MIB else f"{max(1, size // 1024)} KB"


UPLOAD_HINT = (f"每项材料最多 {MAX_FILES_PER_MATERIAL} 个文件、每个文件不超过 "
               f"{MAX_BLOB_BYTES // MIB} MB，请减少或压缩文件后返回重新提交。")


def too_large_page(limit, hint=UPLOAD_HINT):
    """The 413 page of a request over ``limit`` bytes (nothing of it was stored)."""
    return message_page(413, "提交内容过大",
                        f"提交的内容过大（一次最多 {size_text(limit)}），未保存任何内容。{hint}")


def request_size_guard(limits, hint=UPLOAD_HINT):
    """A before_request function and a 413 handler for a blueprint: the endpoints in
    ``limits`` (``{endpoint: bytes}``) read at most that many bytes, and a request that
    declares more gets the 413 page before anything of it is read."""
    def guard():
        limit = limits.get(request.endpoint)
        if limit is None:
            return None
        request.max_content_length = limit
        if request.content_length is not None and request.content_length > limit:
            logger.info("%s: request of %d bytes refused (limit %d)", request.path,
                        request.content_length, limit)
            return too_large_page(limit, hint)
        return None

    def refused(exc):
        # A request without a declared length that turned out too long while being read.
        limit = limits.get(request.endpoint)
        return too_large_page(limit, hint) if limit else exc
    return guard, refused


# -- the public form token ---------------------------------------------------------------

def form_token():
    """This browser's token for public forms (created on first use)."""
    token = session.get(FORM_TOKEN)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[FORM_TOKEN] = token
    return token


def form_token_field():
    """A hidden input carrying :func:`form_token` (put it in every public POST form)."""
    return Markup(f'<input type="hidden" name="{FORM_TOKEN}" value="{escape(form_token())}">')


def form_token_valid():
    """True when the POST sends back this browser's form token."""
    expected = session.get(FORM_TOKEN)
    sent = request.form.get(FORM_TOKEN) or ""
    return isinstance(expected, str) and bool(expected) and hmac.compare_digest(
        sent.encode("utf-8"), expected.encode("utf-8"))


def form_token_refusal():
    """None when the request may go on, else the 400 page for a POST without the token."""
    if request.method == "POST" and not form_token_valid():
        logger.warning("public form posted without its token: %s", request.path)
        return message_page(400, "请求无效", FORM_REJECTED)
    return None


def form_token_required(view):
    """Decorate a public view: a POST must carry the form token."""
    @functools.wraps(view)
    def guarded(*args, **kwargs):
        return form_token_refusal() or view(*args, **kwargs)
    return guarded


# -- proof of being the applicant -----------------------------------------------------------

def _plain(text):
    """``text`` as compared: full-width folded (NFKC), no whitespace."""
    return "".join(unicodedata.normalize("NFKC", text or "").split())


def clean_number(text):
    """A case number as typed, normalised (full-width digits, spaces)."""
    return _plain(text)[:64]


def well_formed(number):
    """True when ``number`` is spelt like a case number."""
    try:
        casedocs.parse_case_number(number)
    except errors.DocValidation:
        return False
    return True


def proof_matches(profile, proof):
    """True when ``proof`` is the applicant's name or the last 4 digits of their phone."""
    proof = _plain(proof)
    if not proof:
        return False
    if len(proof) == 4 and proof.isdigit():
        expected = personal.phone_last4(profile.get("phone"))
    else:
        expected = _plain(profile.get("name"))
    return bool(expected) and hmac.compare_digest(proof.encode("utf-8"),
                                                  expected.encode("utf-8"))


def grant_proof(number):
    """Remember in this browser's session that it proved ``number`` (for 30 minutes)."""
    now = clock.time()
    proofs = {n: t for n, t in (session.get("proofs") or {}).items()
              if isinstance(t, (int, float)) and t > now and n != number}
    kept = sorted(proofs.items(), key=lambda pair: pair[1])[-(MAX_PROOFS - 1):]
    session["proofs"] = dict(kept, **{number: now + PROOF_SECONDS})


def has_proof(number):
    """True while this browser's proof of ``number`` is fresh."""
    expiry = (session.get("proofs") or {}).get(number)
    return isinstance(expiry, (int, float)) and expiry > clock.time()


def forget_proofs():
    """Forget every proof, booking and form token of this browser (a shared PC)."""
    session.clear()


def _profile_of(desk, number):
    """The decrypted applicant of a case held here, or None (not held, unreadable).

    Opened from the folded state: a case continued at a window carries the corrected
    profile there, and that is the one to prove against."""
    try:
        _, _, state = desk.load(number)
    except CaseError:
        return None
    return desk.open_profile(state)


def mask_licence(number):
    """A licence number with only its first 4 and last 2 characters shown (short numbers
    keep less)."""
    number = (number or "").strip()
    if len(number) >= 8:
        return number[:4] + "*" * (len(number) - 6) + number[-2:]
    if len(number) >= 3:
        return number[0] + "*" * (len(number) - 2) + number[-1]
    return "*" * len(number)


# -- page pieces --------------------------------------------------------------------------

def _time(hlc):
    return F.hlc_time(hlc).strftime("%Y-%m-%d %H:%M") if hlc else ""


class _Names:
    """Node names looked up once per page."""

    def __init__(self):
        self.known = {}

    def __call__(self, code):
        if code not in self.known:
            self.known[code] = web.node_name(code) if code else ""
        return self.known[code]


def _detail(entry, names):
    """The extra line of a timeline step (reason, result, station …)."""
    parts = []
    if entry.get("mode") and entry["mode"] != F.NORMAL:
        parts.append(F.MODE_LABELS.get(entry["mode"], entry["mode"]))
    if entry.get("department"):
        parts.append(entry["department"])
    if entry.get("opinion"):
        parts.append(OPINION_LABELS.get(entry["opinion"], entry["opinion"]))
    if entry.get("stage"):
        parts.append(F.COMPLAINT_LABELS.get(entry["stage"], entry["stage"]))
    if entry.get("score"):
        parts.append(RATING_NAMES.get(entry["score"], str(entry["score"])))
    if entry.get("to") and entry["kind"] == "transferred":
        parts.append(f"转至 {names(entry['to'])}")
    if entry.get("station"):
        parts.append(f"站点：{names(entry['station'])}")
    for key in ("result", "reason", "text"):
        if entry.get(key):
            parts.append(str(entry[key]))
    return "；".join(parts)


def timeline(state, names):
    """The steps of a case as the progress page lists them."""
    rows = []
    for entry in state["timeline"]:
        by = entry.get("by") or {}
        rows.append({"time": _time(entry.get("hlc")), "label": entry["label"],
                     "node": names(entry.get("node")), "name": by.get("name", ""),
                     "phone": by.get("phone", ""), "department": by.get("department", ""),
                     "detail": _detail(entry, names)})
    return rows


def due_text(state, calendar):
    """The due date as shown: a date, or why there is none (a provisional date is still a
    date: the page marks it 暂定 beside it, see :func:`due_info`)."""
    if state["status"] == F.SUPPLEMENTING:
        return "补正期间暂停计时，补齐材料后继续计算"
    if not state.get("accepted_day"):
        return "受理后开始计算"
    if state["status"] in (F.READY, F.DONE):
        return f"已于 {state.get('decided_day') or '—'} 办结"
    due = due_info(state, calendar)
    return due.isoformat() if due else "—"


def due_info(state, calendar):
    """The due date as a ``workdays.Due`` (None: no date to show)."""
    if calendar is None or not state.get("accepted_day") or \
            state["status"] in (F.SUPPLEMENTING, F.READY, F.DONE):
        return None
    return F.due_info(state, calendar)


def outstanding(state):
    """The materials still to be brought, with what is needed and why."""
    return [dict(state["materials"][key], index=int(key)) for key in state["outstanding"]
            if key in state["materials"]]


def complaints(state, names):
    """The complaints with their stage and the replies, oldest first."""
    result = []
    for complaint in state["complaints"]:
        steps = [{"label": F.COMPLAINT_LABELS.get(s["stage"], s["stage"]), "text": s["text"],
                  "time": _time(s.get("hlc")), "node": names(s.get("node")),
                  "name": (s.get("by") or {}).get("name", ""),
                  "phone": (s.get("by") or {}).get("phone", "")}
                 for s in complaint["steps"]]
        result.append({"text": complaint["text"], "time": _time(complaint.get("hlc")),
                       "stage": complaint["stage"],
                       "stage_label": F.COMPLAINT_LABELS.get(complaint["stage"],
                                                             complaint["stage"]),
                       "steps": steps})
    return result


def decision(state, names):
    """The decision (approved or rejected) as shown, or None."""
    found = state.get("decision")
    if not found:
        return None
    by = found.get("by") or {}
    licence = found.get("licence")
    if isinstance(licence, dict):
        # Enough for the citizen to recognise the licence, not enough to quote it.
        licence = dict(licence, number=mask_licence(str(licence.get("number") or "")))
    return {"kind": found["kind"], "label": DECISION_LABELS.get(found["kind"], found["kind"]),
            "result": found.get("result", ""), "reason": found.get("reason", ""),
            "time": _time(found.get("hlc")), "node": names(found.get("node")),
            "name": by.get("name", ""), "phone": by.get("phone", ""),
            "licence": licence}


# -- the progress pages ---------------------------------------------------------------------

def _query_form(number="", error=None, status=200, mismatch=False, notice=None):
    origin = ""
    if mismatch:
        # Named from the number as typed, so it tells nothing about what this node holds.
        origin = web.node_name(number.split("-", 1)[0])
    body = render_template("progress/query.html", number=number, error=error,
                           mismatch=mismatch, origin=origin, notice=notice)
    return current_app.response_class(body, status=status, mimetype="text/html")


def _submit_proof(number, proof):
    if not number:
        return _query_form(error="请输入办件编号。", status=400)
    if not well_formed(number):
        return _query_form(number, "办件编号格式不正确，应为“站点代码-日期-序号”，"
                                   "如 441521101001-20240301-0001。", 400)
    if not _plain(proof):
        return _query_form(number, "请输入申请人姓名或手机号后四位。", 400)
    db = _db()
    counted = [(PROOF_PER_NUMBER, number), (PROOF_PER_ADDRESS, client_address())]
    wait = throttle_wait(db, counted)
    if wait is not None:
        # Refused before the proof is looked at, so guessing on cannot find the right one.
        logger.warning("progress of %s from %s: throttled", number, client_address())
        return throttled(_query_form(number, PROOF_THROTTLED.format(minutes=minutes(wait)),
                                     429), wait)
    profile = _profile_of(web.desk(), number)
    if profile is None or not proof_matches(profile, proof):
        logger.info("progress of %s: proof refused", number)
        throttle_note(db, counted)
        return _query_form(number, MISMATCH, 404, mismatch=True)
    throttle_clear(db, PROOF_PER_NUMBER, number)
    grant_proof(number)
    return redirect(url_for("progress.case", number=number))


@bp.route("/progress", methods=["GET", "POST"])
@form_token_required
def query():
    """The form: case number plus the applicant's name or the phone's last 4 digits."""
    if request.method == "POST":
        return _submit_proof(clean_number(request.form.get("number")),
                             request.form.get("proof", ""))
    return _query_form(clean_number(request.args.get("number")),
                       notice=DONE_MESSAGES.get(request.args.get("done")))


@bp.route("/progress/exit", methods=["POST"])
@form_token_required
def exit_query():
    """退出查询: this browser forgets every proven case (public and shared PCs)."""
    forget_proofs()
    return redirect(url_for("progress.query", done="exited"))


@bp.route("/progress/<number>")
def case(number):
    """The case's progress once proven; else the form with the number filled in."""
    number = clean_number(number)
    if not has_proof(number):
        return _query_form(number if well_formed(number) else "")
    return progress_page(number, notice=DONE_MESSAGES.get(request.args.get("done")))


def progress_page(number, error=None, status=200, notice=None, form=None):
    """The progress page of a proven case (``error``: a refused action's message)."""
    desk = web.desk()
    try:
        _, _, state = desk.load(number)
    except CaseError:
        return _query_form(number, MISMATCH, 404, mismatch=True)
    profile = desk.open_profile(state)
    names = _Names()
    body = render_template(
        "progress/case.html", number=number, state=state, item_name=state.get("item_name"),
        applicant=personal.mask_name(profile.get("name")),
        steps=timeline(state, names), due=due_text(state, desk.calendar),
        due_info=due_info(state, desk.calendar),
        deficiency=F.deadline_info(state, "deficiency", desk.calendar),
        stage=names(state.get("stage")), delivery_station=names(state.get("delivery_station")),
        missing=outstanding(state), decision=decision(state, names),
        delivered=state.get("delivered") and {
            "node": names(state["delivered"].get("node")),
            "time": _time(state["delivered"].get("hlc"))},
        complaints=complaints(state, names), ratings=RATINGS,
        rating=state.get("rating") and dict(
            state["rating"], label=RATING_NAMES.get(state["rating"].get("score"), "")),
        supplement=state.get("supplement_request"),
        can_rate=state["status"] == F.DONE and not state.get("rating"),
        can_complain=state["status"] != F.SYNCING,
        error=error, notice=notice, form=form or {})
    return current_app.response_class(body, status=status, mimetype="text/html")


def _proof_refusal(number):
    if has_proof(number):
        return None
    return _query_form(number if well_formed(number) else "", PROOF_NEEDED, 403)


def _score(text):
    try:
        score = int(text)
    except (TypeError, ValueError):
        return None
    return score if score in RATING_NAMES else None


@bp.route("/progress/<number>/rate", methods=["POST"])
@form_token_required
def rate(number):
    """The citizen's 好差评 after delivery (once)."""
    number = clean_number(number)
    refusal = _proof_refusal(number)
    if refusal is not None:
        return refusal
    form = {"score": request.form.get("score", ""), "text": request.form.get("text", "")}
    score = _score(form["score"])
    if score is None:
        return progress_page(number, "请选择评价等级。", 400, form=form)
    if len(form["text"].strip()) > MAX_RATING_TEXT:
        return progress_page(number, f"评价内容不能超过 {MAX_RATING_TEXT} 字。", 400, form=form)
    try:
        web.desk().rate(number, score, form["text"])
    except CaseError as exc:
        return progress_page(number, exc.message, 409, form=form)
    logger.info("case %s rated %d", number, score)
    return redirect(url_for("progress.case", number=number, done="rated"))


@bp.route("/progress/<number>/complain", methods=["POST"])
@form_token_required
def complain(number):
    """A complaint about the case; its handling and reply show on the progress page."""
    number = clean_number(number)
    refusal = _proof_refusal(number)
    if refusal is not None:
        return refusal
    form = {"complaint": request.form.get("text", "")}
    text = form["complaint"].strip()
    if not text:
        return progress_page(number, "请填写投诉内容。", 400, form=form)
    if len(text) > MAX_COMPLAINT_TEXT:
        return progress_page(number, f"投诉内容不能超过 {MAX_COMPLAINT_TEXT} 字。", 400,
                             form=form)
    try:
        web.desk().complain(number, text)
    except CaseError as exc:
        return progress_page(number, exc.message, 409, form=form)
    logger.info("case %s: complaint submitted", number)
    return redirect(url_for("progress.case", number=number, done="complained"))


# -- online pre-application ------------------------------------------------------------------

def online_items(db):
    """The items in force that take online applications (cached per release)."""
    release = active.active_number(db)
    cached = current_app.extensions.get("progress_online_items")
    if cached is not None and cached[0] == release:
        return cached[1]
    summaries = active.active_items(db)
    full = active.active_item_map(db, [s["item_id"] for s in summaries])
    items = [{"id": s["item_id"], "name": s["name"], "department": s["department"],
              "visits": full[s["item_id"]].get("max_on_site_visits")}
             for s in summaries
             if full.get(s["item_id"], {}).get("online_application")]
    current_app.extensions["progress_online_items"] = (release, items)
    return items


def stations(db, item):
    """``[(code, name)]`` of the stations that can take ``item`` (this node first)."""
    # Only what the county's registry lists as active: a revoked station (or this node,
    # if revoked or not yet enrolled) takes no pre-applications.
    tiers = set(item.get("accept_tiers") or ()) & set(APPLY_TIERS)
    found = {e.code: e.name or e.code for e in registry.all_entries(db)
             if e.status == registry.ACTIVE and e.tier in tiers}
    own = current_app.config["NODE_CODE"]
    ordered = sorted(found.items(), key=lambda pair: (pair[0] != own, pair[0]))
    return [(code, f"{name}（{code}）" if name != code else code) for code, name in ordered]


def _uploads(rows):
    """``{index: [bytes, …]}`` of the files sent for the applicant's own materials."""
    found = {}
    for row in rows:
        if row["auto"]:
            continue
        sent = [upload for upload in request.files.getlist(f"material-{row['index']}")
                if upload and upload.filename]
        if len(sent) > MAX_FILES_PER_MATERIAL:
            raise BlobRefused(f"材料“{row['name']}”最多上传 {MAX_FILES_PER_MATERIAL} 个文件"
                              f"（本次选择了 {len(sent)} 个）。")
        for upload in sent:
            data = upload.read()  # bounded by the request limit
            try:
                check_blob(data)
            except BlobRefused as exc:
                raise BlobRefused(f"材料“{row['name']}”：{exc.message}") from exc
            found.setdefault(row["index"], []).append((data, upload.filename))
    return found


def _apply_form_page(item, rows, choices, form, error=None, status=200):
    limits = {"files": MAX_FILES_PER_MATERIAL, "file": size_text(MAX_BLOB_BYTES),
              "total": size_text(MAX_APPLY_REQUEST), "file_bytes": MAX_BLOB_BYTES,
              "total_bytes": MAX_APPLY_REQUEST}
    body = render_template("progress/apply_form.html", item=item, rows=rows,
                           stations=choices, form=form, error=error, limits=limits)
    return current_app.response_class(body, status=status, mimetype="text/html")


class Ineligible(CaseError):
    """The applicant's ID number rules them out of the item (``message``: why)."""


def age_on(birth, day):
    """Whole years (周岁) of someone born on ``birth`` on ``day``."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def eligibility_refusal(item, number):
    """Why the ID number ``number`` rules the applicant out of ``item``'s age condition
    (its ``eligibility``), in Chinese, or None. A credit code (an organisation) and an
    item without the condition are never refused here."""
    ages = item.get("eligibility") or {}
    low, high = ages.get("min_age"), ages.get("max_age")
    if low is None and high is None:
        return None
    try:
        resident = idnumbers.check_resident_id(number)
    except idnumbers.IdNumberInvalid:
        return None  # not a resident ID number: the number check speaks for it
    age = age_on(resident.birth_date, clock.today())
    if low is not None and age < low:
        rule = f"须年满 {low} 周岁"
    elif high is not None and age > high:
        rule = f"限 {high} 周岁及以下"
    else:
        return None
    phone = item.get("consult_phone")
    ask = f"如有疑问请咨询 {phone}。" if phone else "如有疑问请咨询服务站。"
    return f"根据您的身份证号码，您目前 {age} 周岁，本事项{rule}，暂不能申请。{ask}"


def _check_eligible(desk, item, number):
    """The ID number first: refuse a wrong one, and one the item's age condition rules
    out (before the citizen uploads anything)."""
    desk.check_number(number)
    refusal = eligibility_refusal(item, number)
    if refusal is not None:
        raise Ineligible(refusal)


def _apply_id_page(item, form, error=None, status=200, refusal=None):
    body = render_template("progress/apply_id.html", item=item, form=form, error=error,
                           refusal=refusal)
    return current_app.response_class(body, status=status, mimetype="text/html")


def _check_applicant(desk, form, item=None):
    """Refuse a wrong ID number, name, phone or address before anything is stored."""
    if item is not None:
        _check_eligible(desk, item, form["id_number"])
    else:
        desk.check_number(form["id_number"])
    if not form["name"].strip():
        raise CaseError("请填写申请人姓名。")
    if not form["phone"].strip():
        raise CaseError("请填写联系电话，以便服务站联系您。")
    try:
        personal.check_phone(form["phone"])
    except personal.PersonalDataInvalid as exc:
        raise CaseError(exc.message) from exc
    if len(form["address"].strip()) > MAX_ADDRESS:
        raise CaseError(f"住址不能超过 {MAX_ADDRESS} 字。")


@bp.route("/apply")
def apply_index():
    """The items a citizen can apply for online."""
    return render_template("progress/apply_list.html", items=online_items(_db()))


@bp.route("/apply/<item_id>", methods=["GET", "POST"])
@form_token_required
def apply_item(item_id):
    """The online pre-application form of one item; a POST files it (the case waits at
    the chosen station)."""
    item = active.active_item(_db(), item_id)
    if item is None:
        return message_page(404, "没有找到该事项", f"事项 {item_id} 不在本站现行的事项目录中。")
    if not item.get("online_application"):
        return message_page(409, "暂不支持网上申请",
                            f"事项“{item['name']}”暂不支持网上申请，请到服务站办理。")
    desk = web.desk()
    rows = desk.checklist(item)
    choices = stations(_db(), item)
    own = current_app.config["NODE_CODE"]
    form = {key: request.form.get(key, "") for key in ("id_number", "name", "phone",
                                                          "address", "station")}
    if request.method == "GET":
        # The ID number first: an age condition it rules out is said before any upload.
        return _apply_id_page(item, form)
    if request.form.get("step") == "id":
        try:
            _check_eligible(desk, item, form["id_number"])
        except Ineligible as exc:
            logger.info("pre-application for %s: ruled out by age", item["id"])
            return _apply_id_page(item, form, status=403, refusal=exc.message)
        except CaseError as exc:
            return _apply_id_page(item, form, exc.message, 400)
        form["station"] = own if any(code == own for code, _ in choices) else ""
        return _apply_form_page(item, rows, choices, form)
    counted = [(APPLY_PER_ADDRESS, client_address())]
    wait = throttle_wait(_db(), counted)
    if wait is not None:
        logger.warning("pre-application from %s: throttled", client_address())
        return throttled(_apply_form_page(item, rows, choices, form,
                                          APPLY_THROTTLED.format(minutes=minutes(wait)), 429),
                         wait)
    try:
        _check_applicant(desk, form, item)
        if form["station"] not in {code for code, _ in choices}:
            raise CaseError("请选择办理站点。")
        files = _uploads(rows)
        materials = {index: {"scans": [desk.blobs.put(data, name).sha256
                                       for data, name in shown]}
                     for index, shown in files.items()}
        number = desk.preapply(item["id"], ApplicantInput(
            number=form["id_number"], name=form["name"], phone=form["phone"],
            address=form["address"]), form["station"], materials)
    except BlobRefused as exc:
        return _apply_form_page(item, rows, choices, form, exc.message, 400)
    except Ineligible as exc:
        return _apply_id_page(item, form, status=403, refusal=exc.message)
    except CaseError as exc:
        return _apply_form_page(item, rows, choices, form, exc.message, 400)
    logger.info("online pre-application %s for %s at %s", number, item["id"], form["station"])
    throttle_note(_db(), counted)
    grant_proof(number)
    return redirect(url_for("progress.apply_done", number=number))


@bp.route("/apply/done/<number>")
def apply_done(number):
    """The confirmation: the case number, what originals to bring, the progress link."""
    number = clean_number(number)
    refusal = _proof_refusal(number)
    if refusal is not None:
        return refusal
    desk = web.desk()
    try:
        _, _, state = desk.load(number)
    except CaseError:
        return _query_form(number, MISMATCH, 404, mismatch=True)
    try:
        item = desk.item(state["item"])
    except CaseError:
        item = {}
    bring = [m for _, m in sorted(state["materials"].items(), key=lambda p: int(p[0]))
             if m["status"] in (F.PROVIDED, *F.OUTSTANDING)]
    return render_template("progress/apply_done.html", number=number, state=state,
                           item_name=state.get("item_name", ""), bring=bring,
                           no_visit=item.get("max_on_site_visits") == 0,
                           station=web.node_name(state.get("stage")))


# -- wiring ---------------------------------------------------------------------------------

def wire_public(blueprint, limits, unavailable, hint=UPLOAD_HINT):
    """What every public blueprint needs: request size limits (``request_size_guard``),
    a plain page when the node cannot handle cases at all (title ``unavailable``), and
    no caching (pages carry the form token and a case's progress)."""
    size_guard, too_large = request_size_guard(limits, hint=hint)
    blueprint.before_request(size_guard)
    blueprint.register_error_handler(413, too_large)

    def case_error(exc):
        # Only what the views do not catch: a node that cannot handle cases at all.
        return message_page(503, unavailable, exc.message)
    blueprint.register_error_handler(CaseError, case_error)

    def no_store(response):
        response.headers["Cache-Control"] = "no-store"
        return response
    blueprint.after_request(no_store)


wire_public(bp, {"progress.apply_item": MAX_APPLY_REQUEST}, "暂不能办理")


#: The citizen's pages, linked from each other when registered.
PUBLIC_LINKS = (("progress.query", "办件进度查询"), ("progress.apply_index", "网上预申请"),
                ("appointments.public", "预约办理"), ("appointments.cancel", "取消预约"))


def public_links():
    """``[(name, url)]`` of the citizen's pages this app serves."""
    rules = current_app.view_functions
    return [(name, url_for(endpoint)) for endpoint, name in PUBLIC_LINKS if endpoint in rules]


def init_template_helpers(app):
    """Give templates ``form_token_field()``, ``public_links()`` and ``upload_limit`` (the
    per-file limit, for the file fields); make the session cookie same-site."""
    app.jinja_env.globals.update(form_token_field=form_token_field, public_links=public_links,
                                 upload_limit={"bytes": MAX_BLOB_BYTES,
                                               "text": size_text(MAX_BLOB_BYTES)})
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    if app.config.get("SESSION_COOKIE_NAME") in (None, "session") and app.config.get("NODE_CODE"):
        # One name per node: cookies are per host, not per port, and the demo's nodes all
        # live on 127.0.0.1 (a citizen's proof at one station must not end another's).
        app.config["SESSION_COOKIE_NAME"] = f"tongban_{app.config['NODE_CODE']}"


def init_app(app):
    """Create the throttle table and register the public case pages."""
    create_throttle_table(app.extensions["store"].db)
    init_template_helpers(app)
    app.register_blueprint(bp)
