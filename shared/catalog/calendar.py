"""The county's working-day overrides (工作日历调整), published with the catalog.

An entry is one of:

* a day: ``{"date": "2027-01-01", "workday": false, "reason": "元旦"}`` — a day off or a
  working day, whatever the statutory calendar says (a local day off for a typhoon, an
  arrangement the ``chinesecalendar`` package does not hold yet);
* a complete year: ``{"year": 2027, "reason": "国办发明电〔2026〕12号"}`` — the county has
  entered that year's whole arrangement, so its other days follow the ordinary week
  (:mod:`shared.workdays`).

Entries are drafted at the county (``publish.CalendarDraft``) and published only in a signed
release, as the document ``catalog:calendar@<version>`` with the members ``overrides`` and
``years`` (:func:`document_body`). Editors type entries one a line (:func:`parse_lines`,
``2027-01-01 休 元旦``, ``2027-02-07 班 春节调休``, ``2027 全年 国办发明电〔2026〕12号``) or
paste JSON (:func:`parse_json`); every problem is reported with its line and nothing is
taken when there is one.
"""

import datetime
import json
import re

from shared import workdays
from shared.catalog.schema import CatalogInvalid, FieldError

DAY_OFF_WORDS = ("休", "休息", "休息日", "放假")
WORKDAY_WORDS = ("班", "上班", "工作日")
YEAR_WORD = "全年"
FIRST_YEAR, LAST_YEAR = 2000, 2100
REASON_LENGTH = 60
DATE_TEXT = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})")
WEEKDAYS = "一二三四五六日"


def entry_key(entry):
    """The key of an entry: its date (``2027-01-01``) or its year (``2027``)."""
    return entry["date"] if "date" in entry else str(entry["year"])


def sort_entries(entries):
    """Entries in a stable order: days by date, then the complete years."""
    return sorted(entries, key=lambda e: ("date" not in e, entry_key(e)))


def describe(entry):
    """An entry as people read it: ``2027-01-01（周五）休息日：元旦``."""
    if "date" in entry:
        day = datetime.date.fromisoformat(entry["date"])
        kind = "工作日" if entry["workday"] else "休息日"
        return f"{entry['date']}（周{WEEKDAYS[day.weekday()]}）{kind}：{entry['reason']}"
    return f"{entry['year']} 年全年安排已录入：{entry['reason']}"


def as_line(entry):
    """An entry in the line format of :func:`parse_lines`."""
    if "date" in entry:
        return f"{entry['date']} {'班' if entry['workday'] else '休'} {entry['reason']}"
    return f"{entry['year']} {YEAR_WORD} {entry['reason']}"


# -- validation --------------------------------------------------------------------------------

def _reason_problem(reason):
    if not isinstance(reason, str) or not reason.strip():
        return "请写明原因（如“元旦”“台风停工”）"
    if reason != reason.strip() or "\n" in reason or "\r" in reason:
        return "原因不能以空格开头或结尾，也不能换行"
    if len(reason) > REASON_LENGTH:
        return f"原因最多 {REASON_LENGTH} 个字"
    return None


def _year_problem(year):
    if isinstance(year, bool) or not isinstance(year, int):
        return "年份应为整数"
    if not FIRST_YEAR <= year <= LAST_YEAR:
        return f"年份应在 {FIRST_YEAR} 到 {LAST_YEAR} 之间"
    return None


def entry_problems(entry):
    """The problems of one entry, in Chinese (an empty list when it is valid)."""
    if not isinstance(entry, dict):
        return ["每条调整应是一个对象"]
    problems = []
    if "date" in entry:
        unknown = set(entry) - {"date", "workday", "reason"}
        day = entry["date"]
        try:
            parsed = datetime.date.fromisoformat(day) if isinstance(day, str) else None
        except ValueError:
            parsed = None
        if parsed is None or len(day) != 10:
            problems.append(f"日期“{day}”无效，应写成 2027-01-01 的形式")
        elif _year_problem(parsed.year):
            problems.append(f"日期的{_year_problem(parsed.year)}")
        if not isinstance(entry.get("workday"), bool):
            problems.append("应注明是工作日（班）还是休息日（休）")
    elif "year" in entry:
        unknown = set(entry) - {"year", "reason"}
        if _year_problem(entry["year"]):
            problems.append(_year_problem(entry["year"]))
    else:
        return ["每条调整应有日期（date）或年份（year）"]
    reason = _reason_problem(entry.get("reason"))
    if reason:
        problems.append(reason)
    problems.extend(f"未知字段“{key}”" for key in sorted(unknown))
    return problems


