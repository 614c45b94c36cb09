"""The node's home page: what this station is and what its store holds."""

from flask import Blueprint, current_app, render_template

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
    }


@bp.route("/")
def index():
    """Home page (Chinese)."""
    summary = node_summary()
    return render_template("home.html", s=summary, tier_name=TIER_NAMES[summary["tier"]])


def init_app(app):
    """Register the home page."""
    app.register_blueprint(bp)
