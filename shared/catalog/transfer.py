"""Catalog files: the whole catalog as an .xlsx workbook or a JSON file, in and out.

A county editor maintains 1,500 items in Excel, so the workbook is laid out for people: one
sheet per record kind (事项, 申请材料, 办理流程, 收费项目, 中介服务, 中介机构), one header row
of the Chinese labels from :mod:`shared.catalog.schema`, 是/否 for booleans and one entry
per line for lists. Reading is strict and all-or-nothing: every problem, from an unknown
column to a schema rule, is reported at the cell it came from (``工作表“申请材料”第 7 行
“份数”：应为整数``) and :class:`~shared.catalog.schema.CatalogInvalid` is raised; nothing
partial is returned. The JSON file is the lossless machine form of the same catalog.
"""

import datetime
import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from openpyxl import Workbook, load_workbook
from openpyxl.styles import Alignment, Font
from openpyxl.utils import get_column_letter
from openpyxl.utils.exceptions import IllegalCharacterError
from openpyxl.worksheet.datavalidation import DataValidation

from shared.catalog.schema import (
    AGENCY_FIELDS,
    FEE_FIELDS,
    FIELD_BY_KEY,
    INTERMEDIARY_FIELDS,
    ITEM_FIELDS,
    MATERIAL_FIELDS,
    STEP_FIELDS,
    CatalogInvalid,
    FieldError,
    validate_catalog,
)

logger = logging.getLogger(__name__)

FORMAT = "tongban-catalog"
VERSION = 1
TRUE, FALSE = "是", "否"
ITEM_REF = FIELD_BY_KEY["id"].label  # 事项编号: the first column of every item-table sheet
MULTILINE_KINDS = ("lines", "choices", "longtext")
TEXT_KINDS = ("text", "longtext", "choice", "choices", "lines")
MAX_WIDTH = 50


@dataclass(frozen=True)
class Sheet:
    """One worksheet: its title, the fields of its columns and where its rows go.

    ``table`` is the item key (``materials``…) whose rows this sheet holds, after a leading
    事项编号 column; ``None`` for the item and agency sheets, one record per row.
    """

    title: str
    fields: tuple
    table: str = None

    @property
    def labels(self):
        """The header labels in column order."""
        return ((ITEM_REF,) if self.table else ()) + tuple(f.label for f in self.fields)


def _flat(fields):
    """Columns of a sheet: a ``record`` field (年龄条件) becomes one column per sub-field,
    keyed ``eligibility.min_age``; tables have sheets of their own."""
    columns = []
    for field in fields:
        if field.kind == "record":
            columns += [replace(column, key=f"{field.key}.{column.key}", required=False)
                        for column in field.columns]
        elif field.kind != "table":
            columns.append(field)
    return tuple(columns)


ITEM_SHEET = Sheet("事项", _flat(ITEM_FIELDS))
TABLE_SHEETS = tuple(Sheet(FIELD_BY_KEY[key].label, columns, key) for key, columns in (
    ("materials", MATERIAL_FIELDS), ("process_steps", STEP_FIELDS),
    ("fee_items", FEE_FIELDS), ("intermediary_services", INTERMEDIARY_FIELDS)))
AGENCY_SHEET = Sheet("中介机构", AGENCY_FIELDS)
SHEETS = (ITEM_SHEET,) + TABLE_SHEETS + (AGENCY_SHEET,)
SHEET_BY_TABLE = {s.table: s for s in TABLE_SHEETS}
SHEET_ORDER = {s.title: n for n, s in enumerate(SHEETS)}
assert all(len(set(s.labels)) == len(s.labels) for s in SHEETS), "labels must be unique"

# items[3].materials[1].copies, items[3].fee_items, agencies[0].phone, items[2]
SCHEMA_PATH = re.compile(r"(?P<record>(?P<kind>items|agencies)\[(?P<n>\d+)\])"
                         r"(?:\.(?P<key>\w+)(?:\[(?P<i>\d+)\](?:\.(?P<sub>\w+))?)?)?")


# ---------------------------------------------------------------------------- choosing


def read_catalog_file(path):
    """Read a catalog from ``path`` (.xlsx or .json) as ``(items, agencies)``.

    :raises CatalogInvalid: for an unsupported suffix, an unreadable file or any problem
        in its content, every problem listed.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".xlsx":
        return read_xlsx(path)
    if suffix == ".json":
        return read_json(path)
    raise CatalogInvalid([_unsupported(suffix)])


def write_catalog_file(path, items, agencies):
    """Write the catalog to ``path`` as .xlsx or .json, chosen by its suffix.

    :raises CatalogInvalid: for an unsupported suffix or a value a workbook cannot hold.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".xlsx":
        return write_xlsx(path, items, agencies)
    if suffix == ".json":
        return write_json(path, items, agencies)
    raise CatalogInvalid([_unsupported(suffix)])