def validate_entries(entries, label=lambda index: f"第 {index + 1} 条调整"):
    """Every problem of a whole calendar (duplicates included) as :class:`FieldError`\\ s."""
    found, seen = [], {}
    for index, entry in enumerate(entries):
        where = label(index)
        problems = entry_problems(entry)
        found.extend(FieldError(where, f"{where}：{p}") for p in problems)
        if problems:
            continue
        key = entry_key(entry)
        if key in seen:
            found.append(FieldError(where, f"{where}：{key} 与{seen[key]}重复"))
        else:
            seen[key] = where
    return found


def check_entries(entries):
    """Raise :class:`CatalogInvalid` unless ``entries`` is a valid calendar."""
    if not isinstance(entries, list):
        raise CatalogInvalid([FieldError("calendar", "工作日历应是调整的列表")])
    found = validate_entries(entries)
    if found:
        raise CatalogInvalid(found)


# -- the published document --------------------------------------------------------------------

def document_body(entries):
    """The signed members of a calendar document: ``overrides`` and ``years``, sorted."""
    ordered = sort_entries(entries)
    return {"overrides": [{"date": e["date"], "workday": e["workday"], "reason": e["reason"]}
                          for e in ordered if "date" in e],
            "years": [{"year": e["year"], "reason": e["reason"]}
                      for e in ordered if "date" not in e]}


def entries_of_document(doc):
    """The entries of a calendar document; ValueError (in Chinese) when it is malformed."""
    if doc.get("type") != "calendar":
        raise ValueError("不是工作日历文档")
    overrides, years = doc.get("overrides"), doc.get("years", [])
    if not isinstance(overrides, list) or not isinstance(years, list):
        raise ValueError("工作日历文档缺少 overrides 或 years 列表")
    entries = overrides + years
    if any(not isinstance(e, dict) for e in entries) or \
            any("date" in e for e in years) or any("date" not in e for e in overrides):
        raise ValueError("工作日历文档的条目格式错误")
    found = validate_entries(entries)
    if found:
        raise ValueError("；".join(e.message for e in found[:3]))
    return sort_entries(entries)


# -- typed and pasted input ----------------------------------------------------------------------

def _line_entry(tokens):
    """``(entry, problem)`` of one line split in at most three parts."""
    first = tokens[0]
    if re.fullmatch(r"\d{4}", first) and len(tokens) > 1 and tokens[1] == YEAR_WORD:
        reason = tokens[2] if len(tokens) > 2 else ""
        return {"year": int(first), "reason": reason}, None
    match = DATE_TEXT.fullmatch(first)
    if not match:
        return None, f"“{first}”不是日期，应写成 2027-01-01 的形式（整年写“2027 全年 依据”）"
    try:
        day = datetime.date(*(int(part) for part in match.groups()))
    except ValueError:
        return None, f"日期“{first}”不存在"
    if len(tokens) < 2:
        return None, "日期后应写“休”或“班”"
    if tokens[1] in DAY_OFF_WORDS:
        workday = False
    elif tokens[1] in WORKDAY_WORDS:
        workday = True
    else:
        return None, f"日期后应写“休”或“班”，而不是“{tokens[1]}”"
    return {"date": day.isoformat(), "workday": workday,
            "reason": tokens[2] if len(tokens) > 2 else ""}, None


