"""The sync status page (``/sync/status``): is this station online, what is waiting."""

from flask import Blueprint, current_app, render_template

from shared import clock
from shared.config import TIER_NAMES
from shared.staff import current_staff
from shared.syncstatus import LinkStatusTable, status_report

bp = Blueprint("syncstatus", __name__)


@bp.route("/sync/status")
def status_page():
    """Each link's state in plain Chinese; at a township or county, the nodes below; the
    working-day calendar's alarms (case numbers only to a logged-in staff member)."""
    store = current_app.extensions["store"]
    report = status_report(store, current_app.config)
    return render_template("sync.html", r=report,
                           tier_name=TIER_NAMES[current_app.config["TIER"]],
                           name=current_app.config.get("NODE_NAME") or
                           current_app.config["NODE_CODE"],
                           now_text=clock.format_time(report["now"], seconds=True),
                           show_numbers=current_staff() is not None)


def init_app(app):
    """Make sure the status table exists (syncd may not have run yet); register the page."""
    LinkStatusTable(app.extensions["store"].db).ensure()
    app.register_blueprint(bp)
