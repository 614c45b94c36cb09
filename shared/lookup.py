"""Handle anywhere (通办): find a citizen's cases region-wide while they wait at the counter.

A station asks by the keyed hash of the citizen's ID number (``identity.person_key``);
the number itself never leaves the station. The question goes up the tree to the county,
which holds every case of the region; the county writes a ``joined`` event naming the
asking station for each case found, which makes the station a participant (docs/sync.md,
Scopes) so the cases replicate down to it within seconds. When the link is down the
station is told so plainly and gets what it holds itself; nothing blocks longer than a few
seconds.

Each hit hands the station a citizen's case, so a look-up is only for a citizen at the
counter: it starts from a logged-in clerk's (or approver's) session at the station, which
names the clerk in the request (:class:`Clerk`); nodes relay it signed; the node that
answers writes who asked, for which station, when and how many cases it found to its
hash-chained audit log, and answers at most ``LOOKUP_LIMIT_PER_HOUR`` look-ups of one
station an hour. The next one is refused and raises an alarm (``lookup_alarm``) that the
county's supervisors see at ``/sync/lookups``.
"""

import logging
import re
from dataclasses import dataclass

from shared import casedocs, clock, errors, registry
from shared.nodeclient import ParentUnreachable

logger = logging.getLogger(__name__)

PERSON_KEY = re.compile(r"[0-9a-f]{64}")
#: Seconds a station waits for the region's answer before it answers from its own store.
LOOKUP_TIMEOUT = 8.0
OFFLINE_MESSAGE = "本站与上级节点的连接中断，只能显示本站已有的办件；其他站点的办件待连接恢复后再查询。"
NOT_A_CLERK_MESSAGE = ("全区通办查询须由已登录的窗口人员或审批人员为到场办事的群众发起；"
                       "本次只显示本站已有的办件。")
THROTTLED_MESSAGE = ("本站一小时内的通办查询已达 {limit} 次上限，暂停查询；"
                     "已告知县级督查人员。如确需继续查询，请联系县级管理员。")
#: Staff roles whose session may start a look-up (the window; a township's approvers).
LOOKUP_ROLES = ("clerk", "approver")
#: Look-ups of one station a node answers in an hour unless ``LOOKUP_LIMIT_PER_HOUR`` says.
DEFAULT_LIMIT_PER_HOUR = 60
THROTTLE_WINDOW = 3600.0
AUDIT_ACTION = "sync_lookup"
AUDIT_REFUSED = "sync_lookup_refused"

