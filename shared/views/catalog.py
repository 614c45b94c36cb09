"""Public catalog pages (no login): browse, search, the service guide and its print view.

Every node serves them from the release in force (``shared.catalog.active``), so a village
station shows the same guide as the county. Pages are plain HTML with inline SVG (the
flowchart and the QR code): no script framework, nothing loaded from elsewhere.

The guide walks ``schema.ITEM_FIELDS`` (grouped in :data:`SECTIONS`, anything not grouped
falls into the last section), so a field added to the schema shows up without touching this
module or its templates.
"""

import logging
import re

from flask import Blueprint, Response, abort, current_app, render_template, request, url_for
from markupsafe import Markup, escape

from shared import clock
from shared.catalog import active, schema
from shared.catalog.flowchart import flowchart_svg
from shared.catalog.qr import qr_png, qr_svg

logger = logging.getLogger(__name__)

bp = Blueprint("catalog", __name__, url_prefix="/catalog")

FACET_NAMES = {"department": "部门", "life_event": "人生事件", "audience": "适用人群"}
MAX_QUERY = 100
#: Results per page of a search.
PAGE_SIZE = 20

#: The guide's sections: a title and the item fields it shows, in order.
SECTIONS = (
    ("基本信息", ("id", "name", "aliases", "item_type", "item_type_code", "basic_code",
                 "implementation_code", "exercise_level", "department", "implementing_body",
                 "service_object", "audiences", "life_events")),
    ("设定依据和受理条件", ("legal_basis", "accept_conditions", "eligibility")),
    ("申请材料", ("materials",)),
    ("办理流程", ("process_steps",)),
    ("办理时限", ("handling_type", "statutory_time_limit", "statutory_time_limit_unit",
                 "promised_time_limit", "promised_time_limit_unit", "time_limit_basis",
                 "clock_exclusions")),
    ("收费", ("fee", "fee_items")),
    ("中介服务", ("intermediary_services",)),
    ("办理方式", ("accept_tiers", "decide_tier", "one_level", "accepting_body",
                 "deciding_body", "parallel_departments", "lead_department",
                 "max_on_site_visits", "online_depth", "online_application", "proxy_allowed",
                 "appointment_allowed", "commitment_allowed", "deficiency_allowed",
                 "cross_region")),
    ("办理地点和咨询", ("location", "hours", "transit", "consult_phone", "complaint_phone")),
    ("其他", ("sources", "notes")),
)
_PLACED = {key for _, keys in SECTIONS for key in keys}
#: Schema fields no section names: shown in the last section rather than forgotten.
UNPLACED = tuple(f.key for f in schema.ITEM_FIELDS if f.key not in _PLACED)
#: Material columns of the materials table; the other material fields go to its 说明 column.
MATERIAL_COLUMNS = ("name", "material_type", "form", "copies", "necessity", "source_channel")
_MARKED = re.compile("【([^【】]*)】")


def _db():
    return current_app.extensions["store"].db


# -- formatting ------------------------------------------------------------------------------

def _empty(value):
    return value is None or value == "" or value == []


def _days(value, unit="工作日"):
    return f"{value} 个{unit}"


def format_value(field, value, record=None):
    """One value as text (a list of texts for ``lines``), the way a citizen reads it."""
    record = record or {}
    kind, key = field.kind, field.key
    if kind == "bool":
        return "是" if value else "否"
    if kind == "int":
        unit = record.get(f"{key}_unit")
        if key == "promised_time_limit" and value == 0:
            return f"即办（{_days(0, unit or '工作日')}）"
        if unit:
            return _days(value, unit)
        if key in ("days", "time_limit_days"):
            return _days(value)
        if key == "copies":
            return f"{value} 份" if value else "免提交"
        if key == "max_on_site_visits":
            return f"{value} 次"
        return str(value)
    if kind == "choice":
        if key == "decide_tier":
            return schema.TIERS.get(value, value)
        if key == "item_type_code":
            return f"{value}（{schema.ITEM_TYPES.get(value, '')}）"
        return str(value)
    if kind == "choices":
        names = schema.TIERS if key == "accept_tiers" else {}
        return "、".join(names.get(v, v) for v in value)
    if kind == "lines":
        return [str(v) for v in value]
    if kind == "record" and isinstance(value, dict):
        if key == "eligibility":
            low, high = value.get("min_age"), value.get("max_age")
            if low is not None and high is not None:
                return f"{low} 至 {high} 周岁"
            return f"年满 {low} 周岁" if low is not None else f"{high} 周岁及以下"
        return "；".join(f"{c.label}：{value[c.key]}" for c in field.columns
                        if value.get(c.key) is not None)
    return str(value)


def _table(field, rows):
    """A generic table field as ``{"headers": [...], "rows": [[cell, ...]]}``."""
    columns = [c for c in field.columns if any(not _empty(r.get(c.key)) for r in rows)]
    return {"headers": [c.label for c in columns],
            "rows": [["" if _empty(r.get(c.key)) else format_value(c, r[c.key], r)
                      for c in columns] for r in rows]}


