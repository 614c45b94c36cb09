"""Fixtures: a county node on a tmp_path database, its test client, a replicator account."""

import base64
from datetime import datetime, timezone

import pytest

from shared.app import create_app
from shared.models import Account, hash_password
from shared.store.store import Store

REPLICATOR = ("replicator", "sync-secret-123")


def make_app(path, **overrides):
    """A county node whose store lives under ``path``."""
    config = {
        "TIER": "county",
        "NODE_CODE": "441521",
        "DB_PATH": str(path / "store.sqlite"),
        "SECRET_KEY": "test-secret",
    }
    config.update(overrides)
    return create_app(config)


def make_county(path, **overrides):
    """A county node whose directory holds its key (it can sign catalog releases):
    ``app.key`` is the private key, the config has its public half and ``NODE_DIR``."""
    from shared import identity

    key = identity.new_private_key()
    identity.save_private_key(path, key)
    app = make_app(path, COUNTY_PUBLIC_KEY=identity.b64(identity.public_key_bytes(key)),
                   NODE_DIR=str(path), **overrides)
    app.key = key
    return app


def add_account(app, username, password, roles=("replicator",), **fields):
    """Create an account on ``app``'s node (``fields``: full_name, office_phone, …)."""
    from shared import db as dbmod

    with app.app_context():
        # Several apps may live in one test: bind the models to this one's store.
        dbmod.database.initialize(app.extensions["store"].db)
        return Account.create(username=username, password_hash=hash_password(password),
                              roles=",".join(roles), created=datetime.now(timezone.utc),
                              **fields)


def basic_auth(username, password):
    """Headers carrying HTTP Basic credentials."""
    token = base64.b64encode(f"{username}:{password}".encode("utf-8")).decode("ascii")
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def app(tmp_path):
    """A fresh county node with a replicator account."""
    app = make_app(tmp_path)
    add_account(app, *REPLICATOR)
    yield app
    app.extensions["store"].close()


@pytest.fixture
def client(app):
    """The node's test client."""
    return app.test_client()


@pytest.fixture
def auth_headers():
    """Basic auth headers of the replicator account."""
    return basic_auth(*REPLICATOR)


@pytest.fixture
def store(app):
    """The node's store."""
    return app.extensions["store"]


@pytest.fixture
def stores(tmp_path):
    """A factory of stores on real SQLite files, closed at teardown."""
    made = []

    def make(name):
        store = Store(tmp_path / f"{name}.sqlite")
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def frozen():
    """A frozen clock for ``casekit.Kit(wall_clock=frozen)``, at 13 February 2026 (the
    Friday before Spring Festival); tests move it with ``frozen.at(day)``."""
    from datetime import date

    from tests.casekit import FrozenClock

    return FrozenClock(date(2026, 2, 13))
