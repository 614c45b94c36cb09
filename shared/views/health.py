"""``/healthz`` and ``/metrics``: what whoever monitors the region polls.

``GET /healthz`` answers anyone (a monitoring script has no account) with three checks and
nothing else — no codes, paths, names or errors::

    {"status": "ok" | "degraded" | "fail",
     "checks": {"store_writable": {"status": "ok", "value": true},
                "syncd_heartbeat_age_seconds": {"status": "ok", "value": 12.5},
                "disk_free_bytes": {"status": "ok", "value": 81234567168,
                                    "threshold": 536870912}}}

The overall status is the worst check's; HTTP 200 for ok and degraded, 503 for fail. A
store that takes no write within ``HEALTH_WRITE_TIMEOUT`` seconds fails (cases cannot be
accepted); syncd silent for longer than :data:`shared.syncstatus.STALE_AFTER` (or never
run) and less free disk than ``HEALTH_DISK_FREE_MIN_BYTES`` are degraded: the station
still accepts cases, but someone should look.

``GET /metrics`` is the Prometheus text exposition format (0.0.4), for a logged-in staff
member or a scraper on the machine itself (loopback); anyone else gets 403. The peer is
``request.remote_addr`` as waitress saw it: serving.py sets no trusted proxy, so an
``X-Forwarded-For`` header changes nothing.
"""

import logging
import math
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from flask import Blueprint, current_app, g, jsonify, request

from shared import clock, heartbeat, syncstatus
from shared import db as dbmod
from shared.staff import current_staff

logger = logging.getLogger(__name__)
bp = Blueprint("health", __name__)

OK, DEGRADED, FAIL = "ok", "degraded", "fail"
_RANK = {OK: 0, DEGRADED: 1, FAIL: 2}
#: A probe write younger than this (seconds) answers for the next /healthz: a flood of
#: unauthenticated requests costs at most one write (and fsync) per interval.
PROBE_REUSE = 2.0
PROBE_TABLE = "CREATE TABLE IF NOT EXISTS health_probe (id INTEGER PRIMARY KEY, at REAL)"
#: Upper bounds (seconds) of the request latency histogram (Prometheus' defaults).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FORBIDDEN = "只有本机或已登录的工作人员可以查看运行指标。"


# -- /healthz ---------------------------------------------------------------------------

class WriteProbe:
    """A real write to the store through a connection of its own (so a held write lock
    cannot make the answer wait for the store's 30 s busy timeout)."""

    def __init__(self, path, timeout):
        self.path = str(path)
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._last = None  # (monotonic time, result)

    def __call__(self):
        """True when a write committed within the timeout."""
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < PROBE_REUSE:
                return self._last[1]
            result = self._write()
            self._last = (time.monotonic(), result)
            return result

    def _write(self):
        try:
            # mode=rw: a store that has gone is a failed check, never a new empty file.
            conn = sqlite3.connect(f"{Path(self.path).resolve().as_uri()}?mode=rw", uri=True,
                                   timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            logger.warning("health probe: cannot open the store: %s", exc)
            return False
        try:
            conn.execute(f"PRAGMA synchronous = {dbmod.pragmas()['synchronous']}")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO health_probe (id, at) VALUES (1, ?)",
                         (clock.time(),))
            conn.execute("COMMIT")
            return True
        except sqlite3.Error as exc:
            logger.warning("health probe: the store takes no write: %s", exc)
            return False
        finally:
            conn.close()


def _check(status, value, **extra):
    return {"status": status, "value": value, **extra}


def heartbeat_age(db, now=None):
    """Seconds since syncd's last heartbeat in ``db``, or None when it never beat."""
    at = heartbeat.last(db, "syncd")
    if at is None:
        return None
    return max(0.0, (clock.time() if now is None else now) - at)


def disk_free(path):
    """Free bytes on the filesystem holding ``path`` (for an unprivileged user)."""
    return shutil.disk_usage(Path(path).parent).free