def _materials(rows):
    """The materials table: main columns, the source (免提交 for shared ones) and notes."""
    fields = {f.key: f for f in schema.MATERIAL_FIELDS}
    result = []
    for row in rows:
        shared = row.get("source_channel") == schema.SHARED_CHANNEL
        cells = {key: format_value(fields[key], row[key], row)
                 for key in MATERIAL_COLUMNS if not _empty(row.get(key))}
        if shared:
            cells["copies"] = "免提交"
            cells["source_channel"] = (f"由{row.get('shared_from') or '相关部门'}"
                                       "提供，无需申请人提交")
        details = []
        for field in schema.MATERIAL_FIELDS:
            value = row.get(field.key)
            if field.key in MATERIAL_COLUMNS or _empty(value) or value is False or \
                    (shared and field.key == "shared_from"):
                continue
            details.append((field.label, format_value(field, value, row)))
        result.append({"cells": cells, "shared": shared, "details": details})
    return {"headers": [fields[k].label for k in MATERIAL_COLUMNS], "rows": result}


def _agency(agency_id, agencies):
    agency = agencies.get(agency_id)
    if agency is None:
        return {"id": agency_id, "name": f"{agency_id}（机构信息缺失）", "missing": True}
    return agency


def _intermediaries(rows, agencies):
    """Intermediary services, each with its agencies' names, credit status and blacklist."""
    fields = {f.key: f for f in schema.INTERMEDIARY_FIELDS}
    labels = {k: fields[k].label for k in fields}
    labels["agencies"] = "可选中介机构"  # the page names them; the field holds their ids
    return [{"label": labels,
             "values": {k: format_value(fields[k], row[k], row) for k in fields
                        if k != "agencies" and not _empty(row.get(k))},
             "agencies": [_agency(a, agencies) for a in row.get("agencies") or []]}
            for row in rows]


def guide_sections(item, agencies):
    """The guide's sections: ``[{"title", "blocks": [...]}]`` with every filled item field.

    A block is ``{"type": "fields", "rows": [(label, kind, value)]}`` for plain fields, or
    ``{"type": "table"|"materials"|"intermediaries"|"steps", "label", "value"}``.

    :param agencies: ``{agency_id: agency}`` in force.
    """
    sections = []
    for n, (title, keys) in enumerate(SECTIONS):
        if n == len(SECTIONS) - 1:
            keys = keys + UNPLACED
        blocks = []
        for key in keys:
            field = schema.FIELD_BY_KEY[key]
            value = item.get(key)
            if _empty(value):
                continue
            if field.kind == "table":
                if key == "materials":
                    kind, shown = "materials", _materials(value)
                elif key == "intermediary_services":
                    kind, shown = "intermediaries", _intermediaries(value, agencies)
                else:
                    kind, shown = ("steps" if key == "process_steps" else "table"), \
                        _table(field, value)
                blocks.append({"type": kind, "label": field.label, "value": shown})
                continue
            kind = {"lines": "links" if key == "sources" else "lines",
                    "longtext": "longtext"}.get(field.kind, "text")
            if not blocks or blocks[-1]["type"] != "fields":
                blocks.append({"type": "fields", "rows": []})
            blocks[-1]["rows"].append((field.label, kind, format_value(field, value, item)))
        if blocks:
            sections.append({"title": title, "blocks": blocks})
    return sections


def promised_text(item):
    """The promised time limit as a list shows it: 即办, or N 个工作日/自然日."""
    if item["handling_type"] == "即办件" or item["promised_time_limit"] == 0:
        return "即办"
    return _days(item["promised_time_limit"], item["promised_time_limit_unit"])


def snippet_html(snippet):
    """A search snippet with its 【】 marks as ``<mark>``: escaped first, then marked."""
    return Markup(_MARKED.sub(r"<mark>\1</mark>", str(escape(snippet or ""))))


def highlight(text, words):
    """``text`` escaped, with every occurrence of ``words`` wrapped in ``<mark>``."""
    words = sorted({w for w in words if w}, key=len, reverse=True)
    if not words:
        return escape(text)
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    parts, pos = [], 0
    for match in pattern.finditer(text):
        parts.append(escape(text[pos:match.start()]))
        parts.append(Markup("<mark>%s</mark>") % match.group())
        pos = match.end()
    parts.append(escape(text[pos:]))
    return Markup("").join(parts)


def _match_context(item, words, width=12):
    """Where a word (a short one the full-text snippet skips) occurs outside the name."""
    texts = [item.get("department"), item.get("implementing_body"),
             *(m["name"] for m in item.get("materials") or ()),
             *(item.get("accept_conditions") or ()), *(item.get("legal_basis") or ()),
             *(item.get("life_events") or ()), *(item.get("audiences") or ()),
             item.get("notes")]
    for text in texts:
        for word in words:
            at = (text or "").find(word)
            if at >= 0:
                start, end = max(0, at - width), at + len(word) + width
                return ("…" if start else "") + text[start:at] + f"【{word}】" + \
                    text[at + len(word):end] + ("…" if end < len(text) else "")
    return ""


