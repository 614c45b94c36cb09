"""The catalog in force at this node: activation of signed releases and the tables read by
the public pages, search and acceptance.

:class:`CatalogActivation` is a store projection. Whenever a write brings a release, an item
or an agency document, it tries the newest release above the active one: the signature must
verify with a county key this node holds and every listed document must be present with the
listed hash. Only then are the verified contents copied into ``catalog_item`` /
``catalog_agency`` (and the search index) and the working-day overrides into
``catalog_calendar`` / ``catalog_calendar_year`` in the same transaction. Anything else leaves the
last good release active and is recorded: ``waiting`` while listed documents have not
arrived, ``failed`` (an alarm) when a release is tampered, unsigned, signed by another key or
an old one replayed. Pages never read ``item:`` documents directly, so a document changed
after activation cannot reach a citizen either (it raises an alarm instead).

Every revision held of a release and of its listed documents counts, not only the winning
one: whoever can write a document with ``new_edits: false`` picks a revision id that wins,
so a planted conflicting ``release:`` or ``item:`` revision would otherwise block the genuine
one for a whole subtree. The validly signed release revision (and the listed revisions with
the signed hashes) is used; every other revision is an alarm, never a block.
"""

import datetime
import json
import logging
import time
import weakref

from shared import clock, errors
from shared.catalog import calendar as cal
from shared.catalog import release as rel
from shared.store import reads
from shared.store import revs as R
from shared.store.projections import contained

logger = logging.getLogger(__name__)

OK, NONE, WAITING, FAILED, UNVERIFIABLE = "ok", "none", "waiting", "failed", "unverifiable"
STATE_NAMES = {OK: "已生效", NONE: "尚未收到目录", WAITING: "等待同步",
               FAILED: "验证失败", UNVERIFIABLE: "无法验证"}
FACETS = ("department", "life_event", "audience")
ALARM_KEEP = 200
#: Listed documents checked and installed together (bounds the memory of an activation).
VERIFY_CHUNK = 200
SUMMARY_COLUMNS = ("item_id", "doc_id", "version", "name", "department", "item_type",
                   "handling_type", "promised", "decide_tier")


def _now():
    return clock.time()


