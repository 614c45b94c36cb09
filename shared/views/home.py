"""The node's home page: what this station is and what its store holds."""

from flask import Blueprint, Response, current_app, json, render_template, request

from shared import clock
from shared.config import TIER_NAMES
from shared.store.projections import TypeIndex

bp = Blueprint("home", __name__)


def node_summary(app=None):
    """Tier, code, name, parent and store figures of this node (also used by ``tongban info``)."""
    app = app or current_app
    store = app.extensions["store"]
    info = store.info()
    return {
        "tier": app.config["TIER"],
        "code": app.config["NODE_CODE"],
        "name": app.config.get("NODE_NAME") or "",
        "parent": app.config.get("PARENT_URL"),
        "doc_count": info["doc_count"],
        "doc_del_count": info["doc_del_count"],
        "update_seq": info["update_seq"],
        "docs_by_type": TypeIndex.counts(store.db),
        "catalog": catalog_summary(store),
        "enrolled": bool(app.config.get("COUNTY_PUBLIC_KEY")),
    }


def catalog_summary(store):
    """The catalog release in force at this node, its item count and verification state."""
    from shared.catalog.active import catalog_status

    status = catalog_status(store.db, alarms=1)
    active = status["active"] or {}
    return {"release": active.get("number"), "items": active.get("item_count", 0),
            "time": active.get("time"), "verify_seconds": active.get("verify_seconds"),
            "state": status["state"],
            "state_name": status["state_name"], "message": status["message"],
            "alarm": status["alarms"][0]["message"] if status["alarms"] else None}


def wants_html():
    """True when the client prefers HTML over JSON (a browser, not a CouchDB client)."""
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html"


@bp.route("/")
def index():
    """Home page (Chinese) for browsers; CouchDB's welcome JSON for everyone else.

    PouchDB and the CouchDB replicator call ``GET /`` of a peer's server; they send
    ``Accept: application/json`` or ``*/*`` (or nothing), browsers put text/html first.
    """
    if not wants_html():
        from shared import couch

        body = json.dumps(couch.welcome(), ensure_ascii=False) + "\n"
        response = Response(body, mimetype="application/json")
        response.vary.add("Accept")
        return response
    summary = node_summary()
    response = current_app.make_response(
        render_template("home.html", s=summary, tier_name=TIER_NAMES[summary["tier"]],
                        published=clock.format_time(summary["catalog"]["time"])))
    response.vary.add("Accept")
    return response


@bp.route("/status/catalog")
def catalog_status_json():
    """The catalog summary as JSON (no login: release numbers and states are public)."""
    return current_app.json.response(catalog_summary(current_app.extensions["store"]))


def init_app(app):
    """Register the home page."""
    app.register_blueprint(bp)