def health_report(app=None):
    """``{"status", "checks"}`` of this node (see the module's docstring)."""
    app = app or current_app
    store = app.extensions["store"]
    checks = {}
    try:
        writable = app.extensions["health_probe"]()
    except Exception:  # noqa: BLE001 - a check that breaks is a failed check
        logger.exception("health: store check")
        writable = False
    checks["store_writable"] = _check(OK if writable else FAIL, writable)
    try:
        age = heartbeat_age(store.db)
        fresh = age is not None and age <= syncstatus.STALE_AFTER
        checks["syncd_heartbeat_age_seconds"] = _check(
            OK if fresh else DEGRADED, None if age is None else round(age, 1),
            threshold=syncstatus.STALE_AFTER)
    except Exception:  # noqa: BLE001
        logger.exception("health: heartbeat check")
        checks["syncd_heartbeat_age_seconds"] = _check(FAIL, None)
    threshold = int(app.config["HEALTH_DISK_FREE_MIN_BYTES"])
    try:
        free = disk_free(app.config["DB_PATH"])
        checks["disk_free_bytes"] = _check(OK if free >= threshold else DEGRADED, free,
                                           threshold=threshold)
    except OSError:
        logger.exception("health: disk check")
        checks["disk_free_bytes"] = _check(FAIL, None, threshold=threshold)
    status = max((c["status"] for c in checks.values()), key=_RANK.__getitem__)
    return {"status": status, "checks": checks}


@bp.route("/healthz")
def healthz():
    """The node's health for a monitoring script: 200 (ok, degraded) or 503 (fail)."""
    report = health_report()
    response = jsonify(report)
    response.status_code = 503 if report["status"] == FAIL else 200
    response.headers["Cache-Control"] = "no-store"
    return response


# -- request latency ------------------------------------------------------------------------

class RequestMetrics:
    """Request counts and latency histograms by route template and method; thread-safe."""

    def __init__(self, buckets=BUCKETS):
        self.buckets = tuple(buckets)
        self._lock = threading.Lock()
        self._histograms = {}  # (route, method) -> [bucket counts..., +Inf count], sum
        self._counts = {}  # (route, method, status code) -> requests

    def observe(self, route, method, code, seconds):
        """Count one answered request that took ``seconds``."""
        with self._lock:
            entry = self._histograms.get((route, method))
            if entry is None:
                entry = self._histograms[(route, method)] = [[0] * (len(self.buckets) + 1), 0.0]
            counts = entry[0]
            for index, bound in enumerate(self.buckets):
                if seconds <= bound:
                    counts[index] += 1
            counts[-1] += 1
            entry[1] += seconds
            key = (route, method, str(code))
            self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self):
        """``(histograms, counts)`` copied under the lock."""
        with self._lock:
            histograms = {k: ([*v[0]], v[1]) for k, v in self._histograms.items()}
            return histograms, dict(self._counts)


def _started():
    g._health_started = time.perf_counter()


def _observed(response):
    started = g.pop("_health_started", None)
    if started is not None:
        rule = request.url_rule
        # The route's template, never the path: a path of the client's choosing would
        # make a series per URL (and per scanned 404).
        route = rule.rule if rule is not None else "unmatched"
        current_app.extensions["request_metrics"].observe(
            route, request.method, response.status_code, time.perf_counter() - started)
    return response


# -- /metrics -----------------------------------------------------------------------------

def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)


