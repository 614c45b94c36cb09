"""Authoring at the county: drafts, the diff against the release in force, and publishing
with two people (an editor proposes, another account with the approver role approves and
thereby signs).

Drafts and proposals are tables of the county's own database, never replicated: only an
approved, signed release leaves the county. The working copy is the catalog in force with
the drafts laid over it; a proposal freezes the working copy, and approval publishes exactly
what was proposed, whatever was edited meanwhile.

The county's working-day overrides (:mod:`shared.catalog.calendar`) are drafted per day (or
complete year) in ``calendar_draft`` and travel the same way: a proposal freezes the working
calendar beside the records, and approval publishes it as ``catalog:calendar@<version>``
listed in the signed release.
"""

import functools
import json
import logging

from peewee import AutoField, CharField, FloatField, IntegerField, TextField, fn

from shared import clock, errors
from shared.catalog import active, schema
from shared.catalog import calendar as cal
from shared.catalog import release as rel
from shared.models import Account, BaseModel
from shared.store import reads

logger = logging.getLogger(__name__)

EDITOR_ROLE = "county_admin"
APPROVER_ROLE = "approver"
KINDS = ("item", "agency")
PROPOSED, APPROVED, REJECTED, WITHDRAWN = "proposed", "approved", "rejected", "withdrawn"
STATE_NAMES = {PROPOSED: "待审批", APPROVED: "已批准发布", REJECTED: "已退回",
               WITHDRAWN: "已撤回"}


class PublishRefused(errors.Forbidden):
    """A publishing step the rules do not allow; the message is plain Chinese."""


class CatalogDraft(BaseModel):
    """An unpublished change to one record: its new content, or None to remove it."""

    kind = CharField()
    record_id = CharField()
    body = TextField(null=True)
    updated_by = CharField()
    updated_at = FloatField()

    class Meta:
        table_name = "catalog_draft"
        indexes = ((("kind", "record_id"), True),)


class ReleaseProposal(BaseModel):
    """A release an editor proposed: the frozen records to publish and what became of it."""

    id = AutoField()
    number = IntegerField()
    proposed_by = CharField()
    proposed_at = FloatField()
    note = TextField(default="")
    records = TextField()  # JSON {"items": [...], "agencies": [...], "calendar": [...]}
    changes = TextField()  # JSON list from diff(), for the approver's review
    state = CharField(default=PROPOSED)
    decided_by = CharField(null=True)
    decided_at = FloatField(null=True)
    reason = TextField(null=True)

    class Meta:
        table_name = "release_proposal"

    @property
    def state_name(self):
        """The state in Chinese."""
        return STATE_NAMES.get(self.state, self.state)

    def change_list(self):
        """The proposal's changes against the release that was in force."""
        return json.loads(self.changes)


class CalendarDraft(BaseModel):
    """An unpublished change to one calendar entry (a day or a complete year): the new
    entry, or None to remove it."""

    key = CharField(unique=True)  # "2027-01-01" or "2027"
    body = TextField(null=True)
    updated_by = CharField()
    updated_at = FloatField()

    class Meta:
        table_name = "calendar_draft"


MODELS = [CatalogDraft, ReleaseProposal, CalendarDraft]


def create_tables(db):
    """Create the authoring tables (idempotent)."""
    db.create_tables(MODELS, safe=True)


def _now():
    return clock.time()


def bound(db):
    """A context in which the authoring models use ``db`` (callers outside a request)."""
    return db.bind_ctx([Account, *MODELS], bind_refs=False, bind_backrefs=False)


def _bound(function):
    """Run ``function`` with the models bound to the database it is given (a ``db`` or a
    store as first argument), whichever node the process opened last."""
    @functools.wraps(function)
    def wrapper(first, *args, **kwargs):
        db = getattr(first, "db", first)
        with db.bind_ctx([Account, *MODELS], bind_refs=False, bind_backrefs=False):
            return function(first, *args, **kwargs)
    return wrapper


# -- the working copy ------------------------------------------------------------------------

def published_records(db):
    """``(items, agencies)`` in force, as authored (without ``type``/``version``)."""
    def strip(record):
        return {k: v for k, v in record.items()
                if k not in schema.PUBLISHED_KEYS and k not in ("doc_id", "hash")}
    items = [strip(active.active_item(db, s["item_id"])) for s in active.active_items(db)]
    agencies = [strip(a) for a in active.active_agencies(db)]
    return items, agencies


