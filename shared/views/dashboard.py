"""Supervision pages (督查): the dashboard, repeated submissions and proactive service.

The county sees every case it holds (and may narrow to one township); a township sees its
own area. Figures come from :mod:`shared.cases.stats`, so a page over a million cases reads
a few thousand aggregate rows. Charts are inline SVG drawn here, with no script.

Lists never decrypt applicants: a person appears as a pseudonym (part of the keyed hash)
with the case to open, and opening a case is audited as usual. The per-station proactive
list is itself audited (``proactive_list``), as is the repeated-submission list.
"""

import datetime
import io
import logging

from flask import Blueprint, abort, current_app, render_template, request, send_file
from markupsafe import Markup, escape

from shared.cases import fold as F
from shared.cases import stats, web
from shared.cases.desk import CaseError
from shared.staff import current_staff, message_page, require_staff
from shared.syncstatus import calendar_report

logger = logging.getLogger(__name__)

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")
ROLES = ("supervisor", "county_admin")
require_staff(bp, *ROLES)

BAD_DAY = "日期格式应为 年-月-日，例如 2026-03-01。"
BAD_PERIOD = "开始日期不能晚于结束日期。"
BAD_AREA = "请选择本县的乡镇。"
NOT_HERE = "督查统计由乡镇和县级提供，村（社区）服务站请查看办件工作台。"
BAD_STATION = "该服务站不在本级督查范围内。"
#: Columns of the figure tables (pages and the workbook), in order.
FIGURE_COLUMNS = (
    ("accepted", "受理"), ("completed", "办结"), ("in_progress", "在办"), ("overdue", "超期"),
    ("withdrawn", "撤回"), ("avg_decide_days", "平均办结工作日"), ("yellow", "黄牌"),
    ("red", "红牌"), ("red_followed", "红牌已跟进"), ("rated", "评价数"),
    ("avg_rating", "平均评分"), ("complaints", "投诉"), ("complaints_replied", "已答复投诉"),
    ("avg_complaint_hours", "平均投诉处理小时"), ("online_rate", "网上申请率"),
    ("visits_le1_share", "最多跑一次"), ("visits_0_share", "零跑动"),
)
SHARES = ("online_rate", "visits_le1_share", "visits_0_share")
AVERAGES = {"avg_decide_days": 1, "avg_rating": 2, "avg_complaint_hours": 1}
STATUS_NAMES = F.STATUS_LABELS


_db, _node, _today = web.store_db, web.node_code, web.china_today


def _refuse(status, title, message):
    abort(message_page(status, title, message))


# -- what the request asks for ----------------------------------------------------------------

def _area():
    """The area this request covers: the county all or one township, a township itself."""
    tier = current_app.config.get("TIER")
    if tier == "village":
        _refuse(404, "督查统计", NOT_HERE)
    if tier == "township":
        return _node()
    wanted = (request.args.get("area") or "").strip()
    if not wanted:
        return None
    if len(wanted) != 9 or not wanted.isdigit() or not wanted.startswith(_node()):
        _refuse(400, "督查统计", BAD_AREA)
    return wanted


def _day(name):
    text = (request.args.get(name) or "").strip()
    if not text:
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        _refuse(400, "督查统计", BAD_DAY)


def _period():
    since, until = _day("since"), _day("until")
    if since and until and since > until:
        _refuse(400, "督查统计", BAD_PERIOD)
    return since, until


def _townships():
    """``[(code, name)]`` of the registered townships under this county."""
    from shared import registry

    node = _node()
    return sorted((e.code, e.name or e.code) for e in registry.all_entries(_db())
                  if e.tier == "township" and e.code.startswith(node))


