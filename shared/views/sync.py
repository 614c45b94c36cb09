"""The sync status page (``/sync/status``): is this station online, what is waiting."""

from flask import Blueprint, current_app, render_template

from shared.config import TIER_NAMES
from shared.syncstatus import LinkStatusTable, status_report

bp = Blueprint("syncstatus", __name__)


@bp.route("/sync/status")
def status_page():
    """Each link's state in plain Chinese; at a township or county, the nodes below."""
    store = current_app.extensions["store"]
    report = status_report(store, current_app.config)
    return render_template("sync.html", r=report,
                           tier_name=TIER_NAMES[current_app.config["TIER"]],
                           name=current_app.config.get("NODE_NAME") or
                           current_app.config["NODE_CODE"])


def init_app(app):
    """Make sure the status table exists (syncd may not have run yet); register the page."""
    LinkStatusTable(app.extensions["store"].db).ensure()
    app.register_blueprint(bp)
