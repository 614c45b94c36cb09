"""Signed releases after real replication: county -> township -> village, each node its own
serve process, the township and the village running syncd.

A compromised township (its store written directly, as an intruder with the files but not
the county's key could) relays forged catalog documents to its village. Every forgery must
be refused at the village: the last good release stays active, the station's status page
shows the alarm, and the county sees it in the village's status report. A genuine release
published afterwards still activates.
"""

import copy
import json

import pytest
import requests

from shared import config as cfg
from shared import identity
from shared.app import open_store
from shared.catalog import active, publish
from shared.catalog import release as rel
from shared.catalog.sample import sample_catalog
from shared.models import Account, hash_password
from tests import nodeproc
from tests.nodeproc import eventually

COUNTY, TOWN, VILLAGE = "441521", "441521101", "441521101001"


class Chain:
    """County, township and village: enrolled, serving, syncing."""

    def __init__(self, base):
        self.procs = []
        county = nodeproc.start_node(base / COUNTY, tier="county", code=COUNTY, name="海丰县")
        self.procs.append(county)
        self.nodes = {COUNTY: county}
        for code, parent, tier in ((TOWN, COUNTY, "township"), (VILLAGE, TOWN, "village")):
            node_dir = nodeproc.enrol_node(county.node_dir, self.nodes[parent].url,
                                           base / code, tier, code)
            nodeproc.update_config(node_dir, SYNC_INTERVAL=300, SYNC_MAX_BACKOFF=2)
            self.nodes[code] = nodeproc.start_node(node_dir, create=False)
            self.procs.append(self.nodes[code])
        for code in (TOWN, VILLAGE):
            self.procs.append(nodeproc.start_syncd(self.nodes[code].node_dir))
        self.key = identity.load_private_key(county.node_dir)

    def store(self, code):
        """The node's store, opened in this process (as an intruder or an admin would)."""
        return open_store(cfg.load_config(self.nodes[code].node_dir))

    def catalog(self, code):
        """What the node's ``/status/catalog`` says."""
        return requests.get(self.nodes[code].url + "/status/catalog", timeout=5).json()

    def stop(self):
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    chain = Chain(tmp_path_factory.mktemp("tamper"))
    store = chain.store(COUNTY)
    for name, role in (("editor", "county_admin"), ("boss", "approver")):
        Account.create(username=name, password_hash=hash_password("pw-" + name), roles=role,
                       created="2026-11-22")
    items, agencies = sample_catalog()
    publish.publish(store, items, agencies, proposer="editor", approver="boss",
                    private_key=chain.key)
    store.close()
    eventually(lambda: chain.catalog(VILLAGE)["release"] == 1,
               "release 1 verified and active at the village", timeout=60)
    yield chain
    chain.stop()


def township_writes(chain, docs):
    """Write ``docs`` into the township's store directly (bypassing every check)."""
    store = chain.store(TOWN)
    try:
        results = store.bulk_docs(docs)
        assert all("error" not in r for r in results), results
    finally:
        store.close()


def village_item(chain, item_id):
    store = chain.store(VILLAGE)
    try:
        return active.active_item(store.db, item_id)
    finally:
        store.close()


def release_one(chain):
    store = chain.store(COUNTY)
    try:
        return store.get(rel.release_doc_id(1))
    finally:
        store.close()


def signed(key, number, entries):
    return rel.sign_release(key, number=number, time="2026-11-22T10:00:00+00:00",
                            entries=entries, proposed_by="editor", approved_by="boss")


def forged_item(base, version, **changes):
    """A new version of a published item document, with ``changes`` applied."""
    doc = {k: v for k, v in base.items() if not k.startswith("_")}
    doc.update(changes, version=version)
    doc["_id"] = rel.item_doc_id(doc["id"], version)
    return doc


def _entries_with(release, doc):
    entries = [e for e in release["entries"] if not e["id"].startswith(f"item:{doc['id']}@")]
    return entries + [{"id": doc["_id"], "version": doc["version"],
                       "hash": rel.content_hash(doc)}]


def case_body_changed(chain, number):
    """The release is genuine (county key) but the item relayed with it is not what was
    signed: the township edits the body after signing."""
    release = release_one(chain)
    base = village_item(chain, "GD-LS-02")
    genuine = forged_item(base, 7, name="城乡居民基本养老保险待遇领取（新）")
    forged_release = signed(chain.key, number, _entries_with(release, genuine))
    relayed = dict(genuine, fee=True, fee_items=[{"name": "手续费", "standard": "200 元",
                                                  "basis": "无"}])
    return [relayed, forged_release], "与签名时的内容不一致"


def case_signature_changed(chain, number):
    release = release_one(chain)
    doc = copy.deepcopy(release)
    doc.update(_id=rel.release_doc_id(number), number=number)
    del doc["_rev"]
    # A real signature of the county key, but over other content.
    doc["signature"] = signed(chain.key, number + 1, release["entries"])["signature"]
    return [doc], "签名验证失败"


