"""The shapes of ``case`` and ``event`` documents (docs/sync.md; issue 5 builds the workflow).

A case is an immutable header ``case:<number>`` and immutable events
``event:<number>:<hlc>:<node>``; nothing is edited in place, so case flows never conflict.
A case's state is the fold of its events in ``(hlc, node)`` order.

Every builder validates its input and raises :class:`~shared.errors.DocValidation` with a
message saying what is wrong; :func:`check_doc` validates a received document the same way
and checks that its id agrees with its body (scopes read the author from the id).
"""

import datetime
import re

from shared import errors
from shared.cases import scans
from shared.clock import BEIJING
from shared.config import TIER_BY_LENGTH
from shared.hlc import format_hlc, parse_hlc

#: The kinds of case events (issue 5 may add more).
EVENT_KINDS = ("accepted", "notice", "supplemented", "transferred", "joined", "assigned",
               "approved", "rejected", "delivered", "rated", "complained", "preapplied",
               "attached", "forwarded", "opinion", "supplement_requested",
               "delivery_changed", "complaint_handled", "commitment_checked", "withdrawn",
               # efficiency supervision (issue 6)
               "card", "followed_up", "extended", "clock_stopped", "clock_resumed")
#: The kinds that make nodes participants (``parties``): the routing of an acceptance,
#: a transfer, a look-up answered by the county, a change of delivery station and the
#: station a pre-application waits at. No other kind names any party.
PARTY_KINDS = ("accepted", "transferred", "joined", "delivery_changed", "preapplied")
#: Members a builder sets itself; ``**fields`` may not override them.
EVENT_MEMBERS = ("type", "case", "kind", "node", "hlc", "parties")
CASE_MEMBERS = ("type", "number", "item", "origin", "handler", "applicant_key", "hlc")
#: Every member a ``scan:`` document has (besides ``_id``, ``_rev`` …): nothing else.
SCAN_MEMBERS = ("type", "case", "node", "sha256", "mime", "size", "data")

#: Case numbers carry the origin's date in China Standard Time (UTC+8, no daylight saving).
CHINA_TIME = BEIJING

_NUMBER = re.compile(r"([0-9]+)-([0-9]{8})-([0-9]{4,})")
_APPLICANT_KEY = re.compile(r"[0-9a-f]{64}")


def _fail(message):
    raise errors.DocValidation(message)


def check_code(code, what="node code"):
    """Return ``code`` when it is a county (6), township (9) or village (12) digit code."""
    if not isinstance(code, str) or not re.fullmatch(r"[0-9]+", code):
        _fail(f"{what} {code!r} must be a string of digits")
    if len(code) not in TIER_BY_LENGTH:
        _fail(f"{what} {code!r} must have 6, 9 or 12 digits, not {len(code)}")
    return code


def _check_fields(fields, reserved):
    for key in fields:
        if key.startswith("_") or key in reserved:
            _fail(f"member {key!r} is set by the builder and may not be given")


def _check_hlc(hlc):
    return format_hlc(parse_hlc(hlc))


# -- case numbers -----------------------------------------------------------------------


def case_number(origin_code, day, seq):
    """The case number ``<node code>-<yyyymmdd>-<seq, at least 4 digits>``.

    Unique without coordination as long as each node numbers its cases of a day from 1
    upwards; derive ``day`` from the node's HLC (:func:`day_of`), which never goes back,
    rather than from a wall clock that may.
    """
    check_code(origin_code, "origin")
    if not isinstance(day, datetime.date):
        _fail(f"case day must be a date, not {day!r}")
    if isinstance(day, datetime.datetime):
        day = day.date()
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        _fail(f"case sequence must be a positive integer, not {seq!r}")
    return f"{origin_code}-{day:%Y%m%d}-{seq:04d}"


def parse_case_number(number):
    """``(origin_code, day, seq)`` of a case number in its one canonical spelling."""
    match = _NUMBER.fullmatch(number) if isinstance(number, str) else None
    if match is None:
        _fail(f"invalid case number {number!r}: expected <node code>-<yyyymmdd>-<seq>")
    code, day_text, seq_text = match.groups()
    check_code(code, "case number origin")
    try:
        day = datetime.datetime.strptime(day_text, "%Y%m%d").date()
    except ValueError:
        _fail(f"invalid case number {number!r}: {day_text} is not a date")
    seq = int(seq_text)
    # "0012" and "00012" would be one sequence under two numbers: one spelling only.
    if seq < 1 or case_number(code, day, seq) != number:
        _fail(f"invalid case number {number!r}: sequence {seq_text} is not canonical")
    return code, day, seq


