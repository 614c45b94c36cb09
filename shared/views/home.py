"""The node's home page: what this station is and what its store holds."""

import logging

from flask import Blueprint, Response, current_app, json, render_template, request

from shared import clock
from shared.config import TIER_NAMES
from shared.staff import current_staff
from shared.store.projections import TypeIndex

logger = logging.getLogger(__name__)
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


#: What each document type is, for the staff's figures.
TYPE_NAMES = {"item": "事项", "agency": "中介机构", "release": "目录发布", "calendar": "工作日历",
              "node": "站点登记", "status": "站点状态", "case": "办件", "event": "办件环节",
              "scan": "扫描件", "settings": "设置"}
#: The opening hours a station shows until its operator sets ``STATION_HOURS``.
DEFAULT_HOURS = "周一至周五 上午 8:30—12:00，下午 14:30—17:30（法定节假日除外）"


def station_info(app=None):
    """Hours, phone and address the station shows to citizens (its settings)."""
    config = (app or current_app).config
    return {"hours": config.get("STATION_HOURS") or DEFAULT_HOURS,
            "phone": config.get("STATION_PHONE") or "",
            "address": config.get("STATION_ADDRESS") or ""}


def _county_name():
    """The county's name from the registry, when this node is below it."""
    code = current_app.config["NODE_CODE"][:6]
    if code == current_app.config["NODE_CODE"]:
        return ""
    from shared import registry

    try:
        entry = registry.lookup(current_app.extensions["store"].db, code)
    except Exception:  # noqa: BLE001 - a name is a nicety, never a failure (no registry yet)
        logger.debug("no registry entry for %s", code, exc_info=True)
        return ""
    return entry.name if entry else ""


def _life_events():
    """``[(life event, item count)]`` of the catalog in force (empty before the first)."""
    from shared.catalog.active import facet_counts

    try:
        return facet_counts(current_app.extensions["store"].db).get("life_event", [])
    except Exception:  # noqa: BLE001 - no catalog tables yet on a fresh node
        logger.debug("no catalog facets", exc_info=True)
        return []


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
    response = current_app.make_response(render_template(
        "home.html", s=summary, tier_name=TIER_NAMES[summary["tier"]],
        published=clock.format_time(summary["catalog"]["time"]), station=station_info(),
        county_name=_county_name(), events=_life_events(), staff=current_staff(),
        type_names=TYPE_NAMES))
    response.vary.add("Accept")
    return response


@bp.route("/status/catalog")
def catalog_status_json():
    """The catalog summary as JSON (no login: release numbers and states are public)."""
    return current_app.json.response(catalog_summary(current_app.extensions["store"]))


def init_app(app):
    """Register the home page."""
    app.register_blueprint(bp)
