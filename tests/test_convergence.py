"""Property: random edits, deletes and replications on several stores always converge.

Whatever the order, once every store has replicated with every other, all of them hold
the same winners, the same ``_conflicts`` and ``_deleted_conflicts``, and the same
changes (each document's leaves), and a further replication writes nothing.
"""

import itertools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import errors
from shared.store.store import Store
from syncd.peers import LocalPeer
from syncd.replicator import replicate

STORES = 3
DOC_IDS = ["a", "b", "事项-1"]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("edit"), st.integers(0, STORES - 1), st.sampled_from(DOC_IDS),
                  st.integers(0, 5)),
        st.tuples(st.just("delete"), st.integers(0, STORES - 1), st.sampled_from(DOC_IDS)),
        st.tuples(st.just("replicate"), st.integers(0, STORES - 1), st.integers(0, STORES - 1)),
    ),
    min_size=1, max_size=30,
)


def apply(stores, operation):
    """Run one random operation; edits and deletes act on the store's current winner."""
    kind, index = operation[0], operation[1]
    store = stores[index]
    if kind == "replicate":
        if index != operation[2]:
            replicate(LocalPeer(store), LocalPeer(stores[operation[2]]))
        return
    doc_id = operation[2]
    try:
        current = store.get(doc_id)
    except errors.NotFound:
        current = None
    if kind == "edit":
        doc = {"_id": doc_id, "value": operation[3], "by": index}
        if current:
            doc["_rev"] = current["_rev"]
        store.put(doc)
    elif current:
        store.put({"_id": doc_id, "_rev": current["_rev"], "_deleted": True})


def visible_state(store):
    """What replication must make identical: per document winner, conflicts and leaves."""
    state = {}
    rows, _ = store.changes(0, style="all_docs")
    for row in rows:
        winner = row["changes"][0]["rev"] if len(row["changes"]) == 1 else None
        doc = store.open_revs(row["id"], "all")
        leaves = sorted((d["ok"]["_rev"], d["ok"].get("_deleted", False)) for d in doc)
        try:
            current = store.get(row["id"], conflicts=True, deleted_conflicts=True)
            winner = (current["_rev"], current.get("_conflicts"),
                      current.get("_deleted_conflicts"), current.get("value"))
        except errors.NotFound:
            winner = ("deleted", row.get("deleted"))
        state[row["id"]] = (winner, leaves)
    return state


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(operations)
def test_random_histories_converge(ops):
    with tempfile.TemporaryDirectory() as tmp:
        stores = [Store(Path(tmp) / f"s{i}.sqlite") for i in range(STORES)]
        try:
            for operation in ops:
                apply(stores, operation)
            # Full mesh, twice: every revision reaches every store.
            for _ in range(2):
                for source, target in itertools.permutations(range(STORES), 2):
                    replicate(LocalPeer(stores[source]), LocalPeer(stores[target]))
            states = [visible_state(store) for store in stores]
            assert states[0] == states[1] == states[2]
            seqs = [store.update_seq() for store in stores]
            for source, target in itertools.permutations(range(STORES), 2):
                history = replicate(LocalPeer(stores[source]), LocalPeer(stores[target]))
                assert history["docs_written"] == 0
            assert [store.update_seq() for store in stores] == seqs
        finally:
            for store in stores:
                store.close()
