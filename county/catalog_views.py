"""Catalog authoring at the county (目录编辑): drafts, the diff, proposing and approving.

Every page here is generated from the schema through :mod:`shared.catalog.forms` (a record
as form text and back, and as people read it).

The pages only parse, call :mod:`shared.catalog.publish` and render; the rules (validation,
two-person approval, signing) live there.
"""

import difflib
import logging
import re

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for
from markupsafe import Markup, escape

from shared import clock, errors, identity
from shared.catalog import active, publish, schema
from shared.catalog.flowchart import flowchart_svg
from shared.catalog.forms import (
    KIND_FIELDS,
    changed_fields,
    choice_name,
    display_rows,
    display_value,
    errors_by_field,
    form_values,
    parse_form,
    submitted_values,
    table_hint,
)
from shared.catalog.qr import qr_svg
from shared.staff import message_page, staff_required
from shared.views import catalog as guide_pages

logger = logging.getLogger(__name__)

bp = Blueprint("county_catalog", __name__, url_prefix="/admin/catalog",
               template_folder="templates")

EDITOR, APPROVER = publish.EDITOR_ROLE, publish.APPROVER_ROLE
KIND_NAMES = {"item": "事项", "agency": "中介机构", "calendar": "工作日历"}
CHANGE_NAMES = {"added": "草稿新增", "changed": "已修改", "removed": "待删除"}
PUBLISHED_NAME = "已发布"

# -- helpers of the views ------------------------------------------------------------------

def _db():
    return current_app.extensions["store"].db


def _when(moment):
    """A time as staff read it: ``2026-12-04 17:50（北京时间）`` ("" for none)."""
    if not moment:
        return ""
    return clock.format_time(moment)


@bp.context_processor
def _helpers():
    return {"when": _when, "kind_names": KIND_NAMES, "change_names": CHANGE_NAMES,
            "choice_name": choice_name, "table_hint": table_hint,
            "EDITOR": EDITOR, "APPROVER": APPROVER,
            "calendar_pages": "county_calendar" in current_app.blueprints}


def _published(db, kind, record_id):
    items, agencies = publish.published_records(db)
    for record in (items if kind == "item" else agencies):
        if record["id"] == record_id:
            return record
    return None


def _not_found(kind, record_id):
    return message_page(404, "未找到", f"工作目录中没有编号为 {record_id} 的{KIND_NAMES[kind]}"
                        "（可能已标记删除）。")


def _render_form(kind, values, found=(), record_id=None, status=200):
    fields = KIND_FIELDS[kind]
    grouped = errors_by_field(fields, found)
    return render_template("county/catalog/form.html", kind=kind, fields=fields,
                           values=values, errors=grouped, general=grouped.get("", []),
                           record_id=record_id), status


def _check(kind, record):
    if kind == "item":
        return schema.validate_item(record)
    return schema.validate_agency(record)


# -- pages ---------------------------------------------------------------------------------

@bp.route("/")
@staff_required(EDITOR, APPROVER)
def index():
    """Every record of the working copy with its status, the release in force, the proposal."""
    db = _db()
    query = request.args.get("q", "").strip()
    changes = publish.diff(db)
    status = {(c["kind"], c["id"]): c["change"] for c in changes}
    drafted = {(d.kind, d.record_id) for d in publish.CatalogDraft.select()}
    items, agencies = publish.working_copy(db)
    removed = {"item": [], "agency": []}
    for change in changes:
        if change["change"] == "removed":
            removed[change["kind"]].append(change["before"])
    listing = {}
    for kind, records in (("item", items), ("agency", agencies)):
        rows = []
        for record in sorted(records + removed[kind], key=lambda r: r["id"]):
            if query and query.lower() not in record["id"].lower() and \
                    query not in record.get("name", ""):
                continue
            change = status.get((kind, record["id"]))
            rows.append({"id": record["id"], "name": record.get("name", ""),
                         "department": record.get("department", ""), "change": change,
                         "status": CHANGE_NAMES.get(change, PUBLISHED_NAME),
                         "drafted": (kind, record["id"]) in drafted})
        listing[kind] = rows
    counts = {name: sum(1 for c in changes if c["change"] == change)
              for change, name in CHANGE_NAMES.items()}
    recent = publish.ReleaseProposal.select().order_by(
        publish.ReleaseProposal.id.desc()).limit(5)
    return render_template("county/catalog/index.html", listing=listing, query=query,
                           status=active.catalog_status(db), counts=counts,
                           pending=len(changes), proposal=publish.open_proposal(),
                           calendar_pending=len(publish.calendar_diff(db)),
                           recent=list(recent))


