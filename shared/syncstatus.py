"""Sync status of a node: what ``syncd`` reports and ``serve`` and the CLI show.

Two things live here, both on the node's own SQLite store:

* the ``sync_link`` table, one row per link (``parent`` or ``upstream``), written by
  syncd after every round and read by the status page and ``tongban sync status``
  (two processes, one file: the table is the only channel between them);
* ``status:<code>`` documents (``"type": "node_status"``): each node's syncd writes its
  own, at most once a minute and only when something changed (or every ten minutes as a
  sign of life); they replicate up, so a township and the county see how every node
  below them syncs.

Times are unix seconds in the table and ISO 8601 UTC strings in documents; every time a
person reads is Beijing time and says so (:func:`format_time`, :func:`shared.clock.format_time`).
Plain words for people are Chinese; states and error kinds are English identifiers.

The report also carries the working-day calendar's alarms (:func:`calendar_report`): that
next year's holidays are not published yet, and how many cases in handling have a
provisional (暂定) due date.

This module must not import ``syncd``: serve reads what syncd writes.
"""

import datetime
import json
import logging
import threading

from shared import clock
from shared import config as cfg

logger = logging.getLogger(__name__)

STATES = ("starting", "up", "backing_off", "refused", "stopped")
STATE_LABELS = {
    "starting": "正在连接",
    "up": "在线",
    "backing_off": "离线，等待重试",
    "refused": "被拒绝",
    "stopped": "同步已停止",
}
PEER_LABELS = {"parent": "上级节点", "upstream": "区域数据中心"}
#: Plain words for each kind of failure (``{peer}`` names the other side).
ERROR_MESSAGES = {
    "unreachable": "{peer}无法连接",
    "timeout": "{peer}响应超时",
    "refused": "{peer}拒绝了本节点的请求（未登记或已吊销）",
    "clock_skew": "时钟偏差过大：本机时间与{peer}相差超过 5 分钟",
    "server_error": "{peer}内部出错",
    "bad_answer": "{peer}的回答无法识别（地址可能有误）",
    "local": "本地数据库出错",
    "internal": "同步程序内部错误",
    "doc_failures": "有文档被{peer}拒绝，未能同步",
}
#: syncd touches its rows at least this often (seconds) while it runs.
HEARTBEAT = 30.0
#: A row older than this means syncd is not running (or hangs).
STALE_AFTER = 4 * HEARTBEAT

STATUS_DOC_PREFIX = "status:"
#: A node writes its status document at most this often (seconds)...
STATUS_DOC_MIN_INTERVAL = 60.0
#: ...and at least this often, changed or not, so that its last contact shows.
STATUS_DOC_MAX_INTERVAL = 600.0
#: Members of a status document whose change is worth a new revision.
STATUS_DOC_CHANGES = ("state", "pending_cases", "error_kind", "catalog")

COLUMNS = ("link", "peer", "state", "last_success", "last_pull", "last_push",
           "last_attempt", "error_kind", "error", "failures", "doc_failures",
           "pending_push", "pending_pull", "next_retry", "updated", "push_seq")

TABLE = """CREATE TABLE IF NOT EXISTS sync_link (
    link TEXT PRIMARY KEY,
    peer TEXT NOT NULL,
    state TEXT NOT NULL,
    last_success REAL,
    last_pull REAL,
    last_push REAL,
    last_attempt REAL,
    error_kind TEXT,
    error TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    doc_failures INTEGER NOT NULL DEFAULT 0,
    pending_push INTEGER,
    pending_pull INTEGER,
    next_retry REAL,
    updated REAL NOT NULL,
    push_seq INTEGER
)"""
#: Columns added after the table's first shape, with their types (``ensure`` adds them).
ADDED_COLUMNS = {"push_seq": "INTEGER"}


