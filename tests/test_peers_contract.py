"""The peer contract (tests/store_contract.py) run against every kind of peer:
LocalPeer on a store file, HttpPeer on pouchdb-server, HttpPeer on a tongban node process."""

import uuid

import pytest
import requests

from shared import errors
from shared.store.store import Store
from syncd.peers import HttpPeer, LocalPeer, peer_from_string
from tests import nodeproc
from tests.store_contract import PeerContract, Writer


class StoreWriter(Writer):
    """Edits straight into a store."""

    def __init__(self, store):
        self.store = store

    def put(self, doc):
        return self.store.put(dict(doc))

    def delete(self, doc_id, rev):
        return self.store.put({"_id": doc_id, "_rev": rev, "_deleted": True})


class HttpWriter(Writer):
    """Edits over CouchDB's document API."""

    def __init__(self, db_url, auth=None):
        self.db_url = db_url
        self.session = requests.Session()
        self.session.auth = auth

    def put(self, doc):
        response = self.session.put(f"{self.db_url}/{doc['_id']}", json=doc)
        response.raise_for_status()
        return response.json()["rev"]

    def delete(self, doc_id, rev):
        response = self.session.delete(f"{self.db_url}/{doc_id}", params={"rev": rev})
        response.raise_for_status()
        return response.json()["rev"]


@pytest.fixture
def local_other(tmp_path):
    store = Store(tmp_path / "other.sqlite")
    yield LocalPeer(store)
    store.close()


class TestLocalPeer(PeerContract):
    @pytest.fixture
    def store(self, tmp_path):
        store = Store(tmp_path / "peer.sqlite")
        yield store
        store.close()

    @pytest.fixture
    def peer(self, store):
        return LocalPeer(store)

    @pytest.fixture
    def writer(self, store):
        return StoreWriter(store)

    @pytest.fixture
    def other(self, local_other):
        return local_other


@pytest.fixture(scope="module")
def pouchdb_server(tmp_path_factory):
    proc = nodeproc.start_pouchdb_server(tmp_path_factory.mktemp("pouchdb"))
    yield proc
    proc.stop()


def create_pouch_db(server):
    """A fresh database on pouchdb-server; returns its URL."""
    url = f"{server.url}/db{uuid.uuid4().hex[:10]}"
    requests.put(url).raise_for_status()
    return url


class TestPouchdbServerPeer(PeerContract):
    @pytest.fixture
    def db_url(self, pouchdb_server):
        return create_pouch_db(pouchdb_server)

    @pytest.fixture
    def peer(self, db_url):
        peer = HttpPeer(db_url)
        yield peer
        peer.close()

    @pytest.fixture
    def writer(self, db_url):
        return HttpWriter(db_url)

    @pytest.fixture
    def other(self, pouchdb_server):
        peer = HttpPeer(create_pouch_db(pouchdb_server))
        yield peer
        peer.close()

    def test_open_revs_fallback_without_bulk_get(self, peer, writer):
        p = self.prefix()
        rev = writer.put({"_id": p + "a", "v": 1})
        peer._has_bulk_get = False
        [entry] = peer.bulk_get([{"id": p + "a", "rev": rev}])
        assert entry["ok"]["_rev"] == rev and entry["ok"]["_revisions"]["start"] == 1


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    node = nodeproc.start_node(tmp_path_factory.mktemp("node") / "n", tier="county",
                               code="441521")
    yield node
    node.stop()


class TestNodePeer(PeerContract):
    @pytest.fixture
    def peer(self, node):
        peer = HttpPeer(node.db_url, auth=node.auth)
        yield peer
        peer.close()

    @pytest.fixture
    def writer(self, node):
        return HttpWriter(node.db_url, node.auth)

    @pytest.fixture
    def other(self, local_other):
        return local_other

    def test_credentials_in_the_url(self, node):
        peer = peer_from_string(node.authed_db_url)
        assert peer.credentials == node.auth and "@" not in peer.identity()
        assert "update_seq" in peer.info()
        peer.close()

    def test_node_url_without_path_means_its_db(self, node):
        peer = peer_from_string(node.url)
        assert peer.url == node.db_url

    def test_wrong_password_is_a_peer_error_with_status(self, node):
        peer = HttpPeer(node.db_url, auth=(nodeproc.REPLICATOR_USER, "wrong-password"))
        with pytest.raises(errors.PeerError) as raised:
            peer.info()
        assert raised.value.status == 401 and raised.value.original is not None


def test_unreachable_url_is_a_peer_error():
    peer = HttpPeer(f"http://127.0.0.1:{nodeproc.free_port()}/db")
    with pytest.raises(errors.PeerError) as raised:
        peer.info()
    assert raised.value.status is None and isinstance(raised.value.original, OSError)


def test_peer_from_string_refuses_anything_else(tmp_path):
    with pytest.raises(errors.PeerError):
        peer_from_string(str(tmp_path))
    with pytest.raises(errors.PeerError):
        peer_from_string("ftp://example.org/db")
