"""Interop with CouchDB-Python 1.2 (``import couchdb``) against a tongban node process.

CouchDB-Python speaks the plain document API (not replication): this checks that a Python
script written for Apache CouchDB works unchanged against a node's ``/db``.
"""

from urllib.parse import quote

import couchdb
import pytest
import requests

from tests.nodeproc import REPLICATOR_PASSWORD, REPLICATOR_USER, start_node


@pytest.fixture
def node(tmp_path):
    """A node (a township not yet enrolled, so its store starts empty) in its own process."""
    node = start_node(tmp_path / "township", tier="township", code="441521101")
    yield node
    node.stop()


def server_url(node, password=REPLICATOR_PASSWORD):
    """The node's root URL with Basic credentials, the way CouchDB-Python takes them."""
    return node.url.replace("http://", f"http://{REPLICATOR_USER}:{password}@")


@pytest.fixture
def db(node):
    """The node's database through ``couchdb.Server(url)['db']`` (which sends HEAD /db)."""
    return couchdb.Server(server_url(node))["db"]


def test_save_and_read_chinese(db, node):
    """Docs with Chinese ids and bodies are saved and read back unchanged."""
    doc = {"_id": "事项-养老金-001", "名称": "城乡居民养老保险待遇申领",
           "材料": [{"名称": "居民身份证", "份数": 1}], "地址": "海丰县附城镇𠀾村"}
    doc_id, rev = db.save(dict(doc))
    assert doc_id == doc["_id"] and rev.startswith("1-")
    read = db["事项-养老金-001"]
    assert dict(read) == {**doc, "_rev": rev}
    assert read.id == doc_id and read.rev == rev
    assert "事项-养老金-001" in db and "事项-不存在" not in db
    assert db.get("事项-不存在") is None
    # The same document as a plain HTTP client sees it.
    response = requests.get(f"{node.db_url}/{quote(doc_id, safe='')}", auth=node.auth)
    assert response.json() == {**doc, "_rev": rev}


def test_save_without_id_gets_one(db):
    """``save`` of a doc without ``_id`` POSTs it to /db; the node assigns the id."""
    doc_id, rev = db.save({"类型": "评价", "评价": "满意"})
    assert doc_id and rev.startswith("1-")
    assert db[doc_id]["评价"] == "满意"


def test_update_and_conflict(db):
    """Saving an edited doc makes a new rev; saving a stale copy is a conflict."""
    db.save({"_id": "办件-441521-20240301-0001", "状态": "受理"})
    doc = db["办件-441521-20240301-0001"]
    stale = couchdb.Document(doc)
    doc["状态"] = "补正"
    doc_id, rev2 = db.save(doc)
    assert rev2.startswith("2-") and doc.rev == rev2
    assert db[doc_id]["状态"] == "补正"
    stale["状态"] = "办结"
    with pytest.raises(couchdb.http.ResourceConflict):
        db.save(stale)
    assert db[doc_id].rev == rev2 and db[doc_id]["状态"] == "补正"


def test_delete(db, node):
    """A deleted doc is gone for readers but leaves a tombstone with a new rev."""
    db.save({"_id": "撤回-1", "原因": "申请人撤回"})
    doc = db["撤回-1"]
    db.delete(doc)
    assert "撤回-1" not in db
    assert db.get("撤回-1") is None
    with pytest.raises(couchdb.http.ResourceNotFound):
        db["撤回-1"]
    response = requests.get(f"{node.db_url}/{quote('撤回-1', safe='')}", auth=node.auth)
    assert response.status_code == 404 and response.json()["reason"] == "deleted"


def test_bulk_update_and_listing(db):
    """``update`` (_bulk_docs), iteration (_all_docs), ``len`` and ``info`` agree."""
    results = db.update([{"_id": f"材料-{i:02d}", "序号": i} for i in range(5)])
    assert [(ok, doc_id) for ok, doc_id, _ in results] == \
        [(True, f"材料-{i:02d}") for i in range(5)]
    assert sorted(db) == [f"材料-{i:02d}" for i in range(5)]
    assert len(db) == 5 and db.info()["doc_count"] == 5
    rows = list(db.view("_all_docs", include_docs=True))
    assert [row.doc["序号"] for row in rows] == list(range(5))


def test_changes_since(db):
    """``changes(since=...)`` lists only later changes, deletions as ``deleted``."""
    db.save({"_id": "通知-1", "内容": "已受理"})
    since = db.changes()["last_seq"]
    db.save({"_id": "通知-2", "内容": "请补正"})
    doc = db["通知-1"]
    db.delete(doc)
    later = db.changes(since=since)
    by_id = {row["id"]: row for row in later["results"]}
    assert sorted(by_id) == ["通知-1", "通知-2"]
    assert by_id["通知-1"].get("deleted") is True
    assert "deleted" not in by_id["通知-2"]
    assert db.changes(since=later["last_seq"])["results"] == []
    with_docs = db.changes(since=since, include_docs=True)["results"]
    assert {row["id"]: row["doc"].get("内容") for row in with_docs} == \
        {"通知-1": None, "通知-2": "请补正"}


def test_database_object_directly(node):
    """``couchdb.Database(url)`` with credentials in the URL works without a Server."""
    db = couchdb.Database(server_url(node) + "/db")
    doc_id, rev = db.save({"_id": "直连-1", "v": 1})
    assert db[doc_id].rev == rev


def test_wrong_credentials_get_401(node):
    """A wrong password is refused with 401 (Unauthorized) and writes nothing."""
    with pytest.raises(couchdb.http.Unauthorized):
        couchdb.Server(server_url(node, password="wrong-password"))["db"]
    bad = couchdb.Database(server_url(node, password="wrong-password") + "/db")
    with pytest.raises(couchdb.http.Unauthorized):
        bad.save({"_id": "越权-1"})
    good = couchdb.Server(server_url(node))["db"]
    assert "越权-1" not in good and len(good) == 0
