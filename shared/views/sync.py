"""The sync status page (``/sync/status``): is this station online, what is waiting."""

from flask import Blueprint, current_app, render_template

from shared import clock, syncstatus
from shared.config import TIER_NAMES
from shared.staff import current_staff
from shared.syncstatus import LinkStatusTable, status_report

bp = Blueprint("syncstatus", __name__)


@bp.route("/sync/status")
def status_page():
    """Whether this station syncs, in plain Chinese, for anyone; for a logged-in staff
    member also each link's errors and address, the nodes below (a township's or the
    county's) with their states and alarms, and the calendar alarms' case numbers.

    The nodes below and their troubles are the region's internals: a citizen at the
    window needs only to know whether the station is online.
    """
    store = current_app.extensions["store"]
    staff = current_staff() is not None
    report = status_report(store, current_app.config)
    if not staff:
        # Not even handed to the template: nothing of it can reach the public page.
        report = dict(report, nodes=[], has_nodes=bool(report["nodes"]), processes=None)
    return render_template("sync.html", r=report,
                           tier_name=TIER_NAMES[current_app.config["TIER"]],
                           name=current_app.config.get("NODE_NAME") or
                           current_app.config["NODE_CODE"],
                           now_text=clock.format_time(report["now"], seconds=True),
                           show_numbers=staff, show_details=staff,
                           child_after=syncstatus.CHILD_OFFLINE_AFTER,
                           report_after=syncstatus.REPORT_OFFLINE_AFTER)


def init_app(app):
    """Make sure the status table exists (syncd may not have run yet); register the page."""
    LinkStatusTable(app.extensions["store"].db).ensure()
    app.register_blueprint(bp)
