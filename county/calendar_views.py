"""The county's working-day calendar (工作日历) under ``/admin/calendar``.

Days off and working days that override the statutory calendar, and the years whose whole
arrangement the county has entered. Every change is a draft; it takes effect only in a
release proposed and approved by two people on the catalog pages
(:mod:`county.catalog_views`), which signs it with the catalog. The rules live in
:mod:`shared.catalog.publish` and :mod:`shared.catalog.calendar`; the pages parse and render.
"""

import datetime
import logging

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for

from shared import clock
from shared.catalog import active, publish, schema
from shared.catalog import calendar as cal
from shared.staff import staff_required
from shared.syncstatus import calendar_report

logger = logging.getLogger(__name__)

bp = Blueprint("county_calendar", __name__, url_prefix="/admin/calendar",
               template_folder="templates")

EDITOR, APPROVER = publish.EDITOR_ROLE, publish.APPROVER_ROLE
CHANGE_NAMES = {"added": "草稿新增", "changed": "已修改", "removed": "待删除"}
PUBLISHED_NAME = "已发布"
WORKDAY_CHOICES = {"dayoff": False, "workday": True}


def _db():
    return current_app.extensions["store"].db


@bp.context_processor
def _helpers():
    return {"EDITOR": EDITOR, "APPROVER": APPROVER, "calendar_pages": True}


def _rows(db):
    """The working calendar with the entries drafted for removal, each with its status."""
    changes = {c["id"]: c for c in publish.calendar_diff(db)}
    drafted = {d.key for d in publish.CalendarDraft.select(publish.CalendarDraft.key)}
    entries = publish.working_calendar(db)
    entries += [c["before"] for c in changes.values() if c["change"] == "removed"]
    rows = {"days": [], "years": []}
    for entry in cal.sort_entries(entries):
        key = cal.entry_key(entry)
        change = changes.get(key, {}).get("change")
        row = {"key": key, "entry": entry, "text": cal.describe(entry), "change": change,
               "status": CHANGE_NAMES.get(change, PUBLISHED_NAME), "drafted": key in drafted}
        rows["days" if "date" in entry else "years"].append(row)
    return rows, len(changes)


def _render(found=(), form=None, status=200):
    """The calendar page; ``found`` are the problems of the form just sent, kept with it."""
    db = _db()
    rows, pending = _rows(db)
    in_force = active.calendar_entries(db)
    today = clock.today()
    alarms = calendar_report(db, today)
    return render_template(
        "county/calendar/index.html", rows=rows, pending=pending, alarms=alarms,
        notice_year=alarms["warning"]["year"] if alarms["warning"] else today.year + 1,
        coverage=cal.coverage(in_force, today, publish.working_calendar(db)),
        document=active.calendar_in_force(db), catalog=active.catalog_status(db),
        proposal=publish.open_proposal(), errors=list(found), form=form or {},
        published_lines="\n".join(cal.as_line(e) for e in in_force)), status


def _save(entries, form, *, replace=False, done):
    """Draft ``entries``; the page again with every problem when they do not hold."""
    try:
        changes = publish.save_calendar_entries(_db(), entries, g.staff.username,
                                                replace=replace)
    except schema.CatalogInvalid as invalid:
        return _render(invalid.errors, form, status=422)
    logger.info("%s drafted %d calendar entries (%d unpublished changes)", g.staff.username,
                len(entries), len(changes))
    flash(done, "ok")
    return redirect(url_for(".index"))


def _refuse(problems, form_name):
    """The page again with the problems of one small form and its input kept."""
    found = [schema.FieldError(form_name, problem) for problem in problems]
    return _render(found, dict(request.form.to_dict(), form=form_name), status=422)


@bp.route("/")
@staff_required(EDITOR, APPROVER)
def index():
    """The working calendar, what the statutory data covers, and the forms to change it."""
    return _render()


def _form_entry(form):
    """The entry the day form describes (validation reports what is wrong with it)."""
    day = form.get("date", "").strip()
    entry = {"date": day, "workday": WORKDAY_CHOICES.get(form.get("kind")),
             "reason": form.get("reason", "").strip()}
    try:
        entry["date"] = datetime.date.fromisoformat(day).isoformat() if day else day
    except ValueError:
        pass  # kept as typed: validation names it
    return entry


@bp.route("/day", methods=["POST"])
@staff_required(EDITOR)
def save_day():
    """Draft one day off or working day."""
    entry = _form_entry(request.form)
    problems = ["请填写日期"] if not entry["date"] else cal.entry_problems(entry)
    if problems:
        return _refuse(problems, "day")
    return _save([entry], dict(request.form.to_dict(), form="day"),
                 done=f"已保存草稿：{cal.describe(entry)}，发布后生效")


@bp.route("/year", methods=["POST"])
@staff_required(EDITOR)
def save_year():
    """Draft the declaration that a year's whole arrangement is entered."""
    text = request.form.get("year", "").strip()
    year = int(text) if text.isdigit() else text
    entry = {"year": year, "reason": request.form.get("reason", "").strip()}
    problems = ["请填写年份"] if not text else cal.entry_problems(entry)
    if problems:
        return _refuse(problems, "year")
    return _save([entry], dict(request.form.to_dict(), form="year"),
                 done=f"已保存草稿：{text} 年全年安排，发布后生效")


@bp.route("/import", methods=["POST"])
@staff_required(EDITOR)
def import_text():
    """Draft every entry of the pasted lines (or JSON); nothing when one line is wrong."""
    text = request.form.get("text", "")
    replace = request.form.get("replace") == "1"
    try:
        entries = cal.parse_text(text)
    except schema.CatalogInvalid as invalid:
        return _render(invalid.errors, dict(request.form.to_dict(), form="import"), status=422)
    done = f"已导入 {len(entries)} 条调整为草稿" + ("（替换了全部现有调整）" if replace else "")
    return _save(entries, dict(request.form.to_dict(), form="import"), replace=replace,
                 done=done + "，发布后生效")


@bp.route("/remove", methods=["POST"])
@staff_required(EDITOR)
def remove():
    """Draft the removal of an entry (an unpublished one just loses its draft)."""
    key = request.form.get("key", "")
    if publish.remove_calendar_entry(_db(), key, g.staff.username):
        flash(f"{key} 已标记删除，发布后生效", "ok")
    else:
        flash(f"已删除未发布的草稿 {key}", "ok")
    logger.info("%s removed calendar entry %s", g.staff.username, key)
    return redirect(url_for(".index"))


@bp.route("/discard", methods=["POST"])
@staff_required(EDITOR)
def discard():
    """Drop the draft of an entry; the entry in force stays as it is."""
    key = request.form.get("key", "")
    if publish.discard_calendar_draft(_db(), key):
        flash(f"已撤销 {key} 的草稿", "ok")
    else:
        flash(f"{key} 没有草稿，无需撤销", "error")
    return redirect(url_for(".index"))


def init_app(app):
    """Register the calendar pages under ``/admin/calendar``."""
    app.register_blueprint(bp)