def _unsupported(suffix):
    hint = "；旧版 .xls 请在 Excel 中另存为 .xlsx" if suffix == ".xls" else ""
    return FieldError("", f"不支持的文件类型“{suffix or '（无扩展名）'}”，"
                          f"目录文件应为 .xlsx 或 .json{hint}")


# ---------------------------------------------------------------------------- JSON


def write_json(path, items, agencies):
    """Write the catalog as a UTF-8 ``tongban-catalog`` JSON file."""
    document = {"format": FORMAT, "version": VERSION, "items": list(items),
                "agencies": list(agencies)}
    text = json.dumps(document, ensure_ascii=False, indent=1)
    Path(path).write_text(text + "\n", encoding="utf-8")


def read_json(path):
    """Read a ``tongban-catalog`` JSON file as ``(items, agencies)``.

    :raises CatalogInvalid: when the file is not JSON (naming line and column), is not a
        tongban catalog, or any record breaks the schema.
    """
    raw = _read_bytes(path)
    try:
        document = json.loads(raw.decode("utf-8-sig"))  # tolerate the BOM Notepad adds
    except UnicodeDecodeError:
        raise CatalogInvalid([FieldError("", "文件不是 UTF-8 编码的 JSON")]) from None
    except json.JSONDecodeError as exc:
        raise CatalogInvalid([FieldError("", f"JSON 格式错误：第 {exc.lineno} 行第 "
                                             f"{exc.colno} 列（{exc.msg}）")]) from None
    errors = _check_envelope(document)
    if errors:
        raise CatalogInvalid(errors)
    items, agencies = document["items"], document["agencies"]
    errors = [_number_record(e, items, agencies) for e in validate_catalog(items, agencies)]
    if errors:
        raise CatalogInvalid(errors)
    return items, agencies


def _check_envelope(document):
    """Problems of the top level of a JSON catalog file."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return [FieldError("format", f"不是通办目录文件：应为一个 JSON 对象，"
                                     f"其中 \"format\" 为 \"{FORMAT}\"")]
    errors = []
    if document.get("version") != VERSION:
        errors.append(FieldError("version", f"不支持的目录文件版本"
                                            f"“{document.get('version')}”，应为 {VERSION}"))
    for key, what in (("items", "事项"), ("agencies", "中介机构")):
        if not isinstance(document.get(key), list):
            errors.append(FieldError(key, f"“{key}”应为{what}列表"))
    for key in sorted(set(document) - {"format", "version", "items", "agencies"}):
        errors.append(FieldError(key, f"目录文件中有未知的键“{key}”"))
    return errors


def _number_record(error, items, agencies):
    """Add the record's position to a validate_catalog message: ``事项 X（第 3 项）：``."""
    match = SCHEMA_PATH.match(error.path)
    if not match:
        return error
    n = int(match["n"])
    records, what, unit = ((items, "事项", "项") if match["kind"] == "items"
                           else (agencies, "中介机构", "个"))
    record = records[n]
    if isinstance(record, dict) and record.get("id"):
        prefix = f"{what} {record['id']}："
        if error.message.startswith(prefix):
            return FieldError(error.path, f"{what} {record['id']}（第 {n + 1} {unit}）："
                                          + error.message[len(prefix):])
    return error


def _read_bytes(path):
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        reason = ("文件不存在" if isinstance(exc, FileNotFoundError) else
                  "这是一个目录" if isinstance(exc, IsADirectoryError) else
                  "没有读取权限" if isinstance(exc, PermissionError) else exc.strerror or exc)
        raise CatalogInvalid([FieldError("", f"无法读取文件 {path}：{reason}")]) from None


# ---------------------------------------------------------------------------- writing .xlsx


def write_xlsx(path, items, agencies):
    """Write the catalog as a workbook: one sheet per record kind, labels as headers.

    :raises CatalogInvalid: when a value holds characters a workbook cannot store.
    """
    rows = {ITEM_SHEET.title: [_row(ITEM_SHEET, item) for item in items],
            AGENCY_SHEET.title: [_row(AGENCY_SHEET, agency) for agency in agencies]}
    for sheet in TABLE_SHEETS:
        rows[sheet.title] = [[item.get("id")] + _row(sheet, record)
                             for item in items for record in item.get(sheet.table) or []]
    workbook = Workbook()
    workbook.remove(workbook.active)
    errors = []
    for sheet in SHEETS:
        _fill(workbook.create_sheet(sheet.title), sheet, rows[sheet.title], errors)
    if errors:
        raise CatalogInvalid(errors)
    workbook.save(path)