@bp.route("/<any(item, agency):kind>/new", methods=["GET", "POST"])
@staff_required(EDITOR)
def create(kind):
    """A new record: the empty form, and saving it as a draft."""
    fields = KIND_FIELDS[kind]
    if request.method == "GET":
        return _render_form(kind, form_values(fields, {}))
    db = _db()
    record, found = parse_form(fields, request.form)
    found += _check(kind, record)
    record_id = record.get("id")
    if isinstance(record_id, str) and publish.working_record(db, kind, record_id) is not None:
        found.append(schema.FieldError("id", f"{fields[0].label}：{record_id} 已存在，"
                                       "请改用其他编号或编辑原有记录"))
    if not found:
        try:
            publish.save_draft(db, kind, record, g.staff.username)
        except schema.CatalogInvalid as invalid:
            found = invalid.errors
    if found:
        return _render_form(kind, submitted_values(fields, request.form), found, status=422)
    logger.info("%s drafted new %s %s", g.staff.username, kind, record_id)
    flash(f"已保存草稿：新增{KIND_NAMES[kind]} {record_id}（{record.get('name', '')}）", "ok")
    return redirect(url_for(".index"))


@bp.route("/<any(item, agency):kind>/<record_id>/edit", methods=["GET", "POST"])
@staff_required(EDITOR)
def edit(kind, record_id):
    """Edit a record of the working copy; saving keeps the change as a draft."""
    fields = KIND_FIELDS[kind]
    db = _db()
    current = publish.working_record(db, kind, record_id)
    if current is None:
        return _not_found(kind, record_id)
    if request.method == "GET":
        return _render_form(kind, form_values(fields, current), record_id=record_id)
    record, found = parse_form(fields, request.form, current)
    record["id"] = record_id  # the id is not editable: a new id is a new record
    found += _check(kind, record)
    if found:
        values = submitted_values(fields, request.form)
        values["id"] = record_id
        return _render_form(kind, values, found, record_id=record_id, status=422)
    name = f"{KIND_NAMES[kind]} {record_id}（{record.get('name', '')}）"
    if record == current:
        flash(f"{name} 没有改动，未保存", "ok")
    elif record == _published(db, kind, record_id):
        publish.discard_draft(db, kind, record_id)
        flash(f"{name} 已改回现行内容，草稿已撤销", "ok")
    else:
        try:
            publish.save_draft(db, kind, record, g.staff.username)
        except schema.CatalogInvalid as invalid:
            return _render_form(kind, submitted_values(fields, request.form), invalid.errors,
                                record_id=record_id, status=422)
        logger.info("%s drafted a change of %s %s", g.staff.username, kind, record_id)
        flash(f"已保存草稿：{name}", "ok")
    return redirect(url_for(".index"))


@bp.route("/<any(item, agency):kind>/<record_id>/remove", methods=["POST"])
@staff_required(EDITOR)
def remove(kind, record_id):
    """Draft the removal of a record (a record never published just loses its draft)."""
    db = _db()
    if publish.working_record(db, kind, record_id) is None:
        return _not_found(kind, record_id)
    if _published(db, kind, record_id) is None:
        publish.discard_draft(db, kind, record_id)
        flash(f"已删除未发布的{KIND_NAMES[kind]}草稿 {record_id}", "ok")
    else:
        publish.remove_record(db, kind, record_id, g.staff.username)
        flash(f"{KIND_NAMES[kind]} {record_id} 已标记删除，发布后生效", "ok")
    logger.info("%s removed %s %s", g.staff.username, kind, record_id)
    return redirect(url_for(".index"))


@bp.route("/<any(item, agency):kind>/<record_id>/discard", methods=["POST"])
@staff_required(EDITOR)
def discard(kind, record_id):
    """Drop the draft of a record; the version in force stays."""
    db = _db()
    exists = publish.CatalogDraft.select().where(
        (publish.CatalogDraft.kind == kind) &
        (publish.CatalogDraft.record_id == record_id)).exists()
    if not exists:
        flash(f"{KIND_NAMES[kind]} {record_id} 没有草稿，无需撤销", "error")
    else:
        publish.discard_draft(db, kind, record_id)
        flash(f"已撤销 {KIND_NAMES[kind]} {record_id} 的草稿", "ok")
    return redirect(url_for(".index"))


