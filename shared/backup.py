"""Backups of a node: one zip archive holding a consistent copy of everything it needs.

``create`` copies a node while it serves: the store through SQLite's online backup API
(from a read transaction begun while no write is in progress, so that the audit head
file and ``secrets.json`` read at the same moment belong to the same state), the scans
under ``blobs/``, ``tongban.json`` and the audit head file. The node's keys
(``node.key``, ``secrets.json`` and the config's ``SECRET_KEY``) are sealed under a
passphrase: scrypt derives an AES-256-GCM key whose associated data is the manifest's
list of members and their sha256, so an archive whose keys open is an archive whose
every member is the one written. Nothing secret is in the archive in clear.

``manifest.json`` (the last member) says what the archive holds: format version, tongban
version, node, ``created_at``, the store's document count and update_seq, the audit
chain's head, and the sha256 and size of every member.

``verify`` unpacks into a temporary directory and checks every member's sha256, the
store's ``PRAGMA integrity_check``, its document count and update_seq against the
manifest, the audit chain (``shared.audit.verify``; its MACs only with the passphrase,
the key being sealed) and, with the passphrase, that the keys open. ``restore`` does the
same in a directory next to the target and then moves it into place.

``backup_job`` is the scheduled backup of every tier (``BACKUP_*`` settings): without a
passphrase file it backs up all but the keys, and says so in the manifest and the log.
"""

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import secrets as secrets_module
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

import shared
from shared import audit, clock, identity, supervisor
from shared import config as cfg
from shared.errors import ConfigurationError
from shared.store import reads

logger = logging.getLogger(__name__)

FORMAT = "tongban-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORE_MEMBER = "store.sqlite"
CONFIG_MEMBER = cfg.CONFIG_FILE
HEAD_MEMBER = audit.HEAD_FILE
KEYS_MEMBER = "keys.sealed"
BLOBS = "blobs"
#: The files the sealed keys hold.
KEY_FILES = (identity.KEY_FILE, identity.SECRETS_FILE)
#: Config settings that are secret: sealed with the keys, blanked in the archive's copy.
SECRET_SETTINGS = ("SECRET_KEY",)
#: Settings that may carry ``user:password@`` (a replicator account at the parent): the
#: archive's config has them without the password; the sealed keys hold them whole.
URL_SETTINGS = ("PARENT_URL", "UPSTREAM_URL")
PASSPHRASE_ENV = "TONGBAN_BACKUP_PASSPHRASE"
#: scrypt cost: 32 MiB and about a tenth of a second, also on an old village PC.
SCRYPT = {"n": 2 ** 15, "r": 8, "p": 1}
SCHEDULES = ("daily", "hourly", "off")
#: The scheduled job looks every quarter of an hour whether a backup is due, so a PC that
#: was asleep or off at BACKUP_HOUR backs up soon after it wakes.
BACKUP_TRIGGER = {"trigger": "interval", "minutes": 15}
_BLOB_NAME = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1024 * 1024


class BackupError(Exception):
    """A backup, verification or restore that cannot go on; the message says why."""


# -- passphrase and sealing --------------------------------------------------------------