class LinkStatusTable:
    """The ``sync_link`` table of one store.

    :param db: the store's peewee database (``Store.db``).
    """

    def __init__(self, db):
        self.db = db

    def ensure(self):
        """Create the table when it does not exist; add the columns an older one lacks."""
        self.db.execute_sql(TABLE)
        have = {row[1] for row in self.db.execute_sql("PRAGMA table_info(sync_link)").fetchall()}
        for column, kind in ADDED_COLUMNS.items():
            if column not in have:
                self.db.execute_sql(f"ALTER TABLE sync_link ADD COLUMN {column} {kind}")

    def save(self, row):
        """Insert or replace one link's row (a dict with the keys of ``COLUMNS``)."""
        values = [row.get(column) for column in COLUMNS]
        marks = ",".join("?" * len(COLUMNS))
        with self.db.atomic():
            self.db.execute_sql(
                f"INSERT OR REPLACE INTO sync_link ({','.join(COLUMNS)}) VALUES ({marks})",
                values)

    def touch(self, links, now):
        """Mark ``links`` as looked after by a running syncd at ``now``."""
        with self.db.atomic():
            self.db.execute_sql(
                "UPDATE sync_link SET updated = ? WHERE link IN "
                "(SELECT value FROM json_each(?))",
                (now, _json_list(links)))

    def confirm(self, link, now):
        """Record a successful contact of ``link`` at ``now`` if its row says it is up (a
        single statement: a row saved meanwhile by a failing round is never overwritten)."""
        with self.db.atomic():
            self.db.execute_sql(
                "UPDATE sync_link SET last_success = ? WHERE link = ? AND state = 'up' "
                "AND (last_success IS NULL OR last_success < ?)", (now, link, now))

    def remove_except(self, links):
        """Forget rows of links that are no longer configured."""
        with self.db.atomic():
            self.db.execute_sql(
                "DELETE FROM sync_link WHERE link NOT IN (SELECT value FROM json_each(?))",
                (_json_list(links),))

    def get(self, link):
        """One link's row as a dict, or None."""
        return next((row for row in self.all() if row["link"] == link), None)

    def all(self):
        """Every link's row as a dict, parent first; empty when syncd never ran."""
        try:
            cursor = self.db.execute_sql(
                f"SELECT {','.join(COLUMNS)} FROM sync_link ORDER BY link != 'parent', link")
        except Exception as exc:  # peewee wraps sqlite3.OperationalError
            if "no such table" in str(exc):
                return []
            if "no such column" not in str(exc):
                raise
            self.ensure()  # a table an older syncd made: add the new columns, read again
            return self.all()
        return [dict(zip(COLUMNS, values)) for values in cursor.fetchall()]


def _json_list(values):
    return json.dumps(list(values))


# -- plain words ------------------------------------------------------------------------

def describe_error(kind, link="parent"):
    """The Chinese sentence for an error ``kind`` on ``link`` (empty for no error)."""
    if not kind:
        return ""
    template = ERROR_MESSAGES.get(kind, ERROR_MESSAGES["internal"])
    return template.format(peer=PEER_LABELS.get(link, "对端节点"))


def format_time(ts):
    """Unix seconds ``ts`` in Beijing time, labelled: ``2026-12-04 17:50:12（北京时间）``
    (``-`` when None)."""
    if ts is None:
        return "-"
    return clock.format_time(ts, seconds=True) or "-"


def format_time_ago(ts, now):
    """``2026-12-04 17:50:12（北京时间，5 分钟前）``: a past time and how long ago."""
    shown = clock.format_time(ts, seconds=True, label=False)
    return f"{shown}（{clock.LABEL}，{ago(ts, now)}）" if shown else "-"


def format_time_in(ts, now):
    """``2026-12-04 17:50:12（北京时间，5 分钟后）``: a time to come and how soon."""
    shown = clock.format_time(ts, seconds=True, label=False)
    return f"{shown}（{clock.LABEL}，{format_duration(ts - now)}后）" if shown else "-"