def _guide_context(db, kind, record_id):
    """What the public guide template needs, for a record of the working copy (or None).

    The version shown is the one the record will get when published: the one in force if
    the draft does not change it, the next one otherwise.
    """
    items, agencies = publish.working_copy(db)
    record = next((r for r in (items if kind == "item" else agencies)
                   if r["id"] == record_id), None)
    if record is None or kind != "item":
        return record, {}
    in_force = active.active_item(db, record_id) or {}
    published = {k: v for k, v in in_force.items()
                 if k not in schema.PUBLISHED_KEYS + ("doc_id", "hash")}
    version = in_force.get("version", 0) + (0 if published == record else 1)
    page_url = ""
    if "catalog" in current_app.blueprints:
        page_url = url_for("catalog.item", item_id=record_id, _external=True)
    guide = {
        "item": {**record, "version": version},
        "sections": guide_pages.guide_sections(record, {a["id"]: a for a in agencies}),
        "flowchart": Markup(flowchart_svg(record.get("process_steps") or [],
                                          title=record["name"])),
        "qr": Markup(qr_svg(page_url)) if page_url else "",
        "page_url": page_url or "（发布后生成）",
        "catalog": {"release": None, "date": None, "failed": False},
    }
    return record, guide


@bp.route("/<any(item, agency):kind>/<record_id>/preview")
@staff_required(EDITOR, APPROVER)
def preview(kind, record_id):
    """The record of the working copy as a citizen would read it, then every field."""
    record, guide = _guide_context(_db(), kind, record_id)
    if record is None:
        return _not_found(kind, record_id)
    return render_template("county/catalog/preview.html", kind=kind, record=record,
                           guide=guide, rows=display_rows(KIND_FIELDS[kind], record))


def _render_diff(found=(), refused=None, note="", status=200):
    changes = publish.diff(_db())
    for change in changes:
        if change["change"] == "changed":
            change["rows"] = changed_fields(change["kind"], change["before"], change["after"])
    return render_template("county/catalog/diff.html", changes=changes, found=list(found),
                           refused=refused, note=note,
                           calendar_changes=publish.calendar_diff(_db()),
                           proposal=publish.open_proposal()), status


@bp.route("/diff")
@staff_required(EDITOR, APPROVER)
def diff():
    """The working copy against the release in force, field by field."""
    return _render_diff()


@bp.route("/propose", methods=["POST"])
@staff_required(EDITOR)
def propose():
    """Freeze the working copy as the next release, to be approved by someone else."""
    note = request.form.get("note", "").strip()
    try:
        proposal = publish.propose(_db(), g.staff.username, note)
    except schema.CatalogInvalid as invalid:
        return _render_diff(found=invalid.errors, note=note, status=422)
    except publish.PublishRefused as refused:
        return _render_diff(refused=refused.reason, note=note, status=409)
    flash(f"已提交第 {proposal.number} 号发布，等待审批人员审批", "ok")
    return redirect(url_for(".proposal", proposal_id=proposal.id))


#: A token of the highlighted difference: a run of Latin letters and digits (a number such
#: as ``8:30`` or a word changes as a whole), a run of blanks, or any other one character
#: (each Chinese character is a word of its own).
DIFF_TOKEN = re.compile(r"[A-Za-z0-9_.:/@%+-]+|[ \t]+|.", re.S)
EMPTY_VALUE = "（空）"


def _wrap(tag, text):
    """``text`` HTML-escaped, inside ``<tag>`` unless empty."""
    return Markup(f'<{tag} class="diff-{tag}">{escape(text)}</{tag}>') if text else Markup("")


def _marked_span(before, after):
    """A replaced span of text: the characters (tokens) that differ marked, unless the two
    have too little in common to be read as one edited text."""
    old, new = DIFF_TOKEN.findall(before), DIFF_TOKEN.findall(after)
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    if matcher.ratio() < 0.3:
        return _wrap("del", before), _wrap("ins", after)
    old_out, new_out = [], []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            old_out.append(escape("".join(old[i1:i2])))
            new_out.append(escape("".join(new[j1:j2])))
        else:
            old_out.append(_wrap("del", "".join(old[i1:i2])))
            new_out.append(_wrap("ins", "".join(new[j1:j2])))
    return Markup("").join(old_out), Markup("").join(new_out)


def _marked(before, after):
    """``(old html, new html)``: both texts in full, HTML-escaped, with what differs marked
    (``<del>`` in the old, ``<ins>`` in the new). Lines are compared first (a list or a
    table is one entry a line), then the characters of the lines that changed."""
    if not before or not after:
        return (_wrap("del", before) if before else Markup(EMPTY_VALUE),
                _wrap("ins", after) if after else Markup(EMPTY_VALUE))
    old_lines, new_lines = before.split("\n"), after.split("\n")
    old_out, new_out = [], []
    matcher = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        old_text, new_text = "\n".join(old_lines[i1:i2]), "\n".join(new_lines[j1:j2])
        if tag == "equal":
            old_out.append(escape(old_text))
            new_out.append(escape(new_text))
        elif tag == "replace":
            marked = _marked_span(old_text, new_text)
            old_out.append(marked[0])
            new_out.append(marked[1])
        elif tag == "delete":
            old_out.append(_wrap("del", old_text))
        else:
            new_out.append(_wrap("ins", new_text))
    return Markup("\n").join(old_out), Markup("\n").join(new_out)


