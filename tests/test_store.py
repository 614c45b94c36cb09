"""The document store on a real SQLite file: CouchDB semantics, projections, bad input."""

import pytest

from shared import errors
from shared.store.projections import TypeIndex, default_projections
from shared.store.store import Store


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store.sqlite")
    for projection in default_projections():
        store.add_projection(projection)
    yield store
    store.close()


def snapshot(store):
    """Everything a reader could see, to prove that a refused write changed nothing."""
    rows, last = store.changes(0, style="all_docs", include_docs=True)
    return store.info()["update_seq"], store.doc_count(), rows, last


def test_create_update_delete_and_recreate(store):
    rev1 = store.put({"_id": "a", "v": 1})
    assert rev1.startswith("1-") and len(rev1.split("-")[1]) == 32
    with pytest.raises(errors.Conflict):
        store.put({"_id": "a", "v": 2})
    with pytest.raises(errors.Conflict):
        store.put({"_id": "a", "_rev": "1-" + "0" * 32, "v": 2})
    rev2 = store.put({"_id": "a", "_rev": rev1, "v": 2})
    assert rev2.startswith("2-")
    assert store.get("a") == {"_id": "a", "_rev": rev2, "v": 2}
    assert store.get("a", rev=rev1)["v"] == 1  # old bodies stay readable until stemmed
    rev3 = store.put({"_id": "a", "_rev": rev2, "_deleted": True})
    with pytest.raises(errors.NotFound) as caught:
        store.get("a")
    assert caught.value.reason == "deleted"
    assert store.get("a", rev=rev3)["_deleted"] is True
    rows, _ = store.changes(0)
    assert rows == [{"seq": 3, "id": "a", "changes": [{"rev": rev3}], "deleted": True}]
    # Creating again without a rev extends the deleted branch, as in CouchDB.
    rev4 = store.put({"_id": "a", "v": 4})
    assert rev4.startswith("4-")
    assert store.info()["doc_count"] == 1 and store.info()["doc_del_count"] == 0


def test_rev_ids_are_deterministic_across_stores(tmp_path):
    one, two = Store(tmp_path / "1.sqlite"), Store(tmp_path / "2.sqlite")
    doc = {"_id": "x", "name": "城乡居民养老保险", "n": [1, 2]}
    assert one.put(dict(doc)) == two.put(dict(doc))
    assert one.put({"_id": "y", "v": 1}) != one.put({"_id": "z", "v": 2})


def test_replicated_conflict_picks_the_same_winner_everywhere(store):
    store.bulk_docs([
        {"_id": "c", "_rev": "2-aaaa", "_revisions": {"start": 2, "ids": ["aaaa", "root"]}, "v": "a"},
        {"_id": "c", "_rev": "2-bbbb", "_revisions": {"start": 2, "ids": ["bbbb", "root"]}, "v": "b"},
        {"_id": "c", "_rev": "3-0000", "_revisions": {"start": 3, "ids": ["0000", "bbbb"]},
         "_deleted": True},
    ], new_edits=False)
    doc = store.get("c", conflicts=True, deleted_conflicts=True)
    # The deleted 3-0000 loses to live leaves; between live leaves the hash decides.
    assert doc["_rev"] == "2-aaaa"
    assert "_conflicts" not in doc and doc["_deleted_conflicts"] == ["3-0000"]
    rows, _ = store.changes(0, style="all_docs")
    assert [c["rev"] for c in rows[0]["changes"]] == ["2-aaaa", "3-0000"]
    # Replaying the same revisions is a no-op: no new sequence.
    seq = store.update_seq()
    assert store.bulk_docs([{"_id": "c", "_rev": "2-aaaa", "v": "a"}], new_edits=False) == []
    assert store.update_seq() == seq