def format_duration(seconds):
    """A duration in Chinese words, coarse: 12 秒, 5 分钟, 3 小时, 2 天."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} 秒"
    if seconds < 3600:
        return f"{seconds // 60} 分钟"
    if seconds < 86400:
        return f"{seconds // 3600} 小时"
    return f"{seconds // 86400} 天"


def ago(ts, now):
    """``5 分钟前`` for a time ``ts`` before ``now`` (``从未`` when None)."""
    if ts is None:
        return "从未"
    return f"{format_duration(now - ts)}前"


def link_view(row, now=None):
    """One link's row with what a person needs to read it (Chinese words added).

    :returns: the row plus ``peer_label``, ``state_label``, ``message``, ``offline``,
        ``stale`` (syncd is not running) and formatted times.
    """
    now = clock.time() if now is None else now
    view = dict(row)
    stale = row["state"] != "stopped" and now - (row.get("updated") or 0) > STALE_AFTER
    view["stale"] = stale
    view["offline"] = row["state"] in ("backing_off", "refused") or stale \
        or row["state"] == "stopped"
    view["peer_label"] = PEER_LABELS.get(row["link"], row["link"])
    view["state_label"] = "同步程序未运行" if stale else STATE_LABELS.get(
        row["state"], row["state"])
    view["message"] = describe_error(row.get("error_kind"), row["link"])
    success = row.get("last_success")
    view["last_success_text"] = format_time_ago(success, now) if success else "从未成功"
    view["last_attempt_text"] = format_time(row.get("last_attempt"))
    retry = row.get("next_retry")
    view["next_retry_text"] = format_time_in(retry, now) if retry and retry > now else "-"
    return view


def overall(views):
    """What the page's banner says: offline or not, and how much is waiting."""
    pending_push = sum(v.get("pending_push") or 0 for v in views)
    pulls = [v.get("pending_pull") for v in views]
    down = [v for v in views if v["offline"]]
    return {
        "offline": bool(down),
        "reason": (down[0]["message"] or down[0]["state_label"]) if down else "",
        # syncd is not running: hung or killed (stale), or stopped cleanly.
        "not_running": any(v["stale"] or v["state"] == "stopped" for v in views),
        "starting": any(v["state"] == "starting" and not v["stale"] for v in views),
        "stale": any(v["stale"] for v in views),
        "pending_push": pending_push,
        "pending_pull": None if any(p is None for p in pulls) else sum(pulls),
    }


# -- node status documents --------------------------------------------------------------

def iso(ts):
    """Unix seconds as ``2026-11-22T10:00:00Z`` (None stays None)."""
    if ts is None:
        return None
    moment = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text):
    """The inverse of :func:`iso` (None for anything unreadable)."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def status_doc_id(code):
    """The id of node ``code``'s status document."""
    return f"{STATUS_DOC_PREFIX}{code}"


def catalog_report(db):
    """The catalog part of a status document: release in force, verification state, the
    latest alarm (so the county sees a station that refused a tampered release)."""
    from shared.catalog.active import catalog_status

    status = catalog_status(db, alarms=1)
    return {"release": (status["active"] or {}).get("number"), "state": status["state"],
            "message": status["message"] if status["state"] != "ok" else None,
            "alarm": status["alarms"][0]["message"] if status["alarms"] else None}


def build_status_doc(code, tier, row, reported_at, catalog=None, pending_cases=None):
    """Node ``code``'s status document from its main link's row.

    :param reported_at: unix seconds, corrected by the clock offset to the parent when
        one is known (a village clock a day off would otherwise look a day stale).
    :param pending_cases: how many cases written here are not uploaded yet
        (:func:`unsent_cases`): the figure a supervisor reads, the same the station shows.
    """
    return {
        "_id": status_doc_id(code),
        "type": "node_status",
        "code": code,
        "tier": tier,
        "reported_at": iso(reported_at),
        "state": row["state"],
        "error_kind": row.get("error_kind"),
        "last_success": iso(row.get("last_success")),
        "last_pull": iso(row.get("last_pull")),
        "last_push": iso(row.get("last_push")),
        "pending_push": row.get("pending_push"),
        "pending_pull": row.get("pending_pull"),
        "pending_cases": pending_cases,
        "catalog": catalog,
    }


def status_doc_due(old, new, now):
    """True when ``new`` should replace the stored ``old`` status document at ``now``."""
    if old is None:
        return True
    since = now - (parse_iso(old.get("reported_at")) or 0)
    if since >= STATUS_DOC_MAX_INTERVAL:
        return True
    if old.get("catalog") != new.get("catalog"):
        return True  # a catalog alarm must reach the county at once
    changed = any(old.get(key) != new.get(key) for key in STATUS_DOC_CHANGES)
    return changed and since >= STATUS_DOC_MIN_INTERVAL


def _registry_rows(db):
    """Rows of the ``node_registry`` projection when this node has one, else []."""
    columns = [row[1] for row in db.execute_sql("PRAGMA table_info(node_registry)").fetchall()]
    if "code" not in columns:
        return []
    wanted = [c for c in ("code", "tier", "name", "parent", "status") if c in columns]
    cursor = db.execute_sql(f"SELECT {','.join(wanted)} FROM node_registry ORDER BY code")
    return [dict(zip(wanted, values)) for values in cursor.fetchall()]


