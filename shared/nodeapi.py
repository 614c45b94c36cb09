"""Node-to-node endpoints under ``/sync/`` that are not the replication protocol.

``POST /sync/enrol`` enrols a new node: the county redeems the one-time code; any other
node relays the request to its parent and keeps the new registry entry at once, so the
child can sync with it before the registry comes down by replication.

``POST /sync/lookup`` answers (or relays up) a handle-anywhere look-up: node-signed
requests only, each naming the clerk at the asking station's counter (``shared.lookup``).
``GET /sync/lookups`` shows the supervisors the look-ups answered here and the alarms of
stations that asked too often.

Answers are JSON ``{"error", "reason"}`` on failure, like the ``/db`` endpoints.
"""

import json
import logging

from flask import Blueprint, current_app, render_template_string, request

from shared import clock, errors, identity, registry
from shared.enrolment import store_registry
from shared.nodeclient import NodeClient, ParentUnreachable

logger = logging.getLogger(__name__)

bp = Blueprint("nodeapi", __name__, url_prefix="/sync")

STATUS = [(errors.BadRequest, 400), (errors.Unauthorized, 401), (errors.Forbidden, 403),
          (errors.NotFound, 404), (ParentUnreachable, 503), (errors.ConfigurationError, 503)]


def _json(obj, status=200, headers=None):
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return current_app.response_class(body, status=status, headers=headers,
                                      mimetype="application/json")


@bp.errorhandler(errors.TongbanError)
def _domain_error(exc):
    if exc.error == "too_many_requests":  # lookup.LookupThrottled
        return _json({"error": exc.error, "reason": str(exc)}, 429)
    if isinstance(exc, errors.PeerError) and not isinstance(exc, ParentUnreachable):
        # The parent's refusal passes down with its status and reason.
        status = exc.status if exc.status and exc.status < 500 else 502
        return _json({"error": "upstream_refused", "reason": str(exc)}, status)
    for cls, status in STATUS:
        if isinstance(exc, cls):
            error = "parent_unreachable" if cls is ParentUnreachable else exc.error
            return _json({"error": error, "reason": str(exc)}, status)
    raise exc