def test_changes_feed_since_limit_doc_ids_descending(store):
    for i in range(5):
        store.put({"_id": f"d{i}", "i": i})
    store.put({"_id": "d1", "_rev": store.get("d1")["_rev"], "i": 10})
    rows, last = store.changes(0)
    assert [r["id"] for r in rows] == ["d0", "d2", "d3", "d4", "d1"]  # each doc once, latest seq
    assert last == 6
    rows, last = store.changes(3, limit=2)
    assert [r["seq"] for r in rows] == [4, 5] and last == 5  # since is exclusive
    rows, _ = store.changes(0, doc_ids=["d3", "nope"])
    assert [r["id"] for r in rows] == ["d3"]
    rows, _ = store.changes(descending=True, limit=1)
    assert rows[0]["id"] == "d1"
    rows, last = store.changes(6)
    assert rows == [] and last == 6
    rows, last = store.changes(2, row_filter=lambda doc_id: doc_id == "d0")
    assert rows == [] and last == 6  # a filtered feed still reports how far it read


def test_local_docs_never_replicate(store):
    assert store.put_local("ck", {"last_seq": 1}) == "0-1"
    assert store.put_local("ck", {"_rev": "0-1", "last_seq": 2}) == "0-2"
    assert store.get_local("ck") == {"_id": "_local/ck", "_rev": "0-2", "last_seq": 2}
    assert store.changes(0)[0] == [] and store.update_seq() == 0
    assert store.doc_count() == 0
    store.delete_local("ck")
    with pytest.raises(errors.NotFound):
        store.get_local("ck")


@pytest.mark.parametrize("doc, error", [
    ({"_id": "_bad", "v": 1}, errors.InvalidDocId),
    ({"_id": "", "v": 1}, errors.InvalidDocId),
    ({"_id": 5, "v": 1}, errors.InvalidDocId),
    ({"_id": "ok", "_foo": 1}, errors.DocValidation),
    ({"_id": "ok", "_rev": "banana"}, errors.BadRequest),
    ({"_id": "big", "v": "x" * 2048}, errors.DocumentTooLarge),
])
def test_bad_documents_are_refused_and_change_nothing(tmp_path, doc, error):
    store = Store(tmp_path / "s.sqlite", max_document_size=1024)
    store.put({"_id": "keep", "v": 1})
    before = snapshot(store)
    with pytest.raises(error):
        store.put(doc)
    assert snapshot(store) == before


def test_replicated_batch_without_rev_is_refused_whole(store):
    with pytest.raises(errors.BadRequest):
        store.bulk_docs([{"_id": "a", "_rev": "1-x"}, {"_id": "b"}], new_edits=False)
    assert store.update_seq() == 0 and store.doc_count() == 0


def test_stemming_keeps_revs_limit_revisions(tmp_path):
    store = Store(tmp_path / "s.sqlite", revs_limit=3)
    rev = store.put({"_id": "s", "n": 0})
    first = rev
    for n in range(1, 10):
        rev = store.put({"_id": "s", "_rev": rev, "n": n})
    doc = store.get("s", revs=True)
    assert doc["_revisions"]["start"] == 10 and len(doc["_revisions"]["ids"]) == 3
    with pytest.raises(errors.NotFound):
        store.get("s", rev=first)  # stemmed away with its body
    # A stemmed rev is unknown again; no leaf is older than it, so no possible ancestor.
    assert store.revs_diff({"s": [first]}) == {"s": {"missing": [first]}}


def test_all_docs_ranges_and_keys(store):
    for doc_id in ["b", "a", "c", "事项-养老金"]:
        store.put({"_id": doc_id})
    store.put({"_id": "gone", "_rev": store.put({"_id": "gone"}), "_deleted": True})
    total, rows = store.all_docs()
    assert total == 4 and [r["id"] for r in rows] == ["a", "b", "c", "事项-养老金"]
    _, rows = store.all_docs(startkey="b", endkey="c", inclusive_end=False)
    assert [r["id"] for r in rows] == ["b"]
    _, rows = store.all_docs(descending=True, limit=2)
    assert [r["id"] for r in rows] == ["事项-养老金", "c"]
    _, rows = store.all_docs(keys=["c", "gone", "nope"], include_docs=True)
    assert rows[0]["doc"]["_id"] == "c"
    assert rows[1]["value"]["deleted"] is True and rows[1]["doc"] is None
    assert rows[2] == {"key": "nope", "error": "not_found"}