def _is_below(code, ancestor, nodes):
    """True when ``ancestor`` is above ``code``: by the registry's ``parent`` links, or by
    the division code for a node the registry does not hold (docs/sync.md, "Scopes")."""
    if not ancestor or code == ancestor:
        return False
    if "parent" not in nodes.get(code, {}):
        return code.startswith(ancestor)
    seen, current = set(), code
    while current in nodes and current not in seen:
        seen.add(current)
        current = nodes[current].get("parent")
        if current == ancestor:
            return True
    return False


def _judge_online(entry, contact, now, offline_after=None):
    """Online or not from the age of the last contact — this node's own record of a
    child's requests, else the reported time of its relayed status — never from the state
    a node last reported about itself (a node that stopped cannot say so)."""
    direct = contact is not None
    last = max(v for v in (contact, entry.get("reported_at"), 0.0) if v is not None)
    offline_after = offline_after or CHILD_OFFLINE_AFTER
    limit = offline_after if direct else max(offline_after, REPORT_OFFLINE_AFTER)
    entry["last_contact"] = last or None
    entry["online"] = bool(last) and now - last <= limit
    if last:
        entry["last_contact_text"] = format_time_ago(last, now)
    if not last:
        entry["state_label"] = "从未联系"
    elif not entry["online"]:
        entry["state_label"] = f"离线（{format_duration(now - last)}未联系）"
    elif entry.get("state") in ("backing_off", "refused"):
        entry["state_label"] = "在线，但其上级链路异常"
    else:
        entry["state_label"] = "在线"
    if entry.get("pending_cases"):
        entry["state_label"] += f"，待上传 {entry['pending_cases']} 件办件"


def node_overview(store, own_code, now=None, offline_after=None):
    """Every node below ``own_code`` with its last contact and lag, in code order.

    Nodes come from the ``node_registry`` table when it exists, otherwise from the status
    documents this node holds; a registered node that never reported is listed too.
    """
    now = clock.time() if now is None else now
    offline_after = offline_after or CHILD_OFFLINE_AFTER
    _, rows = store.all_docs(startkey=STATUS_DOC_PREFIX, endkey=STATUS_DOC_PREFIX + "\ufff0",
                             include_docs=True)
    reports = {row["doc"].get("code"): row["doc"] for row in rows
               if row.get("doc") and row["doc"].get("type") == "node_status"}
    nodes = {r["code"]: dict(r) for r in _registry_rows(store.db)}
    for code, doc in reports.items():
        nodes.setdefault(code, {"code": code, "tier": doc.get("tier")})
    seen = contacts(store.db)
    result = []
    for code in sorted(c for c in nodes if isinstance(c, str)):
        if not _is_below(code, own_code, nodes):
            continue
        node = nodes[code]
        doc = reports.get(code)
        entry = {"code": code, "tier": node.get("tier"), "name": node.get("name") or "",
                 "registry_status": node.get("status"), "reported": doc is not None}
        if doc is not None:
            reported_at = parse_iso(doc.get("reported_at"))
            last_success = parse_iso(doc.get("last_success"))
            entry.update({
                "state": doc.get("state"),
                "state_label": STATE_LABELS.get(doc.get("state"), doc.get("state") or "-"),
                "message": describe_error(doc.get("error_kind")),
                "reported_at": reported_at,
                "last_contact_text": format_time_ago(reported_at, now) if reported_at else "-",
                "last_success": last_success,
                "lag": None if last_success is None else max(0.0, now - last_success),
                "lag_text": "从未同步" if last_success is None
                else format_duration(now - last_success),
                "pending_push": doc.get("pending_push"),
                "pending_pull": doc.get("pending_pull"),
                "pending_cases": doc.get("pending_cases"),
                "catalog": doc.get("catalog"),
            })
        else:
            entry.update({"state": None, "state_label": "从未报告", "message": "",
                          "last_contact_text": "从未", "lag_text": "-", "lag": None,
                          "pending_push": None, "pending_pull": None, "pending_cases": None,
                          "catalog": None})
        _judge_online(entry, seen.get(code), now, offline_after)
        if node.get("status") == "revoked":
            entry["state_label"] = "已吊销"
            entry["online"] = False
        result.append(entry)
    # Below a node that is offline nothing can be known: its reports cannot come through.
    down = {e["code"] for e in result if not e["online"]}
    for entry in result:
        village = cfg.tier_of(entry["code"]) == "village"
        parent = nodes.get(entry["code"], {}).get("parent") or \
            (cfg.parent_code(entry["code"]) if village else None)
        if parent in down and entry["online"]:
            entry["online"] = False
            entry["state_label"] = f"状态不明（上级 {parent} 离线）"
    return result


