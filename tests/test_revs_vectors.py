"""Replay 240 CouchDB 3.5 revision-tree scenarios over HTTP (couchdb-revtree-vectors.json).

Each scenario writes replicated revisions with ``_bulk_docs`` (``new_edits: false``) and
compares what CouchDB answered: the document with all its meta members, the leaves of
``open_revs=all``, the winner in ``_all_docs``, ``_revs_diff`` and the ``_changes`` row
(``style=all_docs``). Doc ids are unique within a group, so one node per group (with the
group's ``revs_limit``) stands for a fresh database per scenario.
"""

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import REPLICATOR, add_account, basic_auth, make_app

# Recorded from Apache CouchDB 3.5 (copied from the handbook's fixtures).
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "couchdb-revtree-vectors.json"
GROUPS = json.loads(FIXTURE.read_text(encoding="utf-8"))["groups"]
SCENARIOS = [(index, scenario) for index, group in enumerate(GROUPS)
             for scenario in group["scenarios"]]
_NODES = {}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Nodes created on demand, one per group; closed at the end of the module."""
    yield _NODES
    for app, _, _ in _NODES.values():
        app.extensions["store"].close()
    _NODES.clear()


def node_for(nodes, tmp_path_factory, group_index):
    """The node of a group, its revs_limit set through ``PUT /db/_revs_limit``."""
    if group_index not in nodes:
        app = make_app(tmp_path_factory.mktemp(f"group{group_index}"))
        add_account(app, *REPLICATOR)
        client = app.test_client()
        headers = basic_auth(*REPLICATOR)
        limit = GROUPS[group_index]["revs_limit"]
        response = client.put("/db/_revs_limit", json=limit, headers=headers)
        assert response.status_code == 200
        assert client.get("/db/_revs_limit", headers=headers).get_json() == limit
        nodes[group_index] = (app, client, headers)
    return nodes[group_index]


def test_doc_ids_unique_within_each_group():
    for group in GROUPS:
        ids = [scenario["doc_id"] for scenario in group["scenarios"]]
        assert len(ids) == len(set(ids))


def test_vector_count():
    assert len(SCENARIOS) == 240


@pytest.mark.parametrize(
    "group_index,scenario", SCENARIOS,
    ids=[f"limit{GROUPS[g]['revs_limit']}-{s['name'].replace(' ', '')}" for g, s in SCENARIOS])
def test_revtree_vector(nodes, tmp_path_factory, group_index, scenario):
    _, client, headers = node_for(nodes, tmp_path_factory, group_index)
    doc_id, expect = scenario["doc_id"], scenario["expect"]
    for write in scenario["writes"]:
        response = client.post("/db/_bulk_docs", headers=headers,
                               json={"docs": write["docs"], "new_edits": False})
        assert response.status_code == write["status"]
        assert response.get_json() == []

    path = f"/db/{quote(doc_id)}"
    response = client.get(
        path + "?conflicts=true&deleted_conflicts=true&revs=true&revs_info=true",
        headers=headers)
    assert response.status_code == expect["get_status"]
    if expect["get_status"] == 200:
        assert response.get_json() == expect["doc"]
    else:
        assert response.get_json() == expect["get_error"]

    response = client.get(path + "?open_revs=all",
                          headers={**headers, "Accept": "application/json"})
    leaves = [{"rev": entry["ok"]["_rev"], "deleted": entry["ok"].get("_deleted", False)}
              for entry in response.get_json()]
    assert leaves == expect["leaves"]

    keys = quote(json.dumps([doc_id]))
    rows = client.get(f"/db/_all_docs?keys={keys}", headers=headers).get_json()["rows"]
    assert rows[0]["value"]["rev"] == expect["winner"]
    assert rows[0]["value"].get("deleted", False) == expect["winner_deleted"]

    response = client.post("/db/_revs_diff", headers=headers,
                           json={doc_id: expect["revs_diff"]["query"]})
    assert response.get_json() == expect["revs_diff"]["answer"]

    feed = client.get(f"/db/_changes?style=all_docs&filter=_doc_ids&doc_ids={keys}",
                      headers=headers).get_json()
    assert len(feed["results"]) == 1
    row = feed["results"][0]
    assert {"id": row["id"], "changes": [c["rev"] for c in row["changes"]],
            "deleted": row.get("deleted", False)} == expect["changes_row"]
