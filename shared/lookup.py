"""Handle anywhere (通办): find a citizen's cases region-wide while they wait at the counter.

A station asks by the keyed hash of the citizen's ID number (``identity.person_key``);
the number itself never leaves the station. The question goes up the tree to the county,
which holds every case of the region; the node that answers writes a ``joined`` event
naming the asking station for each case found, which makes the station a participant
(docs/sync.md, Scopes) so the cases replicate down to it within seconds. When the link is
down the station is told so plainly and gets what it holds itself; nothing blocks longer
than a few seconds.
"""

import logging
import re

from shared import casedocs, errors, registry
from shared.nodeclient import ParentUnreachable

logger = logging.getLogger(__name__)

PERSON_KEY = re.compile(r"[0-9a-f]{64}")
#: Seconds a station waits for the region's answer before it answers from its own store.
LOOKUP_TIMEOUT = 8.0
OFFLINE_MESSAGE = "本站与上级节点的连接中断，只能显示本站已有的办件；其他站点的办件待连接恢复后再查询。"


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
    """Make ``joiner`` a participant of each case (a ``joined`` event by ``author``).

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

    :param principal_node: the code of the node that sent the request (authenticated).
    :param body: ``{"person_key", "for": code of the asking station (default the sender)}``.
    :param parent_client: a ``NodeClient`` of the parent, or None at the county.
    :returns: ``{"cases", "answered_by", "complete", "message"}``.
    :raises Forbidden: the sender may not ask for that station.
    """
    person_key = check_person_key(body.get("person_key"))
    asker = body.get("for") or principal_node
    if not isinstance(asker, str) or not asker.isdigit():
        raise errors.BadRequest("for must be a node code")
    if not registry.is_ancestor_or_self(store.db, principal_node, asker):
        raise errors.Forbidden(f"node {principal_node} may not ask for node {asker}")
    here = config["NODE_CODE"]
    if parent_client is not None:
        try:
            answer = parent_client.post("/sync/lookup", {"person_key": person_key,
                                                         "for": asker})
        except ParentUnreachable:
            answer = None
        if answer is not None:
            return answer
    cases = local_cases(store, person_key)
    join_cases(store, clock, cases, asker, here)
    complete = parent_client is None
    return {"cases": cases, "answered_by": here, "complete": complete,
            "message": "" if complete else OFFLINE_MESSAGE}


def lookup_from_station(store, clock, config, person_key, parent_client):
    """A station's own question (the clerk's screen or ``tongban lookup``).

    Never raises for a missing link: offline, it answers from the station's store with
    ``complete: false`` and a plain message.
    """
    check_person_key(person_key)
    here = config["NODE_CODE"]
    if parent_client is not None:
        try:
            answer = parent_client.post("/sync/lookup", {"person_key": person_key,
                                                         "for": here})
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