# -- when each node below last reached us --------------------------------------------------

#: Seconds without contact after which a node that talks to this one directly (a child:
#: its syncd holds a longpoll here, answered at least every minute) is offline.
CHILD_OFFLINE_AFTER = 150.0
#: The same for a node further down, known only by its relayed status documents (written
#: at least every :data:`STATUS_DOC_MAX_INTERVAL`).
REPORT_OFFLINE_AFTER = STATUS_DOC_MAX_INTERVAL * 1.5
#: A contact is written at most this often per node (every request would be a write).
CONTACT_WRITE_EVERY = 15.0
CONTACT_TABLE = """CREATE TABLE IF NOT EXISTS node_contact (
    code TEXT PRIMARY KEY, last_seen REAL NOT NULL)"""

_contacts = {}
_contacts_lock = threading.Lock()


def note_contact(response):
    """``after_request``: a request signed by a node and answered (not refused) is a
    contact from that node; remember when, so its parent sees at a glance who is offline.

    A refused signature gets 401 and is never counted: a forged header proves nothing.
    """
    from flask import current_app, request

    from shared import identity

    if response.status_code in (401, 403) or not request.path.startswith(("/db", "/sync")):
        return response
    try:
        fields = identity.parse_authorization(request.headers.get("Authorization"))
    except Exception:  # noqa: BLE001 - malformed: the request was refused anyway
        return response
    if not fields:
        return response
    now = clock.time()
    store = current_app.extensions["store"]
    key = (id(store), fields["node"])
    with _contacts_lock:
        if now - _contacts.get(key, 0.0) < CONTACT_WRITE_EVERY:
            return response
        _contacts[key] = now
    try:
        with store.db.atomic():
            store.db.execute_sql(CONTACT_TABLE)
            store.db.execute_sql(
                "INSERT INTO node_contact (code, last_seen) VALUES (?, ?) ON CONFLICT(code) "
                "DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)",
                (fields["node"], now))
    except Exception:  # noqa: BLE001 - a page or feed never fails on its bookkeeping
        logger.exception("cannot record the contact of %s", fields["node"])
    return response


def contacts(db):
    """``{code: last contact (unix seconds)}`` of the nodes that talk to this one."""
    try:
        return dict(db.execute_sql("SELECT code, last_seen FROM node_contact").fetchall())
    except Exception as exc:  # noqa: BLE001 - no contact yet: no table
        if "no such table" in str(exc):
            return {}
        raise


# -- what a station has not uploaded yet ----------------------------------------------------

#: Seconds a case written here may wait for its upload before the station counts as
#: offline whatever syncd last said (its write trigger pushes within a second or two).
UNSENT_GRACE = 10.0
#: Changes looked at for the banner (a station offline for weeks still answers quickly).
UNSENT_SCAN = 5000


def unsent_cases(store, node_code, link="parent", now=None):
    """The cases this station wrote that its parent has not received yet.

    Read from the store itself — everything changed after the sequence syncd last pushed
    up to (``sync_link.push_seq``) — so the figure is true whatever the daemon's state.

    :returns: ``{"count", "numbers" (oldest first, at most 20), "oldest_age" (seconds since
        the oldest unsent event was written, or None)}``.
    """
    from shared.scopes import case_number

    now = clock.time() if now is None else now
    row = LinkStatusTable(store.db).get(link)
    since = (row or {}).get("push_seq") or 0
    rows, _ = store.changes(since, limit=UNSENT_SCAN)
    numbers, oldest = {}, None
    for entry in rows:
        doc_id = entry["id"]
        number = case_number(doc_id)
        if number is None or not number.startswith(f"{node_code}-"):
            continue
        parts = doc_id.split(":")
        if doc_id.startswith("event:"):
            if len(parts) != 4 or parts[3] != node_code:
                continue  # written elsewhere and received here: not ours to upload
            if parts[2][:15].isdigit():
                written = int(parts[2][:15]) / 1000.0
                oldest = written if oldest is None else min(oldest, written)
        elif not doc_id.startswith("case:"):
            continue  # scans travel with their events
        numbers.setdefault(number, None)
    listed = list(numbers)
    return {"count": len(listed), "numbers": listed[:20],
            "oldest_age": None if oldest is None else max(0.0, now - oldest)}