def read_passphrase(passphrase_file=None, *, prompt=None):
    """The passphrase from ``passphrase_file``, else ``TONGBAN_BACKUP_PASSPHRASE``, else
    ``prompt()`` (None: no passphrase). Only a file's last line end is dropped.

    :raises BackupError: the file cannot be read, or the passphrase is empty.
    """
    if passphrase_file is not None:
        try:
            text = Path(passphrase_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BackupError(f"cannot read the passphrase file {passphrase_file}: {exc}") \
                from exc
        passphrase = text.removesuffix("\n").removesuffix("\r")
    elif os.environ.get(PASSPHRASE_ENV) is not None:
        passphrase = os.environ[PASSPHRASE_ENV]
    elif prompt is not None:
        passphrase = prompt()
        if passphrase is None:
            return None
    else:
        return None
    if not passphrase:
        raise BackupError("the passphrase is empty: the keys would be open to anyone")
    return passphrase


def _derive(passphrase, salt, params):
    return Scrypt(salt=salt, length=32, **params).derive(passphrase.encode("utf-8"))


def _sealing_context(manifest):
    """What the sealed keys authenticate: the node, the time and every other member."""
    members = {name: entry["sha256"] for name, entry in manifest["members"].items()
               if name != KEYS_MEMBER}
    return identity.canonical_json({
        "format_version": manifest["format_version"], "node": manifest["node"],
        "created_at": manifest["created_at"], "members": members})


def seal_keys(passphrase, plaintext, manifest, files=KEY_FILES):
    """Encrypt the keys for ``manifest`` (its members written, not yet the keys):
    ``(ciphertext, manifest "keys" entry)``."""
    salt, nonce = os.urandom(16), os.urandom(12)
    ciphertext = AESGCM(_derive(passphrase, salt, SCRYPT)).encrypt(
        nonce, plaintext, _sealing_context(manifest))
    return ciphertext, {"included": True, "member": KEYS_MEMBER, "files": list(files),
                        "kdf": {"name": "scrypt", "salt": identity.b64(salt), **SCRYPT},
                        "cipher": "AES-256-GCM", "nonce": identity.b64(nonce)}


def unseal_keys(passphrase, ciphertext, manifest):
    """The sealed keys ``{"files": {name: bytes}, "settings": {...}}``.

    :raises BackupError: a wrong passphrase, or an archive whose manifest was altered.
    """
    keys = manifest["keys"]
    try:
        kdf = keys["kdf"]
        params = {name: int(kdf[name]) for name in ("n", "r", "p")}
        key = _derive(passphrase, identity.unb64(kdf["salt"]), params)
        plaintext = AESGCM(key).decrypt(identity.unb64(keys["nonce"]), ciphertext,
                                        _sealing_context(manifest))
        sealed = json.loads(plaintext)
        return {"files": {name: identity.unb64(data) for name, data in sealed["files"].items()},
                "settings": dict(sealed.get("settings") or {})}
    except InvalidTag:
        raise BackupError("the keys do not open with this passphrase (a wrong passphrase, "
                          "or the manifest was altered)") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise BackupError(f"the sealed keys are malformed: {exc}") from exc


# -- making a backup ---------------------------------------------------------------------

class _Snapshot(NamedTuple):
    """The node's files read at one moment of its store."""

    store: Path
    head: bytes | None
    key_files: dict
    config: dict


def _read_optional(path):
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


def _snapshot(config, target):
    """Copy the store to ``target`` with the online backup API. The copy's read
    transaction begins, and the audit head and key files are read, while no write is in
    progress: they all belong to one state of the node."""
    db_path = Path(config["DB_PATH"])
    node_dir = Path(config["NODE_DIR"])
    if not db_path.is_file():
        raise BackupError(f"the store {db_path} does not exist")
    lock = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    source = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        # BEGIN IMMEDIATE waits for a write in progress (an audit entry is written with
        # its head file inside its transaction) and holds off the next one for a moment.
        lock.execute("BEGIN IMMEDIATE")
        try:
            source.execute("BEGIN")
            source.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            head = _read_optional(db_path.parent / audit.HEAD_FILE)
            key_files = {name: _read_optional(node_dir / name) for name in KEY_FILES}
            node_file = cfg.read_node_file(node_dir)
        finally:
            lock.execute("ROLLBACK")
        copy = sqlite3.connect(target)
        try:
            # One step: the copy is the state of the read transaction begun above.
            source.backup(copy)
            check = copy.execute("PRAGMA integrity_check").fetchall()
        finally:
            copy.close()
        source.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy the store {db_path}: {exc}") from exc
    finally:
        source.close()
        lock.close()
    if [row[0] for row in check] != ["ok"]:
        raise BackupError(f"the copy of the store fails its integrity check: "
                          f"{'; '.join(str(row[0]) for row in check[:5])}")
    return _Snapshot(Path(target), head, {k: v for k, v in key_files.items() if v is not None},
                     node_file)


def _store_figures(path):
    """``(doc_count, update_seq)`` of the store file at ``path``, read only: not through
    ``Store``, since opening one may upgrade an older schema, and a backup (made before an
    upgrade, or of an older release's store) must hold the store as it was."""
    return reads.file_counts(path)


def _audit_state(path, head_file, key_files):
    """The audit chain of the store at ``path``: ``{entries, head, intact, problems}``;
    ``intact`` is None when it cannot be checked (no audit key)."""
    from shared.db import open_database

    secret = None
    if identity.SECRETS_FILE in key_files:
        with contextlib.suppress(ValueError):
            secret = json.loads(key_files[identity.SECRETS_FILE]).get(audit.SECRET_NAME)
    key = audit.derive_key(secret) if secret else None
    db = open_database(path)
    try:
        # Without the key, audit.verify warns that the log cannot be checked: expected
        # here (the key is sealed), so that warning is not passed on to the operator.
        with _quiet(audit.logger, key is None):
            report = audit.verify(db, key, head_file=head_file if head_file.exists() else None)
        head = db.execute_sql("SELECT seq, mac FROM audit_head WHERE id = 1").fetchone() \
            if report.entries else None
    finally:
        db.close()
    problems = [p for p in report.problems if not _is_no_key_problem(p)]
    return {"entries": report.entries,
            "head": {"seq": head[0], "mac": head[1]} if head else None,
            "intact": not problems if key is not None or not report.entries else None,
            "problems": problems}


@contextlib.contextmanager
def _quiet(log, quiet):
    """Drop ``log``'s warnings inside the block when ``quiet``."""
    previous = log.level
    if quiet:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(previous)


def _is_no_key_problem(problem):
    """``audit.verify``'s message when the log cannot be checked without its key."""
    return problem.startswith(f"no {audit.SECRET_NAME} in ")


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Writer:
    """A zip being written: each member's sha256 and size recorded as it goes in."""

    def __init__(self, path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.handle = os.fdopen(fd, "wb")
        self.zip = zipfile.ZipFile(self.handle, "w", allowZip64=True)
        self.members = {}

    def add_bytes(self, name, data, compress=True):
        self._add(name, [data], compress)

    def add_file(self, name, path, compress=True):
        with open(path, "rb") as handle:
            self._add(name, iter(lambda: handle.read(_CHUNK), b""), compress)

    def _add(self, name, chunks, compress):
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o600 << 16
        digest, size = hashlib.sha256(), 0
        with self.zip.open(info, "w", force_zip64=True) as out:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        self.members[name] = {"sha256": digest.hexdigest(), "size": size}

    def close(self):
        self.zip.close()
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


def _blob_files(node_dir):
    """``(member name, path)`` of every stored scan (temporary files left out)."""
    root = Path(node_dir) / BLOBS
    if not root.is_dir():
        return []
    return sorted((f"{BLOBS}/{path.parent.name}/{path.name}", path)
                  for path in root.glob("*/*")
                  if _BLOB_NAME.fullmatch(path.name) and path.is_file())


def create(node_dir, archive, passphrase=None, *, keys=True):
    """Back up the node at ``node_dir`` into the new zip ``archive`` (written in one step).

    :param passphrase: seals the keys; needed unless ``keys`` is False.
    :param keys: False leaves the keys out (a scheduled backup without a passphrase).
    :returns: the manifest.
    :raises BackupError: not a node, the store cannot be copied, no passphrase …
    """
    started = time.monotonic()
    node_dir, archive = Path(node_dir), Path(archive)
    try:
        config = cfg.load_config(node_dir)
    except ConfigurationError as exc:
        raise BackupError(str(exc)) from exc
    if keys and not passphrase:
        raise BackupError("a passphrase is needed to seal the keys")
    if archive.exists():
        raise BackupError(f"{archive} exists already: name a new archive file")
    archive.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".backup-", dir=archive.parent))
    partial = archive.with_name(archive.name + ".partial")
    try:
        logger.info("backup of %s: copying the store", node_dir)
        snap = _snapshot(config, work / STORE_MEMBER)
        if snap.head is not None:
            (work / HEAD_MEMBER).write_bytes(snap.head)
        doc_count, update_seq = _store_figures(work / STORE_MEMBER)
        audit_state = _audit_state(work / STORE_MEMBER, work / HEAD_MEMBER, snap.key_files)
        if audit_state["intact"] is False:
            logger.warning("backup of %s: the audit log is not intact (%s); backed up as "
                           "it is", node_dir, audit_state["problems"][0])
        logger.info("backup of %s: store copied (%d documents, update_seq %d) in %.1f s",
                    node_dir, doc_count, update_seq, time.monotonic() - started)
        writer = _Writer(partial)
        try:
            writer.add_file(STORE_MEMBER, work / STORE_MEMBER)
            public_config = {k: _public_setting(k, v) for k, v in snap.config.items()}
            writer.add_bytes(CONFIG_MEMBER, (json.dumps(
                public_config, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
            if snap.head is not None:
                writer.add_bytes(HEAD_MEMBER, snap.head)
            blobs = _blob_files(node_dir)
            for done, (name, path) in enumerate(blobs, 1):
                writer.add_file(name, path, compress=False)  # encrypted: incompressible
                if done % 1000 == 0:
                    logger.info("backup of %s: %d of %d scans", node_dir, done, len(blobs))
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "tongban_version": shared.__version__,
                "node": {"tier": config["TIER"], "code": config["NODE_CODE"],
                         "name": config.get("NODE_NAME") or ""},
                "created_at": clock.utcnow().isoformat(timespec="seconds"),
                "store": {"member": STORE_MEMBER, "doc_count": doc_count,
                          "update_seq": update_seq, "integrity": "ok"},
                "audit": {k: audit_state[k] for k in ("entries", "head", "intact")},
                "blobs": len(blobs),
                "members": dict(writer.members),
            }
            public_key = _public_key_of(snap.key_files.get(identity.KEY_FILE))
            if public_key:
                manifest["node"]["public_key"] = public_key
            if keys:
                ciphertext, manifest["keys"] = seal_keys(
                    passphrase, _keys_plaintext(snap), manifest, sorted(snap.key_files))
                writer.add_bytes(KEYS_MEMBER, ciphertext, compress=False)
                manifest["members"] = dict(writer.members)
            else:
                manifest["keys"] = {"included": False, "reason": (
                    "no passphrase configured (BACKUP_PASSPHRASE_FILE): node.key, "
                    "secrets.json and SECRET_KEY are not in this backup")}
                logger.warning("backup of %s without its keys: %s", node_dir,
                               manifest["keys"]["reason"])
            writer.add_bytes(MANIFEST, json.dumps(manifest, ensure_ascii=False,
                                                  indent=2).encode("utf-8"))
        finally:
            writer.close()
        os.replace(partial, archive)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    logger.info("backup of %s written to %s: %d documents, %d scans, %.1f MB in %.1f s",
                node_dir, archive, doc_count, len(blobs), archive.stat().st_size / 1e6,
                time.monotonic() - started)
    return manifest


def _keys_plaintext(snap):
    sealed = [k for k in (*SECRET_SETTINGS, *URL_SETTINGS)
              if k in snap.config and _public_setting(k, snap.config[k]) != snap.config[k]]
    return identity.canonical_json({
        "files": {name: identity.b64(data) for name, data in snap.key_files.items()},
        "settings": {k: snap.config[k] for k in sealed}})


def _public_setting(key, value):
    """What the archive's readable config holds for ``key``: no secret, no password."""
    if key in SECRET_SETTINGS:
        return ""
    if key in URL_SETTINGS and isinstance(value, str):
        parts = urllib.parse.urlsplit(value)
        if parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[1]
            return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))
    return value