def request_json():
    """The request's JSON object body, or BadRequest."""
    try:
        body = json.loads(request.get_data(cache=True) or b"null")
    except ValueError as exc:
        raise errors.BadRequest("the request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise errors.BadRequest("the request body must be a JSON object")
    return body


def node_signer(app=None):
    """This node's request signer (None when it has no key: not enrolled)."""
    app = app or current_app
    signer = app.extensions.get("node_signer")
    if signer is None and app.config.get("NODE_DIR"):
        key = identity.load_private_key(app.config["NODE_DIR"])
        if key is not None:
            signer = identity.RequestSigner(app.config["NODE_CODE"], key,
                                            clock=node_clock(app))
            app.extensions["node_signer"] = signer
    return signer


def node_clock(app=None):
    """The node's wall clock (a test may skew it: see shared.hlc)."""
    app = app or current_app
    clock = app.extensions.get("wall_clock")
    if clock is None:
        from shared.hlc import wall_clock_from_env
        clock = wall_clock_from_env()
        app.extensions["wall_clock"] = clock
    return clock


def parent_client(app=None, timeout=10.0):
    """A signed client of this node's parent."""
    app = app or current_app
    parent_url = app.config.get("PARENT_URL")
    if not parent_url:
        raise errors.ConfigurationError("this node has no parent")
    return NodeClient(parent_url, node_signer(app), timeout=timeout)


@bp.route("/enrol", methods=["POST"])
def enrol():
    """Enrol a node (the county), or relay its enrolment to the parent."""
    body = request_json()
    store = current_app.extensions["store"]
    if current_app.config["TIER"] == "county":
        key = identity.load_private_key(current_app.config["NODE_DIR"])
        region_key = identity.load_secrets(current_app.config["NODE_DIR"]).get("region_key")
        if key is None or not region_key:
            raise errors.ConfigurationError("this county has no key; run tongban init again")
        answer = registry.redeem_enrolment(store, key, body, region_key=region_key)
    else:
        client = parent_client(timeout=20.0)
        try:
            answer = client.post("/sync/enrol", body)
        finally:
            client.close()
        # Keep the new entry now: the child's first sync comes before replication would.
        store_registry(store, answer.get("registry") or [])
        store_registry(store, [answer.get("entry")])
    return _json(answer, 201)


def node_clock_of_store(app=None):
    """The node's hybrid logical clock (persisted in its store)."""
    from shared.hlc import NodeClock

    app = app or current_app
    clock = app.extensions.get("hlc")
    if clock is None:
        clock = app.extensions["hlc"] = NodeClock(app.extensions["store"], node_clock(app))
    return clock


@bp.route("/lookup", methods=["POST"])
def lookup():
    """Handle anywhere: a station asks for a person's cases region-wide."""
    from shared import auth
    from shared import lookup as lookups

    principal = auth.get_policy().authenticate(request)
    # A look-up hands over a citizen's cases: it starts at a clerk's counter and travels
    # up signed by the nodes; no account (a tablet's, a script's) may ask.
    node = principal.attributes.get("node") if principal.kind == "node" else None
    if node is None:
        raise errors.Forbidden("a look-up is made at a station's counter and relayed by "
                               "signed node requests; accounts may not ask")
    body = request_json()
    client = parent_client(timeout=lookups.LOOKUP_TIMEOUT) \
        if current_app.config.get("PARENT_URL") else None
    try:
        answer = lookups.answer_lookup(current_app.extensions["store"], node_clock_of_store(),
                                       current_app.config, node, body, client)
    finally:
        if client is not None:
            client.close()
    return _json(answer)


LOOKUPS_PAGE = """{% extends "base.html" %}
{% block title %}通办查询监督 · 通办服务站{% endblock %}
{% block heading %}通办查询监督{% endblock %}
{% block content %}
<p class="hint">本节点答复的全区通办查询（每次查询都写入审计日志）。每个站点每小时最多答复
{{ limit }} 次，超过即暂停该站点的查询并在此告警。时间均为北京时间。</p>
<h2>告警</h2>
{% if alarms %}<table id="lookup-alarms">
<tr><th>时间</th><th>站点</th><th>情况</th></tr>
{% for a in alarms %}<tr class="alarm" data-station="{{ a.station }}"><td>{{ when(a.at) }}</td>
<td>{{ a.station }}</td><td>{{ a.message }}</td></tr>{% endfor %}
</table>{% else %}<p id="no-alarms">没有告警。</p>{% endif %}
<h2>最近的查询</h2>
<table id="lookups">
<tr><th>时间</th><th>站点</th><th>发起人</th><th>结果</th></tr>
{% for l in lookups %}<tr data-station="{{ l.station }}"><td>{{ when(l.at) }}</td>
<td>{{ l.station }}</td><td>{{ l.clerk }}</td>
<td>{% if l.refused %}已拒绝（超过上限）{% else %}找到 {{ l.hits }} 件{% endif %}</td></tr>
{% endfor %}
</table>
<style>.alarm { color: #c0392b; font-weight: bold; } p.hint { color: #606266; }</style>
{% endblock %}"""


@bp.route("/lookups")
def lookups_page():
    """The supervisors' view of the look-ups answered here and of the throttle's alarms."""
    from shared import lookup as lookups
    from shared import staff

    refusal = staff.check_access(("supervisor", "county_admin"))
    if refusal is not None:
        return refusal
    db = current_app.extensions["store"].db
    return render_template_string(
        LOOKUPS_PAGE, alarms=lookups.alarms(db), lookups=lookups.recent_lookups(db),
        limit=lookups.limit_per_hour(current_app.config),
        when=lambda at: clock.format_time(at, seconds=True, label=False))


def init_app(app):
    """Register the /sync endpoints."""
    app.register_blueprint(bp)
