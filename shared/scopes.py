"""Who may read and write which document: the policy of every node (docs/sync.md, "Scopes").

A document's id says its scope: the catalog, releases and the registry go to every
node; a case and its events go to the nodes taking part in it and to their ancestors;
``status:<code>`` to that node and its ancestors; anything else only to full-scope
callers. :class:`NodePolicy` answers couch.py's questions for two kinds of callers:

* other nodes, whose requests are signed (``Authorization: Tongban-Node …``) and
  checked against the registry; a node reads and writes what its code allows;
* Basic-auth accounts with the ``replicator`` role, for standard CouchDB and PouchDB
  clients; an account's ``scope`` is a node code (it sees what that node sees) or ``*``.

Writes are scoped as strictly as reads, on every path (``_bulk_docs`` with or without
``new_edits``, ``PUT``, ``DELETE``). A case document names its author (a header its
``origin``, an event or scan its ``node``): the writer or a node below it, and, but for a
header, a participant of the case or a node above one. Who takes part changes only through
the kinds that carry ``parties`` (``casedocs.PARTY_KINDS``), for nodes of the registry,
and a node new to the case only as the kind allows it: a ``joined`` event by the county
(its answer to a look-up), a transfer by the node the case is with to a township or the
county, the accepting station's routing (the nodes above it) and delivery station, a
change of delivery station, a pre-application's station, each only where the fold takes
it. A refusal says the same for a case that is not here as for one the writer may not read.
Catalog documents are the county's: no node and no scoped account writes them.

:class:`CaseParties` keeps who takes part in each case (``case_party``). When a case
gains a participant it asks the store to re-announce the case's documents, so the
new participant (and its ancestors) receive them after whatever checkpoint they hold.

The changes feed asks the row filter once per row (a township's feed can hold 100,000
rows), so the answers are memoised: participants per case and the decision per case
within one read, ancestors per code in a process cache that lives as long as the
registry's version.
"""

import json
import logging
import threading

from flask import g, has_request_context

from shared import auth, casedocs, errors, identity, registry
from shared.models import FULL_SCOPE
from shared.store import reads
from shared.store import revs as R

logger = logging.getLogger(__name__)

#: Documents that come down from the county and that every node reads.
GLOBAL_PREFIXES = ("item:", "release:", "node:", "key:", "catalog:")
CASE_PREFIX = "case:"
EVENT_PREFIX = "event:"
SCAN_PREFIX = "scan:"
STATUS_PREFIX = "status:"
LOCAL_PREFIX = "_local/"

CATALOG_REASON = "catalog documents come only from the county"
IMMUTABLE_REASON = "case headers and events are immutable; write a new event instead"
#: One answer for a case that is not here and for a case the writer may not read.
NOT_A_PARTICIPANT_REASON = ("case {number} is not known here, or node {author} does not take "
                            "part in it: a case's documents come from its participants and "
                            "the nodes above them (send its header first)")
JOIN_REASON = "only the county joins a station to a case (its answer to a look-up)"
#: The member naming whom each party kind makes a participant.
PARTY_MEMBERS = {"transferred": "its target (to)", "delivery_changed": "its station",
                 "preapplied": "its station",
                 "accepted": "its route and its delivery station"}


def case_number(doc_id):
    """The case number a ``case:``, ``event:`` or ``scan:`` id belongs to, else None."""
    if doc_id.startswith(CASE_PREFIX):
        return doc_id[len(CASE_PREFIX):] or None
    if doc_id.startswith(EVENT_PREFIX):
        return doc_id[len(EVENT_PREFIX):].split(":", 1)[0] or None
    if doc_id.startswith(SCAN_PREFIX):
        return doc_id[len(SCAN_PREFIX):].split(":", 1)[0] or None
    return None


def _codes(values):
    """The strings among ``values`` (a participant list may hold anything as sent)."""
    return {value for value in values if isinstance(value, str) and value}


def _header_codes(doc):
    return _codes([doc.get("origin"), doc.get("handler")])


def _event_codes(doc):
    """The participants an ``event:`` document adds (none for a kind that carries none)."""
    return set(casedocs.party_codes(doc)) if doc.get("type") == "event" else set()


# -- participants ----------------------------------------------------------------------