def _public_key_of(pem):
    """The base64 public key of a node.key's PEM bytes (None without one)."""
    if not pem:
        return None
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(pem, password=None)
        return identity.b64(identity.public_key_bytes(key))
    except (ValueError, TypeError, AttributeError):
        return None


# -- reading a backup --------------------------------------------------------------------

class Check(NamedTuple):
    """One finding of ``verify``: ``ok`` False is a problem; None a check not made."""

    ok: bool | None
    what: str


class Unpacked(NamedTuple):
    """What ``unpack`` found and where it put the members."""

    checks: list
    manifest: dict | None
    directory: Path
    keys: dict | None

    @property
    def ok(self):
        """True when no check failed."""
        return all(check.ok is not False for check in self.checks) and bool(self.checks)


def _read_manifest(zf):
    try:
        manifest = json.loads(zf.read(MANIFEST))
    except KeyError:
        raise BackupError(f"no {MANIFEST} in the archive: not a tongban backup") from None
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        raise BackupError(f"{MANIFEST} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{MANIFEST} is not a tongban backup manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(f"backup format {manifest.get('format_version')!r}: this tongban "
                          f"reads format {FORMAT_VERSION}")
    if not isinstance(manifest.get("members"), dict):
        raise BackupError(f"{MANIFEST} lists no members")
    return manifest


