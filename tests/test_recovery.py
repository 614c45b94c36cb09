"""A lost village PC comes back from its township, with real processes.

County, township and village each run ``tongban serve`` (and the two below ``tongban
syncd``). Cases are accepted at the village and synced up; the village's directory is
lost (a copy is kept, as a thief would have it); the county re-enrols the station with
``tongban enrol --replace``; ``tongban init … --recover`` on the replacement takes back
every case (same revisions), their scans, the catalog and the registry; numbering carries
on; the old key is refused at the township and the county.
"""

import json
import os
import shutil
import subprocess

import pytest

from shared import config as cfg
from shared import identity
from shared.app import create_app, open_store
from shared.cases import web
from shared.catalog import active, publish
from shared.catalog.sample import sample_catalog
from shared.demo import TONGBAN
from shared.scopes import case_documents
from tests import nodeproc
from tests.casekit import applicant, clerk, upload
from tests.conftest import skewed_env
from tests.nodeproc import eventually, tongban

COUNTY, TOWN, VILLAGE = "441521", "441521101", "441521101001"


def publish_catalog(county_dir):
    """The sample catalog as release 1 at the county (two accounts, as the CLI needs)."""
    tongban("user", "add", county_dir, "editor", "--role", "county_admin",
            input_text="editor-pass-1\n")
    tongban("user", "add", county_dir, "boss", "--role", "approver",
            input_text="approver-pass-1\n")
    store = open_store(cfg.load_config(county_dir))
    try:
        items, agencies = sample_catalog()
        publish.publish(store, items, agencies, proposer="editor", approver="boss",
                        private_key=identity.load_private_key(county_dir))
    finally:
        store.close()


def with_desk(node_dir, work):
    """Run ``work(desk, store)`` on the node directory's case desk, in-process."""
    app = create_app(node_dir=node_dir)
    store = app.extensions["store"]
    try:
        with app.app_context():
            return work(web.desk(app), store)
    finally:
        store.close()


def accept_cases(node_dir, count, withdraw=()):
    def work(desk, store):
        numbers = []
        for index in range(count):
            number = desk.receive("GD-LS-01", applicant(), {2: {"scans": [upload(desk)]}},
                                  "accept", clerk())
            if index in withdraw:
                desk.act(number, "withdrawn", clerk(), reason="申请人撤回")
            numbers.append(number)
        return numbers
    return with_desk(node_dir, work)


def case_revs(node, numbers):
    """``{doc_id: rev}`` of every document of ``numbers`` held at ``node`` (over HTTP)."""
    session = node.session()
    found = {}
    for number in numbers:
        rows = session.get(f"{node.db_url}/_all_docs", timeout=10, params={
            "startkey": json.dumps(f"case:{number}"),
            "endkey": json.dumps(f"case:{number}")}).json()["rows"]
        for prefix in (f"event:{number}:", f"scan:{number}:"):
            rows += session.get(f"{node.db_url}/_all_docs", timeout=10, params={
                "startkey": json.dumps(prefix), "endkey": json.dumps(prefix + "\ufff0")}
            ).json()["rows"]
        found.update({row["id"]: row["value"]["rev"] for row in rows})
    return found


def local_revs(node_dir, numbers):
    store = open_store(cfg.load_config(node_dir))
    try:
        ids = [d for n in numbers for d in case_documents(store.db, n)]
        return {d: store.get(d)["_rev"] for d in ids}
    finally:
        store.close()


