"""The sync contract every replication peer keeps (STYLE rule 14).

``PeerContract`` is a base class of tests; a test module subclasses it once per peer kind
and provides three fixtures:

- ``peer``: the :class:`syncd.peers.Peer` under test (it may already hold documents:
  every test here works from the sequence it finds at its start);
- ``writer``: a :class:`Writer` making ordinary edits in the same database;
- ``other``: an empty peer to replicate into.

Sequences are treated as opaque, as the protocol requires (CouchDB's are strings).
"""

import uuid

from syncd.replicator import replicate


class Writer:
    """Ordinary edits (``new_edits`` true) in the database a peer reads."""

    def put(self, doc):
        """Create or update ``doc``; returns the new rev."""
        raise NotImplementedError

    def delete(self, doc_id, rev):
        """Delete ``doc_id`` at ``rev``; returns the tombstone's rev."""
        raise NotImplementedError


def feed_after(peer, since):
    """All rows of the feed after ``since`` (no limit) and its last_seq."""
    return peer.changes(since)


def current_seq(peer):
    """The last sequence of the peer's feed now."""
    return peer.changes(0)[1]


class PeerContract:
    """The tests every peer must pass."""

    def prefix(self):
        """A fresh id prefix, so that tests never see each other's documents."""
        return f"c{uuid.uuid4().hex[:8]}-"

    def test_info_reports_an_update_seq(self, peer):
        assert "update_seq" in peer.info()

    def test_since_is_exclusive(self, peer, writer):
        p = self.prefix()
        start = current_seq(peer)
        for name in "abc":
            writer.put({"_id": p + name, "v": name})
        rows, last = feed_after(peer, start)
        assert [row["id"] for row in rows] == [p + "a", p + "b", p + "c"]
        rows_after_a, last_again = feed_after(peer, rows[0]["seq"])
        assert [row["id"] for row in rows_after_a] == [p + "b", p + "c"]
        assert last_again == last
        assert feed_after(peer, last)[0] == []

    def test_sequences_only_grow(self, peer, writer):
        p = self.prefix()
        start = current_seq(peer)
        revs = {name: writer.put({"_id": p + name}) for name in "abc"}
        rows, before_update = feed_after(peer, start)
        writer.put({"_id": p + "a", "_rev": revs["a"], "v": 2})
        # An updated document moves to the end of the feed, after everything older.
        rows, last = feed_after(peer, start)
        assert [row["id"] for row in rows] == [p + "b", p + "c", p + "a"]
        assert last != before_update
        moved, _ = feed_after(peer, before_update)
        assert [row["id"] for row in moved] == [p + "a"]
        assert moved[0]["changes"][0]["rev"].startswith("2-")
        if all(isinstance(row["seq"], int) for row in rows):
            seqs = [row["seq"] for row in rows]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    def test_deletions_come_back_as_tombstones(self, peer, writer):
        p = self.prefix()
        rev = writer.put({"_id": p + "gone", "v": 1})
        start = current_seq(peer)
        tombstone = writer.delete(p + "gone", rev)
        rows, _ = feed_after(peer, start)
        assert len(rows) == 1
        assert rows[0]["id"] == p + "gone" and rows[0].get("deleted") is True
        assert rows[0]["changes"] == [{"rev": tombstone}]
        [entry] = peer.bulk_get([{"id": p + "gone", "rev": tombstone}])
        assert entry["ok"]["_deleted"] is True
        assert entry["ok"]["_revisions"]["start"] == 2

    def test_local_docs_never_in_changes(self, peer, writer):
        p = self.prefix()
        start = current_seq(peer)
        assert peer.get_local(p + "checkpoint") is None
        rev = peer.put_local(p + "checkpoint", {"session_id": "s1", "source_last_seq": 3})
        writer.put({"_id": p + "doc"})
        rows, _ = feed_after(peer, start)
        assert [row["id"] for row in rows] == [p + "doc"]
        stored = peer.get_local(p + "checkpoint")
        assert stored["session_id"] == "s1" and stored["_rev"] == rev
        peer.put_local(p + "checkpoint", {"_rev": rev, "session_id": "s2"})
        assert peer.get_local(p + "checkpoint")["session_id"] == "s2"
        assert all(not row["id"].startswith("_local") for row in peer.changes(0)[0])

    def test_limit_and_doc_ids(self, peer, writer):
        p = self.prefix()
        start = current_seq(peer)
        for name in "abcd":
            writer.put({"_id": p + name})
        rows, last = peer.changes(start, limit=2)
        assert [row["id"] for row in rows] == [p + "a", p + "b"]
        rows, _ = peer.changes(last, limit=2)
        assert [row["id"] for row in rows] == [p + "c", p + "d"]
        rows, _ = peer.changes(start, doc_ids=[p + "d", p + "b"])
        assert [row["id"] for row in rows] == [p + "b", p + "d"]

    def test_revs_diff_and_bulk_get(self, peer, writer):
        p = self.prefix()
        rev1 = writer.put({"_id": p + "a", "v": 1})
        rev2 = writer.put({"_id": p + "a", "_rev": rev1, "v": 2})
        unknown = "3-" + "f" * 32
        diff = peer.revs_diff({p + "a": [rev2, unknown], p + "new": ["1-" + "a" * 32]})
        assert diff[p + "a"]["missing"] == [unknown]
        assert diff[p + "new"]["missing"] == ["1-" + "a" * 32]
        assert peer.revs_diff({p + "a": [rev1, rev2]}) == {}
        results = peer.bulk_get([{"id": p + "a", "rev": rev2},
                                 {"id": p + "a", "rev": unknown}])
        ok = [entry["ok"] for entry in results if "ok" in entry]
        errors = [entry["error"] for entry in results if "error" in entry]
        assert len(ok) == 1 and ok[0]["v"] == 2 and ok[0]["_rev"] == rev2
        assert ok[0]["_revisions"] == {"start": 2, "ids": [rev2[2:], rev1[2:]]}
        assert len(errors) == 1 and errors[0]["id"] == p + "a"

    def test_bulk_docs_without_new_edits_is_idempotent(self, peer):
        p = self.prefix()
        doc = {"_id": p + "r", "_rev": "2-" + "b" * 32, "v": 1,
               "_revisions": {"start": 2, "ids": ["b" * 32, "a" * 32]}}
        assert peer.bulk_docs([doc], new_edits=False) == []
        start = current_seq(peer)
        assert peer.bulk_docs([doc], new_edits=False) == []
        assert feed_after(peer, start)[0] == []
        assert peer.revs_diff({p + "r": [doc["_rev"]]}) == {}

    def test_a_second_replication_writes_nothing(self, peer, writer, other):
        p = self.prefix()
        rev = writer.put({"_id": p + "a", "v": 1})
        writer.put({"_id": p + "b", "v": 1})
        tombstone = writer.delete(p + "a", rev)
        first = replicate(peer, other)
        assert first["docs_written"] >= 2 and first["doc_write_failures"] == 0
        target_seq = current_seq(other)
        second = replicate(peer, other)
        assert second["docs_read"] == second["docs_written"] == 0
        assert second["missing_found"] == 0
        assert current_seq(other) == target_seq
        assert other.revs_diff({p + "a": [tombstone]}) == {}