class CatalogActivation:
    """Projection activating verified releases (see the module docstring).

    :param store: the store it belongs to (to read listed documents inside the write).
    :param trusted_keys: ``{key_id: public key base64}``; empty on a node not enrolled.
    """

    tables = [
        """CREATE TABLE IF NOT EXISTS catalog_item (
            item_id TEXT PRIMARY KEY, doc_id TEXT NOT NULL, version INTEGER NOT NULL,
            hash TEXT NOT NULL, name TEXT NOT NULL, department TEXT NOT NULL,
            item_type TEXT NOT NULL, handling_type TEXT NOT NULL, promised INTEGER NOT NULL,
            decide_tier TEXT NOT NULL, body TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS catalog_agency (
            agency_id TEXT PRIMARY KEY, doc_id TEXT NOT NULL, version INTEGER NOT NULL,
            hash TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS catalog_facet (
            item_id TEXT NOT NULL, facet TEXT NOT NULL, value TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS catalog_facet_value ON catalog_facet (facet, value)",
        # trigram: finds any run of 3+ characters, which is what Chinese partial words need
        # (there are no spaces to split words on); shorter queries fall back to LIKE.
        """CREATE VIRTUAL TABLE IF NOT EXISTS catalog_fts USING fts5(
            item_id UNINDEXED, name, content, tokenize='trigram')""",
        """CREATE TABLE IF NOT EXISTS catalog_state (
            id INTEGER PRIMARY KEY CHECK (id = 1), number INTEGER NOT NULL,
            doc_id TEXT NOT NULL, time TEXT NOT NULL, key_id TEXT NOT NULL,
            item_count INTEGER NOT NULL, agency_count INTEGER NOT NULL,
            activated_at REAL NOT NULL, verify_seconds REAL)""",
        """CREATE TABLE IF NOT EXISTS catalog_check (
            id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL, message TEXT,
            number INTEGER, checked_at REAL NOT NULL)""",
        # The working-day overrides in force (shared.workdays.calendar_from_db reads them);
        # catalog_calendar_doc names the verified document they came from.
        """CREATE TABLE IF NOT EXISTS catalog_calendar (
            day TEXT PRIMARY KEY, workday INTEGER NOT NULL, reason TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS catalog_calendar_year (
            year INTEGER PRIMARY KEY, reason TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS catalog_calendar_doc (
            id INTEGER PRIMARY KEY CHECK (id = 1), doc_id TEXT NOT NULL,
            version INTEGER NOT NULL, hash TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS catalog_alarm (
            id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, doc_id TEXT NOT NULL,
            rev TEXT, message TEXT NOT NULL, UNIQUE (doc_id, rev, message))""",
    ]

    def __init__(self, store, trusted_keys):
        self.store = store
        self.trusted_keys = dict(trusted_keys)

    def reset(self, db):
        """Forget the active release before a rebuild (reindex activates it again).

        The overrides stay until the release is installed again: a rebuild reads case
        documents before release documents, and their due dates need the calendar.
        """
        for table in ("catalog_item", "catalog_agency", "catalog_facet", "catalog_fts",
                      "catalog_state", "catalog_check", "catalog_calendar_doc"):
            db.execute_sql(f"DELETE FROM {table}")

    def apply(self, db, docs):
        """Check the catalog documents among ``docs``; activate a newer release if it holds."""
        touched = [(doc_id, doc) for doc_id, doc in docs
                   if doc_id.startswith((rel.RELEASE_PREFIX, *rel.LISTED_PREFIXES))]
        if not touched:
            return None
        # Never let the catalog block replication of everything else, and never leave a
        # release half-installed: a failure rolls back all the activation wrote.
        done, _ = contained(db, "catalog activation", self._apply, db, touched)
        if not done:
            _record_check(db, FAILED, "目录验证时出现内部错误，详见日志", None)
        return None

    def _apply(self, db, touched):
        self._watch_active(db, touched)
        if any(d.startswith(rel.RELEASE_PREFIX) for d, _ in touched) or self._candidates(db):
            self.activate(db, {d: doc for d, doc in touched if doc is not None})

    # -- checks -------------------------------------------------------------------------

    def _watch_active(self, db, touched):
        """Alarm when a document of the active release changes after activation."""
        ids = [d for d, _ in touched if not d.startswith(rel.RELEASE_PREFIX)]
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        active = dict(db.execute_sql(
            f"SELECT doc_id, hash FROM catalog_item WHERE doc_id IN ({marks}) UNION ALL "
            f"SELECT doc_id, hash FROM catalog_agency WHERE doc_id IN ({marks}) UNION ALL "
            f"SELECT doc_id, hash FROM catalog_calendar_doc WHERE doc_id IN ({marks})",
            ids * 3).fetchall())
        for doc_id, doc in touched:
            if doc_id in active and (doc is None or rel.content_hash(doc) != active[doc_id]):
                _alarm(db, doc_id, doc, f"已生效的 {doc_id} 被改动或删除；继续使用签名时的内容")

    def _candidates(self, db):
        """Release document ids above the active number, newest first (a deleted winner
        too: a planted tombstone may sit on top of the genuine revision)."""
        active = active_number(db)
        numbered = []
        for doc_id in reads.ids_with_prefix(db, rel.RELEASE_PREFIX):
            match = rel.RELEASE_ID.fullmatch(doc_id)
            number = int(match.group(1)) if match else None
            if number is None or number > active:
                numbered.append((number or 0, doc_id))
        return [doc_id for _, doc_id in sorted(numbered, reverse=True)]

    def _versions(self, doc_id):
        """Every live revision held of ``doc_id`` with its body: the leaves in winning
        order, then the revisions below them (a planted child may hide the genuine one)."""
        try:
            leaves = [e["ok"] for e in self.store.open_revs(doc_id, "all", revs=True)
                      if "ok" in e]
        except errors.NotFound:
            return []
        leaves.sort(key=lambda d: (not d.get("_deleted"), R.rev_key(d["_rev"])), reverse=True)
        seen = [d["_rev"] for d in leaves]
        below = []
        for leaf in leaves:
            revisions = leaf.pop("_revisions", None) or {}
            start, ids = revisions.get("start", 0), revisions.get("ids") or []
            below += [f"{start - i}-{h}" for i, h in enumerate(ids)
                      if f"{start - i}-{h}" not in seen and f"{start - i}-{h}" not in below]
        held = leaves + ([e["ok"] for e in self.store.open_revs(doc_id, below) if "ok" in e]
                         if below else [])
        return [dict(d, _id=doc_id) for d in held if not d.get("_deleted")]

    def _signed_version(self, db, doc_id, entry, doc):
        """The canonical text of a revision of ``doc_id`` whose hash is ``entry``'s, or None.

        ``doc`` (the winner, or None) is tried first; when it differs, every other revision
        held is, and the winner is recorded as an alarm.
        """
        if doc is not None:
            text = rel.verified_text(entry, doc)
            if text is not None:
                return text
        for version in self._versions(doc_id):
            text = rel.verified_text(entry, version)
            if text is not None:
                if doc is not None:
                    _alarm(db, doc_id, doc, f"{doc_id} 有一个与签名不符的修订（{doc.get('_rev')}），"
                                            "已忽略，使用签名时的内容")
                return text
        return None

    def _verify(self, db, release, written):
        """Check every listed document against its hash, a chunk at a time (a village PC
        never holds a whole catalog's documents decoded at once).

        Entries already in force with the same document and hash are not checked again
        (a copy tampered with after activation cannot block the next release); the others
        come from ``written`` (the winners this very write brought) or the store.

        A winner that differs from what was signed is not the end: another revision held
        with the signed hash is used (and the winner is an alarm).

        :returns: ``{doc_id: canonical text}`` of the documents verified from a revision
            other than the winning one (installed instead of the winner).
        :raises ReleaseRefused: a listed document differs from what was signed, or is
            missing.
        """
        in_force = _in_force(db)
        changed, missing, malformed = [], [], []
        texts = {}
        entries = [e for e in release["entries"] if in_force.get(e["id"]) != e["hash"]]
        for start in range(0, len(entries), VERIFY_CHUNK):
            chunk = entries[start:start + VERIFY_CHUNK]
            held = self.store.winners(e["id"] for e in chunk if e["id"] not in written)
            hidden = _deleted_ids(db, [e["id"] for e in chunk])
            for entry in chunk:
                doc_id = entry["id"]
                doc = written.get(doc_id) if doc_id in written else held.get(doc_id)
                if doc is not None and rel.verified_text(entry, doc) is not None:
                    verified = doc
                elif doc is not None or doc_id in hidden:
                    text = self._signed_version(db, doc_id, entry, doc)
                    if text is None:
                        (changed if doc is not None else missing).append(doc_id)
                        continue
                    texts[doc_id] = text
                    verified = json.loads(text)
                else:
                    missing.append(doc_id)
                    continue
                if rel.is_calendar_id(doc_id):
                    try:
                        cal.entries_of_document(verified)
                    except ValueError as exc:
                        malformed.append(f"{doc_id}（{exc}）")
        rel.refuse_contents(release, changed, missing)
        if malformed:
            raise rel.ReleaseRefused(f"第 {release['number']} 号发布中的工作日历格式错误："
                                     f"{'、'.join(malformed)}")
        return texts

    def activate(self, db, written=None):
        """Activate the newest release above the active one that holds; record the outcome.

        :param written: ``{doc_id: doc}`` of the documents the current write brought.

        :returns: the number activated, or None.
        """
        candidates = self._candidates(db)
        if not candidates:
            if active_number(db) == 0:
                _record_check(db, NONE, "尚未收到任何目录发布", None)
            return None
        if not self.trusted_keys:
            _record_check(db, UNVERIFIABLE, "本站没有县级公钥（未登记），无法验证目录发布", None)
            return None
        outcome = None
        for doc_id in candidates:
            started = time.perf_counter()
            release, refusal = self._signed_release(db, doc_id)
            if release is None:
                if refusal is not None:
                    outcome = outcome or refusal
                continue
            try:
                texts = self._verify(db, release, written or {})
            except rel.ReleaseRefused as refused:
                if refused.missing:
                    outcome = outcome or (WAITING, str(refused), release.get("number"))
                else:
                    _alarm(db, doc_id, release, str(refused))
                    outcome = outcome or (FAILED, str(refused), release.get("number"))
                continue
            _install(db, self.store, release, started, texts)
            logger.info("catalog release %s active (%d documents)", release["number"],
                        len(release["entries"]))
            if outcome is None:
                _record_check(db, OK, f"第 {release['number']} 号发布已生效", release["number"])
            else:
                _record_check(db, *outcome)
            return release["number"]
        if outcome:
            _record_check(db, *outcome)
        return None


    def _signed_release(self, db, doc_id):
        """``(release, None)``: the revision of ``doc_id`` signed by a trusted key, or
        ``(None, (FAILED, message, number))`` when none is (None when nothing is held).

        Every revision that does not verify is an alarm; it blocks nothing as long as the
        genuine one is held beside it.
        """
        refusal = None
        for version in self._versions(doc_id):
            try:
                rel.check_signature(version, self.trusted_keys)
            except rel.ReleaseRefused as refused:
                _alarm(db, doc_id, version, str(refused))
                number = version.get("number")
                refusal = refusal or (FAILED, str(refused),
                                      number if isinstance(number, int) else None)
                continue
            return version, None
        return None, refusal


def _deleted_ids(db, doc_ids):
    """The ids among ``doc_ids`` whose winning revision is a deletion."""
    return reads.deleted_among(db, doc_ids)


def _alarm(db, doc_id, doc, message):
    rev = doc.get("_rev") if isinstance(doc, dict) else None
    cursor = db.execute_sql(
        "INSERT OR IGNORE INTO catalog_alarm (at, doc_id, rev, message) VALUES (?, ?, ?, ?)",
        (_now(), doc_id, rev, message))
    if cursor.rowcount:
        logger.warning("catalog alarm: %s", message)
        db.execute_sql("DELETE FROM catalog_alarm WHERE id <= "
                       "(SELECT MAX(id) FROM catalog_alarm) - ?", (ALARM_KEEP,))


def _record_check(db, state, message, number):
    db.execute_sql(
        "INSERT OR REPLACE INTO catalog_check (id, state, message, number, checked_at) "
        "VALUES (1, ?, ?, ?, ?)", (state, message, number, _now()))


def _search_name(item):
    """The indexed name: the item's name and its aliases (常用简称), one a line, so that a
    short name people use (社保卡, 低保) finds and ranks the item as its name does."""
    return "\n".join([item["name"], *(item.get("aliases") or [])])


def _search_text(item):
    parts = [item["name"], item["department"], item["implementing_body"],
             item["item_type"], *item["accept_conditions"], *item["legal_basis"],
             *(m["name"] for m in item["materials"]), *item["life_events"],
             *item["audiences"], item.get("notes") or ""]
    return "\n".join(parts)


def _in_force(db):
    """``{doc_id: hash}`` of every document of the release in force."""
    return dict(db.execute_sql("SELECT doc_id, hash FROM catalog_item UNION ALL "
                               "SELECT doc_id, hash FROM catalog_agency UNION ALL "
                               "SELECT doc_id, hash FROM catalog_calendar_doc").fetchall())


def _forget_search(conn, item_ids):
    """Drop the search and browse rows of ``item_ids`` (one pass over each table: the
    search index cannot look its rows up by item id)."""
    if item_ids:
        marks = ",".join("?" * len(item_ids))
        conn.execute(f"DELETE FROM catalog_fts WHERE item_id IN ({marks})", item_ids)
        conn.execute(f"DELETE FROM catalog_facet WHERE item_id IN ({marks})", item_ids)


def _install(db, store, release, started, verified=None):
    """Make the verified documents of ``release`` the catalog in force.

    Only what changed is touched: rows of documents the release no longer lists go, the
    documents new to it are read (their stored JSON, a chunk at a time) and added.

    :param verified: ``{doc_id: text}`` of documents verified from a revision other than
        the winning one; their text is installed instead of the winner's.
    """
    verified = verified or {}
    conn = db.connection()
    listed = {e["id"]: e for e in release["entries"]}
    for table, key in (("catalog_item", "item_id"), ("catalog_agency", "agency_id")):
        stale = [row for row in conn.execute(f"SELECT {key}, doc_id FROM {table}").fetchall()
                 if row[1] not in listed]
        for start in range(0, len(stale), 500):
            ids = [record_id for record_id, _ in stale[start:start + 500]]
            conn.executemany(f"DELETE FROM {table} WHERE {key} = ?", [(i,) for i in ids])
            if table == "catalog_item":
                _forget_search(conn, ids)
    changed_days = _install_calendar(conn, store, release, verified)
    in_force = _in_force(db)
    new = [e for e in release["entries"]
           if e["id"] not in in_force and not rel.is_calendar_id(e["id"])]
    for start in range(0, len(new), VERIFY_CHUNK):
        chunk = new[start:start + VERIFY_CHUNK]
        # The stored JSON as it is (written moments ago or earlier): no encoding again.
        texts = store.winner_texts(e["id"] for e in chunk if e["id"] not in verified)
        texts.update((e["id"], verified[e["id"]]) for e in chunk if e["id"] in verified)
        item_rows, agency_rows, search_rows, facets = [], [], [], []
        for entry in chunk:
            text = texts[entry["id"]]
            d = json.loads(text)
            if d.get("type") != "item":
                agency_rows.append((d["id"], entry["id"], entry["version"], entry["hash"],
                                    d["name"], text))
                continue
            item_rows.append((d["id"], entry["id"], entry["version"], entry["hash"], d["name"],
                              d["department"], d["item_type"], d["handling_type"],
                              d["promised_time_limit"], d["decide_tier"], text))
            search_rows.append((d["id"], _search_name(d), _search_text(d)))
            facets.append((d["id"], "department", d["department"]))
            facets.extend((d["id"], "life_event", v) for v in d["life_events"])
            facets.extend((d["id"], "audience", v) for v in d["audiences"])
        conn.executemany("INSERT OR REPLACE INTO catalog_item VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", item_rows)
        conn.executemany("INSERT OR REPLACE INTO catalog_agency VALUES (?, ?, ?, ?, ?, ?)",
                         agency_rows)
        _forget_search(conn, [row[0] for row in item_rows])
        conn.executemany("INSERT INTO catalog_fts (item_id, name, content) VALUES (?, ?, ?)",
                         search_rows)
        conn.executemany("INSERT INTO catalog_facet VALUES (?, ?, ?)", facets)
    items = conn.execute("SELECT COUNT(*) FROM catalog_item").fetchone()[0]
    agencies = conn.execute("SELECT COUNT(*) FROM catalog_agency").fetchone()[0]
    conn.execute(
        "INSERT OR REPLACE INTO catalog_state VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
        (release["number"], release["_id"], release["time"], release["key_id"], items,
         agencies, _now(), time.perf_counter() - started))
    if changed_days:
        _refresh_due_dates(db, *changed_days)


def _calendar_rows(conn):
    """``({day: (workday, reason)}, {year: reason})`` installed now."""
    days = {day: (bool(work), reason) for day, work, reason in conn.execute(
        "SELECT day, workday, reason FROM catalog_calendar").fetchall()}
    years = dict(conn.execute("SELECT year, reason FROM catalog_calendar_year").fetchall())
    return days, years


def _changed_span(before, after):
    """``(first, last)`` ISO days whose working-day status may differ, or None."""
    (old_days, old_years), (new_days, new_years) = before, after
    days = [d for d in set(old_days) | set(new_days)
            if old_days.get(d, (None,))[0] != new_days.get(d, (None,))[0]]
    for year in set(old_years) ^ set(new_years):
        days += [f"{year}-01-01", f"{year}-12-31"]
    return (min(days), max(days)) if days else None


def _install_calendar(conn, store, release, verified):
    """Install the release's calendar document (or none); ``(first, last, rules before)``:
    the span of days it changed and the rules it replaced (None when nothing changed).
    ``verified``: as for :func:`_install`."""
    entry = next((e for e in release["entries"] if rel.is_calendar_id(e["id"])), None)
    current = conn.execute("SELECT doc_id, hash FROM catalog_calendar_doc").fetchone()
    if entry is not None and current == (entry["id"], entry["hash"]):
        return None
    before = _calendar_rows(conn)
    conn.execute("DELETE FROM catalog_calendar")
    conn.execute("DELETE FROM catalog_calendar_year")
    conn.execute("DELETE FROM catalog_calendar_doc")
    if entry is not None:
        text = verified.get(entry["id"]) or store.winner_texts([entry["id"]])[entry["id"]]
        entries = cal.entries_of_document(json.loads(text))
        conn.executemany("INSERT INTO catalog_calendar VALUES (?, ?, ?)",
                         [(e["date"], int(e["workday"]), e["reason"])
                          for e in entries if "date" in e])
        conn.executemany("INSERT INTO catalog_calendar_year VALUES (?, ?)",
                         [(e["year"], e["reason"]) for e in entries if "date" not in e])
        conn.execute("INSERT INTO catalog_calendar_doc VALUES (1, ?, ?, ?)",
                     (entry["id"], entry["version"], entry["hash"]))
    span = _changed_span(before, _calendar_rows(conn))
    return span and (*span, _rules_of(before))


def _rules_of(rows):
    """Calendar rules ``({date: workday}, frozenset(years))`` of :func:`_calendar_rows`."""
    days, years = rows
    return ({datetime.date.fromisoformat(day): work for day, (work, _) in days.items()},
            frozenset(years))


def _refresh_due_dates(db, first, last, before):
    """Compute again the due dates a calendar change may move (cases accepted before the
    last changed day and due on or after the first, or without a due date), and the working
    days to decide of the decided cases it reaches (``before``: the rules it replaced).

    ``case_state`` belongs to the case index; a node whose store has none has no cases.
    """
    if not db.execute_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                          "name = 'case_state'").fetchone():
        return
    from shared.cases import fold
    from shared.workdays import calendar_from_db

    calendar = calendar_from_db(db)
    numbers = [n for (n,) in db.execute_sql(
        "SELECT number FROM case_state WHERE accepted_day IS NOT NULL AND accepted_day < ? "
        "AND (due IS NULL OR due >= ?)", (last, first)).fetchall()]
    moved = 0
    for start in range(0, len(numbers), VERIFY_CHUNK):
        chunk = numbers[start:start + VERIFY_CHUNK]
        marks = ",".join("?" * len(chunk))
        updates = []
        for number, due, state in db.execute_sql(
                f"SELECT number, due, state FROM case_state WHERE number IN ({marks})",
                chunk).fetchall():
            found = fold.due_date(json.loads(state), calendar)
            new_due = found.isoformat() if found else None
            if new_due != due:
                updates.append((new_due, number))
        db.connection().executemany("UPDATE case_state SET due = ? WHERE number = ?", updates)
        moved += len(updates)
    from shared.cases import stats
    from shared.workdays import WorkCalendar

    recounted = stats.recount_workdays(db, first, last, WorkCalendar(*before), calendar)
    logger.info("working-day calendar changed %s..%s: %d due dates moved, %d decided cases "
                "recounted", first, last, moved, recounted)


# -- reading the catalog in force ------------------------------------------------------------

def active_number(db):
    """The number of the active release (0 when none is)."""
    row = db.execute_sql("SELECT number FROM catalog_state WHERE id = 1").fetchone()
    return row[0] if row else 0


#: ``{db: (release number, rules)}``: the overrides in force, read once per activation.
_CALENDAR_CACHE = weakref.WeakKeyDictionary()


def calendar_rules(db):
    """``({date: workday}, frozenset(complete years))`` in force at this node.

    Cached per database and release number: a count asks once (one indexed query) and a new
    activation is seen at once. Without an active release (before the first, or while a
    rebuild re-reads the documents) the table is read as it is.
    """
    number = active_number(db)
    cached = _CALENDAR_CACHE.get(db)
    if number and cached is not None and cached[0] == number:
        return cached[1]
    rules = _rules_of(_calendar_rows(db.connection()))
    if number:
        _CALENDAR_CACHE[db] = (number, rules)
    return rules


def calendar_entries(db):
    """The calendar entries in force (days, then complete years), as authored."""
    days, years = _calendar_rows(db.connection())
    entries = [{"date": day, "workday": work, "reason": reason}
               for day, (work, reason) in days.items()]
    entries += [{"year": year, "reason": reason} for year, reason in years.items()]
    return cal.sort_entries(entries)


def calendar_in_force(db):
    """``{"doc_id", "version", "hash"}`` of the calendar document in force, or None."""
    row = db.execute_sql("SELECT doc_id, version, hash FROM catalog_calendar_doc").fetchone()
    return dict(zip(("doc_id", "version", "hash"), row)) if row else None


def active_release(db):
    """The active release's figures, or None."""
    row = db.execute_sql(
        "SELECT number, doc_id, time, key_id, item_count, agency_count, activated_at, "
        "verify_seconds FROM catalog_state WHERE id = 1").fetchone()
    if row is None:
        return None
    keys = ("number", "doc_id", "time", "key_id", "item_count", "agency_count", "activated_at",
            "verify_seconds")
    return dict(zip(keys, row))


def catalog_status(db, alarms=5):
    """Active release, verification state and recent alarms (CLI, status page, status doc)."""
    row = db.execute_sql(
        "SELECT state, message, number, checked_at FROM catalog_check WHERE id = 1").fetchone()
    state, message, number, checked_at = row if row else (NONE, "尚未收到任何目录发布", None, None)
    recent = db.execute_sql(
        "SELECT at, doc_id, message FROM catalog_alarm ORDER BY id DESC LIMIT ?",
        (alarms,)).fetchall()
    return {
        "active": active_release(db),
        "state": state,
        "state_name": STATE_NAMES.get(state, state),
        "message": message,
        "release": number,
        "checked_at": checked_at,
        "alarms": [{"at": at, "doc_id": d, "message": m} for at, d, m in recent],
    }


def _summaries(cursor):
    return [dict(zip(SUMMARY_COLUMNS, row)) for row in cursor.fetchall()]


def active_items(db, facet=None, value=None):
    """Summaries of the items in force, optionally those with ``facet`` = ``value``."""
    columns = ",".join(f"i.{c}" for c in SUMMARY_COLUMNS)
    if facet is None:
        return _summaries(db.execute_sql(f"SELECT {columns} FROM catalog_item i ORDER BY i.item_id"))
    if facet not in FACETS:
        raise ValueError(f"unknown facet {facet!r}")
    return _summaries(db.execute_sql(
        f"SELECT {columns} FROM catalog_item i JOIN catalog_facet f ON f.item_id = i.item_id "
        "WHERE f.facet = ? AND f.value = ? ORDER BY i.item_id", (facet, value)))


def items_with(db, key):
    """The full items in force that carry ``key`` (a field such as ``proactive``), by id."""
    rows = db.execute_sql("SELECT body FROM catalog_item ORDER BY item_id").fetchall()
    return [item for item in (json.loads(body) for body, in rows) if item.get(key)]


def active_item(db, item_id):
    """The full item in force (with ``doc_id``, ``version`` and ``hash``), or None."""
    row = db.execute_sql("SELECT doc_id, version, hash, body FROM catalog_item WHERE item_id = ?",
                         (item_id,)).fetchone()
    if row is None:
        return None
    item = json.loads(row[3])
    item.update(doc_id=row[0], version=row[1], hash=row[2])
    return item


def active_item_map(db, item_ids):
    """``{item_id: full item}`` of the given items in force, in one query (lists, search)."""
    item_ids = list(item_ids)
    result = {}
    for start in range(0, len(item_ids), 500):
        chunk = item_ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for item_id, doc_id, version, digest, body in db.execute_sql(
                "SELECT item_id, doc_id, version, hash, body FROM catalog_item "
                f"WHERE item_id IN ({marks})", chunk).fetchall():
            item = json.loads(body)
            item.update(doc_id=doc_id, version=version, hash=digest)
            result[item_id] = item
    return result


def active_agencies(db):
    """Every intermediary agency in force, by id."""
    rows = db.execute_sql("SELECT body FROM catalog_agency ORDER BY agency_id").fetchall()
    return [json.loads(body) for (body,) in rows]


def facet_counts(db):
    """``{facet: [(value, count)]}`` of the items in force."""
    result = {facet: [] for facet in FACETS}
    for facet, value, count in db.execute_sql(
            "SELECT facet, value, COUNT(*) FROM catalog_facet GROUP BY facet, value "
            "ORDER BY facet, COUNT(*) DESC, value").fetchall():
        result[facet].append((value, count))
    return result


def _search_where(query):
    """``(where, params, words, long_words)`` of a query, or None when it has no words."""
    words = [w for w in (query or "").split() if w][:8]
    if not words:
        return None
    long_words = [w for w in words if len(w) >= 3]
    where, params = [], []
    if long_words:
        where.append("catalog_fts MATCH ?")
        params.append(" AND ".join('"' + w.replace('"', '""') + '"' for w in long_words))
    for word in (w for w in words if len(w) < 3):
        escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("(s.name LIKE ? ESCAPE '\\' OR s.content LIKE ? ESCAPE '\\')")
        params.extend([f"%{escaped}%"] * 2)
    return " AND ".join(where), params, words, long_words


def search_count(db, query):
    """How many items in force match ``query`` (see :func:`search`)."""
    parsed = _search_where(query)
    if parsed is None:
        return 0
    where, params, _, _ = parsed
    return db.execute_sql(f"SELECT COUNT(*) FROM catalog_fts s WHERE {where}",
                          params).fetchone()[0]


#: A word matching at least this share of the items in force (and at least
#: COMMON_MIN_ITEMS of them) tells the searcher little: the page says so.
COMMON_SHARE = 0.8
COMMON_MIN_ITEMS = 5


def common_words(db, query):
    """The words of ``query`` that (nearly) every item in force contains (身份证)."""
    words = [w for w in (query or "").split() if w][:8]
    total = db.execute_sql("SELECT COUNT(*) FROM catalog_item").fetchone()[0]
    if not words or total < COMMON_MIN_ITEMS:
        return []
    return [w for w in dict.fromkeys(words) if search_count(db, w) >= total * COMMON_SHARE]


def search(db, query, limit=50, offset=0):
    """Items in force matching every word of ``query`` (partial Chinese words included).

    Words of three or more characters use the trigram index; shorter ones (a two-character
    Chinese word such as 低保) a LIKE over the same text, which is fine for a catalog's
    size. Results rank the items whose name or aliases (the indexed name) hold more of the
    words first, so a word every item's materials mention (身份证) still lists the items
    named after it before the rest; ties go by item id.
    """
    parsed = _search_where(query)
    if parsed is None:
        return []
    where, params, words, long_words = parsed
    columns = ",".join(f"i.{c}" for c in SUMMARY_COLUMNS)
    name_hit = " + ".join(["(instr(s.name, ?) > 0)"] * len(words))
    sql = (f"SELECT {columns}, snippet(catalog_fts, 2, '【', '】', '…', 12) FROM catalog_fts s "
           f"JOIN catalog_item i ON i.item_id = s.item_id WHERE {where} "
           f"ORDER BY ({name_hit}) DESC, i.item_id LIMIT ? OFFSET ?")
    rows = db.execute_sql(sql, params + words + [limit, offset]).fetchall()
    results = []
    for row in rows:
        summary = dict(zip(SUMMARY_COLUMNS, row[:-1]))
        summary["snippet"] = row[-1] if long_words else ""
        results.append(summary)
    return results


def trusted_keys(config):
    """``{key_id: public key}`` of the county keys a node verifies releases with.

    ``COUNTY_PUBLIC_KEY`` plus ``CATALOG_TRUSTED_KEYS`` (a list: during a key rotation both
    the old and the new key verify).
    """
    keys = [config.get("COUNTY_PUBLIC_KEY"), *(config.get("CATALOG_TRUSTED_KEYS") or [])]
    result = {}
    for key in keys:
        if key:
            result[rel.key_id(key)] = key
    return result
