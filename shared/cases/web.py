"""What the case pages share: the node's desk, the acting staff member, names, the audit log.

Pages never build a :class:`~shared.cases.desk.CaseDesk` themselves: :func:`desk` keeps one
per app (it holds the region key read from the node directory). A node that has no region
key (not enrolled) cannot handle cases, and :func:`desk` says so in plain Chinese.
"""

import logging
from pathlib import Path

from flask import current_app

from shared import clock, errors, registry
from shared.cases.blobs import BlobStore
from shared.cases.desk import Actor, CaseDesk, CasesUnavailable
from shared.cases.scans import scan_key

logger = logging.getLogger(__name__)

NO_REGION_KEY = "本站尚未登记加入本县（没有区域密钥），不能办理办件。请先完成站点登记。"


def store_db(app=None):
    """The node's database (the pages' queries read it)."""
    return (app or current_app).extensions["store"].db


def node_code(app=None):
    """This node's division code."""
    return (app or current_app).config["NODE_CODE"]


def china_today():
    """Today's date in China time (the day every page and count speaks of)."""
    return clock.today()


def node_dir(app=None):
    """The node directory (scans and secrets live there)."""
    app = app or current_app
    found = app.config.get("NODE_DIR")
    if not found:
        raise CasesUnavailable("本站没有配置节点目录（NODE_DIR），不能保存扫描件。")
    return Path(found)


def region_key(app=None):
    """The region key of this node, or CasesUnavailable when it has none."""
    from shared.cases import personal

    app = app or current_app
    try:
        return personal.region_key_of(node_dir(app))
    except errors.ConfigurationError as exc:
        raise CasesUnavailable(NO_REGION_KEY) from exc


def desk(app=None):
    """The node's :class:`CaseDesk` (one per app)."""
    app = app or current_app
    found = app.extensions.get("case_desk")
    if found is None:
        from shared.app import work_calendar

        store = app.extensions["store"]
        key = region_key(app)
        found = CaseDesk(store, app.config, key,
                         blobs=BlobStore(node_dir(app) / "blobs", key=scan_key(key)),
                         calendar=work_calendar(app.config, store.db))
        app.extensions["case_desk"] = found
    return found


def actor(staff):
    """The :class:`Actor` of a logged-in staff member (``shared.staff.current_staff()``)."""
    return Actor(username=staff.username, name=staff.full_name or staff.username,
                 phone=staff.office_phone, department=staff.department,
                 roles=tuple(staff.roles))


def node_name(code, app=None):
    """The registered name of a node (its code when unknown)."""
    if not code:
        return ""
    app = app or current_app
    entry = registry.lookup(app.extensions["store"].db, code)
    return entry.name if entry is not None and entry.name else code


def audit_view(staff, action, subject, detail=None, app=None):
    """Write a staff view of a person's data to the hash-chained audit log."""
    from shared import audit

    app = app or current_app
    key = audit.audit_key_of(node_dir(app))
    return audit.record(app.extensions["store"].db, key, staff.username, action, subject,
                        detail or {})


def find_cases(person_key, app=None):
    """Handle anywhere: the person's cases region-wide (joined here), or what this station
    holds with a plain message when the link is down. Returns ``lookup``'s answer."""
    from shared import lookup as lookups
    from shared import nodeapi

    app = app or current_app
    store = app.extensions["store"]
    client = nodeapi.parent_client(app, timeout=lookups.LOOKUP_TIMEOUT) \
        if app.config.get("PARENT_URL") else None
    try:
        return lookups.lookup_from_station(store, nodeapi.node_clock_of_store(app),
                                           app.config, person_key, client)
    finally:
        if client is not None:
            client.close()