def parse_lines(text):
    """Entries of text typed one a line; :class:`CatalogInvalid` with every bad line.

    Blank lines and lines starting with ``#`` are skipped. A line is a date, ``休`` (day
    off) or ``班`` (working day) and the reason; or a year, ``全年`` and the basis.
    """
    entries, found, seen = [], [], {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"第 {number} 行"
        entry, problem = _line_entry(line.split(maxsplit=2))
        problems = [problem] if problem else entry_problems(entry)
        if problems:
            found.extend(FieldError(where, f"{where}（{line}）：{p}") for p in problems)
            continue
        key = entry_key(entry)
        if key in seen:
            found.append(FieldError(where, f"{where}（{line}）：{key} 与{seen[key]}重复"))
            continue
        seen[key] = where
        entries.append(entry)
    if found:
        raise CatalogInvalid(found)
    if not entries:
        raise CatalogInvalid([FieldError("text", "没有可导入的内容")])
    return sort_entries(entries)


def parse_json(text):
    """Entries of a JSON calendar: a document's ``{"overrides": [...], "years": [...]}`` or
    a list of entries; :class:`CatalogInvalid` with every problem."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        where = f"（第 {line} 行第 {exc.colno} 列）" if line else ""
        raise CatalogInvalid([FieldError("json", f"JSON 格式错误{where}：{exc.msg}"
                                         if line else "JSON 格式错误")]) from None
    if isinstance(data, dict):
        unknown = set(data) - {"overrides", "years", "type", "version", "_id", "_rev"}
        overrides, years = data.get("overrides", []), data.get("years", [])
        if unknown or not isinstance(overrides, list) or not isinstance(years, list):
            raise CatalogInvalid([FieldError("json", "JSON 应为 {\"overrides\": [...], "
                                             "\"years\": [...]} 或调整的列表")])
        entries = overrides + years
    elif isinstance(data, list):
        entries = data
    else:
        raise CatalogInvalid([FieldError("json", "JSON 应为对象或列表")])
    if not entries:
        raise CatalogInvalid([FieldError("json", "没有可导入的内容")])
    check_entries(entries)
    return sort_entries(entries)


def parse_text(text):
    """Entries of pasted text: JSON when it starts with ``{`` or ``[``, else lines."""
    stripped = (text or "").strip()
    if stripped.startswith(("{", "[")):
        return parse_json(stripped)
    return parse_lines(stripped)


# -- coverage ------------------------------------------------------------------------------------

def _draft_note(year, working):
    """What the drafts already hold for an uncovered ``year``, or ""."""
    if any(e.get("year") == year for e in working):
        return f"（草稿中已标记“{year} 全年”，提交发布并经审批后生效）"
    drafted = sum(1 for e in working if "date" in e and e["date"].startswith(f"{year}-"))
    return f"（草稿中有 {drafted} 条 {year} 年的调整，发布后生效）" if drafted else ""


def coverage(entries, today, working=None):
    """What the calendar in force covers, for the page: the package's years and a warning
    for this year and the next when neither the package nor a complete year covers them
    (their days not listed count as the ordinary week, and due dates through them are
    provisional, 暂定: :mod:`shared.workdays`).

    :param entries: the entries in force.
    :param working: the working calendar (drafts included), to say what waits to be published.
    :returns: ``{"package": (first, last), "complete": [years], "warnings": [text]}``.
    """
    first, last = workdays.package_years()
    complete = sorted(e["year"] for e in entries if "date" not in e)
    warnings = []
    for year in (today.year, today.year + 1):
        if first <= year <= last or year in complete:
            continue
        listed = sum(1 for e in entries if "date" in e and e["date"].startswith(f"{year}-"))
        if listed:
            warnings.append(
                f"{year} 年的法定节假日安排不在 chinese-calendar 数据中（只到 {last} 年）。"
                f"本县已发布 {listed} 条 {year} 年的调整，但没有标记“{year} 全年”：未列出的"
                f"{year} 年日期暂按正常工作周（周一至周五）计算，经过这些日期的办理时限标为"
                "“暂定”。录入全年节假日和调休后，请加上一行"
                f"“{year} 全年 依据文件”。")
        else:
            warnings.append(
                f"{year} 年的法定节假日安排不在 chinese-calendar 数据中（只到 {last} 年），"
                f"本县也没有发布 {year} 年的调整：跨入 {year} 年的办理时限暂按正常工作周"
                "（周一至周五）计算，标为“暂定”。"
                f"请录入 {year} 年的节假日和调休安排，并加上一行“{year} 全年 依据文件”。")
        warnings[-1] += _draft_note(year, working or [])
    return {"package": (first, last), "complete": complete, "warnings": warnings}
