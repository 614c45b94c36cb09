"""Supervision figures over 1,000,000 cases (issue 6): the dashboard, repeats, proactive lists.

A fresh county store gets the sample catalog (25 items), a registry entry for every node of
the Haifeng region (``shared/data/region-haifeng.json``: the county, 16 towns, 292
villages) and then ``--cases`` generated cases, written straight into ``case_state`` (and
``case_licence``) without documents. Each case is a realistic header and event list folded
by the real fold (``shared.cases.fold``) and made a row by the real ``CaseIndex.row``; its
contribution goes through :class:`shared.cases.stats.Accumulator`, the path ``rebuild``
and ``apply_delta`` use, so the aggregates are the ones a node would hold
(``tests/test_dashboard.py`` checks them against a brute-force count).

Then it times, over ``--runs`` runs each (after one warm-up run): the county dashboard,
one township's dashboard, the county dashboard for an odd period (day buckets at both
ends), the repeated-submission list, the requested-twice list, the proactive summary, and
the cost ``apply_delta`` adds to one case's refresh.

Usage::

    python bench/dashboard.py [--cases 1000000] [--runs 20] [--dir DIR] [--reuse]
"""

import argparse
import bisect
import datetime
import hashlib
import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.replication import machine  # noqa: E402
from shared import identity, registry  # noqa: E402
from shared.casedocs import CHINA_TIME  # noqa: E402
from shared.cases import fold as F  # noqa: E402
from shared.cases import stats  # noqa: E402
from shared.cases.index import COLUMNS, CaseIndex  # noqa: E402
from shared.catalog import publish  # noqa: E402
from shared.catalog.sample import sample_catalog  # noqa: E402
from shared.hlc import Timestamp, format_hlc  # noqa: E402
from shared.workdays import WorkCalendar  # noqa: E402

logger = logging.getLogger("bench.dashboard")

COUNTY = "441521"
#: The day the generated region stands at (inside the years the holiday data covers, so
#: every due date of a case accepted up to it can be counted).
TODAY = datetime.date(2026, 10, 30)
#: Cases are accepted over this many days up to TODAY.
SPAN_DAYS = 730
#: How often each sample item is applied for (relative).
POPULARITY = {
    "GD-LS-01": 60, "GD-LS-02": 45, "GD-LS-03": 90, "GD-LS-04": 40, "GD-LS-05": 6,
    "GD-LS-06": 20, "GD-LS-07": 12, "GD-LS-08": 10, "GD-LS-09": 15, "GD-LS-10": 25,
    "GD-LS-11": 18, "GD-LS-12": 30, "GD-LS-13": 35, "GD-LS-14": 8, "GD-LS-15": 20,
    "GD-LS-16": 25, "GD-LS-17": 8, "GD-LS-18": 30, "GD-LS-19": 40, "GD-LS-20": 5,
    "GD-LS-21": 8, "GD-LS-22": 6, "GD-LS-23": 3, "GD-LS-24": 45, "GD-LS-25": 2,
}
DISABILITY_CARD = "中华人民共和国残疾人证（第二代）"
BY = {"username": "bench", "name": "测试员", "phone": "0660-3300000"}


def load_region():
    """``[(code, tier, name, township)]`` of every node in the Haifeng region."""
    data = json.loads((Path(__file__).resolve().parent.parent / "shared" / "data" /
                       "region-haifeng.json").read_text(encoding="utf-8"))["county"]
    nodes = [(COUNTY, "county", data["name"], COUNTY)]
    for town in data["towns"]:
        nodes.append((town["code"], "township", town["name"], town["code"]))
        nodes += [(v["code"], "village", v["name"], town["code"]) for v in town["villages"]]
    return nodes


def statutory_calendar(first, last):
    """The statutory calendar with every day from ``first`` to ``last`` looked up once (the
    same answers as ``WorkCalendar()``, without asking the holiday package millions of
    times)."""
    plain = WorkCalendar()
    days, day = {}, first
    # Up to the last published day: beyond it the calendar counts ordinary weeks itself.
    while day <= last and plain.covers(day):
        days[day] = plain.is_workday(day)
        day += datetime.timedelta(days=1)
    return WorkCalendar(overrides=days)