def _safe_member(name):
    """True for a member name that stays inside the directory it is unpacked into."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and \
        "\\" not in name and ":" not in name


def _extract_members(zf, manifest, directory, checks):
    names = set(zf.namelist()) - {MANIFEST}
    listed = manifest["members"]
    bad = 0
    for name in sorted(set(listed) | names):
        if name not in listed:
            checks.append(Check(False, f"{name}: in the archive but not in the manifest"))
            bad += 1
            continue
        if name not in names:
            checks.append(Check(False, f"{name}: in the manifest but missing from the archive"))
            bad += 1
            continue
        if not _safe_member(name):
            checks.append(Check(False, f"{name}: a member name outside the node directory"))
            bad += 1
            continue
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with zf.open(name) as source, os.fdopen(fd, "wb") as out:
                for chunk in iter(lambda: source.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            checks.append(Check(False, f"{name}: damaged, cannot be read ({exc})"))
            bad += 1
            continue
        if digest.hexdigest() != listed[name].get("sha256"):
            checks.append(Check(False, f"{name}: sha256 does not match the manifest "
                                       f"(the member was altered)"))
            bad += 1
    if not bad:
        checks.append(Check(True, f"{len(listed)} members, every sha256 matches the manifest"))
    return bad == 0


def _check_store(directory, manifest, checks):
    path = directory / STORE_MEMBER
    if not path.is_file():
        checks.append(Check(False, f"no {STORE_MEMBER} in the archive"))
        return False
    try:
        connection = sqlite3.connect(path)
        try:
            rows = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        rows = [str(exc)]
    if rows != ["ok"]:
        checks.append(Check(False, f"store: integrity check fails: {'; '.join(rows[:3])}"))
        return False
    try:
        doc_count, update_seq = _store_figures(path)
    except sqlite3.Error as exc:
        checks.append(Check(False, f"store: not a tongban store ({exc})"))
        return False
    expected = manifest.get("store") or {}
    if (doc_count, update_seq) != (expected.get("doc_count"), expected.get("update_seq")):
        checks.append(Check(False, f"store: {doc_count} documents, update_seq {update_seq}; "
                                   f"the manifest says {expected.get('doc_count')}, "
                                   f"{expected.get('update_seq')}"))
        return False
    checks.append(Check(True, f"store: integrity ok, {doc_count} documents, update_seq "
                              f"{update_seq} as in the manifest"))
    return True


def _check_keys(zf_keys, manifest, passphrase, checks):
    """The unsealed keys, or None; records what was found."""
    keys = manifest.get("keys") or {}
    if not keys.get("included"):
        checks.append(Check(None, f"keys: not in this backup ({keys.get('reason') or '-'})"))
        return None
    if passphrase is None:
        checks.append(Check(None, "keys: sealed; not opened (no passphrase given)"))
        return None
    if zf_keys is None:
        checks.append(Check(False, f"keys: {KEYS_MEMBER} is missing or unreadable"))
        return None
    try:
        opened = unseal_keys(passphrase, zf_keys, manifest)
    except BackupError as exc:
        checks.append(Check(False, f"keys: {exc}"))
        return None
    expected = manifest["node"].get("public_key")
    if expected and _public_key_of(opened["files"].get(identity.KEY_FILE)) != expected:
        checks.append(Check(False, "keys: node.key is not the key of the node in the manifest"))
        return None
    checks.append(Check(True, f"keys: open with the passphrase ({', '.join(opened['files'])})"))
    return opened


def _check_audit(directory, manifest, opened, checks):
    files = opened["files"] if opened else {}
    state = _audit_state(directory / STORE_MEMBER, directory / HEAD_MEMBER, files)
    expected = manifest.get("audit") or {}
    if state["problems"]:
        checks.append(Check(False, f"audit log: {'; '.join(state['problems'][:3])}"))
    elif (state["entries"], state["head"]) != (expected.get("entries"), expected.get("head")):
        checks.append(Check(False, f"audit log: {state['entries']} entries, head "
                                   f"{state['head']}; the manifest says "
                                   f"{expected.get('entries')}, {expected.get('head')}"))
    elif state["intact"] is None:
        checks.append(Check(True, f"audit log: {state['entries']} entries chained; their MACs "
                                  f"need the sealed key (give the passphrase)"))
    else:
        checks.append(Check(True, f"audit log intact: {state['entries']} entries"))


def unpack(archive, directory, passphrase=None):
    """Unpack ``archive`` into the empty ``directory`` and check everything.

    :returns: :class:`Unpacked` (its ``checks`` list every finding).
    :raises BackupError: not a readable archive (truncated, not a zip, no manifest).
    """
    archive, directory = Path(archive), Path(directory)
    if not archive.is_file():
        raise BackupError(f"{archive} does not exist or is not a file")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BackupError(f"{archive} is not a readable backup (truncated or not a zip "
                          f"archive): {exc}") from exc
    checks = []
    with zf:
        manifest = _read_manifest(zf)
        node = manifest.get("node") or {}
        checks.append(Check(True, f"manifest: {node.get('tier')} node {node.get('code')} "
                                  f"{node.get('name') or ''}, made "
                                  f"{clock.format_time(manifest.get('created_at'))} "
                                  f"by tongban {manifest.get('tongban_version')}"))
        logger.info("checking %s: %d members", archive, len(manifest["members"]))
        members_ok = _extract_members(zf, manifest, directory, checks)
    sealed = directory / KEYS_MEMBER
    opened = _check_keys(sealed.read_bytes() if sealed.is_file() else None, manifest,
                         passphrase, checks)
    if _check_store(directory, manifest, checks):
        _check_audit(directory, manifest, opened, checks)
    if not members_ok and opened is not None:
        opened = None  # never restore keys from an archive with altered members
    return Unpacked(checks, manifest, directory, opened)


def verify(archive, passphrase=None):
    """Check ``archive`` (see ``unpack``) in a temporary directory; returns the checks
    as :class:`Unpacked` (its directory is gone)."""
    work = Path(tempfile.mkdtemp(prefix="tongban-verify-"))
    try:
        return unpack(archive, work, passphrase)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- restoring ---------------------------------------------------------------------------

def restore(archive, node_dir, passphrase=None, *, force=False, without_keys=False):
    """Bring the node of ``archive`` back into ``node_dir`` (absent or empty).

    Everything is unpacked and checked next to ``node_dir`` first; only a backup that
    passes every check takes its place. With ``force`` a non-empty ``node_dir`` is moved
    aside to ``<node_dir>.before-restore-<time>`` (nothing is deleted).

    :param without_keys: accept a backup that holds no keys (the node must get its
        ``node.key`` and ``secrets.json`` some other way).
    :returns: ``(manifest, moved_aside or None)``.
    :raises BackupError: a non-empty target, a check that fails, no passphrase …
    """
    archive, node_dir = Path(archive), Path(node_dir)
    if node_dir.exists() and not node_dir.is_dir():
        raise BackupError(f"{node_dir} exists and is not a directory")
    occupied = node_dir.is_dir() and any(node_dir.iterdir())
    if occupied and not force:
        raise BackupError(f"{node_dir} is not empty: restore into a new directory, or give "
                          f"--force to move its content aside")
    if occupied and supervisor.running(node_dir):
        # Its serve and syncd would go on writing into the directory moved aside.
        raise BackupError(f"{node_dir} is running (tongban run): stop it before restoring "
                          "over it")
    node_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{node_dir.name}.restore-", dir=node_dir.parent))
    try:
        unpacked = unpack(archive, work, passphrase)
        failed = [check.what for check in unpacked.checks if check.ok is False]
        if failed:
            raise BackupError("the backup does not pass its checks; nothing restored:\n  "
                              + "\n  ".join(failed))
        manifest = unpacked.manifest
        if manifest["keys"].get("included") and unpacked.keys is None:
            raise BackupError("the keys of this backup are sealed: give the passphrase")
        if not manifest["keys"].get("included") and not without_keys:
            raise BackupError("this backup holds no keys (node.key, secrets.json): give "
                              "--without-keys to restore it anyway")
        _arrange(work, unpacked)
        moved = _move_into_place(work, node_dir, occupied)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("restored %s node %s from %s into %s", manifest["node"]["tier"],
                manifest["node"]["code"], archive, node_dir)
    return manifest, moved


def _arrange(work, unpacked):
    """Turn the unpacked members into a node directory: keys written, config completed,
    the store where the config says, every file the owner's alone."""
    (work / MANIFEST).unlink(missing_ok=True)
    (work / KEYS_MEMBER).unlink(missing_ok=True)
    settings = json.loads((work / CONFIG_MEMBER).read_text(encoding="utf-8"))
    if unpacked.keys is not None:
        for name, data in unpacked.keys["files"].items():
            if name in KEY_FILES:
                identity.write_private(work / name, data)
        settings.update(unpacked.keys["settings"])
    for name in SECRET_SETTINGS:
        if not settings.get(name):
            settings[name] = secrets_module.token_hex(32)  # staff sessions start over
    db_path = settings.get("DB_PATH")
    # Only a path inside the node directory is followed: an absolute one, or "../…", would
    # put the store (and replace whatever is there) outside the directory being restored.
    if db_path and (Path(db_path).is_absolute()
                    or work.resolve() not in (work / db_path).resolve().parents):
        logger.warning("the backup's DB_PATH %s is outside its node directory: the store is "
                       "restored to %s inside it", db_path, cfg.STORE_FILE)
        settings.pop("DB_PATH")
    elif db_path and Path(db_path) != Path(STORE_MEMBER):
        target = work / db_path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work / STORE_MEMBER, target)
        if (work / HEAD_MEMBER).exists():
            os.replace(work / HEAD_MEMBER, target.parent / HEAD_MEMBER)
    identity.write_private(work / CONFIG_MEMBER, (json.dumps(
        settings, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    for path in work.rglob("*"):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    os.chmod(work, 0o700)


def _move_into_place(work, node_dir, occupied):
    moved = None
    if occupied:
        stamp = clock.now().strftime("%Y%m%d-%H%M%S")
        moved = node_dir.with_name(f"{node_dir.name}.before-restore-{stamp}")
        os.replace(node_dir, moved)
    elif node_dir.is_dir():
        node_dir.rmdir()
    os.replace(work, node_dir)
    return moved


# -- the scheduled backup ----------------------------------------------------------------

def archive_name(code, moment):
    """The file name of a scheduled backup: ``tongban-<code>-<YYYYmmdd-HHMMSS>.zip``
    (Beijing time, so that names sort by time)."""
    return f"tongban-{code}-{clock.beijing(moment).strftime('%Y%m%d-%H%M%S')}.zip"


def _scheduled_archives(directory, code):
    """``[(moment, path)]`` of the scheduled backups in ``directory``, oldest first."""
    pattern = re.compile(rf"tongban-{re.escape(code)}-(\d{{8}}-\d{{6}})\.zip")
    found = []
    for path in Path(directory).glob(f"tongban-{code}-*.zip"):
        match = pattern.fullmatch(path.name)
        if match:
            moment = datetime.datetime.strptime(match.group(1), "%Y%m%d-%H%M%S").replace(
                tzinfo=clock.BEIJING)
            found.append((moment, path))
    return sorted(found)


def last_due(schedule, hour, now):
    """The latest moment at or before ``now`` a scheduled backup was due."""
    now = clock.beijing(now)
    if schedule == "hourly":
        return now.replace(minute=0, second=0, microsecond=0)
    due = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return due if due <= now else due - datetime.timedelta(days=1)


def backup_settings(config):
    """``(schedule, hour, directory, keep, passphrase_file)`` of a node's ``BACKUP_*``
    settings.

    :raises ConfigurationError: one of them is not what it must be.
    """
    schedule = config.get("BACKUP_SCHEDULE", "daily")
    if schedule not in SCHEDULES:
        raise ConfigurationError(f"BACKUP_SCHEDULE must be one of {', '.join(SCHEDULES)}, "
                                 f"not {schedule!r}")
    hour, keep = config.get("BACKUP_HOUR", 2), config.get("BACKUP_KEEP", 7)
    if not isinstance(hour, int) or isinstance(hour, bool) or not 0 <= hour <= 23:
        raise ConfigurationError(f"BACKUP_HOUR must be an hour from 0 to 23, not {hour!r}")
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ConfigurationError(f"BACKUP_KEEP must be a whole number of at least 1, "
                                 f"not {keep!r}")
    node_dir = Path(config["NODE_DIR"])
    directory = Path(config.get("BACKUP_DIR") or node_dir / "backups")
    if not directory.is_absolute():
        directory = node_dir / directory
    passphrase_file = config.get("BACKUP_PASSPHRASE_FILE")
    if passphrase_file and not Path(passphrase_file).is_absolute():
        passphrase_file = node_dir / passphrase_file
    return schedule, hour, directory, keep, passphrase_file


def run_scheduled(config, now=None):
    """Make the node's scheduled backup when one is due, then keep the newest
    ``BACKUP_KEEP``; returns the new archive's path, or None when none was due."""
    schedule, hour, directory, keep, passphrase_file = backup_settings(config)
    if schedule == "off":
        return None
    now = clock.beijing(now if now is not None else clock.time())
    code = config["NODE_CODE"]
    existing = _scheduled_archives(directory, code)
    # A newest backup dated after now means the clock was put back: not a reason to stop.
    if existing and now >= existing[-1][0] >= last_due(schedule, hour, now):
        return None
    passphrase = None
    if passphrase_file:
        try:
            passphrase = read_passphrase(passphrase_file)
        except BackupError as exc:
            logger.error("scheduled backup: %s; backing up without the keys, and keeping "
                         "every older archive until the passphrase file is fixed", exc)
    path = directory / archive_name(code, now)
    create(config["NODE_DIR"], path, passphrase, keys=passphrase is not None)
    if passphrase_file and passphrase is None:
        # Rotating now would delete, day by day, every archive that can restore the keys.
        return path
    for _moment, old in _scheduled_archives(directory, code)[:-keep]:
        if old == path:
            continue  # the one just made stays, even beside archives dated in the future
        logger.info("scheduled backup: removing %s (BACKUP_KEEP %d)", old, keep)
        old.unlink(missing_ok=True)
    return path


def backup_job(now=None):
    """The APScheduler job of every tier (runs in the node's app context)."""
    from flask import current_app

    if not current_app.config.get("NODE_DIR"):
        logger.info("scheduled backup skipped: the app has no node directory")
        return None
    try:
        return run_scheduled(current_app.config, now)
    except (BackupError, ConfigurationError) as exc:
        logger.error("scheduled backup failed: %s", exc)
        return None