def _review(proposal):
    """The proposal's changes as the approver reads them: per changed record, each changed
    field with the value in force and the proposed one, marked; added records in full."""
    found = publish.proposal_changes(current_app.extensions["store"], proposal)
    for change in found["changes"]:
        if change["kind"] == "calendar":
            change["pair"] = _marked(change["before_text"], change["after_text"])
            continue
        fields = {f.key: f for f in KIND_FIELDS[change["kind"]]}
        if change["change"] == "changed":
            change["rows"] = []
            for entry in change["fields"]:
                field = fields[entry["key"]]
                change["rows"].append((entry["label"], *_marked(
                    display_value(field, entry["before"]), display_value(field, entry["after"]))))
        elif change["change"] == "added":
            change["rows"] = [(label, text) for label, text in
                              display_rows(KIND_FIELDS[change["kind"]], change["after"]) if text]
    return found


def _render_proposal(proposal, refused=None, reason="", status=200):
    return render_template("county/catalog/proposal.html", proposal=proposal,
                           changes=proposal.change_list(), review=_review(proposal),
                           refused=refused, reason=reason,
                           status=active.catalog_status(_db())), status


def _get_proposal(proposal_id):
    return publish.ReleaseProposal.get_or_none(publish.ReleaseProposal.id == proposal_id)


@bp.route("/proposals/<int:proposal_id>")
@staff_required(EDITOR, APPROVER)
def proposal(proposal_id):
    """A proposal: its frozen change list, who proposed it, and what became of it."""
    found = _get_proposal(proposal_id)
    if found is None:
        return message_page(404, "未找到", "没有这个发布申请。")
    return _render_proposal(found)


def _decide(proposal_id, action, **form):
    """Run ``action(proposal)``; a refusal shows the proposal again with its message."""
    found = _get_proposal(proposal_id)
    if found is None:
        return None, message_page(404, "未找到", "没有这个发布申请。")
    try:
        return action(found), None
    except errors.TongbanError as refused:
        logger.info("%s refused on proposal %s: %s", g.staff.username, proposal_id,
                    refused.reason)
        return None, _render_proposal(_get_proposal(proposal_id), refused=refused.reason,
                                      status=409, **form)


@bp.route("/proposals/<int:proposal_id>/approve", methods=["POST"])
@staff_required(APPROVER)
def approve(proposal_id):
    """Approve and sign a proposal with the county key: the release is published."""
    def sign(found):
        node_dir = current_app.config.get("NODE_DIR")
        try:
            key = identity.load_private_key(node_dir) if node_dir else None
        except errors.ConfigurationError as exc:
            logger.error("county key unreadable: %s", exc.reason)
            raise publish.PublishRefused("本节点的县级签名密钥无法读取，不能签发目录；"
                                         "请检查节点目录中的密钥文件") from exc
        store = current_app.extensions["store"]
        return publish.approve(store, found.id, g.staff.username, key)

    release, refusal = _decide(proposal_id, sign)
    if refusal is not None:
        return refusal
    number = active.active_number(_db())
    state = "已生效" if number == release["number"] else "尚未生效，请查看目录状态"
    flash(f"第 {release['number']} 号发布已签发（{state}）", "ok")
    return redirect(url_for(".proposal", proposal_id=proposal_id))


@bp.route("/proposals/<int:proposal_id>/reject", methods=["POST"])
@staff_required(APPROVER)
def reject(proposal_id):
    """Send a proposal back with a reason; the drafts stay."""
    reason = request.form.get("reason", "")
    done, refusal = _decide(proposal_id, lambda found: publish.reject(
        found.id, g.staff.username, reason), reason=reason)
    if refusal is not None:
        return refusal
    flash(f"已退回第 {done.number} 号发布", "ok")
    return redirect(url_for(".proposal", proposal_id=proposal_id))


@bp.route("/proposals/<int:proposal_id>/withdraw", methods=["POST"])
@staff_required(EDITOR, APPROVER)
def withdraw(proposal_id):
    """The proposer takes the proposal back to go on editing."""
    done, refusal = _decide(proposal_id, lambda found: publish.withdraw(
        found.id, g.staff.username))
    if refusal is not None:
        return refusal
    flash(f"已撤回第 {done.number} 号发布申请", "ok")
    return redirect(url_for(".proposal", proposal_id=proposal_id))


def init_app(app):
    """Register the catalog authoring pages under ``/admin/catalog``."""
    app.register_blueprint(bp)
