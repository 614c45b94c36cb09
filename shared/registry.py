"""The node registry: which nodes exist, where they sit in the tree, and their keys.

Each node is one ``node:<code>`` document signed by the county key (docs/sync.md,
"Registry"). The county writes them; every other node only relays them, and keeps in
its ``node_registry`` table only entries whose signature verifies, so a forged or
tampered entry is never trusted anywhere. Revocation is a new, signed version with
``status: revoked``.

A registered, active node gets a new key only when the county says so
(``tongban enrol --replace``): issuing that code revokes the old key at once (a version with
``status: revoked, reason: replaced``), and the version the redemption publishes names the
key it replaces (``replaces``), so the registry's history says why a key changed.

Enrolment codes (one-time, expiring) live only at the county, in ``enrolment_code``.
"""

import datetime
import hashlib
import logging
import os
from collections import namedtuple

from shared import clock, errors, identity
from shared import config as cfg

logger = logging.getLogger(__name__)

NODE_PREFIX = "node:"
ACTIVE, REVOKED = "active", "revoked"
STATUSES = (ACTIVE, REVOKED)
#: Members of a node document that are not signed.
UNSIGNED = ("_id", "_rev", "_revisions", "signature", "_conflicts", "_deleted")
DEFAULT_ENROLMENT_HOURS = 72
# Crockford's base32 without I, L, O, U: nothing a clerk can misread on the phone.
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

NodeEntry = namedtuple("NodeEntry", "code tier parent name public_key status version")


def utcnow():
    """The current UTC time, timezone-aware."""
    return clock.utcnow()


