"""Signed catalog releases: published documents, their hashes, signing and checking.

Documents (all immutable once written; a new version is a new document):

* ``item:<item id>@<version>`` — one version of a service item: the schema's fields plus
  ``type: "item"`` and ``version``.
* ``catalog:agency:<agency id>@<version>`` — one version of an intermediary agency.
* ``catalog:calendar@<version>`` — one version of the county's working-day overrides
  (``overrides`` and ``years``, see :mod:`shared.catalog.calendar`); a release lists at most
  one, and none when the county has no overrides.
* ``release:<number, 6 digits>`` — the release: ``number``, ``time``, ``key_id``,
  ``proposed_by``, ``approved_by`` and ``entries`` (``id``, ``version``, ``hash`` of each
  listed document), with ``signature``: the county's Ed25519 signature of the canonical
  JSON of all of those (see :func:`signed_bytes`).

A document's hash is the SHA-256 of the canonical JSON of its content (every member except
those starting with ``_``), so a relaying node cannot change a single character unnoticed.
"""

import hashlib
import re

from shared import identity

ITEM_PREFIX = "item:"
AGENCY_PREFIX = "catalog:agency:"
CALENDAR_PREFIX = "catalog:calendar@"
#: The record id of the calendar (there is one calendar; its documents differ by version).
CALENDAR_RECORD = "calendar"
RELEASE_PREFIX = "release:"
RELEASE_ID = re.compile(r"release:(\d{6})")
VERSIONED_ID = re.compile(r"(item:|catalog:agency:)([A-Za-z0-9][A-Za-z0-9-]*)@([1-9]\d*)")
CALENDAR_ID = re.compile(r"catalog:calendar@([1-9]\d*)")
#: Prefixes of every document a release lists.
LISTED_PREFIXES = (ITEM_PREFIX, AGENCY_PREFIX, CALENDAR_PREFIX)
#: Members of a release that its signature covers, besides ``entries``.
SIGNED_MEMBERS = ("number", "time", "key_id", "proposed_by", "approved_by")


class ReleaseRefused(ValueError):
    """A release that must not be activated; the message says why, in Chinese."""

    def __init__(self, message, *, missing=()):
        super().__init__(message)
        self.missing = list(missing)


def content_of(doc):
    """A document's content: every member except ``_id``, ``_rev`` and other ``_`` members."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def content_hash(doc):
    """Hex SHA-256 of the canonical JSON of ``doc``'s content."""
    return hashlib.sha256(identity.canonical_json(content_of(doc))).hexdigest()


def key_id(public_key_b64):
    """A short, stable name of a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(identity.unb64(public_key_b64)).hexdigest()[:16]


def item_doc_id(item_id, version):
    """The document id of version ``version`` of item ``item_id``."""
    return f"{ITEM_PREFIX}{item_id}@{version}"


def agency_doc_id(agency_id, version):
    """The document id of version ``version`` of intermediary agency ``agency_id``."""
    return f"{AGENCY_PREFIX}{agency_id}@{version}"


def calendar_doc_id(version):
    """The document id of version ``version`` of the working-day calendar."""
    return f"{CALENDAR_PREFIX}{version}"


def is_calendar_id(doc_id):
    """Whether ``doc_id`` names a calendar document."""
    return doc_id.startswith(CALENDAR_PREFIX)


def release_doc_id(number):
    """The document id of release ``number``."""
    return f"{RELEASE_PREFIX}{number:06d}"


def parse_versioned_id(doc_id):
    """``(kind, record id, version)`` of an item, agency or calendar document id, or None.

    A calendar document's record id is :data:`CALENDAR_RECORD`.
    """
    match = CALENDAR_ID.fullmatch(doc_id)
    if match:
        return "calendar", CALENDAR_RECORD, int(match.group(1))
    match = VERSIONED_ID.fullmatch(doc_id)
    if not match:
        return None
    kind = "item" if match.group(1) == ITEM_PREFIX else "agency"
    return kind, match.group(2), int(match.group(3))


def published_doc(kind, record, version):
    """The document publishing ``record`` (an item or agency) as ``version``."""
    body = dict(record)
    body["type"] = kind
    body["version"] = version
    doc_id = item_doc_id(record["id"], version) if kind == "item" else \
        agency_doc_id(record["id"], version)
    return {"_id": doc_id, **body}


def calendar_doc(body, version):
    """The document publishing the calendar ``body`` (``calendar.document_body``)."""
    return {"_id": calendar_doc_id(version), "type": "calendar", "version": version, **body}


def signed_bytes(release):
    """The canonical bytes a release's signature covers."""
    payload = {key: release.get(key) for key in SIGNED_MEMBERS}
    payload["entries"] = release.get("entries")
    payload["type"] = "release"
    return identity.canonical_json(payload)


