"""The node's home page: what this station is and what its store holds."""

from flask import Blueprint, Response, current_app, json, render_template, request

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
    """How many catalog items this node holds and which one changed last.

    The latest change is the live item with the highest sequence: after the county edits
    an item, every node that has received the edit names the same item and revision.
    """
    count = store.db.execute_sql(
        "SELECT COUNT(*) FROM document WHERE id >= 'item:' AND id < 'item;' AND deleted = 0"
    ).fetchone()[0]
    row = store.db.execute_sql(
        "SELECT id, rev FROM document WHERE id >= 'item:' AND id < 'item;' AND deleted = 0 "
        "ORDER BY seq DESC LIMIT 1").fetchone()
    latest = None
    if row is not None:
        doc = store.get(row[0])
        latest = {"id": row[0], "rev": row[1], "title": doc.get("title") or doc.get("name")}
    return {"items": count, "latest": latest}


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
        render_template("home.html", s=summary, tier_name=TIER_NAMES[summary["tier"]]))
    response.vary.add("Accept")
    return response


def init_app(app):
    """Register the home page."""
    app.register_blueprint(bp)