def _iso(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- signed entries ------------------------------------------------------------------------

def signed_part(doc):
    """The members of a node document that its signature covers."""
    return {k: v for k, v in doc.items() if k not in UNSIGNED}


def make_entry(county_key, *, code, tier, name, public_key, status=ACTIVE, version=1,
               parent=None, issued_at=None, **history):
    """A signed ``node:<code>`` document.

    :param county_key: the county's ``Ed25519PrivateKey``.
    :param public_key: the node's public key, base64 of the raw 32 bytes.
    :param history: signed members saying why this version was made (``reason``,
        ``replaces``: the public key this version's key replaces); None values are left out.
    """
    cfg.validate_code(tier, code)
    if status not in STATUSES:
        raise errors.DocValidation(f"status must be one of {STATUSES}")
    doc = {"_id": NODE_PREFIX + code, "type": "node", "code": code, "tier": tier,
           "parent": parent if parent is not None else cfg.parent_code(code),
           "name": name or "", "public_key": public_key, "status": status,
           "version": int(version), "issued_at": issued_at or _iso(utcnow())}
    doc.update({key: value for key, value in history.items() if value is not None})
    doc["signature"] = identity.sign(county_key, identity.canonical_json(signed_part(doc)))
    return doc


def verify_entry(county_public_key, doc):
    """True when ``doc`` is a well-formed node entry signed by the county key."""
    if not county_public_key or not isinstance(doc, dict):
        return False
    signature = doc.get("signature")
    if not isinstance(signature, str):
        return False
    code, tier = doc.get("code"), doc.get("tier")
    try:
        cfg.validate_code(tier, code)
    except errors.ConfigurationError:
        return False
    if doc.get("_id") not in (None, NODE_PREFIX + code) or doc.get("status") not in STATUSES:
        return False
    if not isinstance(doc.get("version"), int) or not isinstance(doc.get("public_key"), str):
        return False
    return identity.verify(county_public_key, identity.canonical_json(signed_part(doc)),
                           signature)


# -- the projection ----------------------------------------------------------------------

class NodeRegistry:
    """``node_registry``: the verified registry entries, one row per node.

    :param county_public_key: base64 or raw bytes of the county's key; without it
        (a node not yet enrolled) nothing can be verified and the table stays empty.
    """

    tables = [
        """CREATE TABLE IF NOT EXISTS node_registry (
            code TEXT PRIMARY KEY,
            tier TEXT NOT NULL,
            parent TEXT,
            name TEXT NOT NULL,
            public_key TEXT NOT NULL,
            status TEXT NOT NULL,
            version INTEGER NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS node_registry_parent ON node_registry (parent)",
    ]

    def __init__(self, county_public_key):
        self.county_public_key = county_public_key
        self._warned = False

    def apply(self, db, docs):
        """Keep verified ``node:`` entries; a lower version never replaces a higher one."""
        changed = False
        for doc_id, doc in docs:
            if not doc_id.startswith(NODE_PREFIX) or doc is None:
                continue
            if not verify_entry(self.county_public_key, doc):
                if self.county_public_key or not self._warned:
                    logger.warning("registry entry %s does not verify; ignored", doc_id)
                    self._warned = True
                continue
            row = db.execute_sql("SELECT version FROM node_registry WHERE code = ?",
                                 (doc["code"],)).fetchone()
            if row is not None and row[0] > doc["version"]:
                continue
            db.execute_sql(
                "INSERT OR REPLACE INTO node_registry "
                "(code, tier, parent, name, public_key, status, version) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (doc["code"], doc["tier"], doc.get("parent"), doc.get("name") or "",
                 doc["public_key"], doc["status"], doc["version"]))
            changed = True
        if changed:
            db.execute_sql(
                "INSERT INTO meta (key, value) VALUES ('registry_version', '1') "
                "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    def reset(self, db):
        """Empty the table before a rebuild."""
        db.execute_sql("DELETE FROM node_registry")


def registry_version(db):
    """A number that changes whenever ``node_registry`` does (for caches)."""
    row = db.execute_sql("SELECT value FROM meta WHERE key = 'registry_version'").fetchone()
    return int(row[0]) if row else 0


def _entry(row):
    code, tier, parent, name, public_key, status, version = row
    return NodeEntry(code, tier, parent, name, identity.unb64(public_key), status, version)


def lookup(db, code):
    """The verified entry of node ``code``, or None."""
    row = db.execute_sql(
        "SELECT code, tier, parent, name, public_key, status, version FROM node_registry "
        "WHERE code = ?", (code,)).fetchone()
    return _entry(row) if row else None


def all_entries(db):
    """Every verified entry, by code."""
    cursor = db.execute_sql(
        "SELECT code, tier, parent, name, public_key, status, version FROM node_registry "
        "ORDER BY code")
    return [_entry(row) for row in cursor.fetchall()]


def parent_of(db, code):
    """The parent of ``code``: the registry's, else the one its division code implies."""
    row = db.execute_sql("SELECT parent FROM node_registry WHERE code = ?",
                         (code,)).fetchone()
    if row is not None:
        return row[0]
    return cfg.parent_code(code) if code and code.isdigit() else None


def ancestors(db, code):
    """``code`` and every node above it, nearest first (stops at a cycle)."""
    chain = []
    while code and code not in chain:
        chain.append(code)
        code = parent_of(db, code)
    return chain


def is_ancestor_or_self(db, ancestor, code):
    """True when ``ancestor`` is ``code`` or above it in the tree."""
    return ancestor in ancestors(db, code)


# -- enrolment and revocation (at the county) --------------------------------------------

_ENROLMENT_TABLE = """CREATE TABLE IF NOT EXISTS enrolment_code (
    code_hash TEXT PRIMARY KEY,
    node_code TEXT NOT NULL,
    tier TEXT NOT NULL,
    expires TEXT NOT NULL,
    used_at TEXT,
    replaces_key INTEGER NOT NULL DEFAULT 0
)"""

REPLACED = "replaced"
#: What the county is told when it asks for a code of a node that holds an active key.
ACTIVE_NODE_REASON = ("node {code} is registered and active: a new enrolment would replace "
                      "its key; ")


def _enrolment_table(db):
    """Create ``enrolment_code`` (an older one gains its ``replaces_key`` column)."""
    db.execute_sql(_ENROLMENT_TABLE)
    columns = [row[1] for row in db.execute_sql("PRAGMA table_info(enrolment_code)")]
    if "replaces_key" not in columns:
        db.execute_sql("ALTER TABLE enrolment_code ADD COLUMN replaces_key INTEGER NOT NULL "
                       "DEFAULT 0")


def _code_hash(enrolment_code):
    normalised = enrolment_code.replace("-", "").replace(" ", "").upper()
    return hashlib.sha256(normalised.encode("ascii", "replace")).hexdigest()


def issue_enrolment(store, node_code, tier, *, hours=DEFAULT_ENROLMENT_HOURS, now=None,
                    county_key=None, replace=False):
    """A one-time enrolment code for ``node_code`` (printed once; only its hash is kept).

    :param replace: the node is registered and its PC lost or replaced: its old key is
        revoked now (signed with ``county_key``) and the code enrols the new one.
    :raises ConfigurationError: a malformed code, a parent the registry does not hold as
        active (enrol the township before its villages), a node that is active without
        ``replace``, or ``replace`` for a node the registry does not hold.
    """
    cfg.validate_code(tier, node_code)
    if tier == "county":
        raise errors.ConfigurationError("the county is not enrolled; it makes its own key")
    parent = cfg.parent_code(node_code)
    entry = lookup(store.db, parent)
    if entry is None or entry.status != ACTIVE:
        raise errors.ConfigurationError(
            f"parent {parent} of {node_code} is not an active node of the registry; "
            "enrol it first")
    current = _current(store, node_code)
    if current is not None and current.get("tier") != tier:
        raise errors.ConfigurationError(
            f"node {node_code} is registered as a {current.get('tier')}, not a {tier}")
    if replace:
        if current is None:
            raise errors.ConfigurationError(
                f"node {node_code} is not in the registry: there is nothing to replace; "
                "enrol it without --replace")
        if county_key is None:
            raise errors.ConfigurationError("replacing a node's key needs the county key")
    elif current is not None and current.get("status") == ACTIVE:
        raise errors.ConfigurationError(ACTIVE_NODE_REASON.format(code=node_code) + (
            "if the station's PC is lost or replaced, issue the code with --replace "
            "(the old key is revoked at once)"))
    now = now or utcnow()
    raw = "".join(CODE_ALPHABET[b % 32] for b in os.urandom(16))
    text = "-".join(raw[i:i + 4] for i in range(0, 16, 4))
    with store.db.atomic():
        _enrolment_table(store.db)
        if replace:
            # The newest replacement code is the only one: any earlier code of the node
            # (one thought lost) can no longer enrol a PC.
            store.db.execute_sql("UPDATE enrolment_code SET used_at = ? WHERE node_code = ? "
                                 "AND used_at IS NULL", (_iso(now), node_code))
        store.db.execute_sql(
            "INSERT INTO enrolment_code (code_hash, node_code, tier, expires, replaces_key) "
            "VALUES (?, ?, ?, ?, ?)",
            (_code_hash(text), node_code, tier, _iso(now + datetime.timedelta(hours=hours)),
             int(bool(replace))))
        if replace:
            # A lost PC may be in anyone's hands: its key stops working now, not when the
            # replacement enrols.
            revoke(store, county_key, node_code, reason=REPLACED)
    logger.info("enrolment code issued for %s (%s), valid %d h%s", node_code, tier, hours,
                "; its old key is revoked" if replace else "")
    return text


def _take_enrolment(store, enrolment_code, node_code, tier, now):
    """Mark an enrolment code used; raises Forbidden when it cannot be used.

    :returns: True when the code was issued to replace the node's key (``--replace``).
    """
    with store.db.atomic():
        _enrolment_table(store.db)
        row = store.db.execute_sql(
            "SELECT node_code, tier, expires, used_at, replaces_key FROM enrolment_code "
            "WHERE code_hash = ?", (_code_hash(enrolment_code),)).fetchone()
        if row is None:
            raise errors.Forbidden("unknown enrolment code")
        issued_for, issued_tier, expires, used_at, replace = row
        if used_at:
            raise errors.Forbidden("this enrolment code has already been used, or a newer "
                                   "code for the same node replaced it")
        if expires < _iso(now):
            raise errors.Forbidden("this enrolment code has expired")
        if (issued_for, issued_tier) != (node_code, tier):
            raise errors.Forbidden(
                f"this enrolment code was issued for {issued_tier} {issued_for}, "
                f"not {tier} {node_code}")
        current = _current(store, node_code)
        if current is not None and current.get("status") == ACTIVE and not replace:
            # Never a silent change of an active node's key (a code issued before the
            # node enrolled, used a second time by someone else's PC).
            raise errors.Forbidden(ACTIVE_NODE_REASON.format(code=node_code) + (
                "ask the county for a code issued with tongban enrol --replace"))
        # Every other code of the node is used up with it: a second code (one thought lost,
        # or issued twice) can never replace the key of the PC that enrolled.
        store.db.execute_sql("UPDATE enrolment_code SET used_at = ? WHERE node_code = ? "
                             "AND used_at IS NULL", (_iso(now), node_code))
    return bool(replace)


def _release_enrolment(store, enrolment_code):
    store.db.execute_sql("UPDATE enrolment_code SET used_at = NULL WHERE code_hash = ?",
                         (_code_hash(enrolment_code),))


def _current(store, code):
    """The stored entry of ``code`` (None when there is none)."""
    try:
        return store.get(NODE_PREFIX + code)
    except errors.NotFound:
        return None


def publish_entry(store, county_key, **fields):
    """Sign and write a new version of a node's entry at the county; returns the doc."""
    code = fields["code"]
    current = _current(store, code)
    version = (current or {}).get("version", 0) + 1
    doc = make_entry(county_key, version=version, **fields)
    if current is not None:
        doc["_rev"] = current["_rev"]
    doc["_rev"] = store.put(doc)
    return doc


def redeem_enrolment(store, county_key, request, *, region_key, now=None):
    """Enrol a node at the county: check its one-time code, register its key.

    :param request: ``{"enrol_code", "code", "tier", "name", "public_key", "seal_key"}``.
    :returns: ``{"entry", "county_public_key", "registry", "sealed_region_key"}``.
    :raises BadRequest: malformed request. :raises Forbidden: the code cannot be used.
    """
    now = now or utcnow()
    try:
        code, tier = request["code"], request["tier"]
        enrol_code, public_key = request["enrol_code"], request["public_key"]
        seal_key = request["seal_key"]
        cfg.validate_code(tier, code)
        identity.load_public_key(public_key)
        identity.unb64(seal_key)
        if not isinstance(enrol_code, str):
            raise ValueError("enrol_code must be a string")
    except (KeyError, TypeError, ValueError, errors.ConfigurationError) as exc:
        raise errors.BadRequest(f"malformed enrolment request: {exc}") from exc
    replace = _take_enrolment(store, enrol_code, code, tier, now)
    previous = _current(store, code) if replace else None
    try:
        entry = publish_entry(store, county_key, code=code, tier=tier,
                              name=str(request.get("name") or ""), public_key=public_key,
                              replaces=(previous or {}).get("public_key"),
                              reason=REPLACED if previous else None)
    except Exception:
        _release_enrolment(store, enrol_code)
        raise
    logger.info("node %s (%s) enrolled%s", code, tier,
                ", replacing its old key" if previous else "")
    return {"entry": entry,
            "county_public_key": identity.b64(identity.public_key_bytes(county_key)),
            "registry": registry_docs(store),
            "sealed_region_key": identity.seal(seal_key, identity.unb64(region_key))}


def registry_docs(store):
    """Every ``node:`` document of the store with its revision history (for relaying)."""
    _total, rows = store.all_docs(startkey=NODE_PREFIX, endkey=NODE_PREFIX + "\ufff0")
    return [store.get(row["id"], revs=True) for row in rows]


def revoke(store, county_key, code, *, reason=None):
    """Revoke node ``code``: a new signed version with status ``revoked``.

    :param reason: why, recorded in the signed entry (``replaced``: a new PC enrols).
    :raises NotFound: the registry has no such node.
    """
    current = _current(store, code)
    if current is None:
        raise errors.NotFound(f"node {code} is not in the registry")
    if current.get("status") == REVOKED:
        return current
    return publish_entry(store, county_key, code=code, tier=current["tier"],
                         name=current.get("name", ""), public_key=current["public_key"],
                         parent=current.get("parent"), status=REVOKED, reason=reason)