class Exposition:
    """Lines of the text format, one family at a time (HELP and TYPE first)."""

    def __init__(self):
        self.lines = []

    def family(self, name, kind, help_text, samples):
        """``samples``: ``[(labels dict, value)]`` or ``[(suffix, labels, value)]``."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for sample in samples:
            suffix, labels, value = sample if len(sample) == 3 else ("", *sample)
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{suffix}{{{text}}} {_number(value)}" if text
                              else f"{name}{suffix} {_number(value)}")

    def text(self):
        return "\n".join(self.lines) + "\n"


def _request_families(out, metrics):
    histograms, counts = metrics.snapshot()
    samples = []
    for (route, method), (buckets, total) in sorted(histograms.items()):
        labels = {"route": route, "method": method}
        for bound, count in zip((*metrics.buckets, float("inf")), buckets):
            samples.append(("_bucket", {**labels, "le": _number(float(bound))}, count))
        samples.append(("_sum", labels, total))
        samples.append(("_count", labels, buckets[-1]))
    out.family("tongban_http_request_duration_seconds", "histogram",
               "Seconds from a request's arrival to its answer, by route and method.", samples)
    out.family("tongban_http_requests_total", "counter",
               "Requests answered, by route, method and status code.",
               [({"route": r, "method": m, "code": c}, n)
                for (r, m, c), n in sorted(counts.items())])


def _sync_families(out, store, config, now):
    update_seq = store.update_seq()
    out.family("tongban_store_update_seq", "gauge", "The store's update sequence.",
               [({}, update_seq)])
    # What this process's connection really runs with (a receipt's durability rests on it).
    synchronous = store.db.execute_sql("PRAGMA synchronous").fetchone()[0]
    out.family("tongban_store_synchronous", "gauge",
               "PRAGMA synchronous of the store connection: 1 normal, 2 full, 3 extra.",
               [({}, synchronous)])
    rows = syncstatus.LinkStatusTable(store.db).all()
    views = [syncstatus.link_view(row, now) for row in rows]
    out.family("tongban_sync_link_up", "gauge",
               "1 when the link's last round succeeded and syncd is running.",
               [({"link": v["link"]}, v["state"] == "up" and not v["stale"]) for v in views])
    out.family("tongban_sync_lag_seqs", "gauge",
               "Local update sequences not yet pushed over the link.",
               [({"link": r["link"], "direction": "push"}, max(0, update_seq - r["push_seq"]))
                for r in rows if r.get("push_seq") is not None])
    waiting = []
    for row in rows:
        for direction in ("push", "pull"):
            if row.get(f"pending_{direction}") is not None:
                waiting.append(({"link": row["link"], "direction": direction},
                                row[f"pending_{direction}"]))
    out.family("tongban_sync_pending_documents", "gauge",
               "Documents waiting to be replicated over the link, as syncd last counted.",
               waiting)
    out.family("tongban_sync_last_success_age_seconds", "gauge",
               "Seconds since the link's last successful round.",
               [({"link": r["link"]}, max(0.0, now - r["last_success"]))
                for r in rows if r.get("last_success")])
    age = heartbeat_age(store.db, now)
    out.family("tongban_syncd_heartbeat_age_seconds", "gauge",
               "Seconds since syncd last showed it runs (absent: never).",
               [] if age is None else [({}, age)])
    if config.get("PARENT_URL"):
        unsent = syncstatus.unsent_cases(store, config["NODE_CODE"], now=now)
        out.family("tongban_unsent_cases", "gauge",
                   "Cases written here that the parent has not received yet.",
                   [({}, unsent["count"])])
    nodes = syncstatus.node_overview(store, config.get("NODE_CODE"), now,
                                     offline_after=config.get("NODE_OFFLINE_AFTER"))
    if nodes:
        online = sum(1 for n in nodes if n["online"])
        out.family("tongban_nodes_below", "gauge", "Nodes below this one, online or not.",
                   [({"state": "online"}, online), ({"state": "offline"}, len(nodes) - online)])


def _case_families(out, store):
    from shared.cases import fold as F
    from shared.cases.supervision import red_cards_waiting

    db = store.db
    marks = ",".join("?" * len(F.OPEN_STATUSES))
    held = dict(db.execute_sql(
        f"SELECT status, count(*) FROM case_state WHERE status IN ({marks}) GROUP BY status",
        F.OPEN_STATUSES).fetchall())
    out.family("tongban_cases_open", "gauge", "Open cases held here, by status.",
               [({"status": s}, held.get(s, 0)) for s in F.OPEN_STATUSES])
    carded = dict(db.execute_sql(
        "SELECT json_extract(c.value, '$.color'), count(DISTINCT s.number) "
        "FROM case_state s, json_each(s.state, '$.cards') c WHERE s.status = ? "
        "AND json_extract(c.value, '$.due') = s.due GROUP BY 1", (F.HANDLING,)).fetchall())
    out.family("tongban_cases_carded", "gauge",
               "Cases in handling carrying a yellow or red card for their due day.",
               [({"color": color}, carded.get(color, 0)) for color in ("yellow", "red")])
    out.family("tongban_red_cards_waiting", "gauge",
               "Red cards without a supervisor's follow-up note.",
               [({}, len(red_cards_waiting(db)))])


def _alarm_families(out, store):
    from shared.catalog.active import OK as CATALOG_OK

    catalog = syncstatus.catalog_report(store.db)
    alarms = store.db.execute_sql("SELECT count(*) FROM catalog_alarm").fetchone()[0]
    out.family("tongban_catalog_verified", "gauge",
               "1 when a verified catalog release is in force.",
               [({}, catalog["state"] == CATALOG_OK)])
    out.family("tongban_catalog_alarms_total", "counter",
               "Catalog documents refused (bad signature, hash mismatch).", [({}, alarms)])
    calendar = syncstatus.calendar_report(store.db)
    out.family("tongban_calendar_warning", "gauge",
               "1 when the working-day calendar ends soon (next year not published).",
               [({}, calendar["warning"] is not None)])
    out.family("tongban_cases_provisional_due", "gauge",
               "Cases in handling whose due date is provisional.",
               [({}, calendar["provisional"])])


def _restart_family(out, config):
    from shared import supervisor

    state = supervisor.read_state(config["NODE_DIR"]) if config.get("NODE_DIR") else None
    children = (state or {}).get("children") or {}
    samples = []
    for name in supervisor.CHILDREN:
        restarts = (children.get(name) or {}).get("restarts") if isinstance(children, dict) \
            else None
        samples.append(({"child": name}, restarts if isinstance(restarts, int) else 0))
    out.family("tongban_restarts_total", "counter",
               "Restarts of each child by `tongban run` (run-state.json; 0 without it).",
               samples)


def metrics_text(app=None):
    """This node's metrics in the Prometheus text format."""
    app = app or current_app
    store, config, now = app.extensions["store"], app.config, clock.time()
    out = Exposition()
    _request_families(out, app.extensions["request_metrics"])
    for name, build in (("sync", lambda: _sync_families(out, store, config, now)),
                        ("cases", lambda: _case_families(out, store)),
                        ("alarms", lambda: _alarm_families(out, store)),
                        ("restarts", lambda: _restart_family(out, config))):
        mark = len(out.lines)
        try:
            build()
        except Exception:  # noqa: BLE001 - one broken family must not hide the others
            logger.exception("metrics: %s", name)
            del out.lines[mark:]
    try:
        out.family("tongban_disk_free_bytes", "gauge",
                   "Free bytes on the store's filesystem.",
                   [({}, disk_free(config["DB_PATH"]))])
    except OSError:
        logger.exception("metrics: disk")
    return out.text()