def sign_release(private_key, *, number, time, entries, proposed_by, approved_by):
    """A complete, signed release document.

    :param entries: ``[{"id", "version", "hash"}]`` of every published document the
        release consists of; sorted by id here so the signed text is canonical.
    """
    public = identity.b64(identity.public_key_bytes(private_key))
    release = {
        "_id": release_doc_id(number),
        "type": "release",
        "number": number,
        "time": time,
        "key_id": key_id(public),
        "proposed_by": proposed_by,
        "approved_by": approved_by,
        "entries": sorted(({"id": e["id"], "version": e["version"], "hash": e["hash"]}
                           for e in entries), key=lambda e: e["id"]),
    }
    release["signature"] = identity.sign(private_key, signed_bytes(release))
    return release


def check_signature(release, trusted_keys):
    """Raise :class:`ReleaseRefused` unless ``release`` is well formed and signed by a
    trusted key.

    :param trusted_keys: ``{key_id: public key base64}`` of the county keys this node holds.
    """
    doc_id = release.get("_id", "")
    if release.get("type") != "release":
        raise ReleaseRefused(f"{doc_id} 不是目录发布文档")
    number = release.get("number")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ReleaseRefused(f"{doc_id} 的发布号无效")
    if doc_id != release_doc_id(number):
        raise ReleaseRefused(f"{doc_id} 的内容是第 {number} 号发布（旧发布被重放或编号被改动）")
    if not release.get("signature"):
        raise ReleaseRefused(f"第 {number} 号发布没有签名")
    public = trusted_keys.get(release.get("key_id"))
    if public is None:
        raise ReleaseRefused(f"第 {number} 号发布的签名密钥（{release.get('key_id')}）不是本县的密钥")
    if not identity.verify(public, signed_bytes(release), release["signature"]):
        raise ReleaseRefused(f"第 {number} 号发布的签名验证失败（内容被改动或签名被替换）")
    entries = release.get("entries")
    if not isinstance(entries, list) or not entries:
        raise ReleaseRefused(f"第 {number} 号发布没有列出任何事项")
    seen = set()
    for entry in entries:
        parsed = parse_versioned_id(entry.get("id", "")) if isinstance(entry, dict) else None
        if parsed is None or parsed[2] != entry.get("version") or \
                not isinstance(entry.get("hash"), str):
            raise ReleaseRefused(f"第 {number} 号发布的清单格式错误：{entry!r}")
        if parsed[:2] in seen:
            raise ReleaseRefused(f"第 {number} 号发布重复列出 {parsed[1]}")
        seen.add(parsed[:2])


def verified_text(entry, doc):
    """The canonical JSON text of ``doc`` when its hash is ``entry``'s, else None."""
    canonical = identity.canonical_json(content_of(doc))
    if hashlib.sha256(canonical).hexdigest() != entry["hash"]:
        return None
    return canonical.decode("utf-8")


def refuse_contents(release, changed, missing):
    """Raise :class:`ReleaseRefused` for listed documents that differ or are missing.

    :raises ReleaseRefused: without ``missing`` when a document is there but differs from
        what was signed (tampered); with it when documents have not arrived (yet).
    """
    number = release["number"]
    if changed:
        raise ReleaseRefused(f"第 {number} 号发布中 {len(changed)} 个事项与签名时的内容不一致"
                             f"（被篡改）：{'、'.join(changed[:5])}")
    if missing:
        raise ReleaseRefused(f"第 {number} 号发布还缺 {len(missing)} 个事项，等待同步："
                             f"{'、'.join(missing[:5])}", missing=missing)