def syncd_once(node_dir):
    return subprocess.run([*TONGBAN, "syncd", str(node_dir), "--once"], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture
def region(tmp_path):
    procs = []
    county = nodeproc.start_node(tmp_path / "county", tier="county", code=COUNTY, name="海丰县")
    procs.append(county)
    publish_catalog(county.node_dir)
    town_dir = nodeproc.enrol_node(county.node_dir, county.url, tmp_path / "town",
                                   "township", TOWN, "海城镇")
    nodeproc.update_config(town_dir, SYNC_MAX_BACKOFF=2)
    town = nodeproc.start_node(town_dir, create=False)
    procs += [town, nodeproc.start_syncd(town_dir)]
    village_dir = nodeproc.enrol_node(county.node_dir, town.url, tmp_path / "village",
                                      "village", VILLAGE, "东门村")
    nodeproc.update_config(village_dir, SYNC_MAX_BACKOFF=2)
    village = nodeproc.start_node(village_dir, create=False)
    village_syncd = nodeproc.start_syncd(village_dir)
    procs += [village, village_syncd]
    yield tmp_path, county, town, village, village_syncd
    for proc in reversed(procs):
        proc.stop()


def catalog_number(node_dir):
    store = open_store(cfg.load_config(node_dir))
    try:
        return active.active_number(store.db)
    finally:
        store.close()


def test_a_lost_village_pc_comes_back_from_its_township(region):
    base, county, town, village, village_syncd = region
    eventually(lambda: catalog_number(village.node_dir), "the catalog reaches the village",
               timeout=90)
    numbers = accept_cases(village.node_dir, 3, withdraw=(1,))
    eventually(lambda: len(case_revs(county, numbers)) >= 12, "the cases reach the county",
               timeout=60)
    upstream = case_revs(town, numbers)
    assert len(upstream) >= 12 and any(d.startswith("scan:") for d in upstream)

    # The PC is lost: its directory is gone (a thief keeps a copy, key included).
    village_syncd.stop()
    village.stop()
    stolen = base / "stolen"
    shutil.copytree(village.node_dir, stolen)
    shutil.rmtree(village.node_dir)

    # A code for an active node is refused unless the county says --replace.
    refused = tongban("enrol", county.node_dir, "--code", VILLAGE, "--tier", "village",
                      check=False)
    assert refused.returncode != 0 and "registered and active" in refused.stderr \
        and "--replace" in refused.stderr
    # Issued twice (the first thought lost): only the newest code can enrol a PC.
    lost = tongban("enrol", county.node_dir, "--code", VILLAGE, "--tier", "village",
                   "--replace").stdout.strip()
    code = tongban("enrol", county.node_dir, "--code", VILLAGE, "--tier", "village",
                   "--replace").stdout.strip()
    # The old key is revoked at once, before any replacement enrols.
    def township_knows():
        doc = town.session().get(f"{town.db_url}/node:{VILLAGE}", timeout=5).json()
        return doc.get("status") == "revoked" and doc.get("reason") == "replaced"
    eventually(township_knows, "the revocation reaches the township")
    old = syncd_once(stolen)
    assert old.returncode != 0 and f"node {VILLAGE} is revoked" in old.stdout, old.stdout
    fresh = base / "replacement"
    result = tongban("-v", "init", fresh, "--tier", "village", "--code", VILLAGE, "--name",
                     "东门村", "--parent", town.url, "--enrol", code, "--recover")
    output = result.stdout + result.stderr
    assert "initial sync over parent" in output and "recovered 3 cases" in output, output

    # Every case back with the same revisions, scans included; catalog and registry too.
    assert local_revs(fresh, numbers) == upstream
    assert catalog_number(fresh) == catalog_number(county.node_dir)

    def recovered(desk, store):
        states = [desk.state(n)["status"] for n in numbers]
        scan_id = next(d for d in upstream if d.startswith(f"scan:{numbers[0]}:"))
        _data, mime = desk.scan(numbers[0], scan_id.rsplit(":", 1)[1])
        return states, mime, desk.receive("GD-LS-01", applicant(),
                                          {2: {"scans": [upload(desk)]}}, "accept", clerk())
    states, mime, next_number = with_desk(fresh, recovered)
    assert states == ["handling", "withdrawn", "handling"] and mime == "application/pdf"
    assert next_number.rsplit("-", 1)[0] == numbers[-1].rsplit("-", 1)[0]
    assert int(next_number.rsplit("-", 1)[1]) == int(numbers[-1].rsplit("-", 1)[1]) + 1

    # The old key is refused at the township and at the county (both hold the new key).
    # The thief writes a case with the old key and tries to push it: refused at the
    # township and at the county (both hold the new key), and neither store changes.
    planted = accept_cases(stolen, 1)
    held = {node.url: node.session().get(node.db_url, timeout=10).json()
            for node in (town, county)}
    for parent in (town, county):
        nodeproc.update_config(stolen, PARENT_URL=parent.url)
        old = syncd_once(stolen)
        assert old.returncode != 0 and "HTTP 401" in old.stdout, old.stdout + old.stderr
    for node in (town, county):
        # (A township's own syncd may report its status meanwhile: no case moved.)
        since = held[node.url]["update_seq"]
        changed = [row["id"] for row in node.session().get(
            f"{node.db_url}/_changes", params={"since": since}, timeout=10).json()["results"]]
        assert not [d for d in changed if d.startswith(("case:", "event:", "scan:"))]
        assert case_revs(node, planted) == {}
    # The superseded code enrols nothing, and the registry entry stays the new PC's.
    before = county.session().get(f"{county.db_url}/node:{VILLAGE}", timeout=5).json()
    second = tongban("init", base / "second", "--tier", "village", "--code", VILLAGE,
                     "--parent", town.url, "--enrol", lost, check=False)
    assert second.returncode != 0 and "a newer code" in second.stderr, second.stderr
    assert county.session().get(f"{county.db_url}/node:{VILLAGE}",
                                timeout=5).json()["_rev"] == before["_rev"]

    # The registry's history says the key was replaced, and which one.
    entry = county.session().get(f"{county.db_url}/node:{VILLAGE}", timeout=5).json()
    old_key = identity.b64(identity.public_key_bytes(identity.load_private_key(stolen)))
    assert entry["status"] == "active" and entry["reason"] == "replaced"
    assert entry["replaces"] == old_key != entry["public_key"]

    # The replacement serves and syncs: its new case reaches the county.
    new_serve = nodeproc.start_serve(fresh)
    new_syncd = nodeproc.start_syncd(fresh)
    try:
        eventually(lambda: case_revs(county, [next_number]), "the new case reaches the county",
                   timeout=60)
    finally:
        new_syncd.stop()
        new_serve.stop()


def open_and_closed_at_township(village, town):
    """An open and a withdrawn case accepted at the village, once the township has them."""
    eventually(lambda: catalog_number(village.node_dir), "the catalog reaches the village",
               timeout=90)
    kept, closed = accept_cases(village.node_dir, 2, withdraw=(1,))
    eventually(lambda: len(case_revs(town, [kept, closed])) >= 9,
               "the cases reach the township", timeout=60)
    return kept, closed


def test_a_recovered_pc_keeps_only_what_retention_allows(region):
    base, county, town, village, village_syncd = region
    kept, closed = open_and_closed_at_township(village, town)
    village_syncd.stop()
    village.stop()
    shutil.rmtree(village.node_dir)
    code = tongban("enrol", county.node_dir, "--code", VILLAGE, "--tier", "village",
                   "--replace").stdout.strip()
    fresh = base / "replacement"
    # The new PC is set up 400 days later: the withdrawn case is beyond RETENTION_DAYS.
    result = subprocess.run(
        [*TONGBAN, "init", str(fresh), "--tier", "village", "--code", VILLAGE, "--parent",
         town.url, "--enrol", code, "--recover"], capture_output=True, text=True,
        timeout=120, check=False, env={**os.environ, **skewed_env(400 * 86400)})
    assert result.returncode == 0, result.stderr
    assert "recovered 1 cases" in result.stdout
    assert "1 closed cases beyond retention left at the parent" in result.stdout
    recovered = local_revs(fresh, [kept, closed])
    assert any(d.startswith(f"case:{kept}") for d in recovered)
    assert not any(closed in d for d in recovered)
    assert f"case:{closed}" in case_revs(town, [closed])


def test_retention_purges_at_the_village_only_and_nothing_comes_back(region):
    base, county, town, village, village_syncd = region
    kept, closed = open_and_closed_at_township(village, town)
    upstream = case_revs(town, [kept, closed])
    village_syncd.stop()
    later = {**os.environ, **skewed_env(400 * 86400)}  # the withdrawal is 400 days old

    def run(*args):
        return subprocess.run([*TONGBAN, *args], capture_output=True, text=True,
                              timeout=120, check=False, env=later)
    # What the nightly job does, asked for now; the township confirms (signed _revs_diff)
    # that it holds every revision before anything leaves the village.
    result = run("retention", str(village.node_dir))
    assert result.returncode == 0, result.stderr
    assert f"purged 1 closed cases: {closed}" in result.stdout, result.stdout
    here = case_revs(village, [kept, closed])
    assert not any(closed in d for d in here) and f"case:{kept}" in here
    # A local purge, not a deletion: the township still has it all, and a sync round in
    # either direction neither brings the case back nor removes it upstream.
    assert run("syncd", str(village.node_dir), "--once").returncode == 0
    assert not any(closed in d for d in case_revs(village, [closed]))
    assert case_revs(town, [kept, closed]) == upstream
    assert run("retention", str(village.node_dir)).stdout.startswith("purged 0 closed cases")
    # The township never purges.
    result = run("retention", str(town.node_dir))
    assert result.returncode != 0 and "applies only at a village" in result.stderr


def test_recover_needs_an_enrolment(tmp_path):
    result = tongban("init", tmp_path / "n", "--tier", "village", "--code", VILLAGE,
                     "--recover", check=False)
    assert result.returncode != 0 and "--recover needs --enrol" in result.stderr
    assert not (tmp_path / "n").exists()


# -- enrol --replace, in-process on a county store ---------------------------------------

@pytest.fixture
def county(tmp_path):
    from shared import registry
    from shared.store.store import Store

    key = identity.new_private_key()
    store = Store(str(tmp_path / "county.sqlite"))
    store.add_projection(registry.NodeRegistry(identity.public_key_bytes(key)))
    for code, tier, node_key in ((COUNTY, "county", key),
                                 (TOWN, "township", identity.new_private_key())):
        registry.publish_entry(store, key, code=code, tier=tier, name="",
                               public_key=identity.b64(identity.public_key_bytes(node_key)))
    yield store, key
    store.close()


def _request(enrol_code, node_key):
    return {"enrol_code": enrol_code, "code": VILLAGE, "tier": "village", "name": "",
            "public_key": identity.b64(identity.public_key_bytes(node_key)),
            "seal_key": identity.new_seal_key()[1]}


def test_an_active_node_s_key_changes_only_with_replace(county):
    from shared import errors, registry

    store, key = county
    region_key = identity.b64(b"r" * 32)
    first_key, second_key, third_key = (identity.new_private_key() for _ in range(3))
    # Two codes issued before the village enrolled: only the first one may be used.
    early, spare = (registry.issue_enrolment(store, VILLAGE, "village") for _ in range(2))
    registry.redeem_enrolment(store, key, _request(early, first_key), region_key=region_key)
    # (Redeeming one code uses up the node's others.)
    with pytest.raises(errors.Forbidden, match="already been used"):
        registry.redeem_enrolment(store, key, _request(spare, second_key),
                                  region_key=region_key)
    with pytest.raises(errors.ConfigurationError, match="registered and active.*--replace"):
        registry.issue_enrolment(store, VILLAGE, "village")
    entry = registry.lookup(store.db, VILLAGE)
    assert entry.status == "active" and entry.public_key == identity.public_key_bytes(first_key)
    with pytest.raises(errors.ConfigurationError, match="nothing to replace"):
        registry.issue_enrolment(store, "441521101009", "village", county_key=key,
                                 replace=True)

    code = registry.issue_enrolment(store, VILLAGE, "village", county_key=key, replace=True)
    revoked = store.get(f"node:{VILLAGE}")
    assert revoked["status"] == "revoked" and revoked["reason"] == "replaced"
    assert registry.lookup(store.db, VILLAGE).status == "revoked"
    registry.redeem_enrolment(store, key, _request(code, third_key), region_key=region_key)
    doc = store.get(f"node:{VILLAGE}")
    assert registry.verify_entry(identity.b64(identity.public_key_bytes(key)), doc)
    assert doc["replaces"] == identity.b64(identity.public_key_bytes(first_key))
    assert doc["status"] == "active" and doc["version"] == revoked["version"] + 1
    assert registry.lookup(store.db, VILLAGE).public_key == identity.public_key_bytes(third_key)


def test_only_the_newest_replacement_code_can_enrol(county):
    from shared import errors, registry

    store, key = county
    region_key = identity.b64(b"r" * 32)
    first = registry.issue_enrolment(store, VILLAGE, "village")
    registry.redeem_enrolment(store, key, _request(first, identity.new_private_key()),
                              region_key=region_key)
    # Issued twice (the first one was thought lost): only the second one enrols a PC.
    lost = registry.issue_enrolment(store, VILLAGE, "village", county_key=key, replace=True)
    newest = registry.issue_enrolment(store, VILLAGE, "village", county_key=key, replace=True)
    with pytest.raises(errors.Forbidden, match="a newer code"):
        registry.redeem_enrolment(store, key, _request(lost, identity.new_private_key()),
                                  region_key=region_key)
    pc = identity.new_private_key()
    registry.redeem_enrolment(store, key, _request(newest, pc), region_key=region_key)
    assert registry.lookup(store.db, VILLAGE).public_key == identity.public_key_bytes(pc)


def test_a_code_issued_before_the_upgrade_still_works(county):
    from shared import registry

    store, key = county
    # An older county's table, without the replacement column, holding an unused code.
    store.db.execute_sql("CREATE TABLE enrolment_code (code_hash TEXT PRIMARY KEY, "
                         "node_code TEXT NOT NULL, tier TEXT NOT NULL, expires TEXT NOT NULL, "
                         "used_at TEXT)")
    store.db.execute_sql("INSERT INTO enrolment_code VALUES (?, ?, 'village', ?, NULL)",
                         (registry._code_hash("AAAA-BBBB-CCCC-DDDD"), VILLAGE,
                          "2999-01-01T00:00:00Z"))
    node_key = identity.new_private_key()
    registry.redeem_enrolment(store, key, _request("AAAA-BBBB-CCCC-DDDD", node_key),
                              region_key=identity.b64(b"r" * 32))
    assert registry.lookup(store.db, VILLAGE).public_key == identity.public_key_bytes(node_key)