def _get(record, key):
    """``record[key]``; a dotted key (``eligibility.min_age``) reads the sub-record."""
    if "." in key:
        outer, inner = key.split(".", 1)
        held = record.get(outer)
        return held.get(inner) if isinstance(held, dict) else None
    return record.get(key)


def _row(sheet, record):
    return [_encode(field, _get(record, field.key)) for field in sheet.fields]


def _encode(field, value):
    """A record value as the cell shows it (None for a blank cell)."""
    if value is None or value == "" or value == []:
        return None
    if field.kind == "bool" and isinstance(value, bool):
        return TRUE if value else FALSE
    if field.kind in ("lines", "choices") and isinstance(value, list):
        return "\n".join(str(entry) for entry in value)
    if field.kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _fill(ws, sheet, rows, errors):
    """Header, data, styles and drop-down lists of one worksheet."""
    fields = ((None,) if sheet.table else ()) + sheet.fields
    ws.append(sheet.labels)
    bold = Font(bold=True)
    for cell in ws[1]:
        cell.font = bold
    wrap = Alignment(wrap_text=True, vertical="top")
    for n, values in enumerate(rows, 2):
        for column, (field, value) in enumerate(zip(fields, values), 1):
            if value is None:
                continue
            try:
                cell = ws.cell(n, column, value)
            except IllegalCharacterError:
                label = sheet.labels[column - 1]
                errors.append(FieldError(f"{sheet.title}!{get_column_letter(column)}{n}",
                                         f"工作表“{sheet.title}”第 {n} 行“{label}”："
                                         "含有 Excel 不能保存的控制字符"))
                continue
            if isinstance(value, str):
                cell.data_type = "s"  # text beginning with "=" stays text, not a formula
                cell.number_format = "@"
            if field is not None and field.kind in MULTILINE_KINDS:
                cell.alignment = wrap
    for column, field in enumerate(fields, 1):
        letter = get_column_letter(column)
        dimension = ws.column_dimensions[letter]
        dimension.width = _width(ws.cell(1, column).value, (r[column - 1] for r in rows[:200]))
        if field is None or field.kind in TEXT_KINDS:
            dimension.number_format = "@"  # so Excel keeps "01" typed into a new row as text
        choices = (TRUE, FALSE) if field and field.kind == "bool" else \
            field.choices if field and field.kind == "choice" else ()
        if choices:
            validation = DataValidation(type="list", formula1='"' + ",".join(choices) + '"',
                                        allow_blank=True, showErrorMessage=True,
                                        errorTitle=field.label,
                                        error="可选：" + "、".join(choices))
            validation.add(f"{letter}2:{letter}1048576")
            ws.add_data_validation(validation)
    ws.freeze_panes = "A2"


def _width(label, values):
    """A column width fitting the label and the longest line of the first rows."""
    def display(text):  # CJK characters take two columns
        return sum(2 if ord(ch) > 0x2E7F else 1 for ch in text)

    widest = display(label) + 2
    for value in values:
        if value is not None:
            widest = max(widest, max(display(line) for line in str(value).split("\n")) + 2)
    return min(widest, MAX_WIDTH)


# ---------------------------------------------------------------------------- reading .xlsx


class _Report:
    """Problems found while reading a workbook, each at a sheet, row and column."""

    def __init__(self):
        self.found = []  # (sort key, FieldError)

    def add(self, path, message, sheet, row=None, label=None, column=0):
        where = f"工作表“{sheet}”" + (f"第 {row} 行" if row else "") + \
            (f"“{label}”" if label else "")
        key = (SHEET_ORDER.get(sheet, len(SHEETS)), row or 0, column)
        self.found.append((key, FieldError(path, f"{where}：{message}")))

    def errors(self):
        return [error for _, error in sorted(self.found, key=lambda pair: pair[0])]


