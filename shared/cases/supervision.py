"""Yellow and red cards (督办): the sweep every node runs on APScheduler.

A case in progress gets a **yellow card** when at most ``CARD_YELLOW_DAYS`` working days
(default 2) are left before its due day, and a **red card** once the due day has passed.
Cards are case events (``card``), so they replicate: the handler and the supervisor see
them on every node that holds the case, and a red card waits for a supervisor's
follow-up note (``followed_up``).

Each node sweeps the cases in its own queue (``stage`` = this node). The county sweeps
every case it holds as a backstop, one working day later than the node would, so a
station that is offline or asleep still gets its cases carded without the county and the
station both carding the same day. A card repeated anyway (two sweeps before they synced)
is folded once: the fold skips a second card of the same colour for the same due day.

"Today" is a parameter (China time by default), so the tests freeze it across real
holiday periods.
"""

import datetime
import json
import logging

from flask import current_app

from shared import clock
from shared import config as cfg
from shared.casedocs import CHINA_TIME
from shared.cases import fold as F
from shared.cases.desk import CaseError

logger = logging.getLogger(__name__)

DEFAULT_YELLOW_DAYS = cfg.DEFAULTS["CARD_YELLOW_DAYS"]
#: Cases whose due day is further away than this (calendar days) cannot need a card yet.
HORIZON_DAYS = 60


def china_today(now=None):
    """Today's date in China time (``now``: a datetime or epoch seconds, for tests)."""
    if now is None:
        return clock.today()
    if isinstance(now, (int, float)):
        return datetime.datetime.fromtimestamp(now, CHINA_TIME).date()
    if isinstance(now, datetime.datetime):
        return now.astimezone(CHINA_TIME).date()
    return now


def cards_due(state, calendar, today, yellow_days=DEFAULT_YELLOW_DAYS, backstop=False):
    """The colours a case should carry today that it does not carry yet.

    :param backstop: the county sweeping a case that is at another node: one working day
        later than that node would.
    """
    due = F.due_date(state, calendar)
    if due is None or state["status"] != F.HANDLING:
        return []
    left = calendar.workdays_until(today, due)
    late = 1 if backstop else 0
    have = {c["color"] for c in state.get("cards") or () if c["due"] == due.isoformat()}
    wanted = []
    if left <= yellow_days - late and "yellow" not in have:
        wanted.append("yellow")
    if left < -late and "red" not in have:
        wanted.append("red")
    return [(color, due.isoformat(), left) for color in wanted]


def sweep(desk, today=None, yellow_days=DEFAULT_YELLOW_DAYS):
    """Card the cases this node answers for; returns ``[(number, colour)]`` issued."""
    today = china_today(today)
    node = desk.node
    county = cfg.tier_of(node) == "county"
    horizon = (today + datetime.timedelta(days=HORIZON_DAYS)).isoformat()
    where = "status = ? AND due IS NOT NULL AND due <= ?"
    params = [F.HANDLING, horizon]
    if not county:
        where += " AND stage = ?"
        params.append(node)
    issued = []
    rows = desk.db.execute_sql(f"SELECT number, stage, state FROM case_state WHERE {where}",
                               params).fetchall()
    for number, stage, text in rows:
        state = json.loads(text)
        try:
            wanted = cards_due(state, desk.calendar, today, yellow_days,
                               backstop=county and stage != node)
        except ValueError as exc:  # a day the calendar does not cover: say so, go on
            logger.error("case %s: no card: %s", number, getattr(exc, "message", exc))
            continue
        for color, due, left in wanted:
            try:
                desk.issue_card(number, color, due, left)
            except CaseError as exc:
                logger.warning("case %s: %s card not issued: %s", number, color, exc.message)
                continue
            issued.append((number, color))
    if issued:
        logger.info("card sweep at %s: %d card(s) issued", node, len(issued))
    return issued


def sweep_job(now=None):
    """The APScheduler job (runs in the node's app context, see syncd/scheduler.py)."""
    from shared.cases import web

    app = current_app
    try:
        desk = web.desk(app)
    except CaseError as exc:  # not enrolled yet: nothing to sweep
        logger.info("card sweep skipped: %s", exc.message)
        return []
    return sweep(desk, china_today(now), int(app.config.get("CARD_YELLOW_DAYS",
                                                             DEFAULT_YELLOW_DAYS)))


#: Every node schedules this (``shared.jobs.SHARED_JOBS``).
SWEEP_TRIGGER = {"trigger": "interval", "minutes": 10}


def red_cards_waiting(db, node=None):
    """``[(number, card)]`` of red cards without a follow-up note, oldest first."""
    where, params = "state LIKE '%\"red\"%'", []
    if node:
        where += " AND (stage = ? OR handler = ? OR origin = ?)"
        params += [node, node, node]
    found = []
    for number, text in db.execute_sql(f"SELECT number, state FROM case_state WHERE {where}",
                                       params).fetchall():
        for card in json.loads(text).get("cards") or ():
            if card["color"] == "red" and card["followed_up"] is None:
                found.append((number, card))
    return sorted(found, key=lambda item: item[1]["hlc"] or "")
