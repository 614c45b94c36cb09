"""Fixtures: a county node on a tmp_path database, its test client, a replicator account.

The clock: no test depends on the day it runs. Every test runs with the node clock
(``shared.clock``, ``TONGBAN_CLOCK_SKEW_SECONDS``) set to :data:`DEFAULT_TEST_CLOCK`, or to
``TONGBAN_TEST_CLOCK`` when given (CI runs the time-sensitive tests again at 2027-03-01 and
2031-06-15); the setting is in the environment, so every node process a test starts runs at
the same time as the test itself. A test that wants the machine's real clock says so with
``@pytest.mark.real_clock``.
"""

import base64
import os
import re
import shutil

import pytest

from shared import clock
from shared.app import create_app
from shared.models import Account, hash_password
from shared.store.store import Store

REPLICATOR = ("replicator", "sync-secret-123")
#: The time the suite runs at unless ``TONGBAN_TEST_CLOCK`` says otherwise: a Monday morning
#: in a year the holiday package covers.
DEFAULT_TEST_CLOCK = "2026-06-15T10:00:00+08:00"
TEST_CLOCK_ENV = "TONGBAN_TEST_CLOCK"


def pytest_configure(config):
    config.addinivalue_line("markers", "real_clock: runs on the machine's real clock")
    target = os.environ.get(TEST_CLOCK_ENV, "").strip() or DEFAULT_TEST_CLOCK
    os.environ[clock.SKEW_ENV] = repr(clock.skew_for(target))


def pytest_report_header(config):
    return f"node clock: {clock.format_time(clock.time())} (set {TEST_CLOCK_ENV} to move it)"


@pytest.fixture(autouse=True)
def _test_clock(request, monkeypatch):
    """The real clock for tests marked ``real_clock``; the suite's clock for the others."""
    if request.node.get_closest_marker("real_clock"):
        monkeypatch.delenv(clock.SKEW_ENV, raising=False)


def skewed_env(seconds):
    """The environment of a node process whose clock is ``seconds`` off the suite's."""
    return {clock.SKEW_ENV: repr(clock.skew() + seconds)}


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
                              roles=",".join(roles), created=clock.utcnow(),
                              **fields)


#: The CSRF token a page's forms carry.
CSRF_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def form_token(client, path="/login"):
    """The csrf_token of the first form on ``path`` (a Flask test client)."""
    return CSRF_TOKEN.search(client.get(path).get_data(as_text=True)).group(1)


def staff_login(app, username, password):
    """A test client logged in as staff ``username`` at ``app``'s node."""
    browser = app.test_client()
    response = browser.post("/login", data={"username": username, "password": password,
                                            "csrf_token": form_token(browser)})
    assert response.status_code == 302, response.get_data(as_text=True)
    return browser


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
def frozen(monkeypatch):
    """A frozen clock for ``casekit.Kit(wall_clock=frozen)``, at 13 February 2026 (the
    Friday before Spring Festival); tests move it with ``frozen.at(day)``, and the node
    clock (pages, "today", node processes started meanwhile) follows it."""
    from datetime import date

    from tests.casekit import FrozenClock

    return FrozenClock(date(2026, 2, 13), env=monkeypatch)


# -- a real browser ----------------------------------------------------------------------------

#: Debian's chromium (``.ci/run`` installs it); playwright never downloads its own.
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                              headless=True)
        yield chromium
        chromium.close()