def _quick_periods(today):
    """Links for common periods: ``[(label, since, until)]``."""
    month = today.replace(day=1)
    quarter = today.replace(month=(today.month - 1) // 3 * 3 + 1, day=1)
    return [("本月", month, today), ("本季度", quarter, today),
            ("本年", today.replace(month=1, day=1), today),
            ("近 30 天", today - datetime.timedelta(days=29), today), ("全部", None, None)]


# -- formatting -----------------------------------------------------------------------------

def figure(row, key):
    """A figure as the tables show it: shares in per cent, averages rounded, "—" for none."""
    value = row.get(key)
    if value is None:
        return "—"
    if key in SHARES:
        return f"{value * 100:.1f}%"
    if key in AVERAGES:
        return f"{value:.{AVERAGES[key]}f}"
    return f"{value:,}"


def percent(value):
    return "—" if value is None else f"{value * 100:.1f}%"


def _round_top(value, ticks=4):
    """The smallest ``ticks`` × (1, 2, 2.5 or 5 × 10^k) not below ``value`` (at least 4)."""
    scale = 1
    while True:
        for step in (1, 2, 2.5, 5):
            if step * scale * ticks >= value:
                return step * scale * ticks
        scale *= 10


def line_chart(weeks, series, *, percent_axis=False, target=None, title=""):
    """An inline SVG line chart of weekly figures.

    :param weeks: ``[{"week": "YYYY-MM-DD", key: value, ...}]``.
    :param series: ``[(key, label, colour)]``.
    :param target: a share drawn as a dashed line (with ``percent_axis``).
    """
    width, height, left, right, top, bottom = 880, 240, 56, 16, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [w.get(key) for w in weeks for key, _, _ in series if w.get(key) is not None]
    high = max(values + ([target] if target is not None else []), default=0)
    high = next(top for top in (0.2, 0.4, 0.8, 1.0) if high <= top) if percent_axis \
        else _round_top(high)
    count = max(1, len(weeks) - 1)

    def x(i):
        return left + plot_w * i / count

    def y(v):
        return top + plot_h * (1 - v / high)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'class="chart" role="img" aria-label="{escape(title)}">',
             f'<title>{escape(title)}</title>']
    for i in range(5):
        v = high * i / 4
        label = f"{v * 100:.0f}%" if percent_axis else f"{v:,.0f}"
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{width - right}" y2="{y(v):.1f}" '
                     'stroke="#e4e7ed"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" '
                     f'font-size="11" fill="#606266">{label}</text>')
    every = max(1, len(weeks) // 8)
    for i, week in enumerate(weeks):
        if i % every == 0 or i == len(weeks) - 1:
            parts.append(f'<text x="{x(i):.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                         f'font-size="11" fill="#606266">{escape(week["week"][5:])}</text>')
    if target is not None:
        parts.append(f'<line x1="{left}" y1="{y(target):.1f}" x2="{width - right}" '
                     f'y2="{y(target):.1f}" stroke="#c0392b" stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{width - right}" y="{y(target) - 4:.1f}" text-anchor="end" '
                     f'font-size="11" fill="#c0392b">目标 {target * 100:.0f}%</text>')
    for n, (key, label, colour) in enumerate(series):
        points = [(x(i), y(w[key])) for i, w in enumerate(weeks) if w.get(key) is not None]
        if points:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                         'stroke-width="2"/>')
        for i, w in enumerate(weeks):
            if w.get(key) is None:
                continue
            shown = f"{w[key] * 100:.1f}%" if percent_axis else f"{w[key]:,}"
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(w[key]):.1f}" r="2.5" '
                         f'fill="{colour}"><title>{escape(w["week"])} 当周 {escape(label)}：'
                         f'{shown}</title></circle>')
        parts.append(f'<rect x="{left + n * 130}" y="6" width="12" height="12" '
                     f'fill="{colour}"/><text x="{left + n * 130 + 16}" y="16" font-size="12" '
                     f'fill="#1f2d3d">{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def charts(trend):
    """The dashboard's charts from the weekly trend."""
    targets = stats.TARGETS
    return [
        line_chart(trend, [("accepted", "受理", "#1f5fa8"), ("completed", "办结", "#67c23a"),
                           ("in_progress", "在办", "#e6a23c")], title="每周受理与办结（按受理周）"),
        line_chart(trend, [("online_rate", "网上申请率", "#1f5fa8")], percent_axis=True,
                   target=targets["online_rate"], title="网上申请率（按受理周）"),
        line_chart(trend, [("visits_le1_share", "最多跑一次", "#67c23a"),
                           ("visits_0_share", "零跑动", "#8e44ad")], percent_axis=True,
                   target=targets["visits_le1"], title="跑动次数（按受理周，已送达办件）"),
    ]


@bp.errorhandler(CaseError)
def _case_error(exc):
    """The audit log cannot be written here (no node directory): show nothing unaudited."""
    return message_page(503, "无法显示", exc.message)


@bp.app_template_filter("masked_key")
def _masked_key(key):
    return stats.masked_key(key)


@bp.context_processor
def _helpers():
    names = {}

    def node_name(code):
        if code not in names:
            names[code] = web.node_name(code)
        return names[code]

    return {"figure": figure, "percent": percent, "figure_columns": FIGURE_COLUMNS,
            "node_name": node_name, "status_name": lambda s: STATUS_NAMES.get(s, s or "")}


# -- the dashboard --------------------------------------------------------------------------

def _figures():
    area = _area()
    since, until = _period()
    data = stats.dashboard(_db(), area=area, since=since, until=until, today=_today())
    return area, since, until, data


@bp.route("/")
def index():
    """The dashboard of this node's area, with the working-day calendar's alarms."""
    area, since, until, data = _figures()
    today = _today()
    return render_template(
        "dashboard/index.html", data=data, area=area, since=since, until=until, today=today,
        calendar=calendar_report(_db(), today),
        county=current_app.config.get("TIER") == "county", node=_node(),
        townships=_townships() if current_app.config.get("TIER") == "county" else [],
        periods=_quick_periods(today), charts=charts(data["trend"]))


def _sheet(book, title, rows, first):
    """A sheet of figure rows; ``first``: ``[(header, key)]`` columns before the figures."""
    from openpyxl.styles import Font

    sheet = book.create_sheet(title)
    sheet.append([header for header, _ in first] + [label for _, label in FIGURE_COLUMNS])
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in rows:
        values = [row.get(key) for _, key in first]
        for key, _ in FIGURE_COLUMNS:
            value = row.get(key)
            values.append(round(value, 4) if isinstance(value, float) else value)
        sheet.append(values)
    for index, (key, _) in enumerate(FIGURE_COLUMNS, start=len(first) + 1):
        if key in SHARES:
            for cell in sheet.iter_cols(min_col=index, max_col=index, min_row=2):
                for c in cell:
                    c.number_format = "0.0%"
    sheet.freeze_panes = "B2"
    return sheet


def workbook(data, area_label, period_label):
    """The dashboard as an .xlsx workbook (bytes)."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    book = Workbook()
    summary = book.active
    summary.title = "概览"
    summary.append(["督查统计", area_label])
    summary["A1"].font = Font(bold=True, size=14)
    summary.append(["统计期间（按受理日期）", period_label])
    summary.append(["超期判定日期", data["today"].isoformat()])
    summary.append([])
    summary.append(["指标", "实际", "分子", "分母", "目标", "是否达标"])
    for cell in summary[5]:
        cell.font = Font(bold=True)
    for item in data["indicators"]:
        met = "—" if item["met"] is None else ("达标" if item["met"] else "未达标")
        summary.append([item["label"], item["value"], item["part"], item["whole"],
                        item["target"], met])
        for cell in (summary.cell(summary.max_row, 2), summary.cell(summary.max_row, 5)):
            cell.number_format = "0.0%"
    summary.append([])
    summary.append(["合计"] + [label for _, label in FIGURE_COLUMNS])
    summary.append(["全部"] + [data["total"].get(key) for key, _ in FIGURE_COLUMNS])
    summary.column_dimensions["A"].width = 24
    summary.column_dimensions["B"].width = 28
    if not data["area"]:
        _sheet(book, "按乡镇", data["areas"], [("代码", "code"), ("乡镇", "name")])
    _sheet(book, "按站点", data["nodes"], [("代码", "code"), ("站点", "name")])
    _sheet(book, "按事项", data["items"],
           [("事项编码", "item_id"), ("事项名称", "name"), ("部门", "department")])
    _sheet(book, "按部门", data["departments"], [("部门", "name")])
    _sheet(book, "周趋势", data["trend"], [("受理周（周一）", "week")])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _period_label(since, until):
    if not since and not until:
        return "全部"
    return f"{since.isoformat() if since else '最早'} 至 {until.isoformat() if until else '今'}"


@bp.route("/export.xlsx")
def export():
    """The figures of the dashboard as an Excel workbook."""
    area, since, until, data = _figures()
    area_label = web.node_name(area) if area else web.node_name(_node())
    body = workbook(data, area_label, _period_label(since, until))
    name = f"督查统计-{area or _node()}-{_today().isoformat()}.xlsx"
    return send_file(io.BytesIO(body), as_attachment=True, download_name=name,
                     mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")


# -- repeated submissions --------------------------------------------------------------------

def _days(default=30):
    text = (request.args.get("days") or "").strip()
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= 366:
        _refuse(400, "重复申请", "间隔天数应为 1 到 366 之间的整数。")
    return int(text)


@bp.route("/repeats")
def repeats():
    """Applications repeated within a period, and cases asked for materials more than once."""
    area = _area()
    since, until = _period()
    today = _today()
    until = until or today
    since = since or until - datetime.timedelta(days=90)
    days = _days()
    db = _db()
    again, more_again = stats.repeats(db, area=area, days=days, since=since, until=until,
                                      today=today)
    twice, more_twice = stats.requested_twice(db, area=area, since=since, until=until)
    staff = current_staff()
    web.audit_view(staff, "repeat_list", area or _node(),
                   {"since": since.isoformat(), "until": until.isoformat(), "days": days,
                    "repeats": len(again), "requested_twice": len(twice)})
    return render_template("dashboard/repeats.html", area=area, since=since, until=until,
                           days=days, again=again, more_again=more_again, twice=twice,
                           more_twice=more_twice, limit=stats.LIST_LIMIT,
                           townships=_townships() if not area and
                           current_app.config.get("TIER") == "county" else [])


# -- proactive service ----------------------------------------------------------------------

def _offers(db, rules):
    """``{rule: the names of the items it offers}``."""
    names = stats.item_names(db)
    return {key: "、".join(names.get(i, i) for i in rule["items"])
            for key, rule in rules.items()}


@bp.route("/proactive")
def proactive():
    """People likely eligible for an item they have not applied for, by station."""
    area = _area()
    today = _today()
    db = _db()
    rules = stats.rules(db)
    station = (request.args.get("station") or "").strip()
    if not station:
        summary = stats.proactive_summary(db, area=area, today=today)
        return render_template("dashboard/proactive.html", area=area, station=None,
                               summary=summary, rules=rules, today=today, people=[],
                               offers=_offers(db, rules),
                               totals={rule: sum(s["counts"][rule] for s in summary)
                                       for rule in rules})
    scope = area or _node()
    if not station.isdigit() or not station.startswith(scope):
        _refuse(403, "主动服务", BAD_STATION)
    people = stats.proactive(db, station=station, today=today)
    cases = stats.latest_cases(db, [p["applicant_key"] for p in people])
    for person in people:
        person["case"] = cases.get(person["applicant_key"])
    web.audit_view(current_staff(), "proactive_list", station,
                   {"count": len(people), "rules": sorted({p["rule"] for p in people})})
    return render_template("dashboard/proactive.html", area=area, station=station,
                           summary=[], rules=rules, today=today, people=people, totals={},
                           offers=_offers(db, rules))


def init_app(app):
    """Register the supervision pages."""
    app.register_blueprint(bp)
