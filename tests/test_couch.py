"""The CouchDB HTTP API at /db, through the Flask test client on a real SQLite file."""

import email
import json
import threading
import time
from urllib.parse import quote

import pytest

from shared import auth, errors, models
from tests.conftest import REPLICATOR, add_account, basic_auth, make_app

JSON = {"Accept": "application/json"}


@pytest.fixture
def db(client, auth_headers):
    """A small client for /db with credentials and JSON helpers."""
    return Couch(client, auth_headers)


class Couch:
    """Requests to /db with the replicator's credentials."""

    def __init__(self, client, headers):
        self.client = client
        self.headers = headers

    def request(self, method, path, body=None, headers=None, **kwargs):
        all_headers = {**self.headers, **(headers or {})}
        if body is not None:
            kwargs["data"] = json.dumps(body, ensure_ascii=False).encode("utf-8")
            all_headers.setdefault("Content-Type", "application/json")
        return self.client.open("/db" + path, method=method, headers=all_headers, **kwargs)

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def put(self, path, body=None, **kwargs):
        return self.request("PUT", path, body, **kwargs)

    def post(self, path, body=None, **kwargs):
        return self.request("POST", path, body, **kwargs)

    def delete(self, path, **kwargs):
        return self.request("DELETE", path, **kwargs)

    def changes(self, query=""):
        response = self.get("/_changes" + query)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()


def replicate(db, doc_id, *paths, deleted=()):
    """Write branches as a replicator does; each path is newest-first rev hashes with a start."""
    docs = []
    for start, hashes in paths:
        doc = {"_id": doc_id, "_rev": f"{start}-{hashes[0]}",
               "_revisions": {"start": start, "ids": list(hashes)}, "branch": hashes[0]}
        if hashes[0] in deleted:
            doc["_deleted"] = True
        docs.append(doc)
    response = db.post("/_bulk_docs", {"docs": docs, "new_edits": False})
    assert response.status_code == 201 and response.get_json() == []


# -- server and database -----------------------------------------------------------------

def test_welcome_json_without_auth(client, store):
    body = client.get("/", headers=JSON).get_json()
    assert body["couchdb"] == "Welcome" and body["version"] == "3.5.0"
    assert body["uuid"] == store.uuid == client.get("/").get_json()["uuid"]
    assert body["vendor"]["name"] == "tongban"
    assert body["tongban"] == {"tier": "county", "code": "441521", "name": ""}


def test_browsers_get_the_home_page(client):
    response = client.get("/", headers={
        "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"})
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "服务站" in page
    # Every page a citizen or a clerk starts from is one click away, and each link works.
    for path in ("/catalog", "/progress", "/apply", "/appointments", "/cases/",
                 "/cases/window", "/cases/find", "/appointments/admin", "/dashboard/"):
        assert f'href="{path}"' in page, path
        assert client.get(path).status_code in (200, 302), path


def test_uuids(client):
    body = client.get("/_uuids?count=3").get_json()
    assert len(set(body["uuids"])) == 3


def test_database_info(db):
    db.put("/a", {"v": 1})
    info = db.get("").get_json()
    assert info["db_name"] == "db" and info["doc_count"] == 1 and info["update_seq"] == 1
    assert info["instance_start_time"]
    head = db.request("HEAD", "")
    assert head.status_code == 200 and head.data == b""
    assert db.get("/").get_json()["doc_count"] == 1


def test_put_database_exists(db):
    response = db.put("")
    assert response.status_code == 412 and response.get_json()["error"] == "file_exists"


def test_post_creates_document(db):
    response = db.post("", {"_id": "x", "名": "张三"})
    assert response.status_code == 201
    body = response.get_json()
    assert body["ok"] and body["id"] == "x" and body["rev"].startswith("1-")
    generated = db.post("", {"v": 1}).get_json()
    assert len(generated["id"]) == 32
    assert db.get("/" + generated["id"]).get_json()["v"] == 1


