"""Replay Apache CouchDB 3.5's answers to 40 bad requests (couchdb-api-errors.json).

The cases run in the recorded order on one node set up as the fixture says (docs ``a``
and ``b``, ``_local/ck``); each case checks status, ``error`` and (when recorded)
``reason``, and that a refused request changed nothing in the store.
"""

import json
from pathlib import Path

import pytest

from tests.conftest import REPLICATOR, add_account, basic_auth, make_app

# Recorded from Apache CouchDB 3.5 (copied from the handbook's fixtures).
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "couchdb-api-errors.json"
CASES = json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]
BIG_BODY_SIZE = 9 * 1024 * 1024


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One node with the fixture's setup: docs a and b, and _local/ck."""
    app = make_app(tmp_path_factory.mktemp("errors"))
    add_account(app, *REPLICATOR)
    client = app.test_client()
    headers = basic_auth(*REPLICATOR)
    for doc_id in ("a", "b"):
        assert client.put(f"/db/{doc_id}", json={"v": 1}, headers=headers).status_code == 201
    assert client.put("/db/_local/ck", json={"last_seq": 1}, headers=headers).status_code == 201
    yield app, client, headers
    app.extensions["store"].close()


def case_body(case):
    """The request body as bytes: latin-1 keeps the recorded raw bytes (0xFF 0xFE)."""
    if case["body"] is None:
        return None
    if case["body"].startswith("<9437193 bytes"):
        body = b'{"v": "' + b"x" * BIG_BODY_SIZE + b'"}'
        assert len(body) == 9437193
        return body
    return case["body"].encode("latin-1")


def changes_nothing(case):
    """True for cases CouchDB refuses (as a whole, or every document of a batch)."""
    return case["status"] >= 400 or case["error"] is not None


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_couchdb_error_case(node, case):
    app, client, headers = node
    store = app.extensions["store"]
    before = (store.update_seq(), store.doc_count())
    request_headers = dict(headers)
    if case["content_type"]:
        request_headers["Content-Type"] = case["content_type"]
    response = client.open("/db" + case["path"], method=case["method"],
                           data=case_body(case), headers=request_headers)
    assert response.status_code == case["status"], response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    body = response.get_json()
    if case["error"] is not None:
        # A batch answers 201 with the error inside its result list.
        entry = body[0] if isinstance(body, list) else body
        assert entry["error"] == case["error"]
        if case["reason"]:
            assert entry["reason"] == case["reason"]
    if changes_nothing(case):
        assert (store.update_seq(), store.doc_count()) == before


def test_fixture_has_forty_cases():
    assert len(CASES) == 40