def offline_banner(store, config, now=None):
    """What every staff page says when this station cannot upload (None when it can).

    Offline when the parent link is down or refused, when syncd is not running, or when a
    case written here has waited longer than :data:`UNSENT_GRACE` — the last one catches a
    link that hangs rather than fails, long before a longpoll or a round times out.
    """
    if not config.get("PARENT_URL"):
        return None
    now = clock.time() if now is None else now
    row = LinkStatusTable(store.db).get("parent")
    view = link_view(row, now) if row else None
    unsent = unsent_cases(store, config["NODE_CODE"], now=now)
    late = unsent["count"] and (unsent["oldest_age"] is None
                                or unsent["oldest_age"] > UNSENT_GRACE)
    offline = bool(late) or view is None or view["offline"]
    if not offline:
        return None
    reason = (view["message"] or view["state_label"]) if view else "同步程序未运行"
    return {"offline": True, "reason": reason, "count": unsent["count"],
            "numbers": unsent["numbers"]}


# -- the working-day calendar's alarms ---------------------------------------------------

#: How many case numbers an alarm lists (the count is always complete).
PROVISIONAL_LIST = 20


#: Why a provisional due date is an alarm, after the count.
PROVISIONAL_DETAIL = ("办理时限经过了尚未发布节假日安排的日期，暂按正常工作周（周一至周五）计算；"
                      "县级在工作日历中录入该年安排并发布后，自动改为正式期限。")


def provisional_message(count):
    """``3 件在办件的办结期限为暂定：…`` ("" for none)."""
    if not count:
        return ""
    return f"{count} 件在办件的办结期限为暂定：{PROVISIONAL_DETAIL}"


def calendar_report(db, today=None):
    """What every tier tells staff about the working-day calendar in force at ``db``.

    :returns: ``{"warning": None | {"last_covered": "YYYY-MM-DD", "days_left": int,
        "year": int, "message": str}, "provisional": count, "provisional_numbers": [at most
        20], "provisional_message": str, "provisional_detail": str}`` (JSON-ready: dates
        are ISO strings).
    """
    from shared import workdays
    from shared.cases.index import provisional_cases

    calendar = workdays.calendar_from_db(db)
    warning = workdays.coverage_warning(calendar, today or clock.today())
    if warning is not None:
        warning = dict(warning, last_covered=warning["last_covered"].isoformat())
    count, numbers = provisional_cases(db, calendar, limit=PROVISIONAL_LIST)
    return {"warning": warning, "provisional": count, "provisional_numbers": numbers,
            "provisional_message": provisional_message(count),
            "provisional_detail": PROVISIONAL_DETAIL if count else ""}


def calendar_lines(report):
    """The calendar report as lines of CLI text (none when there is nothing to say)."""
    lines = []
    if report.get("warning"):
        lines.append(f"calendar     WARNING: {report['warning']['message']}")
    if report.get("provisional"):
        numbers = report.get("provisional_numbers") or []
        lines.append(f"provisional  ALARM: {report['provisional_message']}")
        shown = "、".join(numbers)
        if len(numbers) < report["provisional"]:
            shown += f" …（仅列出前 {len(numbers)} 件）"
        lines.append(f"  cases      {shown}")
    return lines


# -- the report the page and the CLI show ------------------------------------------------

def status_report(store, config, now=None):
    """Links, the banner's summary and the nodes below this one, for page and CLI."""
    now = clock.time() if now is None else now
    links = [link_view(row, now) for row in LinkStatusTable(store.db).all()]
    return {
        "code": config.get("NODE_CODE"),
        "tier": config.get("TIER"),
        "has_parent": bool(config.get("PARENT_URL") or config.get("UPSTREAM_URL")),
        "now": now,
        "links": links,
        "summary": overall(links),
        "nodes": node_overview(store, config.get("NODE_CODE"), now,
                               offline_after=config.get("NODE_OFFLINE_AFTER")),
        "catalog": catalog_report(store.db),
        "calendar": calendar_report(store.db),
        "processes": process_report(config.get("NODE_DIR"), now),
    }