def read_xlsx(path):
    """Read a catalog workbook as ``(items, agencies)``.

    :raises CatalogInvalid: listing every problem (missing or unknown sheets and columns,
        rows naming no item, cells of the wrong type, schema errors) at its sheet, row as
        Excel numbers it, and column label.
    """
    tables = _load(path)
    report = _Report()
    for title in tables:
        if title not in SHEET_ORDER:
            report.add(f"{title}!", "不是目录的工作表，目录只有：" + "、".join(SHEET_ORDER),
                       title)
    reader = _Reader(report)
    for sheet in SHEETS:
        if sheet.title not in tables:
            report.add(f"{sheet.title}!", "缺少这个工作表", sheet.title)
            reader.missing.add((sheet.title, None))
            continue
        reader.read(sheet, tables[sheet.title])
    for error in validate_catalog(reader.items, reader.agencies):
        reader.place(error)
    errors = report.errors()
    if errors:
        raise CatalogInvalid(errors)
    return reader.items, reader.agencies


def _load(path):
    """Every sheet's rows as plain values: ``{title: [row tuple, ...]}`` from row 1.

    The whole workbook is read here, inside one guard, because openpyxl reads lazily and
    a damaged or foreign file can fail anywhere with any exception.
    """
    _read_bytes(path)  # an unreadable path gets the plain OS message
    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
        try:
            return {ws.title: list(ws.iter_rows(values_only=True))
                    for ws in workbook.worksheets}
        finally:
            workbook.close()
    except Exception:  # noqa: BLE001 - see docstring
        logger.info("not a readable workbook: %s", path, exc_info=True)
        raise CatalogInvalid([FieldError("", "文件不是有效的 Excel 工作簿（.xlsx），"
                                             "请用 Excel 或 WPS 另存为 .xlsx 后再导入")]) from None


class _Reader:
    """Builds items and agencies from sheet rows, remembering where every record came from."""

    def __init__(self, report):
        self.report = report
        self.items, self.agencies = [], []
        self.item_index = {}  # item id -> position of its first row
        self.rows = {}  # record path ("items[3].materials[1]") -> (sheet, Excel row)
        self.columns = {}  # (sheet title, label) -> column number
        self.missing = set()  # (sheet title, field key or None): reported, not re-reported
        self.bad_cells = set()  # paths of cells already reported as unreadable

    def read(self, sheet, rows):
        """Read one sheet's rows into the catalog."""
        header = rows[0] if rows else ()
        positions = self._header(sheet, header)
        for n, row in enumerate(rows[1:], 2):
            if all(_blank(v) for v in row):
                continue
            cells = {label: row[p] if p < len(row) else None for label, p in positions.items()}
            if sheet is ITEM_SHEET:
                self._record(sheet, n, cells, f"items[{len(self.items)}]", self.items)
                if self.items[-1].get("id"):
                    self.item_index.setdefault(self.items[-1]["id"].strip(), len(self.items) - 1)
            elif sheet is AGENCY_SHEET:
                self._record(sheet, n, cells, f"agencies[{len(self.agencies)}]", self.agencies)
            else:
                self._table_row(sheet, n, cells)

    def _header(self, sheet, header):
        """Column positions by label; unknown, duplicate and missing labels reported."""
        positions = {}
        for p, value in enumerate(header):
            if _blank(value):
                continue
            label = str(value).strip()
            column = get_column_letter(p + 1)
            path = f"{sheet.title}!{column}1"
            if label not in sheet.labels:
                self.report.add(path, f"未知的列（第 {column} 列），请删除或改用模板中的列名",
                                sheet.title, 1, label, column=p + 1)
            elif label in positions:
                first = get_column_letter(positions[label] + 1)
                self.report.add(path, f"列名重复（第 {first} 列和第 {column} 列）",
                                sheet.title, 1, label, column=p + 1)
            else:
                positions[label] = p
                self.columns[sheet.title, label] = p + 1
        for n, label in enumerate(sheet.labels):
            if label not in positions:
                self.report.add(f"{sheet.title}!", "缺少这一列", sheet.title, 1, label,
                                column=len(header) + n + 1)
                key = ITEM_REF if label == ITEM_REF and sheet.table else \
                    next(f.key for f in sheet.fields if f.label == label)
                self.missing.add((sheet.title, key))
        return positions

    def _record(self, sheet, row, cells, path, into):
        """Parse one row of fields into a new record at ``path``, appended to ``into``."""
        record = {}
        for field in sheet.fields:
            if field.label not in cells:
                continue
            try:
                value = _parse(field, cells[field.label])
            except ValueError as exc:
                self.bad_cells.add(f"{path}.{field.key}")
                self.report.add(f"{path}.{field.key}", str(exc), sheet.title, row, field.label,
                                self.columns[sheet.title, field.label])
                continue
            if value is not None and "." in field.key:
                outer, inner = field.key.split(".", 1)
                record.setdefault(outer, {})[inner] = value
            elif value is not None:
                record[field.key] = value
        self.rows[path] = (sheet.title, row)
        into.append(record)

    def _table_row(self, sheet, row, cells):
        """A row of an item's table, attached to the item its 事项编号 names."""
        if ITEM_REF not in cells or {(ITEM_SHEET.title, None), (ITEM_SHEET.title, "id")} \
                & self.missing:
            return  # a missing 事项编号 column or item sheet is reported once, not per row
        try:
            item_id = "" if _blank(cells[ITEM_REF]) else _text(cells[ITEM_REF]).strip()
        except ValueError:
            item_id = str(cells[ITEM_REF])
        column = self.columns[sheet.title, ITEM_REF]
        path = f"{sheet.title}!{get_column_letter(column)}{row}"
        if not item_id:
            self.report.add(path, "必填：应写明这一行属于哪个事项", sheet.title, row, ITEM_REF,
                            column)
        elif item_id not in self.item_index:
            self.report.add(path, f"工作表“{ITEM_SHEET.title}”中没有编号为“{item_id}”的事项",
                            sheet.title, row, ITEM_REF, column)
        else:
            n = self.item_index[item_id]
            records = self.items[n].setdefault(sheet.table, [])
            self._record(sheet, row, cells, f"items[{n}].{sheet.table}[{len(records)}]",
                         records)

    def place(self, error):
        """Report a validate_catalog error at the sheet, row and column it came from."""
        match = SCHEMA_PATH.match(error.path)
        if not match or error.path in self.bad_cells:
            if not match:
                self.report.add(error.path, error.message, ITEM_SHEET.title)
            return
        key = match["key"]
        if match["kind"] == "agencies":
            sheet, record, field = AGENCY_SHEET, match["record"], key
        elif key in SHEET_BY_TABLE and match["i"] is not None:
            sheet = SHEET_BY_TABLE[key]
            record, field = f"{match['record']}.{key}[{match['i']}]", match["sub"]
        elif key in SHEET_BY_TABLE:  # the table as a whole: reported on the item's row
            if (SHEET_BY_TABLE[key].title, None) in self.missing:
                return
            sheet, record, field = ITEM_SHEET, match["record"], None
        else:
            sheet, record, field = ITEM_SHEET, match["record"], key
        if (sheet.title, None) in self.missing or (sheet.title, field) in self.missing:
            return  # "必填" on every row of a column or sheet that is not there at all
        title, row = self.rows[record]
        sub = error.path[match.end():].lstrip(".")  # eligibility.min_age: its own column
        label = next((f.label for f in sheet.fields if f.key == field), None) or \
            next((f.label for f in sheet.fields if f.key == f"{field}.{sub}"), None) or \
            next((f.label for f in sheet.fields if f.key.startswith(f"{field}.")), None)
        self.report.add(error.path, error.message, title, row, label,
                        self.columns.get((title, label), 0))