def case_item_missing(chain, number):
    release = release_one(chain)
    ghost = {"id": "item:GD-LS-99@1", "version": 1, "hash": "0" * 64}
    return [signed(chain.key, number, release["entries"] + [ghost])], "还缺 1 个事项"


def case_item_added(chain, number):
    release = release_one(chain)
    base = village_item(chain, "GD-LS-03")
    extra = forged_item(base, 1, id="GD-LS-88", name="伪造事项")
    extra["_id"] = rel.item_doc_id("GD-LS-88", 1)
    doc = signed(chain.key, number, release["entries"])
    doc["entries"] = doc["entries"] + [{"id": extra["_id"], "version": 1,
                                        "hash": rel.content_hash(extra)}]
    return [extra, doc], "签名验证失败"


def case_old_release_replayed(chain, number):
    doc = {k: v for k, v in release_one(chain).items() if k != "_rev"}
    doc["_id"] = rel.release_doc_id(number)
    return [doc], "旧发布被重放"


def case_wrong_key(chain, number):
    release = release_one(chain)
    return [signed(identity.new_private_key(), number, release["entries"])], "不是本县的密钥"


def case_unsigned(chain, number):
    doc = signed(chain.key, number, release_one(chain)["entries"])
    del doc["signature"]
    return [doc], "没有签名"


CASES = [case_body_changed, case_signature_changed, case_item_missing, case_item_added,
         case_old_release_replayed, case_wrong_key, case_unsigned]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_a_forged_release_is_never_used_at_the_village(chain, case):
    number = 900000 + CASES.index(case)
    docs, reason = case(chain, number)
    township_writes(chain, docs)
    rel_id = rel.release_doc_id(number)

    def refused():
        store = chain.store(VILLAGE)
        try:
            if store.get(rel_id, revs=False) is None:
                return None
            status = active.catalog_status(store.db, alarms=20)
        except Exception:  # not arrived yet
            return None
        finally:
            store.close()
        seen = [a["message"] for a in status["alarms"]] + [status["message"]]
        return status if any(reason in m and str(number) in m for m in seen) else None

    status = eventually(refused, f"the village refuses release {number} ({reason})",
                        timeout=60)
    # The last good release stays in force, with the content that was signed.
    assert status["active"]["number"] == 1
    assert village_item(chain, "GD-LS-02")["name"] == "城乡居民基本养老保险待遇领取（申领）"
    assert village_item(chain, "GD-LS-88") is None
    # The station's own status page says so.
    page = requests.get(chain.nodes[VILLAGE].url + "/sync/status", timeout=5).text
    assert "第 1 号" in page and ("目录告警" in page or "等待同步" in page)


def test_a_published_item_changed_in_place_raises_an_alarm_and_changes_nothing(chain):
    store = chain.store(TOWN)
    try:
        doc = store.get(rel.item_doc_id("GD-LS-01", 1))
    finally:
        store.close()
    doc["name"] = "被篡改的事项名称"
    township_writes(chain, [doc])

    def alarmed():
        status = chain.catalog(VILLAGE)
        return status if status["alarm"] and "item:GD-LS-01@1" in status["alarm"] else None

    eventually(alarmed, "the village raises an alarm for the changed item", timeout=60)
    assert village_item(chain, "GD-LS-01")["name"] == "城乡居民基本养老保险参保登记"


def test_the_county_sees_the_alarm_and_a_genuine_release_still_activates(chain):
    def county_sees():
        store = chain.store(COUNTY)
        try:
            doc = store.get(f"status:{VILLAGE}")
        except Exception:
            return None
        finally:
            store.close()
        catalog = doc.get("catalog") or {}
        return catalog if catalog.get("alarm") else None

    seen = eventually(county_sees, "the village's catalog alarm reaches the county",
                      timeout=90)
    assert seen["release"] == 1
    report = json.loads(nodeproc.tongban("sync", "status", chain.nodes[COUNTY].node_dir,
                                         "--json").stdout)
    village = next(n for n in report["nodes"] if n["code"] == VILLAGE)
    assert village["catalog"]["alarm"]

    store = chain.store(COUNTY)
    try:
        item = publish.working_record(store.db, "item", "GD-LS-05")
        item["hours"] = "工作日 8:00—12:00（2026 年冬令时）"
        publish.save_draft(store.db, "item", item, "editor")
        proposal = publish.propose(store.db, "editor")
        number = publish.approve(store, proposal.id, "boss", chain.key)["number"]
    finally:
        store.close()
    assert number == 2  # the forged numbers never reached the county
    eventually(lambda: chain.catalog(VILLAGE)["release"] == 2,
               "genuine release 2 activates at the village", timeout=60)
    assert village_item(chain, "GD-LS-05")["hours"] == item["hours"]
    status = json.loads(nodeproc.tongban("catalog", "status", chain.nodes[VILLAGE].node_dir,
                                         "--json").stdout)
    assert status["active"]["number"] == 2 and status["active"]["item_count"] == 25