class CaseParties:
    """``case_party``: the nodes taking part in each case (origin, handler, parties).

    Participants only grow: a deleted document removes none (cases are immutable). A
    case that gains a participant has its header and events re-announced (see
    ``Store.add_projection``).
    """

    tables = [
        """CREATE TABLE IF NOT EXISTS case_party (
            "case" TEXT NOT NULL,
            node TEXT NOT NULL,
            PRIMARY KEY ("case", node)
        ) WITHOUT ROWID""",
        "CREATE INDEX IF NOT EXISTS case_party_node ON case_party (node)",
    ]

    def apply(self, db, docs):
        """Record the participants ``docs`` name; returns the ids to re-announce."""
        offered = {}
        for doc_id, doc in docs:
            if doc is None:
                continue
            number = case_number(doc_id)
            if number is None or doc_id.startswith(SCAN_PREFIX):
                continue
            # Only a header and the kinds that carry participants name any: a scan or a
            # rating listing "parties" makes nobody a participant.
            codes = _header_codes(doc) if doc_id.startswith(CASE_PREFIX) else \
                _event_codes(doc)
            if codes:
                offered.setdefault(number, set()).update(codes)
        if not offered:
            return ()
        conn = db.connection()
        known = {}
        cursor = conn.execute(
            'SELECT "case", node FROM case_party WHERE "case" IN (SELECT value FROM json_each(?))',
            (_json_list(offered),))
        for number, node in cursor:
            known.setdefault(number, set()).add(node)
        added = [(number, node) for number, codes in offered.items()
                 for node in sorted(codes - known.get(number, set()))]
        if not added:
            return ()
        conn.executemany('INSERT OR IGNORE INTO case_party ("case", node) VALUES (?, ?)', added)
        announce = []
        for number in dict.fromkeys(number for number, _ in added):
            announce.extend(case_documents(db, number))
        return announce

    def reset(self, db):
        """Empty the table before a rebuild."""
        db.execute_sql("DELETE FROM case_party")

    @staticmethod
    def participants(db, number):
        """The codes taking part in case ``number``."""
        cursor = db.execute_sql('SELECT node FROM case_party WHERE "case" = ?', (number,))
        return {row[0] for row in cursor.fetchall()}


def case_documents(db, number):
    """Ids of the documents of case ``number`` held here: its header, then its events."""
    header = CASE_PREFIX + number
    ids = [header] if reads.exists(db, header) else []
    # Event ids are "event:<number>:…": the prefix's range is exactly the case's events,
    # read from the primary key's index; the same for its scans.
    for prefix in (f"{EVENT_PREFIX}{number}:", f"{SCAN_PREFIX}{number}:"):
        ids += reads.ids_with_prefix(db, prefix)
    return ids


def _json_list(values):
    return json.dumps(list(values), ensure_ascii=False)


# -- the registry, cached ----------------------------------------------------------------