def _blank(value):
    return value is None or (isinstance(value, str) and not value.strip())


def _shown(value):
    text = str(value)
    return f"（现为“{text[:30]}{'…' if len(text) > 30 else ''}”）"


def _parse(field, value):
    """A cell's value as the record holds it; None for a blank cell.

    :raises ValueError: with the Chinese message, when the cell cannot hold this field.
    """
    if _blank(value):
        return None
    kind = field.kind
    if kind == "bool":
        if isinstance(value, bool):  # Excel's own TRUE/FALSE
            return value
        if isinstance(value, str) and value.strip() in (TRUE, FALSE):
            return value.strip() == TRUE
        raise ValueError(f"应为“{TRUE}”或“{FALSE}”{_shown(value)}")
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError(f"应为整数{_shown(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():  # Excel stores numbers as floats
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value.strip())  # a number typed into a text-formatted cell
        raise ValueError(f"应为整数{_shown(value)}")
    text = _text(value)
    if kind == "choice":
        return text.strip()
    if kind in ("lines", "choices"):
        entries = [line.rstrip("\r") for line in text.split("\n")]
        entries = [e.strip() if kind == "choices" else e for e in entries if e.strip()]
        return entries or None
    return text


def _text(value):
    """A text cell's string; numbers Excel made of typed digits are taken back as digits."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise ValueError(f"应为文字{_shown(TRUE if value else FALSE)}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta)):
        raise ValueError(f"应为文字，Excel 把它识别成了日期或时间{_shown(value)}，"
                         "请把单元格格式设为“文本”后重新输入")
    raise ValueError(f"应为文字{_shown(value)}")