class Generator:
    """Realistic folded cases: ``(row, state)`` as ``CaseIndex`` would store them.

    :param persons: size of the population applying (birth dates over 0–95 years).
    """

    def __init__(self, seed=6, today=TODAY, span_days=SPAN_DAYS, persons=None, cases=0):
        self.random = random.Random(seed)
        self.today = today
        first = today - datetime.timedelta(days=span_days - 1)
        self.calendar = statutory_calendar(first - datetime.timedelta(days=30),
                                           today + datetime.timedelta(days=120))
        self.index = CaseIndex(self.calendar)
        items, _ = sample_catalog()
        self.items = {i["id"]: i for i in items}
        self.item_ids = list(POPULARITY)
        self.item_weights = [POPULARITY[i] for i in self.item_ids]
        region = load_region()
        self.villages = [n for n in region if n[1] == "village"]
        self.townships = [n for n in region if n[1] == "township"]
        # Working days through the due dates of the last cases (60 days after today).
        self.days = []
        day = first
        while day <= today + datetime.timedelta(days=60):
            if self.calendar.is_workday(day):
                self.days.append(day)
            day += datetime.timedelta(days=1)
        self.accept_days = [d for d in self.days if d <= today]
        self.persons = persons or max(1000, int(cases * 0.4))
        self.seq = {}
        self.recent = []  # (applicant, item) of recent cases, for repeated applications

    # -- the pieces of a case ---------------------------------------------------------------

    def person(self, index):
        """``(applicant_key, birth date, sex)`` of person ``index`` (always the same)."""
        digest = hashlib.sha256(f"person-{index}".encode()).hexdigest()
        rng = random.Random(digest)
        age_days = int(rng.triangular(0, 95 * 365.25, 45 * 365.25))
        birth = self.today - datetime.timedelta(days=age_days)
        return digest, birth, "男" if rng.random() < 0.5 else "女"

    def add_workdays(self, day, n):
        position = bisect.bisect_left(self.days, day)
        if position < len(self.days) and self.days[position] == day:
            position += n
        else:
            position += n - 1
        return self.days[min(position, len(self.days) - 1)]

    def moment(self, day, minute=None):
        """An HLC on ``day`` during office hours."""
        minute = self.random.randint(0, 480) if minute is None else minute
        at = datetime.datetime.combine(day, datetime.time(8, 30), CHINA_TIME) + \
            datetime.timedelta(minutes=minute, seconds=self.random.randint(0, 59))
        return at

    def number(self, origin, day):
        key = (origin, day)
        self.seq[key] = self.seq.get(key, 0) + 1
        return f"{origin}-{day.strftime('%Y%m%d')}-{self.seq[key]:04d}"

    # -- one case -----------------------------------------------------------------------

    def case(self):
        """``(header, events)`` of one generated case."""
        rng = self.random
        roll = rng.random()
        if roll < 0.80:
            origin, _, _, township = rng.choice(self.villages)
        elif roll < 0.97:
            origin, _, _, township = rng.choice(self.townships)
        else:
            origin, township = COUNTY, COUNTY
        day = rng.choice(self.accept_days)
        if self.recent and rng.random() < 0.04:
            # The same person applies again for the same item 1-60 days later.
            person, item_id, earlier = rng.choice(self.recent)
            later = earlier + datetime.timedelta(days=rng.randint(1, 60))
            position = bisect.bisect_left(self.accept_days, later)
            day = self.accept_days[min(position, len(self.accept_days) - 1)]
        else:
            person = rng.randrange(self.persons)
            item_id = rng.choices(self.item_ids, self.item_weights)[0]
        self.recent.append((person, item_id, day))
        if len(self.recent) > 5000:
            self.recent = self.recent[-2500:]
        item = self.items[item_id]
        key, birth, sex = self.person(person)
        if item["decide_tier"] == "township":
            route = [township]
        else:
            route = [COUNTY] if township == COUNTY else [township, COUNTY]
        online = bool(item.get("online_application")) and rng.random() < 0.35
        number = self.number(origin, day)
        limit = {"days": int(item["promised_time_limit"]), "unit": "工作日"}
        header = {"_id": f"case:{number}", "type": "case", "number": number,
                  "item": f"item:{item_id}@1", "item_name": item["name"], "origin": origin,
                  "handler": route[-1], "applicant_key": key, "route": route,
                  "department": item["department"], "limit": limit,
                  "delivery_station": origin, "channel": "online" if online else "window"}
        clock = Clock(number)
        events = []
        accept_at = self.moment(day, rng.randint(0, 300))
        if online:
            events.append(clock.event("preapplied", "441521", accept_at - datetime.timedelta(
                days=rng.randint(11, 15)), station=origin))
        if rng.random() < 0.06:
            events.append(clock.event("notice", origin, accept_at - datetime.timedelta(
                days=rng.randint(1, 10))))
            if rng.random() < 0.2:
                events.append(clock.event("notice", origin, accept_at - datetime.timedelta(
                    hours=2)))
        visit = not (online and item.get("max_on_site_visits") == 0 and rng.random() < 0.6)
        events.append(clock.event("accepted", origin, accept_at, mode="normal", route=route,
                                  visit=visit,
                                  applicant_facts={"birth": birth.isoformat(), "sex": sex}))
        self.handle(clock, events, item, route, origin, day, accept_at)
        return header, events

    def handle(self, clock, events, item, route, origin, day, accept_at):
        """The events after acceptance that have happened by ``self.today``."""
        rng = self.random
        limit = int(item["promised_time_limit"])
        if rng.random() < 0.015:
            self.maybe(events, clock, "withdrawn", "441521",
                       accept_at + datetime.timedelta(days=rng.randint(0, 5)))
            return
        workdays = max(0, int(rng.triangular(0, limit * 1.25 + 1, limit * 0.5)))
        if rng.random() < 0.004:
            workdays += 400  # a case forgotten in a queue: overdue until today
        decide_day = self.add_workdays(day, workdays)
        due = self.add_workdays(day, limit)
        at = accept_at
        if len(route) > 1:
            at = self.moment(self.add_workdays(day, min(workdays, 1)))
            at = max(at, accept_at + datetime.timedelta(minutes=5))
            if not self.maybe(events, clock, "forwarded", route[0], at):
                return
        rounds = 0 if rng.random() >= 0.08 or workdays < 2 else rng.choice((1, 1, 1, 1, 2))
        for _ in range(rounds):
            stop = max(at + datetime.timedelta(minutes=5),
                       self.moment(self.add_workdays(day, workdays // 2)))
            if not self.maybe(events, clock, "supplement_requested", route[-1], stop,
                              reason="材料不清晰"):
                return
            at = stop + datetime.timedelta(days=rng.randint(1, 8))
            if rng.random() < 0.1 or not self.maybe(events, clock, "supplemented", origin, at):
                return
            decide_day = max(decide_day, at.date() + datetime.timedelta(days=2))
            due = max(due, decide_day)
        for color, when in (("yellow", self.add_workdays(due, -2) if limit > 2 else None),
                            ("red", due + datetime.timedelta(days=1))):
            if when is not None and when < decide_day and when > day:
                if not self.maybe(events, clock, "card", "441521", self.moment(when, 0),
                                  color=color, due=due.isoformat(), days_left=-1):
                    return
        decided = self.moment(decide_day)
        decided = max(decided, at + datetime.timedelta(minutes=10))
        approved = rng.random() < 0.92
        licence = None
        if approved and item["id"] == "GD-LS-09":
            licence = {"name": DISABILITY_CARD, "number": f"CJ{rng.randrange(10 ** 12):012d}",
                       "valid_until": (decide_day + datetime.timedelta(days=3650)).isoformat()}
        if not self.maybe(events, clock, "approved" if approved else "rejected", route[-1],
                          decided, licence=licence, reason="" if approved else "不符合条件"):
            return
        for event in events:  # a red card's follow-up note by the supervisor
            if event["kind"] == "card" and event["color"] == "red" and rng.random() < 0.7:
                self.maybe(events, clock, "followed_up", "441521",
                           decided - datetime.timedelta(minutes=3), card=event["_id"],
                           note="已督促办理")
                break
        handed = decided + datetime.timedelta(days=rng.choice((0, 0, 1, 2, 3, 7)), hours=1)
        if not self.maybe(events, clock, "delivered", origin, handed,
                          visit=rng.random() < 0.8):
            return
        if rng.random() < 0.55:
            self.maybe(events, clock, "rated", "441521", handed + datetime.timedelta(hours=3),
                       score=rng.choices((5, 4, 3, 2, 1), (70, 18, 7, 3, 2))[0])
        if rng.random() < 0.012:
            complained = handed + datetime.timedelta(hours=5)
            event = self.maybe(events, clock, "complained", "441521", complained, text="等待时间长")
            if event and rng.random() < 0.85:
                self.maybe(events, clock, "complaint_handled", "441521",
                           complained + datetime.timedelta(hours=2), complaint=event["_id"],
                           stage="accepted", text="已受理")
                self.maybe(events, clock, "complaint_handled", "441521",
                           complained + datetime.timedelta(hours=rng.randint(4, 120)),
                           complaint=event["_id"], stage="replied", text="已答复")

    def maybe(self, events, clock, kind, node, at, **fields):
        """Add the event if it has happened by the end of ``self.today``; else None."""
        if at.date() > self.today:
            return None
        event = clock.event(kind, node, at, **fields)
        events.append(event)
        return event

    def rows(self, count):
        """``count`` cases as ``(row, state)``."""
        for _ in range(count):
            header, events = self.case()
            state = F.fold(header, events)
            yield self.index.row(state, events), state


class Clock:
    """HLCs for one case's events (every event of a case at its own millisecond)."""

    def __init__(self, number):
        self.number = number
        self.used = set()

    def event(self, kind, node, at, **fields):
        ms = int(at.timestamp() * 1000)
        while ms in self.used:
            ms += 1
        self.used.add(ms)
        hlc = format_hlc(Timestamp(ms, 0))
        event = {"_id": f"event:{self.number}:{hlc}:{node}", "type": "event",
                 "case": self.number, "kind": kind, "node": node, "hlc": hlc, "by": BY}
        event.update({k: v for k, v in fields.items() if v is not None})
        return event


# -- the store --------------------------------------------------------------------------------

def make_store(directory):
    """A county node in ``directory`` with the sample catalog and the region's registry."""
    from tests.conftest import make_county

    county = make_county(directory, NODE_CODE=COUNTY)
    items, agencies = sample_catalog()
    store = county.extensions["store"]
    from tests.conftest import add_account

    add_account(county, "editor", "bench-editor-1", roles=("county_admin",))
    add_account(county, "boss", "bench-boss-1", roles=("approver",))
    with county.app_context():
        publish.publish(store, items, agencies, proposer="editor", approver="boss",
                        private_key=county.key)
    public = identity.b64(identity.public_key_bytes(county.key))
    for code, tier, name, _ in load_region():
        registry.publish_entry(store, county.key, code=code, tier=tier, name=name,
                               public_key=public)
    stats.ensure_tables(store.db)
    return county, store


def fill(db, count, seed=6, today=TODAY, through_apply_delta=False, progress=None,
         batch=10_000):
    """Write ``count`` generated cases into ``case_state`` and the aggregates.

    :param through_apply_delta: one :func:`stats.apply_delta` per case (the incremental
        path) instead of the bulk :class:`stats.Accumulator`.
    """
    generator = Generator(seed=seed, today=today, cases=count)
    insert = (f"INSERT INTO case_state ({','.join(COLUMNS)}) "
              f"VALUES ({','.join('?' * len(COLUMNS))})")
    licence_sql = ('INSERT OR REPLACE INTO case_licence (applicant_key, name, number, '
                   'valid_until, "case", issued) VALUES (?, ?, ?, ?, ?, ?)')
    done, started = 0, time.perf_counter()
    rows = generator.rows(count)
    while done < count:
        chunk = [next(rows) for _ in range(min(batch, count - done))]
        with db.atomic():
            sums = stats.Accumulator()
            for row, state in chunk:
                if through_apply_delta:
                    stats.apply_delta(db, None, row)
                    db.execute_sql(insert, [row[c] for c in COLUMNS])
                else:
                    sums.add(row, state)
            if not through_apply_delta:
                db.connection().executemany(insert, [[row[c] for c in COLUMNS]
                                                     for row, _ in chunk])
                sums.flush(db)
            licences = [(state["applicant_key"], lic["name"], lic.get("number"),
                         lic.get("valid_until"), row["number"], row["decided_day"])
                        for row, state in chunk for lic in state["licences"]]
            if licences:
                db.connection().executemany(licence_sql, licences)
        done += len(chunk)
        if progress:
            progress(done, count, time.perf_counter() - started)
    if not through_apply_delta:
        with db.atomic():
            stats.rebuild_repeats(db)
    return done


# -- timing -----------------------------------------------------------------------------------

def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def timed(function, runs):
    """``(p50 ms, p95 ms, last result)`` of ``runs`` calls after one warm-up call."""
    result = function()
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        result = function()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings), percentile(timings, 0.95), result


def delta_cost(db, samples=200):
    """Milliseconds ``apply_delta`` adds to a refresh: a case in handling is decided
    (rolled back afterwards)."""
    numbers = [r[0] for r in db.execute_sql(
        "SELECT number FROM case_state WHERE status = 'handling' LIMIT ?", (samples,))]
    timings = []
    for number in numbers:
        old = stats.held_row(db, number)
        new = dict(old, status=F.READY, decided_day=TODAY.isoformat())
        with db.atomic() as transaction:
            started = time.perf_counter()
            stats.apply_delta(db, stats.held_row(db, number), new)
            timings.append((time.perf_counter() - started) * 1000)
            transaction.rollback()
    return statistics.median(timings), percentile(timings, 0.95)


def run(args):
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="dashboard-"))
    directory.mkdir(parents=True, exist_ok=True)
    fresh = not (args.reuse and (directory / "store.sqlite").exists())
    if fresh and (directory / "store.sqlite").exists():
        raise SystemExit(f"{directory} already holds a store (use --reuse or another --dir)")
    county, store = make_store(directory) if fresh else _open(directory)
    db = store.db
    if fresh:
        def progress(done, total, seconds):
            print(f"\rgenerated {done:,} / {total:,} cases ({done / seconds:,.0f}/s)",
                  end="", file=sys.stderr, flush=True)
        started = time.perf_counter()
        fill(db, args.cases, seed=args.seed, progress=progress)
        print(file=sys.stderr)
        print(f"generated {args.cases:,} cases in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        db.execute_sql("ANALYZE")
    # A store made by an older version of the tables is brought up to date first.
    started = time.perf_counter()
    stats.ensure_tables(db)
    ready = time.perf_counter() - started
    if ready > 1:
        print(f"supervision tables rebuilt from case_state in {ready:.0f} s", file=sys.stderr)
    held = db.execute_sql("SELECT COUNT(*) FROM case_state").fetchone()[0]
    township = "441521101"
    results = {"machine": machine(), "cases": held, "runs": args.runs,
               "store_mib": round((directory / "store.sqlite").stat().st_size / 2 ** 20)}
    for name in stats.DIMENSIONS:
        results[f"{name}_rows"] = db.execute_sql(f"SELECT COUNT(*) FROM {name}").fetchone()[0]
    measures = [
        ("county dashboard (all time)", lambda: stats.dashboard(db, today=TODAY)),
        (f"township {township} dashboard", lambda: stats.dashboard(db, area=township,
                                                                    today=TODAY)),
        ("county dashboard 2025-03-15..2026-06-20",
         lambda: stats.dashboard(db, since="2025-03-15", until="2026-06-20", today=TODAY)),
        ("repeats within 30 days, last 90 days", lambda: stats.repeats(db, today=TODAY)),
        ("materials requested twice", lambda: stats.requested_twice(db)),
        ("proactive summary (county)", lambda: stats.proactive_summary(db, today=TODAY)),
    ]
    results["measures"] = []
    for label, function in measures:
        p50, p95, result = timed(function, args.runs)
        entry = {"label": label, "p50_ms": round(p50, 1), "p95_ms": round(p95, 1)}
        if isinstance(result, dict):
            entry["accepted"] = result["total"]["accepted"]
            entry["overdue"] = result["total"]["overdue"]
        elif isinstance(result, tuple):
            entry["rows"] = len(result[0])
        else:
            entry["rows"] = len(result)
        results["measures"].append(entry)
    p50, p95 = delta_cost(db)
    results["apply_delta_ms"] = {"p50": round(p50, 3), "p95": round(p95, 3)}
    results["directory"] = str(directory)
    store.close()
    return results


def _open(directory):
    from shared import config as cfg
    from shared.app import open_store

    store = open_store({**cfg.DEFAULTS, "DB_PATH": str(directory / "store.sqlite")})
    return None, store


def report(results):
    lines = [f"Machine: {results['machine']}",
             f"Cases in case_state: {results['cases']:,}; store {results['store_mib']:,} MiB; "
             f"aggregate rows: stats_node {results['stats_node_rows']:,}, stats_item "
             f"{results['stats_item_rows']:,}, stats_week {results['stats_week_rows']:,}",
             f"Runs per measure: {results['runs']} (after one warm-up)", "",
             "| measure | p50 ms | p95 ms | result | target |", "|---|---:|---:|---|---|"]
    for m in results["measures"]:
        result = (f"{m['accepted']:,} accepted, {m['overdue']:,} overdue" if "accepted" in m
                  else f"{m['rows']:,} rows")
        target = "< 500 ms" if "dashboard" in m["label"] else ""
        lines.append(f"| {m['label']} | {m['p50_ms']} | {m['p95_ms']} | {result} | {target} |")
    lines.append(f"| apply_delta per case change | {results['apply_delta_ms']['p50']} | "
                 f"{results['apply_delta_ms']['p95']} | | |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--dir", help="where the store is made and kept (a temporary one, "
                        "removed afterwards, if not given)")
    parser.add_argument("--reuse", action="store_true", help="time the store already in --dir")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = run(args)
    print(report(results))
    if args.dir:
        print(f"Store kept in {results['directory']} (time it again with --reuse)")
    else:
        shutil.rmtree(results["directory"], ignore_errors=True)
    if args.json:
        print(json.dumps(results, ensure_ascii=False))


if __name__ == "__main__":
    main()