# -- the station's own processes (tongban run) ---------------------------------------------

PROCESS_LABELS = {"serve": "服务程序（serve）", "syncd": "同步程序（syncd）"}
RUN_STATE_LABELS = {"starting": "正在启动", "running": "运行中", "stopping": "正在停止",
                    "stopped": "已停止"}


def process_report(node_dir, now=None):
    """What ``tongban run`` last wrote about serve and syncd (``run-state.json``), with
    words for people; None when the node was never run by ``tongban run``."""
    from shared.supervisor import read_state

    state = read_state(node_dir) if node_dir else None
    if state is None:
        return None
    now = clock.time() if now is None else now
    children = []
    for name, child in sorted((state.get("children") or {}).items(),
                              key=lambda item: item[0] != "serve"):
        child = child if isinstance(child, dict) else {}
        up_since = parse_iso(child.get("up_since"))
        exit_at = parse_iso(child.get("last_exit_at"))
        restart_at = parse_iso(child.get("next_restart_at"))
        if child.get("pid"):
            label = f"运行中，自 {format_time_ago(up_since, now)}" if up_since else "运行中"
        elif restart_at:
            label = f"已退出，将于 {format_time_in(restart_at, now)}重启"
        else:
            label = "未运行"
        children.append({
            "name": name, "label": PROCESS_LABELS.get(name, name), "pid": child.get("pid"),
            "restarts": child.get("restarts") or 0, "state_label": label,
            "last_exit_code": child.get("last_exit_code"),
            "last_exit_text": "-" if exit_at is None else
            f"{format_time_ago(exit_at, now)}，退出码 {child.get('last_exit_code')}"})
    return {"state": state.get("state"),
            "state_label": RUN_STATE_LABELS.get(state.get("state"), state.get("state") or "-"),
            "pid": state.get("pid"),
            "started_text": format_time_ago(parse_iso(state.get("started_at")), now),
            "children": children}


def format_text(report):
    """``tongban sync status`` as lines of text (times in Beijing time, labelled)."""
    lines = [f"clock     {format_time(report.get('now'))}"]
    if not report["links"]:
        lines.append("no sync links have run yet"
                     if report["has_parent"] else "no links: this node has no parent or upstream")
    for view in report["links"]:
        state = "not running" if view["stale"] else view["state"]
        lines += [
            f"{view['link']:9} {view['peer']}",
            f"  state          {state} ({view['state_label']})",
            f"  last success   {view['last_success_text']}",
            f"  last attempt   {view['last_attempt_text']}",
            f"  waiting        push {_count(view.get('pending_push'))}, "
            f"pull {_count(view.get('pending_pull'))}",
        ]
        if view["message"]:
            lines.append(f"  last error     {view['message']}: {view.get('error') or ''}")
        if view["next_retry_text"] != "-":
            lines.append(f"  next retry     {view['next_retry_text']}")
    catalog = report.get("catalog") or {}
    lines.append(f"catalog   release {catalog.get('release') or '-'}, {catalog.get('state')}"
                 + (f": {catalog['message']}" if catalog.get("message") else ""))
    if catalog.get("alarm"):
        lines.append(f"  alarm          {catalog['alarm']}")
    lines += calendar_lines(report.get("calendar") or {})
    processes = report.get("processes")
    if processes:
        lines.append(f"tongban run {processes['state']} (pid {processes['pid']}, started "
                     f"{processes['started_text']})")
        for child in processes["children"]:
            lines.append(f"  {child['name']:14} pid {child['pid'] or '-'}, "
                         f"{child['restarts']} restarts, last exit {child['last_exit_text']}")
    if report["nodes"]:
        lines.append("nodes below:")
        for node in report["nodes"]:
            lines.append(
                f"  {node['code']:12} {node['state'] or 'never reported':12} "
                f"last contact {node['last_contact_text']}, lag {node['lag_text']}, "
                f"waiting push {_count(node['pending_push'])} pull {_count(node['pending_pull'])}"
                + _catalog_text(node.get("catalog")))
    return "\n".join(lines)


def _catalog_text(catalog):
    if not catalog:
        return ""
    text = f", catalog release {catalog.get('release') or '-'} {catalog.get('state')}"
    return text + (f" ALARM: {catalog['alarm']}" if catalog.get("alarm") else "")


def _count(value):
    return "?" if value is None else str(value)