def test_open_revs_and_latest(store):
    rev1 = store.put({"_id": "o", "v": 1})
    rev2 = store.put({"_id": "o", "_rev": rev1, "v": 2})
    result = store.open_revs("o", [rev1, "9-zzz"], latest=True, revs=True)
    assert result[0]["ok"]["_rev"] == rev2 and result[0]["ok"]["_revisions"]["start"] == 2
    assert result[1] == {"missing": "9-zzz"}
    assert [r["ok"]["_rev"] for r in store.open_revs("o", "all")] == [rev2]
    with pytest.raises(errors.NotFound):
        store.open_revs("nope", "all")


def test_projection_follows_writes_and_reindex_rebuilds_it(store):
    store.put({"_id": "i1", "type": "item"})
    rev = store.put({"_id": "i2", "type": "item"})
    store.put({"_id": "c1", "type": "case"})
    assert TypeIndex.counts(store.db) == {"case": 1, "item": 2}
    store.put({"_id": "i2", "_rev": rev, "_deleted": True})
    assert TypeIndex.counts(store.db) == {"case": 1, "item": 1}
    store.db.execute_sql("DELETE FROM doc_type")
    assert TypeIndex.counts(store.db) == {}
    assert store.reindex() == 3  # reads every document row, deleted ones included
    assert TypeIndex.counts(store.db) == {"case": 1, "item": 1}


def test_a_failing_projection_rolls_back_the_document(store):
    class Broken:
        tables = []

        def apply(self, db, docs):
            raise RuntimeError("disk full")

        def reset(self, db):
            pass

    store.add_projection(Broken())
    with pytest.raises(RuntimeError):
        store.put({"_id": "x", "type": "item"})
    assert store.doc_count() == 0 and store.update_seq() == 0


def test_waiters_on_another_process_writes_share_one_poller(tmp_path):
    """Twenty longpolls on one store (a township's villages) are woken by a write made
    through another connection, as syncd's writes are, with one poller thread between
    them; the poller ends when nobody waits any more."""
    import threading

    path = tmp_path / "shared.sqlite"
    serving, writer = Store(path), Store(path)  # two connections: two processes' worth
    try:
        since = serving.update_seq()
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            serving.wait_for_change(since, 30.0))) for _ in range(20)]
        for thread in threads:
            thread.start()
        while serving._waiting < 20:
            threading.Event().wait(0.01)
        pollers = [t for t in threading.enumerate() if t.name.startswith("write-poll-")]
        assert len(pollers) == 1
        writer.put({"_id": "case:1", "type": "case"})
        for thread in threads:
            thread.join(10.0)
        assert results == [True] * 20
        pollers[0].join(5.0)
        assert not pollers[0].is_alive() and serving._poller is None
        # Nothing new: a waiter times out with False.
        assert serving.wait_for_change(serving.update_seq(), 0.3) is False
    finally:
        serving.close()
        writer.close()


def test_winners_reads_the_live_winning_contents_at_once(store):
    store.put({"_id": "a", "v": 1})
    rev = store.put({"_id": "b", "v": 1})
    store.put({"_id": "b", "_rev": rev, "v": 2})
    gone = store.put({"_id": "c", "v": 1})
    store.put({"_id": "c", "_rev": gone, "_deleted": True})
    # A conflict: the winner is the higher revision id, as get() says.
    store.bulk_docs([{"_id": "d", "_rev": "1-aaaa", "v": "low"},
                     {"_id": "d", "_rev": "1-ffff", "v": "high"}], new_edits=False)
    found = store.winners(["a", "b", "c", "d", "missing", *[f"x{n}" for n in range(600)]])
    assert found == {"a": {"v": 1}, "b": {"v": 2}, "d": {"v": "high"}}
    assert found["d"] == {k: v for k, v in store.get("d").items() if not k.startswith("_")}


def test_the_store_files_are_the_node_users_alone(tmp_path):
    # Sealed personal data and the audit chain: no other account on the PC reads them.
    store = Store(tmp_path / "store.sqlite")
    store.put({"_id": "a"})
    for suffix in ("", "-wal"):
        path = tmp_path / f"store.sqlite{suffix}"
        assert path.stat().st_mode & 0o777 == 0o600, path
    store.close()