def day_of(hlc):
    """The date (China time) of an HLC string, for numbering the cases of a day."""
    ms = parse_hlc(hlc).ms
    return datetime.datetime.fromtimestamp(ms / 1000, CHINA_TIME).date()


# -- documents --------------------------------------------------------------------------


def case_header(number, item_id, origin, handler, applicant_key, hlc, **fields):
    """The immutable ``case:<number>`` header document.

    :param number: the case number; its node code must be ``origin``.
    :param item_id: the ``item:`` document the case was accepted under.
    :param origin: the accepting node's code.
    :param handler: the code of the node that decides the case.
    :param applicant_key: hex HMAC-SHA256 of the applicant's ID number
        (:func:`shared.identity.person_key`).
    :param hlc: the HLC string of the acceptance.
    :param fields: further members (issue 5: the pinned item version, ...).
    """
    code, _, _ = parse_case_number(number)
    check_code(origin, "origin")
    if code != origin:
        _fail(f"case number {number} was not issued by its origin {origin}")
    if not isinstance(item_id, str) or not item_id.startswith("item:") or item_id == "item:":
        _fail(f"item must be an item: document id, not {item_id!r}")
    check_code(handler, "handler")
    if not isinstance(applicant_key, str) or not _APPLICANT_KEY.fullmatch(applicant_key):
        _fail("applicant_key must be 64 lower-case hex digits (the keyed hash of an ID number)")
    _check_fields(fields, CASE_MEMBERS)
    doc = {"_id": f"case:{number}", "type": "case", "number": number, "item": item_id,
           "origin": origin, "handler": handler, "applicant_key": applicant_key,
           "hlc": _check_hlc(hlc)}
    doc.update(fields)
    return doc


def event_id(number, hlc, node):
    """The id ``event:<number>:<hlc>:<node>`` of an event."""
    return f"event:{number}:{hlc}:{node}"


def case_event(number, kind, node, hlc, parties=(), **fields):
    """An immutable ``event:`` document of case ``number``.

    :param kind: one of :data:`EVENT_KINDS`.
    :param node: the authoring node's code.
    :param hlc: the author's HLC string for this event (:meth:`shared.hlc.NodeClock.now`).
    :param parties: node codes this event makes participants (a transfer's new handler,
        a joining station); omitted from the document when empty. Only the
        :data:`PARTY_KINDS` name any.
    :param fields: further members of the event (notice text, rating, ...).
    """
    parse_case_number(number)
    if kind not in EVENT_KINDS:
        _fail(f"unknown event kind {kind!r}: choose one of {', '.join(EVENT_KINDS)}")
    check_code(node, "event node")
    hlc = _check_hlc(hlc)
    if isinstance(parties, str):
        _fail("parties must be a list of node codes, not one string")
    parties = list(dict.fromkeys(check_code(p, "party") for p in parties))
    if parties and kind not in PARTY_KINDS:
        _fail(f"an event of kind {kind!r} names no parties (only {', '.join(PARTY_KINDS)} do)")
    if kind == "joined" and len(parties) > 1:
        _fail("a joined event names exactly one joining station")
    _check_fields(fields, EVENT_MEMBERS)
    doc = {"_id": event_id(number, hlc, node), "type": "event", "case": number,
           "kind": kind, "node": node, "hlc": hlc}
    if parties:
        doc["parties"] = parties
    doc.update(fields)
    return doc


def case_number_of(doc_id):
    """The case number a ``case:`` or well-formed ``event:`` id belongs to, else None."""
    if not isinstance(doc_id, str):
        return None
    if doc_id.startswith("case:"):
        number = doc_id[len("case:"):]
    elif doc_id.startswith("scan:"):
        parts = doc_id[len("scan:"):].split(":")
        if len(parts) != 2 or not scans.is_sha256(parts[1]):
            return None
        number = parts[0]
    elif doc_id.startswith("event:"):
        parts = doc_id[len("event:"):].split(":")
        if len(parts) != 3:
            return None
        number, hlc, node = parts
        try:
            _check_hlc(hlc)
            check_code(node)
        except errors.DocValidation:
            return None
    else:
        return None
    try:
        parse_case_number(number)
    except errors.DocValidation:
        return None
    return number