def test_post_requires_json(db, store):
    response = db.post("", data=b'{"v": 1}', headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert response.get_json() == {"error": "bad_content_type",
                                   "reason": "Content-Type must be application/json"}
    assert store.update_seq() == 0


def test_ensure_full_commit(db, store):
    response = db.post("/_ensure_full_commit")
    assert response.status_code == 201
    assert response.get_json() == {"ok": True,
                                   "instance_start_time": store.info()["instance_start_time"]}


def test_revs_limit(db, store):
    assert db.get("/_revs_limit").get_json() == 1000
    assert db.put("/_revs_limit", 5).get_json() == {"ok": True}
    assert store.revs_limit == 5
    assert db.put("/_revs_limit", "x").status_code == 400
    for bad in (0, -3, 1.5, True, None, 10 ** 30):
        response = db.put("/_revs_limit", bad)
        assert response.status_code == 400, bad
        assert response.get_json()["error"] == "bad_request"
    assert store.revs_limit == 5


def test_only_the_operator_sets_revs_limit(app, client, store):
    """A database setting is the node operator's: a full-scope account of its own."""
    add_account(app, "tablet", "tablet-pw-1", scope="441521101001")
    headers = {**basic_auth("tablet", "tablet-pw-1"), "Content-Type": "application/json"}
    response = client.put("/db/_revs_limit", data="1", headers=headers)
    assert response.status_code == 403
    assert response.get_json() == {"error": "forbidden",
                                   "reason": "You are not a db or server admin."}
    assert client.get("/db/_revs_limit", headers=headers).get_json() == 1000
    assert store.revs_limit == 1000


def test_unknown_underscore_path_and_methods(db):
    response = db.get("/_nope")
    assert response.status_code == 404
    assert response.get_json() == {"error": "not_found", "reason": "missing"}
    response = db.get("/_bulk_docs")
    assert response.status_code == 405
    assert response.get_json()["reason"] == "Only POST allowed"
    assert db.post("/_all_docs", {}).status_code == 200
    assert db.request("PATCH", "/a").get_json()["reason"] == "Only DELETE,GET,HEAD,PUT allowed"


# -- documents -----------------------------------------------------------------------------

def test_put_get_update_delete(db):
    created = db.put("/a", {"v": 1})
    assert created.status_code == 201
    rev1 = created.get_json()["rev"]
    assert created.headers["ETag"] == f'"{rev1}"'
    got = db.get("/a")
    assert got.get_json() == {"_id": "a", "_rev": rev1, "v": 1}
    assert got.headers["ETag"] == f'"{rev1}"'
    assert db.get("/a", headers={"If-None-Match": f'"{rev1}"'}).status_code == 304

    rev2 = db.put("/a", {"_rev": rev1, "v": 2}).get_json()["rev"]
    rev3 = db.put(f"/a?rev={rev2}", {"v": 3}).get_json()["rev"]
    rev4 = db.put("/a", {"v": 4}, headers={"If-Match": f'"{rev3}"'}).get_json()["rev"]
    assert db.put("/a", {"v": 5, "_rev": rev3}).status_code == 409
    assert db.put(f"/a?rev={rev4}", {"_rev": rev3}).status_code == 400

    assert db.get(f"/a?rev={rev2}").get_json()["v"] == 2
    revs = db.get("/a?revs=true").get_json()["_revisions"]
    assert revs["start"] == 4 and len(revs["ids"]) == 4
    info = db.get("/a?revs_info=true").get_json()["_revs_info"]
    assert [i["rev"] for i in info][0] == rev4 and all(i["status"] == "available" for i in info)

    deleted = db.delete(f"/a?rev={rev4}")
    assert deleted.status_code == 200
    rev5 = deleted.get_json()["rev"]
    assert deleted.get_json() == {"ok": True, "id": "a", "rev": rev5}
    assert rev5.startswith("5-")
    gone = db.get("/a")
    assert gone.status_code == 404
    assert gone.get_json() == {"error": "not_found", "reason": "deleted"}
    assert db.get(f"/a?rev={rev5}").get_json() == {"_id": "a", "_rev": rev5, "_deleted": True}
    assert db.delete(f"/a?rev={rev5}").status_code == 404


def test_delete_with_if_match(db):
    rev = db.put("/b", {"v": 1}).get_json()["rev"]
    assert db.delete("/b").status_code == 409
    assert db.delete("/b", headers={"If-Match": f'"{rev}"'}).status_code == 200
    assert db.delete("/missing").status_code == 404


def test_recreate_after_delete(db):
    rev = db.put("/c", {"v": 1}).get_json()["rev"]
    db.delete(f"/c?rev={rev}")
    again = db.put("/c", {"v": 2})
    assert again.status_code == 201 and again.get_json()["rev"].startswith("3-")


def test_chinese_ids_and_bodies(db):
    doc_id = "案件:441521:甲-001"
    body = {"申请人": "李四", "事项": "低保申请"}
    response = db.put("/" + quote(doc_id), body)
    assert response.status_code == 201 and response.get_json()["id"] == doc_id
    got = db.get("/" + quote(doc_id))
    assert "李四".encode("utf-8") in got.data  # not \\u-escaped
    assert got.get_json()["申请人"] == "李四"
    rows = db.get("/_all_docs?include_docs=true").get_json()["rows"]
    assert rows[0]["id"] == doc_id and rows[0]["doc"]["事项"] == "低保申请"
    assert db.changes()["results"][0]["id"] == doc_id


def test_design_ids_may_hold_slash_others_may_not(db):
    assert db.put("/_design/app", {"views": {}}).status_code == 201
    assert db.get("/_design/app").get_json()["_id"] == "_design/app"
    assert db.get("/a/b").status_code == 404
    assert db.put("/a/b", {"v": 1}).status_code == 400
    assert db.put("/_bad", {"v": 1}).get_json()["error"] == "illegal_docid"


def test_put_new_edits_false(db):
    response = db.put("/r?new_edits=false", {"_rev": "3-abc", "v": 1})
    assert response.status_code == 201 and response.get_json()["rev"] == "3-abc"
    assert db.get("/r").get_json()["_rev"] == "3-abc"


def test_invalid_json_changes_nothing(db, store):
    for data in (b'{"v": 1', b'{"v": "\xff\xfe"}', b'{"v": NaN}'):
        response = db.put("/x", data=data, headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert response.get_json() == {"error": "bad_request", "reason": "invalid UTF-8 JSON"}
    assert store.update_seq() == 0


def test_document_too_large(tmp_path):
    app = make_app(tmp_path, MAX_DOCUMENT_SIZE=1000)
    add_account(app, *REPLICATOR)
    db = Couch(app.test_client(), basic_auth(*REPLICATOR))
    response = db.put("/big", {"v": "x" * 2000})
    assert response.status_code == 413
    assert response.get_json()["error"] == "document_too_large"
    batch = db.post("/_bulk_docs", {"docs": [{"_id": "big", "v": "x" * 2000}]}).get_json()
    assert batch[0]["error"] == "document_too_large"
    assert app.extensions["store"].update_seq() == 0


def test_request_too_large(tmp_path):
    app = make_app(tmp_path, MAX_REQUEST_SIZE=10000)
    add_account(app, *REPLICATOR)
    db = Couch(app.test_client(), basic_auth(*REPLICATOR))
    docs = [{"_id": f"d{i}", "v": "x" * 100} for i in range(200)]
    response = db.post("/_bulk_docs", {"docs": docs})
    assert response.status_code == 413
    assert response.get_json()["error"] == "too_large"
    assert app.extensions["store"].update_seq() == 0


# -- conflicts and open_revs -----------------------------------------------------------------

def test_conflicts_and_deleted_conflicts(db):
    replicate(db, "k", (2, ["b1", "a"]), (2, ["c1", "a"]), (3, ["d1", "e1", "a"]),
              deleted={"d1"})
    doc = db.get("/k?conflicts=true&deleted_conflicts=true").get_json()
    assert doc["_rev"] == "2-c1"
    assert doc["_conflicts"] == ["2-b1"]
    assert doc["_deleted_conflicts"] == ["3-d1"]
    meta = db.get("/k?meta=true").get_json()
    assert meta["_conflicts"] == ["2-b1"] and "_revs_info" in meta
    assert db.get("/k?conflicts=banana").get_json()["error"] == "query_parse_error"
    # Resolve: delete the losing branch.
    assert db.delete("/k?rev=2-b1").status_code == 200
    assert "_conflicts" not in db.get("/k?conflicts=true").get_json()


def test_open_revs_json(db):
    replicate(db, "k", (2, ["b1", "a"]), (2, ["c1", "a"]))
    body = db.get("/k?open_revs=all", headers=JSON).get_json()
    assert [entry["ok"]["_rev"] for entry in body] == ["2-b1", "2-c1"]
    wanted = quote(json.dumps(["2-b1", "9-zz"]))
    body = db.get(f"/k?open_revs={wanted}&revs=true", headers=JSON).get_json()
    assert body[0]["ok"]["_revisions"] == {"start": 2, "ids": ["b1", "a"]}
    assert body[1] == {"missing": "9-zz"}
    latest = db.get(f"/k?open_revs={quote(json.dumps(['1-a']))}&latest=true").get_json()
    assert sorted(entry["ok"]["_rev"] for entry in latest) == ["2-b1", "2-c1"]
    assert db.get("/nope?open_revs=all").status_code == 404


def test_open_revs_multipart(db):
    replicate(db, "多", (2, ["b1", "a"]), (2, ["c1", "a"]))
    wanted = quote(json.dumps(["2-b1", "2-c1", "3-zz"]))
    response = db.get(f"/{quote('多')}?open_revs={wanted}&revs=true",
                      headers={"Accept": "multipart/mixed"})
    assert response.status_code == 200 and response.mimetype == "multipart/mixed"
    raw = b"Content-Type: " + response.headers["Content-Type"].encode() + b"\r\n\r\n"
    message = email.message_from_bytes(raw + response.data)
    assert message.is_multipart()
    parts = message.get_payload()
    assert [part.get_content_type() for part in parts] == ["application/json"] * 3
    docs = [json.loads(part.get_payload(decode=True).decode("utf-8")) for part in parts]
    assert [doc.get("_rev") for doc in docs[:2]] == ["2-b1", "2-c1"]
    assert docs[0]["_id"] == "多" and docs[0]["_revisions"]["ids"] == ["b1", "a"]
    assert docs[2] == {"missing": "3-zz"}
    assert parts[2].get_param("error") == "true"


# -- changes ---------------------------------------------------------------------------------

def test_changes_feed(db):
    for doc_id in ("a", "b", "c"):
        db.put("/" + doc_id, {"v": doc_id})
    rev = db.get("/a").get_json()["_rev"]
    db.delete(f"/a?rev={rev}")
    db.put("/_local/ck", {"last_seq": 1})
    feed = db.changes()
    assert [row["id"] for row in feed["results"]] == ["b", "c", "a"]
    assert feed["results"][-1]["deleted"] is True
    assert feed["last_seq"] == 4 and feed["pending"] == 0
    assert db.changes("?since=2")["results"][0]["id"] == "c"
    assert [r["id"] for r in db.changes("?descending=true")["results"]] == ["a", "c", "b"]
    limited = db.changes("?limit=1")
    assert len(limited["results"]) == 1 and limited["last_seq"] == 2
    assert limited["pending"] == 2
    assert len(db.changes("?limit=0")["results"]) == 1
    docs = db.changes("?include_docs=true")["results"]
    assert docs[0]["doc"] == {"_id": "b", "_rev": docs[0]["changes"][0]["rev"], "v": "b"}
    now = db.changes("?since=now")
    assert now == {"results": [], "last_seq": 4, "pending": 0}
    assert db.get("/_changes?since=-1").status_code == 400
    assert db.get("/_changes?limit=x").status_code == 400


def test_changes_style_all_docs_and_conflicts(db):
    replicate(db, "k", (2, ["b1", "a"]), (2, ["c1", "a"]))
    main = db.changes()["results"][0]
    assert main["changes"] == [{"rev": "2-c1"}]
    everything = db.changes("?style=all_docs")["results"][0]
    assert everything["changes"] == [{"rev": "2-b1"}, {"rev": "2-c1"}]
    doc = db.changes("?include_docs=true&conflicts=true")["results"][0]["doc"]
    assert doc["_conflicts"] == ["2-b1"]


def test_changes_doc_ids_filter(db):
    for doc_id in ("a", "b", "c"):
        db.put("/" + doc_id, {})
    ids = quote(json.dumps(["c", "a"]))
    feed = db.changes(f"?filter=_doc_ids&doc_ids={ids}")
    assert [row["id"] for row in feed["results"]] == ["a", "c"]
    posted = db.post("/_changes?filter=_doc_ids", {"doc_ids": ["b"]}).get_json()
    assert [row["id"] for row in posted["results"]] == ["b"]
    assert db.post("/_changes?filter=_doc_ids", {"doc_ids": "b"}).status_code == 400
    assert db.get("/_changes?filter=app/by_type").status_code == 404


def _write_later(store, delay, doc_id):
    def write():
        time.sleep(delay)
        store.put({"_id": doc_id, "v": 1})
        store.close()

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_longpoll_returns_on_write_from_another_thread(db, store):
    db.put("/a", {})
    thread = _write_later(store, 0.3, "b")
    started = time.monotonic()
    feed = db.changes("?feed=longpoll&since=now&timeout=10000")
    thread.join()
    assert time.monotonic() - started < 5
    assert [row["id"] for row in feed["results"]] == ["b"]
    assert feed["last_seq"] == 2


def test_longpoll_returns_at_once_when_changes_exist(db):
    db.put("/a", {})
    feed = db.changes("?feed=longpoll&since=0&timeout=10000")
    assert [row["id"] for row in feed["results"]] == ["a"]


def test_longpoll_times_out_empty(db):
    db.put("/a", {})
    started = time.monotonic()
    feed = db.changes("?feed=longpoll&since=1&timeout=300")
    assert 0.25 <= time.monotonic() - started < 3
    assert feed == {"results": [], "last_seq": 1, "pending": 0}


def test_longpoll_heartbeat_and_cap(tmp_path):
    app = make_app(tmp_path, LONGPOLL_MAX_TIMEOUT=0.5)
    add_account(app, *REPLICATOR)
    db = Couch(app.test_client(), basic_auth(*REPLICATOR))
    started = time.monotonic()
    response = db.get("/_changes?feed=longpoll&since=now&timeout=60000&heartbeat=100")
    assert time.monotonic() - started < 3  # capped by LONGPOLL_MAX_TIMEOUT
    text = response.get_data(as_text=True)
    assert text.startswith("\n\n")
    assert json.loads(text)["results"] == []


def test_longpoll_waits_past_filtered_changes(db, store):
    ids = quote(json.dumps(["wanted"]))
    writer = threading.Thread(target=lambda: (
        time.sleep(0.2), store.put({"_id": "other"}), time.sleep(0.2),
        store.put({"_id": "wanted"}), store.close()))
    writer.start()
    feed = db.changes(f"?feed=longpoll&since=0&timeout=5000&filter=_doc_ids&doc_ids={ids}")
    writer.join()
    assert [row["id"] for row in feed["results"]] == ["wanted"]


def test_continuous_feed(db):
    db.put("/a", {})
    db.put("/b", {})
    response = db.get("/_changes?feed=continuous&timeout=200")
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines() if line]
    assert [line.get("id") for line in lines[:2]] == ["a", "b"]
    assert lines[-1] == {"last_seq": 2, "pending": 0}
    assert db.get("/_changes?feed=banana").status_code == 400


def test_local_docs(db):
    created = db.put("/_local/sync/441521", {"last_seq": 7, "历史": []})
    assert created.status_code == 201
    assert created.get_json() == {"ok": True, "id": "_local/sync/441521", "rev": "0-1"}
    doc = db.get("/_local/sync/441521").get_json()
    assert doc["last_seq"] == 7 and doc["_rev"] == "0-1"
    assert db.put("/_local/sync/441521", {"_rev": "0-1", "last_seq": 8}).get_json()["rev"] == "0-2"
    assert db.changes()["results"] == []
    assert db.get("/_all_docs").get_json()["rows"] == []
    assert db.get("").get_json()["update_seq"] == 0
    assert db.delete("/_local/sync/441521").status_code == 200
    assert db.get("/_local/sync/441521").status_code == 404
    assert db.delete("/_local/sync/441521").status_code == 404


def test_each_caller_has_its_own_local_docs(app, client, db, store):
    add_account(app, "tablet", "tablet-pw-1", scope="441521101001")
    tablet = Couch(client, basic_auth("tablet", "tablet-pw-1"))
    assert db.put("/_local/ck", {"seq": 1}).status_code == 201
    assert tablet.get("/_local/ck").status_code == 404
    assert tablet.delete("/_local/ck").status_code == 404
    assert tablet.put("/_local/ck", {"_rev": "0-1", "seq": 99}).get_json()["rev"] == "0-2"
    assert tablet.get("/_local/ck").get_json() == {"_id": "_local/ck", "_rev": "0-2", "seq": 99}
    assert db.get("/_local/ck").get_json() == {"_id": "_local/ck", "_rev": "0-1", "seq": 1}
    # The node's own (syncd's side of its checkpoints) are the node's.
    assert store.put_local("ck", {"seq": 7}) == "0-1"
    assert store.get_local("ck")["seq"] == 7
    assert store.get_local("ck", owner="account:replicator")["seq"] == 1
    assert tablet.delete("/_local/ck").status_code == 200
    assert db.get("/_local/ck").get_json()["seq"] == 1 and store.get_local("ck")["seq"] == 7


def test_the_operator_still_reads_local_docs_of_a_store_from_before_owners(tmp_path):
    """An older store's _local documents become the node's own: its syncd resumes, a
    full-scope account (the operator) reads them when it has none of its own, and no
    other node or scoped account sees them."""
    import sqlite3

    conn = sqlite3.connect(tmp_path / "store.sqlite")
    conn.execute("CREATE TABLE local_doc (id TEXT PRIMARY KEY, rev INTEGER NOT NULL, "
                 "body TEXT NOT NULL)")
    conn.execute("INSERT INTO local_doc VALUES ('old-ck', 4, '{\"source_last_seq\": 12}')")
    conn.commit()
    conn.close()
    app = make_app(tmp_path)
    add_account(app, *REPLICATOR)
    add_account(app, "tablet", "tablet-pw-1", scope="441521101001")
    client = app.test_client()
    store = app.extensions["store"]
    assert store.get_local("old-ck") == {"_id": "_local/old-ck", "_rev": "0-4",
                                         "source_last_seq": 12}
    full = Couch(client, basic_auth(*REPLICATOR))
    assert full.get("/_local/old-ck").get_json()["source_last_seq"] == 12
    tablet = Couch(client, basic_auth("tablet", "tablet-pw-1"))
    assert tablet.get("/_local/old-ck").status_code == 404
    # Written back, it is the account's own from then on; the node keeps its own.
    assert full.put("/_local/old-ck", {"_rev": "0-4", "source_last_seq": 20}).status_code == 201
    assert full.get("/_local/old-ck").get_json()["source_last_seq"] == 20
    assert store.get_local("old-ck")["source_last_seq"] == 12
    store.close()
    # Opening it again (serve and syncd both do) migrates nothing twice.
    again = make_app(tmp_path)
    assert again.extensions["store"].get_local("old-ck")["source_last_seq"] == 12
    again.extensions["store"].close()


def test_bad_input_is_a_couchdb_400(db, store):
    before = store.update_seq()
    huge = str(10 ** 25)
    for path in (f"/_changes?since={huge}", f"/_changes?limit={huge}",
                 f"/_all_docs?limit={huge}", f"/_all_docs?skip={huge}",
                 "/_changes?since=%C2%B2", f"/_changes?since={'9' * 5000}",
                 "/_all_docs?keys=" + quote('["\\ud800"]'),
                 "/_all_docs?startkey=" + quote('"\\udc00"')):
        response = db.get(path)
        assert response.status_code == 400, (path, response.get_data(as_text=True))
        assert response.get_json()["error"] in ("bad_request", "query_parse_error")
    lone = '"\\ud800"'
    for method, path, body in (
            ("POST", "/_bulk_docs", '{"docs": [{"_id": %s}]}' % lone),
            ("POST", "/_all_docs", '{"keys": [%s]}' % lone),
            ("POST", "/_bulk_get", '{"docs": [{"id": %s}]}' % lone),
            ("POST", "/_revs_diff", '{%s: ["1-abc"]}' % lone),
            ("PUT", "/_local/ck", '{"v": [%s]}' % lone),
            ("PUT", "/doc", '{"%s": 1}' % "\\udfff"),
            ("PUT", "/_local/ck", '{"_rev": "0-%s"}' % ("9" * 25))):
        response = db.request(method, path, data=body.encode(),
                              headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (path, body, response.get_data(as_text=True))
        answer = response.get_json()
        assert answer["error"] == "bad_request" and set(answer) == {"error", "reason"}
    # A surrogate pair is a character like any other.
    assert db.request("PUT", "/emoji", data='{"v": "\\ud83d\\ude00"}'.encode(),
                      headers={"Content-Type": "application/json"}).status_code == 201
    assert db.get("/emoji").get_json()["v"] == "\U0001f600"
    assert store.update_seq() == before + 1


def test_a_path_that_is_no_utf8_is_no_document_id(db, store):
    assert db.put("/%ED%A0%80", {"v": 1}).get_json() == {
        "error": "illegal_docid", "reason": "Document id must be valid UTF-8"}
    assert db.put("/_local/%FF", {"v": 1}).status_code == 400
    assert db.get("/%ED%A0%80").status_code == 404
    assert db.put("/" + quote("\ufffd"), {"v": 1}).status_code == 201  # the real character
    assert db.put("/a%0Ab", {"v": 1}).get_json()["id"] == "a\nb"
    assert db.get("/a%0Ab").get_json()["_id"] == "a\nb"
    assert store.update_seq() == 2


def test_a_credential_that_is_no_ascii_is_refused(client):
    response = client.get("/db", headers={"Authorization": "Basic \xe9=="})
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"


# -- bulk endpoints --------------------------------------------------------------------------

def test_bulk_docs(db):
    rev_a = db.put("/a", {"v": 1}).get_json()["rev"]
    response = db.post("/_bulk_docs", {"docs": [
        {"_id": "a", "_rev": rev_a, "v": 2}, {"_id": "b"}, {"_id": "a", "v": 3},
        {"_id": "_x"}]})
    assert response.status_code == 201
    results = response.get_json()
    assert results[0]["ok"] and results[0]["rev"].startswith("2-")
    assert results[1]["ok"] and results[1]["id"] == "b"
    assert results[2] == {"id": "a", "error": "conflict", "reason": "Document update conflict."}
    assert results[3]["error"] == "illegal_docid"
    replicated = db.post("/_bulk_docs", {"new_edits": False, "docs": [
        {"_id": "c", "_rev": "1-aa"}, {"_id": "c", "_rev": "1-aa"}]})
    assert replicated.status_code == 201 and replicated.get_json() == []
    assert db.post("/_bulk_docs", data=b"{}", headers={"Content-Type": "text/plain"}
                   ).status_code == 415


def test_revs_diff(db):
    replicate(db, "k", (2, ["b1", "a"]))
    response = db.post("/_revs_diff", {"k": ["2-b1", "3-c1"], "new": ["1-x"]})
    assert response.status_code == 200
    assert response.get_json() == {
        "k": {"missing": ["3-c1"], "possible_ancestors": ["2-b1"]},
        "new": {"missing": ["1-x"]}}
    assert db.post("/_revs_diff", {"k": ["2-b1"]}).get_json() == {}


def test_bulk_get(db):
    replicate(db, "k", (2, ["b1", "a"]), (2, ["c1", "a"]))
    body = {"docs": [{"id": "k", "rev": "2-b1"}, {"id": "k"}, {"id": "k", "rev": "9-zz"},
                     {"id": "nope"}, {"id": "k", "rev": "1-a"}, {"rev": "1-a"}]}
    results = db.post("/_bulk_get?revs=true", body).get_json()["results"]
    assert results[0]["id"] == "k"
    first = results[0]["docs"][0]["ok"]
    assert first["_rev"] == "2-b1" and first["_revisions"] == {"start": 2, "ids": ["b1", "a"]}
    assert results[1]["docs"][0]["ok"]["_rev"] == "2-c1"
    assert results[2]["docs"][0] == {"error": {"id": "k", "rev": "9-zz", "error": "not_found",
                                               "reason": "missing"}}
    assert results[3] == {"id": "nope", "docs": [{"error": {
        "id": "nope", "rev": "undefined", "error": "not_found", "reason": "missing"}}]}
    assert results[4]["docs"][0]["error"]["rev"] == "1-a"  # body not kept: missing
    assert results[5]["docs"][0]["error"]["error"] == "bad_request"
    latest = db.post("/_bulk_get?latest=true", {"docs": [{"id": "k", "rev": "1-a"}]})
    revs = sorted(doc["ok"]["_rev"] for doc in latest.get_json()["results"][0]["docs"])
    assert revs == ["2-b1", "2-c1"]
    assert db.post("/_bulk_get", {}).status_code == 400


def test_all_docs(db):
    for doc_id in ("a", "b", "c", "d"):
        db.put("/" + doc_id, {"v": doc_id})
    rev_b = db.get("/b").get_json()["_rev"]
    db.delete(f"/b?rev={rev_b}")

    def ids(query="", method="GET", body=None):
        response = db.request(method, "/_all_docs" + query, body)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    plain = ids()
    assert plain["total_rows"] == 3 and plain["offset"] == 0
    assert [r["id"] for r in plain["rows"]] == ["a", "c", "d"]
    assert plain["rows"][0]["value"]["rev"].startswith("1-")
    assert [r["id"] for r in ids("?descending=true")["rows"]] == ["d", "c", "a"]
    assert [r["id"] for r in ids("?limit=1&skip=1")["rows"]] == ["c"]
    assert [r["id"] for r in ids('?startkey="b"&endkey="d"')["rows"]] == ["c", "d"]
    exclusive = ids('?start_key="b"&end_key="d"&inclusive_end=false')
    assert [r["id"] for r in exclusive["rows"]] == ["c"]
    assert [r["id"] for r in ids('?key="c"')["rows"]] == ["c"]
    assert [r["id"] for r in ids('?descending=true&startkey="c"')["rows"]] == ["c", "a"]
    assert ids('?include_docs=true&key="a"')["rows"][0]["doc"]["v"] == "a"
    keyed = ids("", "POST", {"keys": ["d", "b", "zz"]})["rows"]
    assert keyed[0]["id"] == "d"
    assert keyed[1]["value"]["deleted"] is True
    assert keyed[2] == {"key": "zz", "error": "not_found"}
    assert [r["key"] for r in ids("?keys=" + quote(json.dumps(["c", "a"])))["rows"]] == ["c", "a"]
    assert ids("?startkey=1")["rows"] and not ids("?startkey=[1]")["rows"]


def test_all_docs_conflicts(db):
    replicate(db, "k", (2, ["b1", "a"]), (2, ["c1", "a"]))
    row = db.get("/_all_docs?include_docs=true&conflicts=true").get_json()["rows"][0]
    assert row["doc"]["_conflicts"] == ["2-b1"]


# -- authentication and the policy seam ------------------------------------------------------

def test_unauthorized(client, app):
    for headers in ({}, basic_auth("replicator", "wrong"), basic_auth("nobody", "x"),
                    {"Authorization": "Basic !!!"}):
        response = client.get("/db", headers=headers)
        assert response.status_code == 401
        assert response.get_json() == {"error": "unauthorized",
                                       "reason": "Name or password is incorrect."}
        assert response.headers["WWW-Authenticate"] == 'Basic realm="tongban"'
    browser = client.get("/db/_changes", headers={"Origin": "http://tablet.local"})
    assert browser.status_code == 401 and "WWW-Authenticate" not in browser.headers
    add_account(app, "clerk", "pw", roles=("clerk",))
    assert client.get("/db", headers=basic_auth("clerk", "pw")).status_code == 401


def test_auth_cache_skips_scrypt(client, app, monkeypatch):
    calls = []
    real = models.check_password

    def counting(stored, password):
        calls.append(password)
        return real(stored, password)

    monkeypatch.setattr(models, "check_password", counting)
    headers = basic_auth(*REPLICATOR)
    assert client.get("/db", headers=headers).status_code == 200
    assert client.get("/db", headers=headers).status_code == 200
    assert len(calls) == 1
    assert client.get("/db", headers=basic_auth("replicator", "wrong")).status_code == 401
    assert len(calls) == 2
    # A new password invalidates the remembered check of the old one.
    with app.app_context():
        models.Account.update(password_hash=models.hash_password("new-secret")).where(
            models.Account.username == "replicator").execute()
    assert client.get("/db", headers=headers).status_code == 401
    assert client.get("/db", headers=basic_auth("replicator", "new-secret")).status_code == 200


def test_credential_cache_expires_and_is_bounded():
    now = [0.0]
    cache = auth.CredentialCache(max_size=2, ttl=10, clock=lambda: now[0])
    cache.remember("u", "p", "h1")
    assert cache.hit("u", "p", "h1") and not cache.hit("u", "q", "h1")
    assert not cache.hit("u", "p", "h2")
    cache.remember("u", "p", "h1")
    now[0] = 11
    assert not cache.hit("u", "p", "h1")
    for name in ("a", "b", "c"):
        cache.remember(name, "p", "h")
    assert not cache.hit("a", "p", "h") and cache.hit("c", "p", "h")


class HiddenPolicy(auth.ReplicatorPolicy):
    """Hides ids starting with ``secret`` and refuses writes to ids starting with ``ro``."""

    def can_read(self, principal, doc_id):
        return not doc_id.startswith("secret")

    def check_write(self, principal, doc_id, doc, state):
        if doc_id.removeprefix("_local/").startswith("ro"):
            raise errors.Forbidden("read-only document")


def test_policy_filters_every_read_and_write(app, db, store):
    store.put({"_id": "secret1", "v": 1})
    store.put({"_id": "open1", "v": 1})
    store.put({"_id": "secret2", "v": 1})
    store.put({"_id": "open2", "v": 1})
    app.extensions["couch_policy"] = HiddenPolicy()
    assert db.get("/secret1").status_code == 404
    assert db.get("/secret1?open_revs=all").status_code == 404
    assert [r["id"] for r in db.changes()["results"]] == ["open1", "open2"]
    assert db.changes()["last_seq"] == 4
    assert [r["id"] for r in db.get("/_all_docs").get_json()["rows"]] == ["open1", "open2"]
    assert [r["id"] for r in db.get("/_all_docs?limit=1&skip=1").get_json()["rows"]] == ["open2"]
    keyed = db.post("/_all_docs", {"keys": ["secret1", "open1"]}).get_json()["rows"]
    assert keyed[0] == {"key": "secret1", "error": "not_found"}
    got = db.post("/_bulk_get", {"docs": [{"id": "secret1"}]}).get_json()
    assert got["results"][0]["docs"][0]["error"]["error"] == "not_found"
    rev = store.get("secret1")["_rev"]
    assert db.post("/_revs_diff", {"secret1": [rev]}).get_json() == {
        "secret1": {"missing": [rev]}}
    assert db.put("/ro1", {"v": 1}).status_code == 403
    assert db.post("/_bulk_docs", {"docs": [{"_id": "ro2"}]}).get_json()[0]["error"] == \
        "forbidden"
    assert db.put("/_local/ro", {}).status_code == 403
    assert store.update_seq() == 4