def may_read_metrics():
    """Loopback peers (unless ``METRICS_FROM_LOOPBACK`` is off) and logged-in staff only;
    the peer is the one waitress saw, never a forwarded-for header."""
    local = request.remote_addr in LOOPBACK and current_app.config["METRICS_FROM_LOOPBACK"]
    return local or current_staff() is not None


@bp.route("/metrics")
def metrics():
    """The metrics (see the module's docstring); 403 for anyone else."""
    if not may_read_metrics():
        response = jsonify({"error": "forbidden", "reason": FORBIDDEN})
        response.status_code = 403
        return response
    return current_app.response_class(metrics_text(), mimetype=None,
                                      headers={"Content-Type": CONTENT_TYPE,
                                               "Cache-Control": "no-store"})


def init_app(app):
    """Register the pages, the latency hooks and the store probe."""
    store = app.extensions["store"]
    with store.db.atomic():
        store.db.execute_sql(PROBE_TABLE)
        heartbeat.ensure(store.db)
    app.extensions["health_probe"] = WriteProbe(app.config["DB_PATH"],
                                                app.config["HEALTH_WRITE_TIMEOUT"])
    app.extensions["request_metrics"] = RequestMetrics()
    app.before_request(_started)
    app.after_request(_observed)
    app.register_blueprint(bp)
