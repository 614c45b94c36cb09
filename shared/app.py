"""The only Flask factory: one codebase for every tier."""

import importlib
import logging

from flask import Flask

from shared import config as cfg
from shared import db as dbmod
from shared import syncstatus
from shared.cases.index import CaseIndex
from shared.catalog import publish
from shared.catalog.active import CatalogActivation, trusted_keys
from shared.errors import ConfigurationError
from shared.hlc import ClockObserver
from shared.lookup import CaseApplicants
from shared.models import MODELS, migrate
from shared.registry import NodeRegistry
from shared.scopes import CaseParties, NodePolicy
from shared.store import failures, schema
from shared.store.projections import default_projections
from shared.store.store import Store

logger = logging.getLogger(__name__)

#: The Content-Security-Policy of every answer. The pages carry their CSS in ``<style>``
#: (and a few ``style`` attributes), QR codes and flowcharts as inline SVG, and no script
#: but the print buttons' ``onclick="window.print()"``, allowed by its hash alone.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'unsafe-hashes' 'sha256-MguIPR6qNR8D3B+eAlK+bIRTZe8t3wkOY4B/56Me9FU='",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "object-src 'none'",
    "frame-ancestors 'none'",
    "base-uri 'self'",
    "form-action 'self'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def security_headers(response):
    """Add the security headers to every answer, pages and /db alike; a view that set
    its own (a scan's ``sandbox`` policy) keeps it."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def tier_module(tier):
    """The package that holds what differs for ``tier`` (county, township or village)."""
    if tier not in cfg.TIERS:
        raise ConfigurationError(f"unknown tier {tier!r}")
    return importlib.import_module(tier)


def open_store(config):
    """Open the node's store with its projections, as configured.

    First the file is checked and, when an older release made it, copied and upgraded
    (:func:`shared.store.schema.prepare`); a damaged or newer store raises
    ``StoreUnusable`` (a ConfigurationError) and is left as it was.
    """
    schema.prepare(config["DB_PATH"], check=config.get("STORE_QUICK_CHECK", True))
    store = Store(config["DB_PATH"], revs_limit=config["REVS_LIMIT"],
                  max_document_size=config["MAX_DOCUMENT_SIZE"])
    for projection in default_projections():
        store.add_projection(projection)
    store.add_projection(NodeRegistry(config.get("COUNTY_PUBLIC_KEY")))
    store.add_projection(CaseApplicants())
    store.add_projection(ClockObserver())
    store.add_projection(CaseParties())
    store.add_projection(CatalogActivation(store, trusted_keys(config)))
    store.add_projection(CaseIndex(work_calendar(config, store.db)))
    dbmod.database.initialize(store.db)
    store.db.create_tables(MODELS, safe=True)
    migrate(store.db)
    publish.create_tables(store.db)
    return store


def work_calendar(config, db=None):
    """The node's working-day calendar: with its store's ``db``, the one in force there
    (the county's overrides of the active catalog release, followed across activations);
    without, the statutory calendar alone."""
    from shared.workdays import WorkCalendar, calendar_from_db

    return calendar_from_db(db) if db is not None else WorkCalendar()


def create_app(config=None, node_dir=None):
    """Build the node's web app.

    :param config: a dict of settings applied last (tests pass one).
    :param node_dir: a node directory whose ``tongban.json`` is read first.
    """
    if node_dir is not None:
        merged = cfg.load_config(node_dir, config)
    else:
        merged = cfg.validate(cfg.layered(overrides=config))
    module = tier_module(merged["TIER"])

    app = Flask(__name__, template_folder="templates", static_folder="static")
    app.config.update(merged)
    app.config["MAX_CONTENT_LENGTH"] = merged["MAX_REQUEST_SIZE"]
    app.json.ensure_ascii = False
    app.extensions["store"] = open_store(merged)

    @app.before_request
    def bind_models():
        # One app per process in production; tests run several, each request uses its own.
        dbmod.database.initialize(app.extensions["store"].db)

    app.after_request(security_headers)
    failures.init_app(app)  # a write the disk refused: its message, not a 500
    # A child's signed request answered is its contact: its parent sees who is offline.
    app.after_request(syncstatus.note_contact)

    from shared import couch, nodeapi, staff
    from shared.views import appointments, cases, catalog, dashboard, health, home, progress, sync

    # Every node serves /db under the scopes; a test may replace the policy afterwards.
    app.extensions["couch_policy"] = NodePolicy(app.extensions["store"])
    couch.init_app(app)
    nodeapi.init_app(app)
    home.init_app(app)
    sync.init_app(app)
    staff.init_app(app)
    catalog.init_app(app)
    cases.init_app(app)
    progress.init_app(app)
    appointments.init_app(app)
    dashboard.init_app(app)
    health.init_app(app)
    module.init_app(app)
    return app


def get_store(app=None):
    """The store of the current (or given) app."""
    from flask import current_app

    return (app or current_app).extensions["store"]