class RegistryCache:
    """Registry look-ups and ancestor sets, kept while ``registry_version`` stays the same.

    One per process: the registry changes rarely, and every request needs it.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._version = None
        self._entries = {}
        self._ancestors = {}

    def refresh(self, db):
        """Drop everything when the registry changed since the last look."""
        version = registry.registry_version(db)
        if version != self._version:
            with self._lock:
                self._version = version
                self._entries = {}
                self._ancestors = {}

    def lookup(self, db, code):
        """The registry entry of ``code`` (None when unknown)."""
        entries = self._entries
        if code not in entries:
            entries[code] = registry.lookup(db, code)
        return entries[code]

    def ancestors(self, db, code):
        """``code`` and every node above it, as a frozenset."""
        cache = self._ancestors
        found = cache.get(code)
        if found is None:
            found = cache[code] = frozenset(registry.ancestors(db, code))
        return found


# -- one request's view of the scopes ------------------------------------------------------

class Scope:
    """What one principal may read and write, memoised for one read or one write batch.

    Build a new one for each snapshot (``NodePolicy.scope``): participants are
    remembered, and a case may gain some between two reads.
    """

    def __init__(self, db, cache, principal):
        self.db = db
        self.cache = cache
        self.full = bool(principal.attributes.get("full"))
        self.node = principal.attributes.get("node")
        self._participants = {}
        self._readable_cases = {}
        # Written earlier in this batch (the projection runs only after the checks):
        # headers and events by case number, and the participants they add.
        self._headers = {}
        self._events = {}
        self._joined = {}

    def is_above(self, ancestor, code):
        """True when ``ancestor`` is ``code`` or one of its ancestors."""
        return isinstance(code, str) and ancestor in self.cache.ancestors(self.db, code)

    def participants(self, number):
        """The participants of case ``number`` as known now (this batch included)."""
        found = self._participants.get(number)
        if found is None:
            found = self._participants[number] = CaseParties.participants(self.db, number)
        joined = self._joined.get(number)
        return found | joined if joined else found

    def node_may_read_case(self, code, number):
        """True when node ``code`` takes part in case ``number`` or is above a participant."""
        return any(self.is_above(code, party) for party in self.participants(number))

    def can_read(self, doc_id):
        """True when the principal may read ``doc_id``."""
        if self.full or doc_id.startswith(GLOBAL_PREFIXES) or doc_id.startswith(LOCAL_PREFIX):
            return True
        if self.node is None:
            return False
        number = case_number(doc_id)
        if number is not None:
            readable = self._readable_cases.get(number)
            if readable is None:
                readable = self._readable_cases[number] = \
                    self.node_may_read_case(self.node, number)
            return readable
        if doc_id.startswith(STATUS_PREFIX):
            return self.is_above(self.node, doc_id[len(STATUS_PREFIX):])
        return False

    def check_write(self, doc_id, doc, state, new_edits=True):
        """Raise Forbidden unless the principal may write ``doc`` as ``doc_id``.

        Called before the store looks for conflicts, so that a refused write never
        learns whether a document it may not read exists.
        """
        if doc_id.startswith(LOCAL_PREFIX):
            return
        number = case_number(doc_id)
        if number is not None:
            self._check_case_document(doc_id, number, doc, state, new_edits)
            return
        if self.full:
            return
        if doc_id.startswith(GLOBAL_PREFIXES):
            raise errors.Forbidden(CATALOG_REASON)
        if doc_id.startswith(STATUS_PREFIX) and self.node is not None:
            code = doc_id[len(STATUS_PREFIX):]
            if self.is_above(self.node, code):
                return
            raise errors.Forbidden(f"only node {code} and the nodes above it write {doc_id}")
        raise errors.Forbidden(f"{doc_id} is outside the scope of {self._who()}")

    def _who(self):
        return f"node {self.node}" if self.node else "this account"

    def _check_case_document(self, doc_id, number, doc, state, new_edits):
        """The write policy of a case's documents (docs/sync.md, "Scopes").

        In this order, so that a refusal never tells whether a case the writer cannot
        read exists: who the document names as its author and its shape (neither looks
        at the case), then whether that author takes part in the case (one answer for an
        absent case and for another's), then who it makes a participant, and only then
        whether the document is held already.
        """
        is_header = doc_id.startswith(CASE_PREFIX)
        is_event = doc_id.startswith(EVENT_PREFIX)
        if not self.full:
            if doc.get("_deleted") is True:
                raise errors.Forbidden(IMMUTABLE_REASON)
            if is_header:
                self._check_origin(doc)
            else:
                self._check_author(doc_id, doc, is_event)
            # A node sends only what the builders make: the id agrees with the body, a
            # scan carries no member more, only the party kinds name parties.
            casedocs.check_doc(doc)
            if not is_header:
                self._check_participant(number, doc.get("node"))
            if is_event:
                self._check_parties(number, doc)
        self._check_immutable(doc, state, new_edits)
        # The batch's later documents may rely on what this one adds (header first).
        if is_header:
            self._headers[number] = doc
            codes = _header_codes(doc)
        else:
            codes = _event_codes(doc) if is_event else set()
            if is_event:
                self._events.setdefault(number, []).append(doc)
        if codes:
            self._joined.setdefault(number, set()).update(codes)
            self._readable_cases.pop(number, None)

    def _check_origin(self, doc):
        origin = doc.get("origin")
        if self.node is None or not self.is_above(self.node, origin):
            raise errors.Forbidden(
                f"a case header must originate at {self._who()} or below it")

    def _check_author(self, doc_id, doc, is_event):
        """Every case document names its author (``node``): the writer or a node below it."""
        author = doc.get("node")
        if self.node is None or not self.is_above(self.node, author):
            what = "an event must be authored" if is_event else "a scan must be made"
            raise errors.Forbidden(f"{what} by {self._who()} or below it")
        if is_event:
            id_parts = doc_id.split(":")
            if len(id_parts) != 4 or id_parts[3] != author:
                raise errors.Forbidden("an event's id must end with its author's code")

    def _check_participant(self, number, author):
        """The author takes part in the case or is above a participant (and its header is
        here). The same words for a case that is not here and for one it may not read."""
        if not self._case_known(number) or not self.node_may_read_case(author, number):
            raise errors.Forbidden(NOT_A_PARTICIPANT_REASON.format(number=number,
                                                                   author=author))

    def _check_parties(self, number, doc):
        """Who an event makes a participant: registered nodes only, and a node new to the
        case only through the kind that carries it, written by the node entitled to."""
        parties = doc.get("parties") or []
        if not parties:
            return
        unknown = [code for code in parties if self.cache.lookup(self.db, code) is None]
        if unknown:
            raise errors.Forbidden(f"{', '.join(unknown)} not in the registry: "
                                   "only registered nodes take part in a case")
        held = self.participants(number)
        new = [code for code in parties if code not in held]
        if new:
            self._check_joining(number, doc, new)

    def _check_joining(self, number, doc, new):
        kind, author = doc.get("kind"), doc.get("node")
        if kind == "joined":
            # Handle anywhere: the county answers a clerk's look-up; nobody else joins.
            entry = self.cache.lookup(self.db, author)
            if entry is None or entry.tier != "county":
                raise errors.Forbidden(JOIN_REASON)
            return
        route = doc.get("route") if isinstance(doc.get("route"), list) else []
        granted = {"transferred": [doc.get("to")],
                   "delivery_changed": [doc.get("station")],
                   "preapplied": [doc.get("station")],
                   "accepted": [*route, doc.get("delivery_station")]}[kind]
        stray = [code for code in new if code not in granted]
        if stray:
            raise errors.Forbidden(f"a {kind} event makes only {PARTY_MEMBERS[kind]} a "
                                   f"participant, not {', '.join(stray)}")
        if kind == "transferred":
            entry = self.cache.lookup(self.db, doc.get("to"))
            if entry is None or entry.tier not in ("township", "county"):
                raise errors.Forbidden("a case is transferred to a township or the county only")
        if kind == "accepted":
            # The routing of the accepting station: the nodes above it (and the station
            # the citizen collects the result at).
            off_route = [code for code in new if code != doc.get("delivery_station") and
                         not self.is_above(code, author)]
            if off_route:
                raise errors.Forbidden(f"the route of an acceptance at {author} runs through "
                                       f"the nodes above it, not {', '.join(off_route)}")
        refusal = self._fold_refusal(number, doc)
        if refusal:
            # A transfer by a node the case is not with, a second acceptance …: the fold
            # would ignore it, so it may not add anyone either.
            raise errors.Forbidden(f"a {kind} event by node {author} does not fit case "
                                   f"{number} as it stands: {refusal}")

    def _fold_refusal(self, number, doc):
        """Why the fold of the case as held (this batch included) ignores ``doc``, or None."""
        from shared.cases import fold
        from shared.cases.index import read_case

        header, events = read_case(self.db, number)
        header = self._headers.get(number) or header
        held = {event["_id"] for event in events}
        events += [e for e in self._events.get(number, ()) if e.get("_id") not in held]
        state = fold.fold(header, events + [doc])
        return next((entry["reason"] for entry in state["ignored"]
                     if entry["event"] == doc.get("_id")), None)

    def _case_known(self, number):
        if number in self._headers:
            return True
        return reads.is_live(self.db, CASE_PREFIX + number)

    @staticmethod
    def _check_immutable(doc, state, new_edits):
        """Refuse anything but the first revision (or a copy of a revision already held)."""
        if doc.get("_deleted") is True:
            raise errors.Forbidden(IMMUTABLE_REASON)
        if state is None or not state.tree:
            return
        if new_edits:
            raise errors.Forbidden(IMMUTABLE_REASON)
        # The store validated the rev path before asking; a replicated copy of a
        # revision held already changes nothing and is let through.
        rev = R.path_from_revisions(doc.get("_rev"), doc.get("_revisions"))[0]
        if rev not in state.tree:
            raise errors.Forbidden(IMMUTABLE_REASON)


# -- the policy --------------------------------------------------------------------------

class NodePolicy(auth.ReplicatorPolicy):
    """The ``CouchPolicy`` of every node: signed node requests and scoped Basic accounts.

    :param store: the node's store (the registry and ``case_party`` live in it).
    :param verifier: an ``identity.RequestVerifier`` (one per process: it holds the nonces).
    :param cache: a ``CredentialCache`` for Basic passwords.
    """

    def __init__(self, store, *, verifier=None, cache=None):
        super().__init__(cache)
        self.store = store
        self.verifier = verifier or identity.RequestVerifier()
        self.registry = RegistryCache()

    # -- who is calling

    def authenticate(self, request):
        """A node principal for a signed request, else a scoped Basic account."""
        fields = identity.parse_authorization(request.headers.get("Authorization"))
        if fields is None:
            return self._account_principal(request)
        return self._node_principal(request, fields)

    def _node_principal(self, request, fields):
        code = fields["node"]
        db = self.store.db
        self.registry.refresh(db)
        entry = self.registry.lookup(db, code)
        if entry is None:
            raise errors.Unauthorized(f"unknown node {code}: not in this node's registry")
        if entry.status != registry.ACTIVE:
            raise errors.Unauthorized(f"node {code} is revoked")
        body = request.get_data(cache=True)
        paths = _signed_paths(request)
        for index, path_qs in enumerate(paths):
            try:
                self.verifier.check(fields, entry.public_key, request.method, path_qs, body)
                break
            except errors.Unauthorized as exc:
                # Only a signature over another spelling of the path is worth a retry.
                if index == len(paths) - 1 or not exc.reason.startswith("bad signature"):
                    raise
        return auth.Principal(name=code, kind="node",
                              attributes={"node": code, "full": False})

    def _account_principal(self, request):
        account = self.authenticate_account(request)
        scope = account.scope or FULL_SCOPE
        attributes = {"full": True} if scope == FULL_SCOPE else {"node": scope, "full": False}
        return auth.Principal(name=account.username, roles=tuple(account.role_list),
                              attributes=attributes)

    def challenge_headers(self, request):
        """Our clock for a refused node (it corrects its offset), a Basic challenge else."""
        header = request.headers.get("Authorization", "")
        if header.strip().lower().startswith(identity.AUTH_SCHEME.lower()):
            return {identity.SERVER_TIME_HEADER: f"{self.verifier.clock():.3f}"}
        return super().challenge_headers(request)

    # -- what it may do

    def scope(self, principal):
        """A fresh :class:`Scope` of ``principal`` (memoised answers for one snapshot)."""
        db = self.store.db
        self.registry.refresh(db)
        return Scope(db, self.registry, principal)

    def _request_scope(self, principal):
        """One scope per request for single reads (document GET, _bulk_get, _all_docs)."""
        if not has_request_context():
            return self.scope(principal)
        held = g.get("tongban_scope")
        if held is None or held[0] is not principal:
            held = (principal, self.scope(principal))
            g.tongban_scope = held
        return held[1]

    def can_read(self, principal, doc_id):
        """True when ``principal`` may read ``doc_id`` (see the module's table)."""
        if principal.attributes.get("full"):
            return True
        return self._request_scope(principal).can_read(doc_id)

    def read_filter(self, principal):
        """The feed's row filter for ``principal``, or None when it reads everything."""
        if principal.attributes.get("full"):
            return None
        return self.scope(principal).can_read

    def check_write(self, principal, doc_id, doc, state, new_edits=True):
        """Raise Forbidden unless ``principal`` may write ``doc`` (one document)."""
        self.scope(principal).check_write(doc_id, doc, state, new_edits)

    def write_check(self, principal, new_edits=True):
        """The ``check`` of one ``Store.bulk_docs`` call: a scope shared by the batch."""
        scope = self.scope(principal)

        def check(doc_id, doc, state):
            scope.check_write(doc_id, doc, state, new_edits)
        return check


def _signed_paths(request):
    """The path and query a client may have signed: as routed, then as sent on the wire.

    The routed path is percent-decoded; a client that encoded a character (``:`` as
    ``%3A``) signed the raw form, which the WSGI server passes as ``REQUEST_URI``.
    """
    query = request.query_string.decode("utf-8", "replace")
    routed = request.path + ("?" + query if query else "")
    paths = [routed]
    raw = request.environ.get("REQUEST_URI") or request.environ.get("RAW_URI")
    if raw and raw not in paths:
        paths.append(raw)
    return paths