@_bound
def working_copy(db):
    """``(items, agencies)``: the catalog in force with every draft laid over it."""
    items, agencies = published_records(db)
    records = {"item": {r["id"]: r for r in items}, "agency": {r["id"]: r for r in agencies}}
    for draft in CatalogDraft.select():
        if draft.body is None:
            records[draft.kind].pop(draft.record_id, None)
        else:
            records[draft.kind][draft.record_id] = json.loads(draft.body)
    return (sorted(records["item"].values(), key=lambda r: r["id"]),
            sorted(records["agency"].values(), key=lambda r: r["id"]))


@_bound
def working_record(db, kind, record_id):
    """One record of the working copy, or None."""
    items, agencies = working_copy(db)
    for record in (items if kind == "item" else agencies):
        if record["id"] == record_id:
            return record
    return None


def _validate(kind, record):
    found = schema.validate_item(record) if kind == "item" else schema.validate_agency(record)
    if found:
        raise schema.CatalogInvalid(found)


@_bound
def save_draft(db, kind, record, by):
    """Validate ``record`` and keep it as the draft of its id; raises CatalogInvalid."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    _validate(kind, record)
    with db.atomic():
        CatalogDraft.delete().where((CatalogDraft.kind == kind) &
                                    (CatalogDraft.record_id == record["id"])).execute()
        CatalogDraft.create(kind=kind, record_id=record["id"], updated_by=by, updated_at=_now(),
                            body=json.dumps(record, ensure_ascii=False, sort_keys=True))


@_bound
def remove_record(db, kind, record_id, by):
    """Draft the removal of a record from the catalog."""
    with db.atomic():
        CatalogDraft.delete().where((CatalogDraft.kind == kind) &
                                    (CatalogDraft.record_id == record_id)).execute()
        CatalogDraft.create(kind=kind, record_id=record_id, body=None, updated_by=by,
                            updated_at=_now())


@_bound
def discard_draft(db, kind, record_id):
    """Drop the draft of a record (the published version stays as it is)."""
    CatalogDraft.delete().where((CatalogDraft.kind == kind) &
                                (CatalogDraft.record_id == record_id)).execute()


@_bound
def import_catalog(db, items, agencies, by):
    """Make the working copy exactly ``items`` and ``agencies``, all or nothing.

    :raises CatalogInvalid: with every problem; nothing is changed then.
    :returns: the diff against the release in force.
    """
    found = schema.validate_catalog(items, agencies)
    if found:
        raise schema.CatalogInvalid(found)
    published_items, published_agencies = published_records(db)
    now = _now()
    with db.atomic():
        CatalogDraft.delete().execute()
        rows = []
        for kind, new, old in (("item", items, published_items),
                               ("agency", agencies, published_agencies)):
            old_by_id = {r["id"]: r for r in old}
            new_ids = {r["id"] for r in new}
            for record in new:
                if old_by_id.get(record["id"]) != record:
                    rows.append({"kind": kind, "record_id": record["id"], "updated_by": by,
                                 "updated_at": now,
                                 "body": json.dumps(record, ensure_ascii=False, sort_keys=True)})
            for record_id in set(old_by_id) - new_ids:
                rows.append({"kind": kind, "record_id": record_id, "body": None,
                             "updated_by": by, "updated_at": now})
        for start in range(0, len(rows), 200):
            CatalogDraft.insert_many(rows[start:start + 200]).execute()
    return diff(db)


@_bound
def diff(db):
    """The working copy against the release in force: added, changed and removed records
    (``fields``: the labels of the fields that differ)."""
    published_items, published_agencies = published_records(db)
    items, agencies = working_copy(db)
    changes = []
    for kind, old, new in (("item", published_items, items),
                           ("agency", published_agencies, agencies)):
        old_by_id, new_by_id = {r["id"]: r for r in old}, {r["id"]: r for r in new}
        for change in _record_changes(kind, old_by_id, new_by_id,
                                      sorted(set(old_by_id) | set(new_by_id))):
            changes.append(dict(change, fields=[f["label"] for f in change["fields"]]))
    return changes


# -- the working calendar ----------------------------------------------------------------------

@_bound
def working_calendar(db):
    """The calendar entries in force with every calendar draft laid over them."""
    entries = {cal.entry_key(e): e for e in active.calendar_entries(db)}
    for draft in CalendarDraft.select():
        if draft.body is None:
            entries.pop(draft.key, None)
        else:
            entries[draft.key] = json.loads(draft.body)
    return cal.sort_entries(entries.values())


def _draft_rows(entries, by, now):
    return [{"key": cal.entry_key(e), "updated_by": by, "updated_at": now,
             "body": json.dumps(e, ensure_ascii=False, sort_keys=True)} for e in entries]


@_bound
def save_calendar_entries(db, entries, by, *, replace=False):
    """Draft ``entries`` (new or changed days and years), all or nothing.

    :param replace: make the working calendar exactly ``entries`` (the others are drafted
        for removal) instead of adding them to it.
    :raises CatalogInvalid: with every problem; nothing is changed then.
    """
    cal.check_entries(entries)
    in_force = {cal.entry_key(e): e for e in active.calendar_entries(db)}
    given = {cal.entry_key(e): e for e in entries}
    keys = set(given) | (set(in_force) if replace else set())
    if replace:
        keys |= {d.key for d in CalendarDraft.select(CalendarDraft.key)}
    now = _now()
    with db.atomic():
        for start in range(0, len(keys), 500):
            chunk = sorted(keys)[start:start + 500]
            CalendarDraft.delete().where(CalendarDraft.key.in_(chunk)).execute()
        rows = _draft_rows([e for k, e in given.items() if in_force.get(k) != e], by, now)
        rows += [{"key": k, "body": None, "updated_by": by, "updated_at": now}
                 for k in sorted(set(in_force) - set(given)) if replace]
        for start in range(0, len(rows), 200):
            CalendarDraft.insert_many(rows[start:start + 200]).execute()
    return calendar_diff(db)


@_bound
def remove_calendar_entry(db, key, by):
    """Draft the removal of an entry (an entry never published just loses its draft)."""
    published = any(cal.entry_key(e) == key for e in active.calendar_entries(db))
    with db.atomic():
        CalendarDraft.delete().where(CalendarDraft.key == key).execute()
        if published:
            CalendarDraft.create(key=key, body=None, updated_by=by, updated_at=_now())
    return published


@_bound
def discard_calendar_draft(db, key):
    """Drop the draft of an entry; returns whether there was one."""
    return CalendarDraft.delete().where(CalendarDraft.key == key).execute() > 0


@_bound
def calendar_diff(db):
    """The working calendar against the one in force: added, changed and removed entries,
    in the shape of :func:`diff`'s changes (kind ``calendar``, id the entry's key)."""
    return _calendar_changes(active.calendar_entries(db), working_calendar(db))


# -- proposing and approving -----------------------------------------------------------------

def _has_role(username, role):
    account = Account.get_or_none(Account.username == username)
    return account is not None and role in account.role_list


def open_proposal():
    """The proposal waiting for approval, or None (there is at most one)."""
    return ReleaseProposal.get_or_none(ReleaseProposal.state == PROPOSED)


@_bound
def next_release_number(db):
    """One above every release this node has seen."""
    highest = active.active_number(db)
    for doc_id in reads.ids_with_prefix(db, rel.RELEASE_PREFIX):
        match = rel.RELEASE_ID.fullmatch(doc_id)
        if match:
            highest = max(highest, int(match.group(1)))
    highest = max(highest, ReleaseProposal.select(fn.MAX(ReleaseProposal.number)).scalar() or 0)
    return highest + 1


@_bound
def propose(db, by, note=""):
    """Freeze the working copy as the next release, waiting for another person's approval.

    :raises PublishRefused: no editor role, a proposal already waiting, nothing changed.
    :raises CatalogInvalid: the working copy does not validate.
    """
    if not _has_role(by, EDITOR_ROLE):
        raise PublishRefused(f"{by} 没有县级管理员角色，不能提交发布")
    if open_proposal() is not None:
        raise PublishRefused("已有一个发布在等待审批，请先审批或撤回")
    items, agencies = working_copy(db)
    found = schema.validate_catalog(items, agencies)
    if found:
        raise schema.CatalogInvalid(found)
    if not items:
        raise PublishRefused("目录中没有事项，不能发布")
    calendar = working_calendar(db)
    cal.check_entries(calendar)
    changes = diff(db) + calendar_diff(db)
    if not changes and active.active_number(db):
        raise PublishRefused("草稿与现行目录没有差别，无需发布")
    summary = [{k: c[k] for k in ("kind", "id", "change", "name", "fields")} for c in changes]
    proposal = ReleaseProposal.create(
        number=next_release_number(db), proposed_by=by, proposed_at=_now(), note=note or "",
        records=json.dumps({"items": items, "agencies": agencies, "calendar": calendar},
                           ensure_ascii=False),
        changes=json.dumps(summary, ensure_ascii=False))
    logger.info("release %s proposed by %s (%d changes)", proposal.number, by, len(changes))
    return proposal


def _record_changes(kind, before_by_id, after_by_id, record_ids):
    """Changes of the records ``record_ids`` of one kind, with each differing field's old and
    new value (the shape of :func:`proposal_changes`)."""
    fields = schema.ITEM_FIELDS if kind == "item" else schema.AGENCY_FIELDS
    changes = []
    for record_id in record_ids:
        before, after = before_by_id.get(record_id), after_by_id.get(record_id)
        if before == after:
            continue
        change = "added" if before is None else "removed" if after is None else "changed"
        changed = []
        if change == "changed":
            changed = [{"key": f.key, "label": f.label, "before": before.get(f.key),
                        "after": after.get(f.key)}
                       for f in fields if before.get(f.key) != after.get(f.key)]
        changes.append({"kind": kind, "id": record_id, "change": change,
                        "name": (after or before).get("name", ""), "fields": changed,
                        "before": before, "after": after})
    return changes


def _calendar_changes(before_entries, after_entries):
    """Calendar changes between two lists of entries (:func:`calendar_diff`, the review)."""
    before = {cal.entry_key(e): e for e in before_entries}
    after = {cal.entry_key(e): e for e in after_entries}
    changes = []
    for key in sorted(set(before) | set(after), key=lambda k: (len(k) == 4, k)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        change = "added" if old is None else "removed" if new is None else "changed"
        fields = []
        if change == "changed":
            fields = [label for member, label in (("workday", "安排"), ("reason", "原因"))
                      if old.get(member) != new.get(member)]
        changes.append({"kind": "calendar", "id": key, "change": change,
                        "name": cal.describe(new or old), "fields": fields,
                        "before": old, "after": new,
                        "before_text": cal.describe(old) if old else "",
                        "after_text": cal.describe(new) if new else ""})
    return changes


def _release_before(store, number):
    """The release document with the highest number below ``number`` this node holds, or
    None."""
    found = []
    for doc_id in reads.ids_with_prefix(store.db, rel.RELEASE_PREFIX, live=True):
        match = rel.RELEASE_ID.fullmatch(doc_id)
        if match and int(match.group(1)) < number:
            found.append((int(match.group(1)), doc_id))
    for _, doc_id in sorted(found, reverse=True):
        text = store.winner_texts([doc_id]).get(doc_id)
        if text is not None:
            return json.loads(text)
    return None


def _records_of_release(store, release, wanted):
    """``({kind: {id: record}}, calendar entries or None)`` of the records ``wanted``
    (``{(kind, id)}``) that ``release`` lists, as authored, and its calendar."""
    doc_ids, calendar_id = {}, None
    for entry in release.get("entries") or []:
        parsed = rel.parse_versioned_id(entry["id"])
        if parsed is None:
            continue
        if parsed[0] == "calendar":
            calendar_id = entry["id"]
        elif parsed[:2] in wanted:
            doc_ids[entry["id"]] = parsed[:2]
    texts = store.winner_texts(list(doc_ids) + ([calendar_id] if calendar_id else []))
    records = {"item": {}, "agency": {}}
    for doc_id, (kind, record_id) in doc_ids.items():
        if doc_id in texts:
            doc = json.loads(texts[doc_id])
            records[kind][record_id] = {k: v for k, v in rel.content_of(doc).items()
                                        if k not in schema.PUBLISHED_KEYS}
    calendar = []
    if calendar_id in texts:
        try:
            calendar = cal.entries_of_document(json.loads(texts[calendar_id]))
        except ValueError:
            calendar = None
    return records, calendar


@_bound
def proposal_changes(store, proposal):
    """What approving ``proposal`` changes, field by field, for the person who signs it.

    The proposal's frozen records are compared with the release they replace: while the
    proposal waits, the release in force (exactly what approval replaces); once it has been
    decided, the release that was in force before it (the highest-numbered release below
    it that this node holds), for the records its frozen change list names.

    :returns: ``{"base": the number of that release (0: none), "changes": [...]}``. Each
        change is ``{"kind", "id", "change", "name", "before", "after", "fields"}``
        (``before``/``after`` the whole records, None when absent); ``fields`` lists, for a
        changed record, ``{"key", "label", "before", "after"}`` of every field that
        differs, in the schema's order, with the raw values. Calendar changes (kind
        ``calendar``) also carry ``before_text`` and ``after_text``.
    """
    db = store.db
    records = json.loads(proposal.records)
    after = {"item": {r["id"]: r for r in records.get("items", [])},
             "agency": {r["id"]: r for r in records.get("agencies", [])}}
    calendar_after = records.get("calendar")
    changes = []
    if proposal.state == PROPOSED:
        base = active.active_number(db)
        items, agencies = published_records(db)
        before = {"item": {r["id"]: r for r in items}, "agency": {r["id"]: r for r in agencies}}
        for kind in KINDS:
            changes += _record_changes(kind, before[kind], after[kind],
                                       sorted(set(before[kind]) | set(after[kind])))
        if calendar_after is not None:
            changes += _calendar_changes(active.calendar_entries(db), calendar_after)
        return {"base": base, "changes": changes}
    summary = proposal.change_list()
    release = _release_before(store, proposal.number)
    base = release.get("number", 0) if release else 0
    wanted = {(c["kind"], c["id"]) for c in summary if c["kind"] in KINDS}
    before, calendar_before = ({"item": {}, "agency": {}}, []) if release is None else \
        _records_of_release(store, release, wanted)
    for kind in KINDS:
        changes += _record_changes(kind, before[kind], after[kind],
                                   [c["id"] for c in summary if c["kind"] == kind])
    if calendar_after is not None and calendar_before is not None:
        changes += _calendar_changes(calendar_before, calendar_after)
    return {"base": base, "changes": changes}


def _decide(proposal_id, by):
    proposal = ReleaseProposal.get_or_none(ReleaseProposal.id == proposal_id)
    if proposal is None:
        raise errors.NotFound("没有这个发布申请")
    if proposal.state != PROPOSED:
        raise PublishRefused(f"该发布申请{proposal.state_name}，不能再处理")
    return proposal


def _versions(db):
    """Highest published version of every record id this node holds, by kind."""
    highest = {"item": {}, "agency": {}, "calendar": {}}
    ids = [doc_id for prefix in ("item:", "catalog:agency:", "catalog:calendar@")
           for doc_id in reads.ids_with_prefix(db, prefix)]
    for doc_id in ids:
        parsed = rel.parse_versioned_id(doc_id)
        if parsed:
            kind, record_id, version = parsed
            highest[kind][record_id] = max(version, highest[kind].get(record_id, 0))
    return highest


@_bound
def approve(store, proposal_id, by, private_key, *, now=None):
    """Approve a proposal: sign it with the county key and write the release.

    The two-person rule: ``by`` holds the approver role and is not the proposer.

    :returns: the release document written.
    """
    db = store.db
    proposal = _decide(proposal_id, by)
    if by == proposal.proposed_by:
        raise PublishRefused("提交人不能审批自己提交的发布（须由另一人审批）")
    if not _has_role(by, APPROVER_ROLE):
        raise PublishRefused(f"{by} 没有审批人员角色，不能批准发布")
    if private_key is None:
        raise PublishRefused("本节点没有县级签名密钥，不能签发目录")
    records = json.loads(proposal.records)
    in_force = {"item": {}, "agency": {}}
    for summary in active.active_items(db):
        item = active.active_item(db, summary["item_id"])
        in_force["item"][item["id"]] = item
    for agency in active.active_agencies(db):
        doc = db.execute_sql("SELECT doc_id, version, hash FROM catalog_agency "
                             "WHERE agency_id = ?", (agency["id"],)).fetchone()
        in_force["agency"][agency["id"]] = {**agency, "doc_id": doc[0], "version": doc[1],
                                            "hash": doc[2]}
    highest = _versions(db)
    entries, new_docs = [], []
    for kind, key in (("item", "items"), ("agency", "agencies")):
        for record in records[key]:
            current = in_force[kind].get(record["id"])
            if current is not None and rel.content_of(
                    {k: v for k, v in current.items() if k not in ("doc_id", "hash")}) == \
                    {**record, "type": kind, "version": current["version"]}:
                entries.append({"id": current["doc_id"], "version": current["version"],
                                "hash": current["hash"]})
                continue
            version = highest[kind].get(record["id"], 0) + 1
            doc = rel.published_doc(kind, record, version)
            new_docs.append(doc)
            entries.append({"id": doc["_id"], "version": version, "hash": rel.content_hash(doc)})
    calendar = records.get("calendar")
    if calendar is None:  # proposed before calendars were published: keep the one in force
        calendar = active.calendar_entries(db)
    calendar_entry, calendar_doc = _calendar_entry(db, calendar, highest)
    if calendar_doc is not None:
        new_docs.append(calendar_doc)
    if calendar_entry is not None:
        entries.append(calendar_entry)
    moment = now or clock.utcnow()
    release = rel.sign_release(private_key, number=proposal.number,
                               time=moment.isoformat(timespec="seconds"), entries=entries,
                               proposed_by=proposal.proposed_by, approved_by=by)
    # Items first, the release last: a node that receives them in order never waits.
    results = store.bulk_docs(new_docs + [release])
    failed = [r for r in results if "error" in r]
    if failed:
        raise PublishRefused(f"写入发布失败：{failed[:3]}")
    with db.atomic():
        proposal.state, proposal.decided_by, proposal.decided_at = APPROVED, by, _now()
        proposal.save()
        published = {("item", r["id"]): r for r in records["items"]}
        published.update({("agency", r["id"]): r for r in records["agencies"]})
        done = []
        for draft in CatalogDraft.select():
            body = json.loads(draft.body) if draft.body else None
            if body == published.get((draft.kind, draft.record_id)) or \
                    (body is None and (draft.kind, draft.record_id) not in published):
                done.append(draft.id)
        for start in range(0, len(done), 500):
            CatalogDraft.delete().where(CatalogDraft.id.in_(done[start:start + 500])).execute()
        _clear_published_calendar_drafts(calendar)
    logger.info("release %s approved by %s: %d documents, %d new", proposal.number, by,
                len(entries), len(new_docs))
    return release


def _calendar_entry(db, calendar, highest):
    """``(release entry, new document)`` publishing ``calendar``: the document in force when
    it holds the same, none at all for an empty calendar."""
    if not calendar:
        return None, None
    body = cal.document_body(calendar)
    in_force = active.calendar_in_force(db)
    if in_force is not None and cal.document_body(active.calendar_entries(db)) == body:
        return {"id": in_force["doc_id"], "version": in_force["version"],
                "hash": in_force["hash"]}, None
    version = highest["calendar"].get(rel.CALENDAR_RECORD, 0) + 1
    doc = rel.calendar_doc(body, version)
    return {"id": doc["_id"], "version": version, "hash": rel.content_hash(doc)}, doc


def _clear_published_calendar_drafts(calendar):
    """Drop the calendar drafts that ``calendar`` (just published) made true."""
    published = {cal.entry_key(e): e for e in calendar}
    done = [d.id for d in CalendarDraft.select()
            if (json.loads(d.body) if d.body else None) == published.get(d.key)]
    for start in range(0, len(done), 500):
        CalendarDraft.delete().where(CalendarDraft.id.in_(done[start:start + 500])).execute()


def reject(proposal_id, by, reason):
    """Send a proposal back with a reason (the drafts stay)."""
    proposal = _decide(proposal_id, by)
    if not reason or not reason.strip():
        raise PublishRefused("退回须写明理由")
    if not _has_role(by, APPROVER_ROLE):
        raise PublishRefused(f"{by} 没有审批人员角色，不能退回发布")
    proposal.state, proposal.decided_by, proposal.decided_at = REJECTED, by, _now()
    proposal.reason = reason.strip()
    proposal.save()
    return proposal


def withdraw(proposal_id, by):
    """The proposer takes a waiting proposal back."""
    proposal = _decide(proposal_id, by)
    if by != proposal.proposed_by:
        raise PublishRefused("只有提交人可以撤回发布申请")
    proposal.state, proposal.decided_by, proposal.decided_at = WITHDRAWN, by, _now()
    proposal.save()
    return proposal


@_bound
def publish(store, items, agencies, *, proposer, approver, private_key, note="", now=None,
            calendar=None):
    """Import, propose and approve in one go (the demo and set-up scripts; two accounts).

    :param calendar: calendar entries to publish as the whole working calendar (None: the
        working calendar as it is).
    """
    import_catalog(store.db, items, agencies, proposer)
    if calendar is not None:
        save_calendar_entries(store.db, calendar, proposer, replace=True)
    proposal = propose(store.db, proposer, note)
    return approve(store, proposal.id, approver, private_key, now=now)