def check_doc(doc):
    """Validate a received ``case`` or ``event`` document; returns its case number.

    Rebuilds the document from its members with the builders, so the id must agree with
    the body (the author in an event id is its ``node``) and every member must be valid.
    """
    if not isinstance(doc, dict):
        _fail("a case document must be a JSON object")
    kind = doc.get("type")
    if kind == "case":
        extra = {k: v for k, v in doc.items()
                 if not k.startswith("_") and k not in CASE_MEMBERS}
        rebuilt = case_header(*(doc.get(k) for k in CASE_MEMBERS[1:]), **extra)
    elif kind == "event":
        extra = {k: v for k, v in doc.items()
                 if not k.startswith("_") and k not in EVENT_MEMBERS}
        parties = doc.get("parties", [])
        if not isinstance(parties, list):
            _fail("parties must be a list of node codes")
        rebuilt = case_event(doc.get("case"), doc.get("kind"), doc.get("node"),
                             doc.get("hlc"), parties, **extra)
        if "parties" in doc and rebuilt.get("parties") != parties:
            _fail("parties must be a non-empty list of distinct node codes")
    elif kind == "scan":
        rebuilt = _check_scan(doc)
    else:
        _fail(f"not a case document: type {kind!r}")
    if doc.get("_id") != rebuilt["_id"]:
        _fail(f"document id {doc.get('_id')!r} does not match its body ({rebuilt['_id']})")
    return rebuilt.get("number") or rebuilt["case"]


def _check_scan(doc):
    """Validate a ``scan:`` document's members (its content is checked where it is opened).

    A scan carries exactly :data:`SCAN_MEMBERS`: a member more (``parties``, say) would
    be read by someone, so it is refused rather than carried along.
    """
    extra = sorted(k for k in doc if not k.startswith("_") and k not in SCAN_MEMBERS)
    if extra:
        _fail(f"a scan carries only {', '.join(SCAN_MEMBERS)}, not {', '.join(extra)}")
    number = doc.get("case")
    parse_case_number(number)
    check_code(doc.get("node"), "scan node")
    if not scans.is_sha256(doc.get("sha256")):
        _fail("a scan's sha256 must be 64 lower-case hex digits")
    if doc.get("mime") not in scans.MIMES:
        _fail(f"a scan's mime must be one of {', '.join(scans.MIMES)}")
    size = doc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        _fail("a scan's size must be a positive integer")
    if not isinstance(doc.get("data"), str) or not doc["data"]:
        _fail("a scan must carry its sealed data")
    return {"_id": scans.scan_id(number, doc["sha256"]), "case": number}


# -- reading a case ---------------------------------------------------------------------


def party_codes(doc):
    """The codes a case document makes participants: a header's origin and handler, the
    ``parties`` of an event of a :data:`PARTY_KINDS` kind; nothing for any other document
    (a scan, an event of another kind), whatever members it carries.
    """
    if not isinstance(doc, dict):
        return []
    if doc.get("type") == "case":
        found = [doc.get("origin"), doc.get("handler")]
    elif doc.get("type") == "event" and doc.get("kind") in PARTY_KINDS and \
            isinstance(doc.get("parties"), list):
        found = doc["parties"]
    else:
        return []
    return list(dict.fromkeys(c for c in found if isinstance(c, str) and c))


def participants(header, events):
    """The codes taking part in a case: origin, handler and the ``parties`` of every event
    of a kind that carries them (:func:`party_codes`).

    :param header: the case header, or None when it has not arrived yet.
    :returns: a sorted list of node codes.
    """
    codes = set(party_codes(header)) if header else set()
    for event in events:
        codes.update(party_codes(event))
    return sorted(codes)


def events_in_order(events):
    """A case's events in causal order: by ``(hlc, node)``, then id for a total order."""
    return sorted(events, key=lambda e: (e.get("hlc", ""), e.get("node", ""), e.get("_id", "")))