def _listing(db, summaries, words=()):
    """Rows of an item list: the summary, its promised limit and (searching) highlights."""
    rows = []
    # the summary lacks the promised limit's unit: the full items, in one query
    items = active.active_item_map(db, [s["item_id"] for s in summaries])
    for summary in summaries:
        item = items.get(summary["item_id"])
        if item is None:  # a release activated between the two reads
            continue
        snippet = summary.get("snippet")
        aliases = [a for a in item.get("aliases") or () if any(w in a for w in words)]
        if words and aliases and not any(w in item["name"] for w in words):
            # found by a short name people use: say which (the body may not hold it)
            snippet = "常用简称：" + "、".join(f"【{a}】" for a in aliases)
        elif words and not snippet and not any(w in item["name"] for w in words):
            snippet = _match_context(item, words)
        rows.append({**summary, "promised_text": promised_text(item),
                     "name_html": highlight(summary["name"], words),
                     "snippet_html": snippet_html(snippet) if snippet else None})
    return rows


def release_info(db):
    """The release in force and the verification state, as the pages show them."""
    status = active.catalog_status(db, alarms=0)
    release = status["active"]
    info = {"release": release, "date": None, "failed": status["state"] == active.FAILED}
    if release:
        try:  # the release's date in Beijing time (a naive time is UTC, as everywhere)
            moment = clock.beijing(release["time"])
            info["date"] = f"{moment.year}年{moment.month}月{moment.day}日"
        except (TypeError, ValueError):
            info["date"] = str(release["time"])
    return info


def _load_item(item_id):
    item = active.active_item(_db(), item_id)
    if item is None:
        abort(404)
    return item


# -- pages -----------------------------------------------------------------------------------

@bp.context_processor
def _catalog_context():
    return {"catalog": release_info(_db()), "facet_names": FACET_NAMES}


@bp.route("")
def index():
    """Search box, browsing by department, life event and audience, the release in force."""
    return render_template("catalog/index.html", facets=active.facet_counts(_db()))


@bp.route("/browse/<facet>/<path:value>")
def browse(facet, value):
    """The items of one department, life event or audience."""
    if facet not in FACET_NAMES:
        abort(404)
    db = _db()
    items = _listing(db, active.active_items(db, facet, value))
    if not items:
        abort(404)
    return render_template("catalog/browse.html", facet=facet, value=value, items=items)


@bp.route("/search")
def search():
    """Search the catalog in force; partial Chinese words match."""
    query = (request.args.get("q") or "").strip()
    if len(query) > MAX_QUERY:
        return render_template("catalog/search.html", q=query[:MAX_QUERY], items=[],
                               error=f"搜索词太长，请不要超过 {MAX_QUERY} 个字"), 400
    db = _db()
    words = query.split()
    page = request.args.get("page", "1")
    page = int(page) if page.isdigit() and 0 < int(page) < 10000 else 1
    total = active.search_count(db, query) if query else 0
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(page, pages)
    found = active.search(db, query, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE) \
        if total else []
    items = _listing(db, found, words)
    common = active.common_words(db, query) if total else []
    return render_template("catalog/search.html", q=query, items=items, error=None,
                           total=total, page=page, pages=pages, page_size=PAGE_SIZE,
                           common=common)


def _guide_context(item_id):
    db = _db()
    item = _load_item(item_id)
    agencies = {a["id"]: a for a in active.active_agencies(db)}
    page_url = url_for("catalog.item", item_id=item["id"], _external=True)
    return {
        "item": item,
        "sections": guide_sections(item, agencies),
        "flowchart": Markup(flowchart_svg(item.get("process_steps") or [], title=item["name"])),
        "qr": Markup(qr_svg(page_url)),
        "page_url": page_url,
    }


@bp.route("/item/<item_id>")
def item(item_id):
    """The complete service guide of one item."""
    return render_template("catalog/item.html", **_guide_context(item_id))


@bp.route("/item/<item_id>/print")
def print_view(item_id):
    """The guide laid out for A4 paper."""
    return render_template("catalog/print.html", **_guide_context(item_id))


@bp.route("/item/<item_id>/flowchart.svg")
def flowchart(item_id):
    """The item's flowchart as an SVG file."""
    item = _load_item(item_id)
    svg = flowchart_svg(item.get("process_steps") or [], title=item["name"])
    return Response('<?xml version="1.0" encoding="UTF-8"?>\n' + svg,
                    mimetype="image/svg+xml")


@bp.route("/item/<item_id>/qr.png")
def qr(item_id):
    """A PNG QR code of the guide's address."""
    item = _load_item(item_id)
    return Response(qr_png(url_for("catalog.item", item_id=item["id"], _external=True)),
                    mimetype="image/png")


@bp.errorhandler(404)
def not_found(error):
    """Unknown item, facet or value: a Chinese page with a way back."""
    return render_template("catalog/not_found.html"), 404


def init_app(app):
    """Register the public catalog pages."""
    app.register_blueprint(bp)