TABLES = [
    """CREATE TABLE IF NOT EXISTS lookup_throttle (
        station TEXT NOT NULL, at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS lookup_throttle_station ON lookup_throttle (station, at)",
    # One alarm per station and hour, however many look-ups it keeps sending.
    """CREATE TABLE IF NOT EXISTS lookup_alarm (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, station TEXT NOT NULL,
        clerk TEXT NOT NULL, answered INTEGER NOT NULL, limit_per_hour INTEGER NOT NULL,
        hour INTEGER NOT NULL, UNIQUE (station, hour))""",
]


class LookupThrottled(errors.Forbidden):
    """A station asked more often than ``LOOKUP_LIMIT_PER_HOUR`` (answered 429)."""

    error = "too_many_requests"


@dataclass(frozen=True)
class Clerk:
    """The staff member at the counter a look-up is made for (named in the request)."""

    username: str
    role: str
    name: str = ""

    @classmethod
    def of_staff(cls, staff):
        """The clerk of a logged-in ``shared.staff.Staff`` (None without a look-up role)."""
        role = next((r for r in LOOKUP_ROLES if r in (staff.roles or ())), None) \
            if staff is not None else None
        if role is None:
            return None
        return cls(staff.username, role, getattr(staff, "full_name", "") or "")

    @classmethod
    def from_json(cls, value):
        """The clerk a request names; Forbidden when it names none (an account's request,
        a script's) or one without a look-up role."""
        if not isinstance(value, dict):
            raise errors.Forbidden("a look-up names the clerk at the counter it is made for "
                                   "(clerk: {username, role}); none was named")
        username, role, name = value.get("username"), value.get("role"), value.get("name", "")
        if not isinstance(username, str) or not 0 < len(username) <= 150 or \
                not isinstance(name, str) or len(name) > 100:
            raise errors.Forbidden("the clerk a look-up names is malformed")
        if role not in LOOKUP_ROLES:
            raise errors.Forbidden(f"a look-up is made by a clerk or an approver, not {role!r}")
        return cls(username, role, name)

    def as_json(self):
        """The member ``clerk`` of a look-up request."""
        return {"username": self.username, "role": self.role, "name": self.name}


def authenticate_clerk(username, password, address="cli"):
    """The :class:`Clerk` of a staff account that logs in with ``password`` (for
    ``tongban lookup --user``; inside the node's app context).

    :raises shared.staff.LoginRefused: wrong name or password, throttled.
    :raises Forbidden: the account holds no look-up role.
    """
    from shared import staff

    account = staff.authenticate(username, password, address)
    role = next((r for r in LOOKUP_ROLES if r in account.role_list), None)
    if role is None:
        raise errors.Forbidden(NOT_A_CLERK_MESSAGE)
    return Clerk(account.username, role, account.full_name or "")


def _session_clerk():
    """The clerk of the staff session of this request, or None (no request, no session)."""
    from shared.staff import current_staff

    return Clerk.of_staff(current_staff())


class CaseApplicants:
    """``case_applicant``: each case header's applicant key, origin, handler and item."""

    tables = [
        """CREATE TABLE IF NOT EXISTS case_applicant (
            "case" TEXT PRIMARY KEY,
            applicant_key TEXT NOT NULL,
            item TEXT,
            origin TEXT,
            handler TEXT,
            hlc TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS case_applicant_key ON case_applicant (applicant_key)",
    ]

    def apply(self, db, docs):
        """Index the ``case:`` headers among ``docs``."""
        rows = [(doc["number"], doc["applicant_key"], doc.get("item"), doc.get("origin"),
                 doc.get("handler"), doc.get("hlc"))
                for doc_id, doc in docs
                if doc is not None and doc_id.startswith("case:") and
                isinstance(doc.get("number"), str) and isinstance(doc.get("applicant_key"), str)]
        if rows:
            db.connection().executemany(
                'INSERT OR REPLACE INTO case_applicant ("case", applicant_key, item, origin, '
                "handler, hlc) VALUES (?, ?, ?, ?, ?, ?)", rows)

    def reset(self, db):
        """Empty the table before a rebuild."""
        db.execute_sql("DELETE FROM case_applicant")


def check_person_key(person_key):
    """Raise BadRequest unless ``person_key`` is a keyed hash (64 lower-case hex digits)."""
    if not isinstance(person_key, str) or not PERSON_KEY.fullmatch(person_key):
        raise errors.BadRequest("person_key must be 64 lower-case hex digits")
    return person_key


def local_cases(store, person_key):
    """The summaries of the cases of ``person_key`` this node holds, oldest first."""
    cursor = store.db.execute_sql(
        'SELECT "case", item, origin, handler, hlc FROM case_applicant '
        "WHERE applicant_key = ? ORDER BY hlc", (person_key,))
    return [{"number": number, "item": item, "origin": origin, "handler": handler,
             "accepted": hlc} for number, item, origin, handler, hlc in cursor.fetchall()]


def _participants(store, number):
    cursor = store.db.execute_sql('SELECT node FROM case_party WHERE "case" = ?', (number,))
    return {row[0] for row in cursor.fetchall()}


def join_cases(store, clock, cases, joiner, author):
    """Make ``joiner`` a participant of each case (a ``joined`` event by ``author``, the
    county: nobody else's join is taken anywhere).

    Cases it already takes part in get no new event. Returns the numbers joined now.
    """
    events = []
    for case in cases:
        number = case["number"]
        if joiner in _participants(store, number):
            continue
        events.append(casedocs.case_event(number, "joined", author, clock.now(),
                                          parties=[joiner]))
    if events:
        failures = [r for r in store.bulk_docs(events) if "error" in r]
        if failures:
            raise errors.TongbanError(f"cannot record the join: {failures[0]['reason']}")
        logger.info("node %s joined %d case(s) of a person", joiner, len(events))
    return [e["case"] for e in events]


def answer_lookup(store, clock, config, principal_node, body, parent_client=None):
    """Answer ``POST /sync/lookup`` at this node (forwarding up when it has a parent).

    :param clock: the node's HLC (``shared.hlc.NodeClock``) for the ``joined`` events.
    :param principal_node: the code of the node that sent the request (authenticated).
    :param body: ``{"person_key", "for": code of the asking station (default the sender),
        "clerk": the clerk at its counter}``.
    :param parent_client: a ``NodeClient`` of the parent, or None at the county.
    :returns: ``{"cases", "answered_by", "complete", "message"}``.
    :raises Forbidden: the sender may not ask for that station, or names no clerk.
    :raises LookupThrottled: the station asked too often this hour (an alarm is raised).
    """
    person_key = check_person_key(body.get("person_key"))
    asker = body.get("for") or principal_node
    if not isinstance(asker, str) or not asker.isdigit():
        raise errors.BadRequest("for must be a node code")
    if not registry.is_ancestor_or_self(store.db, principal_node, asker):
        raise errors.Forbidden(f"node {principal_node} may not ask for node {asker}")
    clerk = Clerk.from_json(body.get("clerk"))
    here = config["NODE_CODE"]
    if parent_client is not None:
        try:
            answer = parent_client.post("/sync/lookup", {"person_key": person_key,
                                                         "for": asker,
                                                         "clerk": clerk.as_json()})
        except ParentUnreachable:
            answer = None
        if answer is not None:
            return answer
    audit = _audit_log(store, config)
    detail = {"station": asker, "via": principal_node, "clerk": clerk.username,
              "role": clerk.role, "name": clerk.name}
    admitted, answered, limit = admit(store.db, config, asker, clerk)
    if not admitted:
        audit.record(f"{asker}:{clerk.username}", AUDIT_REFUSED, person_key,
                     dict(detail, answered=answered, limit=limit))
        raise LookupThrottled(THROTTLED_MESSAGE.format(limit=limit))
    cases = local_cases(store, person_key)
    # Only the county joins (the scopes take no one else's join); a township answering
    # while the county is out of reach shows what it holds and joins nobody.
    joined = join_cases(store, clock, cases, asker, here) \
        if config.get("TIER") == "county" else []
    complete = parent_client is None
    audit.record(f"{asker}:{clerk.username}", AUDIT_ACTION, person_key,
                 dict(detail, hits=len(cases), joined=len(joined), complete=complete))
    logger.info("look-up for station %s by %s: %d case(s), %d joined", asker,
                clerk.username, len(cases), len(joined))
    return {"cases": cases, "answered_by": here, "complete": complete,
            "message": "" if complete else OFFLINE_MESSAGE}


def lookup_from_station(store, clock, config, person_key, parent_client, clerk=None):
    """A station's own question (the clerk's screen or ``tongban lookup``).

    :param clerk: the :class:`Clerk` at the counter; by default the staff session of the
        request. Without one (a supervisor, a script) the region is not asked: the answer
        is what the station holds, with a plain message.

    Never raises for a missing link: offline, it answers from the station's store with
    ``complete: false`` and a plain message.
    """
    check_person_key(person_key)
    here = config["NODE_CODE"]
    if parent_client is not None:
        clerk = clerk or _session_clerk()
        if clerk is None:
            logger.info("lookup: no clerk at the counter, answering from the local store")
            return {"cases": local_cases(store, person_key), "answered_by": here,
                    "complete": False, "message": NOT_A_CLERK_MESSAGE}
        try:
            answer = parent_client.post("/sync/lookup", {"person_key": person_key,
                                                         "for": here,
                                                         "clerk": clerk.as_json()})
            answer.setdefault("message", "")
            return answer
        except ParentUnreachable:
            logger.info("lookup: parent unreachable, answering from the local store")
        except errors.PeerError as exc:
            logger.warning("lookup refused by the parent: %s", exc)
            return {"cases": local_cases(store, person_key), "answered_by": here,
                    "complete": False, "message": f"上级节点拒绝了查询：{exc}"}
    cases = local_cases(store, person_key)
    complete = parent_client is None
    return {"cases": cases, "answered_by": here, "complete": complete,
            "message": "" if complete else OFFLINE_MESSAGE}


# -- audit, throttle, alarms ------------------------------------------------------------

def _audit_log(store, config):
    """The answering node's audit log (a look-up it cannot audit is not answered)."""
    from shared import audit

    node_dir = config.get("NODE_DIR")
    if not node_dir:
        raise errors.ConfigurationError("this node has no directory: look-ups cannot be "
                                        "audited, so none are answered")
    return audit.NodeAudit(node_dir, store.db)


def ensure_tables(db):
    """Create the throttle and alarm tables when they are absent."""
    for statement in TABLES:
        db.execute_sql(statement)


def limit_per_hour(config):
    """How many look-ups of one station this node answers in an hour."""
    value = config.get("LOOKUP_LIMIT_PER_HOUR", DEFAULT_LIMIT_PER_HOUR)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise errors.ConfigurationError(
            f"LOOKUP_LIMIT_PER_HOUR must be a whole number of look-ups, not {value!r}")
    return value


def admit(db, config, station, clerk, now=None):
    """Count one look-up of ``station``: ``(admitted, answered this hour, limit)``.

    Over the limit nothing is counted and an alarm row is written (once per station and
    hour) for the supervisors.
    """
    limit = limit_per_hour(config)
    now = clock.time() if now is None else now
    with db.atomic():
        ensure_tables(db)
        db.execute_sql("DELETE FROM lookup_throttle WHERE at < ?", (now - THROTTLE_WINDOW,))
        answered = db.execute_sql(
            "SELECT COUNT(*) FROM lookup_throttle WHERE station = ? AND at >= ?",
            (station, now - THROTTLE_WINDOW)).fetchone()[0]
        if answered >= limit:
            cursor = db.execute_sql(
                "INSERT OR IGNORE INTO lookup_alarm (at, station, clerk, answered, "
                "limit_per_hour, hour) VALUES (?, ?, ?, ?, ?, ?)",
                (now, station, clerk.username, answered, limit, int(now // THROTTLE_WINDOW)))
            if cursor.rowcount:
                logger.warning("look-up alarm: station %s asked %d times within an hour "
                               "(limit %d), last by %s", station, answered + 1, limit,
                               clerk.username)
            return False, answered, limit
        db.execute_sql("INSERT INTO lookup_throttle (station, at) VALUES (?, ?)",
                       (station, now))
    return True, answered + 1, limit


def alarms(db, limit=50):
    """The newest look-up alarms first: ``{"at", "station", "clerk", "answered", "limit",
    "message"}`` (the message in Chinese, for the supervision page)."""
    ensure_tables(db)
    rows = db.execute_sql(
        "SELECT at, station, clerk, answered, limit_per_hour FROM lookup_alarm "
        "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    found = []
    for at, station, clerk, answered, per_hour in rows:
        entry = registry.lookup(db, station)
        name = entry.name if entry is not None and entry.name else station
        found.append({"at": at, "station": station, "clerk": clerk, "answered": answered,
                      "limit": per_hour,
                      "message": f"站点 {name}（{station}）一小时内通办查询超过 {per_hour} 次上限，"
                                 f"已暂停其查询（最近一次由 {clerk} 发起）。请核实是否有人批量"
                                 "试探身份证号码。"})
    return found


def recent_lookups(db, limit=100):
    """The newest look-ups answered or refused here, from the audit log (no person keys)."""
    from shared import audit

    found = []
    for entry in audit.entries(db, limit=limit * 5):
        if entry["action"] not in (AUDIT_ACTION, AUDIT_REFUSED):
            continue
        detail = entry["detail"] if isinstance(entry["detail"], dict) else {}
        found.append({"seq": entry["seq"], "at": entry["at"], "station": detail.get("station"),
                      "clerk": detail.get("clerk"), "hits": detail.get("hits"),
                      "refused": entry["action"] == AUDIT_REFUSED})
        if len(found) >= limit:
            break
    return found
