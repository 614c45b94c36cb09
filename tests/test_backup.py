"""Backups: a consistent copy of a serving node, its verification, restore, the schedule.

The node is real (``tongban init``, ``tongban serve`` in its own process, writes over
HTTP while the backup runs); the archive is checked and restored by the CLI as an operator
would, and the restored node is served again.
"""

import json
import logging
import os
import threading
import zipfile
from datetime import date
from unittest import mock

import pytest

from shared import audit, backup, identity
from shared.app import create_app
from shared.cases.blobs import BlobStore
from shared.cases.scans import scan_key
from tests.nodeproc import eventually, make_node_dir, start_serve, tongban

PASSPHRASE = "村委会备份口令-2026"
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n"


@pytest.fixture
def env_passphrase(monkeypatch):
    """The passphrase in the environment of the CLI processes the tests start."""
    monkeypatch.setenv(backup.PASSPHRASE_ENV, PASSPHRASE)


def _seed(node_dir):
    """Three audit entries and one stored scan, written the way serve writes them."""
    app = create_app(node_dir=node_dir)
    store = app.extensions["store"]
    try:
        node_audit = audit.NodeAudit(node_dir, store.db)
        for n in range(3):
            node_audit.record("clerk-a", "view_person", f"person:{n}", {"case": n})
        region_key = identity.load_secrets(node_dir)["region_key"]
        return BlobStore(node_dir / "blobs", key=scan_key(region_key)).put(
            PDF, "scan.pdf").sha256
    finally:
        store.close()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A county node backed up twice while a writer POSTs documents to its /db:
    ``(node_dir, archive, manifest, blob sha256, doc ids the node had acknowledged)``."""
    base = tmp_path_factory.mktemp("backup")
    node_dir = make_node_dir(base / "node")
    blob = _seed(node_dir)
    node = start_serve(node_dir)
    written, errors, stop = [], [], threading.Event()

    def write():
        session = node.session()
        n = 0
        while not stop.is_set():
            n += 1
            response = session.post(node.db_url, json={"_id": f"item:w{n:05d}", "type": "item",
                                                       "n": n}, timeout=30)
            (written if response.status_code == 201 else errors).append(n)

    writer = threading.Thread(target=write)
    try:
        writer.start()
        eventually(lambda: len(written) >= 20, "the first writes")
        results = []
        for name in ("first.zip", "second.zip"):
            before = len(written)
            with mock.patch.dict(os.environ, {backup.PASSPHRASE_ENV: PASSPHRASE}):
                tongban("backup", node_dir, base / name)
            results.append(len(written) - before)
        after = len(written)
        # The node goes on after the last copy.
        eventually(lambda: len(written) >= after + 5, "writes after the backups")
        stop.set()
        writer.join(60)
        acknowledged = [f"item:w{n:05d}" for n in written]
    finally:
        stop.set()
        node.stop()
    assert not errors, f"writes refused while backing up: {errors[:5]}"
    assert all(during > 0 for during in results), "no write happened during a backup"
    path = base / "second.zip"
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    return node_dir, path, manifest, blob, acknowledged


def test_backup_while_serving_is_consistent(archive):
    node_dir, path, manifest, _blob, acknowledged = archive
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        sealed = zf.read("keys.sealed")
        config = json.loads(zf.read("tongban.json"))
    assert manifest["node"]["code"] == "441521" and manifest["keys"]["included"]
    # The store copy is one moment of the node: its own count is the manifest's, and it
    # holds a prefix of what the node acknowledged (the registry entry and the writes).
    assert 20 < manifest["store"]["doc_count"] < len(acknowledged)
    assert manifest["audit"]["entries"] == 3 and manifest["audit"]["intact"] is True
    assert {"store.sqlite", "tongban.json", "audit-head.json", "keys.sealed",
            "manifest.json"} <= names and manifest["blobs"] == 1
    # Nothing secret in clear: no key file, no SECRET_KEY, no region key in any member.
    assert "node.key" not in names and "secrets.json" not in names
    assert config["SECRET_KEY"] == ""
    secrets = identity.load_secrets(node_dir)
    with zipfile.ZipFile(path) as zf:
        everything = b"".join(zf.read(name) for name in names)
    assert secrets["region_key"].encode() not in everything
    assert (node_dir / "node.key").read_bytes() not in everything
    assert len(sealed) > 100


def test_verify_passes_and_lists_what_it_checked(archive, env_passphrase):
    _node_dir, path, manifest, _blob, _acked = archive
    result = tongban("backup", "verify", path)
    assert "backup OK" in result.stdout
    assert f"{manifest['store']['doc_count']} documents" in result.stdout
    assert "audit log intact: 3 entries" in result.stdout
    assert "keys: open with the passphrase" in result.stdout


def _member_offset(path, name):
    """Where the stored bytes of member ``name`` start in the zip file."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_length, extra_length = (int.from_bytes(handle.read(2), "little") for _ in "ne")
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def test_a_flipped_byte_in_the_store_is_refused(archive, tmp_path, env_passphrase):
    damaged = tmp_path / "damaged.zip"
    data = bytearray(archive[1].read_bytes())
    start, size = _member_offset(archive[1], "store.sqlite")
    data[start + size // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    result = tongban("backup", "verify", damaged, check=False)
    assert result.returncode == 1
    assert "FAIL  store.sqlite: damaged" in result.stdout or \
        "FAIL  store.sqlite: sha256 does not match" in result.stdout
    assert "backup NOT OK" in result.stdout
    refused = tongban("restore", damaged, tmp_path / "restored", check=False)
    assert refused.returncode != 0 and "nothing restored" in refused.stderr
    assert not (tmp_path / "restored").exists()


def test_a_replaced_member_is_refused_by_its_sha256(archive, tmp_path, env_passphrase):
    """A member rewritten with a valid CRC (a store put back from elsewhere)."""
    altered = tmp_path / "altered.zip"
    with zipfile.ZipFile(archive[1]) as source, zipfile.ZipFile(altered, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "tongban.json":
                data = data.replace(b"441521", b"441522")
            target.writestr(info, data)
    result = tongban("backup", "verify", altered, check=False)
    assert result.returncode == 1
    assert "FAIL  tongban.json: sha256 does not match the manifest" in result.stdout


def test_a_wrong_passphrase_is_refused(archive, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n", encoding="utf-8")
    result = tongban("backup", "verify", archive[1], "--passphrase-file", wrong, check=False)
    assert result.returncode == 1
    assert "keys: the keys do not open with this passphrase" in result.stdout
    refused = tongban("restore", archive[1], tmp_path / "r", "--passphrase-file", wrong,
                      check=False)
    assert refused.returncode != 0 and not (tmp_path / "r").exists()


def test_a_truncated_archive_is_refused(archive, tmp_path):
    truncated = tmp_path / "truncated.zip"
    data = archive[1].read_bytes()
    truncated.write_bytes(data[:len(data) * 2 // 3])
    result = tongban("backup", "verify", truncated, check=False)
    assert result.returncode == 1
    assert "is not a readable backup (truncated or not a zip archive)" in result.stdout


def test_restore_brings_back_every_document_the_audit_log_and_the_keys(
        archive, tmp_path, env_passphrase):
    node_dir, path, manifest, blob, acknowledged = archive
    restored = tmp_path / "restored"
    tongban("restore", path, restored)
    for file in ("tongban.json", "secrets.json", "node.key", "store.sqlite",
                 "audit-head.json"):
        assert (restored / file).stat().st_mode & 0o777 == 0o600, file
    original = json.loads(tongban("info", node_dir, "--json").stdout)
    info = json.loads(tongban("info", restored, "--json").stdout)
    assert (info["tier"], info["code"], info["name"]) == ("county", "441521", "测试县")
    assert info["doc_count"] == manifest["store"]["doc_count"] <= original["doc_count"]
    assert identity.public_key_bytes(identity.load_private_key(restored)) == \
        identity.public_key_bytes(identity.load_private_key(node_dir))
    assert json.loads((restored / "tongban.json").read_text())["SECRET_KEY"] == \
        json.loads((node_dir / "tongban.json").read_text())["SECRET_KEY"]
    assert "audit log intact: 3 entries" in tongban("audit", "verify", restored).stdout
    region_key = identity.load_secrets(restored)["region_key"]
    assert BlobStore(restored / "blobs", key=scan_key(region_key)).get(blob) == PDF
    node = start_serve(restored)
    try:
        rows = node.session().get(f"{node.db_url}/_all_docs", timeout=30).json()["rows"]
    finally:
        node.stop()
    ids = [row["id"] for row in rows if row["id"].startswith("item:")]
    assert len(rows) == manifest["store"]["doc_count"]
    assert ids == acknowledged[:len(ids)]  # what was acknowledged before the copy, in order


def test_restore_refuses_a_non_empty_directory(archive, tmp_path, env_passphrase):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("keep me", encoding="utf-8")
    result = tongban("restore", archive[1], target, check=False)
    assert result.returncode != 0 and "is not empty" in result.stderr
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    forced = tongban("restore", archive[1], target, "--force")
    assert "the former content of" in forced.stdout
    assert (target / "store.sqlite").is_file()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("busy.before-restore-")]
    assert len(aside) == 1 and (aside[0] / "notes.txt").read_text() == "keep me"


def test_restore_refuses_a_node_that_is_running(archive, tmp_path, env_passphrase):
    from shared import supervisor

    target = tmp_path / "live"
    target.mkdir()
    (target / "notes.txt").write_text("keep me", encoding="utf-8")
    held = supervisor._lock(target)  # what a tongban run on it holds
    try:
        result = tongban("restore", archive[1], target, "--force", check=False)
    finally:
        held.close()
    assert result.returncode != 0 and "is running" in result.stderr
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt", "run.lock"]
    assert not [p for p in tmp_path.iterdir() if ".restore-" in p.name]


def test_an_empty_passphrase_is_refused(archive, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    result = tongban("backup", archive[0], tmp_path / "x.zip", "--passphrase-file", empty,
                     check=False)
    assert result.returncode != 0 and "the passphrase is empty" in result.stderr
    assert not (tmp_path / "x.zip").exists()
    kept = tongban("backup", archive[0], archive[1], "--without-keys", check=False)
    assert kept.returncode != 0 and "exists already" in kept.stderr


# -- the scheduled backup ------------------------------------------------------------------

@pytest.fixture
def county_app(tmp_path):
    node_dir = make_node_dir(tmp_path / "c")
    (tmp_path / "pass").write_text(PASSPHRASE + "\n", encoding="utf-8")
    app = create_app({"BACKUP_KEEP": 3, "BACKUP_PASSPHRASE_FILE": str(tmp_path / "pass")},
                     node_dir=node_dir)
    yield app
    app.extensions["store"].close()


def _backups(app):
    return sorted(p.name for p in (backup.backup_settings(app.config)[2]).glob("*.zip"))


def test_scheduled_backup_runs_once_a_day_and_keeps_the_newest(county_app, frozen):
    with county_app.app_context():
        frozen.at(date(2026, 3, 2), hour=1)  # before BACKUP_HOUR (2): yesterday's is due
        first = backup.backup_job()
        assert first.name == "tongban-441521-20260302-010000.zip"
        frozen.at(date(2026, 3, 2), hour=3)  # today's 02:00 backup is due now
        assert backup.backup_job() is not None
        frozen.at(date(2026, 3, 2), hour=9)
        assert backup.backup_job() is None  # made already today
        for day in (3, 4, 5):
            frozen.at(date(2026, 3, day), hour=2)
            assert backup.backup_job() is not None
    assert _backups(county_app) == ["tongban-441521-20260303-020000.zip",
                                     "tongban-441521-20260304-020000.zip",
                                     "tongban-441521-20260305-020000.zip"]
    newest = backup.backup_settings(county_app.config)[2] / _backups(county_app)[-1]
    assert backup.verify(newest, PASSPHRASE).ok


def test_scheduled_backup_without_a_passphrase_leaves_the_keys_out(county_app, frozen,
                                                                  caplog):
    county_app.config["BACKUP_PASSPHRASE_FILE"] = None
    with county_app.app_context(), caplog.at_level(logging.WARNING, "shared.backup"):
        frozen.at(date(2026, 3, 2), hour=3)
        path = backup.backup_job()
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert "keys.sealed" not in zf.namelist()
    assert manifest["keys"]["included"] is False
    assert "BACKUP_PASSPHRASE_FILE" in manifest["keys"]["reason"]
    assert any("without its keys" in r.getMessage() for r in caplog.records)
    result = backup.verify(path)
    assert result.ok and any("keys: not in this backup" in c.what for c in result.checks)


def test_scheduled_backup_off_and_bad_settings(county_app, frozen, caplog):
    county_app.config["BACKUP_SCHEDULE"] = "off"
    with county_app.app_context():
        assert backup.backup_job() is None
        county_app.config["BACKUP_SCHEDULE"] = "weekly"
        with caplog.at_level(logging.ERROR, "shared.backup"):
            assert backup.backup_job() is None
    assert any("BACKUP_SCHEDULE must be one of daily, hourly, off" in r.getMessage()
               for r in caplog.records)
    assert not backup.backup_settings({**county_app.config, "BACKUP_SCHEDULE": "daily"})[2] \
        .exists()


def test_every_tier_schedules_the_backup():
    from syncd.scheduler import tier_jobs

    for tier in ("county", "township", "village"):
        assert (backup.backup_job, backup.BACKUP_TRIGGER) in tier_jobs(tier)


def test_a_broken_passphrase_file_keeps_every_older_archive(county_app, frozen, tmp_path):
    with county_app.app_context():
        for day in (2, 3, 4):
            frozen.at(date(2026, 3, day), hour=3)
            assert backup.backup_job() is not None
        keyed = _backups(county_app)
        (tmp_path / "pass").unlink()  # moved away, or unreadable
        for day in (5, 6, 7, 8):
            frozen.at(date(2026, 3, day), hour=3)
            assert backup.backup_job() is not None
    # The keyless backups are made, but nothing that can restore the keys is rotated away.
    assert set(keyed) <= set(_backups(county_app)) and len(_backups(county_app)) == 7


def test_a_password_in_the_parent_url_is_sealed_not_in_clear(tmp_path):
    node_dir = make_node_dir(tmp_path / "t", tier="township", code="441521101", name="海城镇")
    secret = "replicator-Pa55-word"
    from tests.nodeproc import update_config
    update_config(node_dir, PARENT_URL=f"http://town:{secret}@county.example:5984")
    path = tmp_path / "t.zip"
    backup.create(node_dir, path, PASSPHRASE)
    with zipfile.ZipFile(path) as zf:
        assert all(secret.encode() not in zf.read(name) for name in zf.namelist())
        public = json.loads(zf.read("tongban.json"))
    assert public["PARENT_URL"] == "http://town@county.example:5984"
    backup.restore(path, tmp_path / "back", PASSPHRASE)
    restored = json.loads((tmp_path / "back" / "tongban.json").read_text(encoding="utf-8"))
    assert restored["PARENT_URL"] == f"http://town:{secret}@county.example:5984"


def test_restore_keeps_the_store_inside_the_directory_it_restores(tmp_path):
    # A node whose store is kept beside its directory ("../data/store.sqlite"): restoring
    # must not write there (it could be another node's live store), only inside.
    node_dir = make_node_dir(tmp_path / "n")
    (tmp_path / "data").mkdir()
    (node_dir / "store.sqlite").rename(tmp_path / "data" / "store.sqlite")
    from tests.nodeproc import update_config
    update_config(node_dir, DB_PATH="../data/store.sqlite")
    path = tmp_path / "n.zip"
    backup.create(node_dir, path, PASSPHRASE)
    elsewhere = tmp_path / "restore" / "n"
    elsewhere.parent.mkdir()
    (elsewhere.parent.parent / "data-before").mkdir()
    backup.restore(path, elsewhere, PASSPHRASE)
    assert (elsewhere / "store.sqlite").is_file()
    assert not (tmp_path / "restore" / "data").exists()
    assert "DB_PATH" not in json.loads((elsewhere / "tongban.json").read_text(encoding="utf-8"))
