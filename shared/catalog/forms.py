"""A catalog record as the text of an HTML form and back, and as people read it.

Generated from the schema (``schema.ITEM_FIELDS``, ``schema.AGENCY_FIELDS``): adding a
field there adds it to the form, the preview and the diff. A record goes through a form and
back unchanged: :func:`form_values` writes it as the form's text, :func:`parse_form` reads
that text back into exactly the same record. Tables are one textarea each, a row per line
and the columns separated by ``|`` in the order of the column fields; inside a cell ``\\``
escapes ``|``, ``；``, a line break (``\\n``) and itself, and a list-valued cell separates
its entries with ``；``.
"""

import re

from shared.catalog import schema

KIND_FIELDS = {"item": schema.ITEM_FIELDS, "agency": schema.AGENCY_FIELDS}
YES, NO = "是", "否"
CELL_SEP, ENTRY_SEP, ESCAPE = "|", "；", "\\"
LINE_BREAK = re.compile(r"\r\n|\r|\n")
INTEGER = re.compile(r"[+-]?\d+")
#: Display names of choice values that are codes rather than words.
CODE_NAMES = {"accept_tiers": schema.TIERS, "decide_tier": schema.TIERS,
              "item_type_code": schema.ITEM_TYPES}


# -- record <-> form text ----------------------------------------------------------------

def _escape(text, specials):
    out = []
    for ch in text:
        if ch == ESCAPE or ch in specials:
            out.append(ESCAPE + ch)
        elif ch == "\n":
            out.append(ESCAPE + "n")
        elif ch == "\r":
            out.append(ESCAPE + "r")
        else:
            out.append(ch)
    return "".join(out)


def _unescape(text):
    out, chars = [], iter(text)
    for ch in chars:
        if ch == ESCAPE:
            nxt = next(chars, ESCAPE)
            out.append({"n": "\n", "r": "\r"}.get(nxt, nxt))
        else:
            out.append(ch)
    return "".join(out)


def _split(text, sep):
    """Split on ``sep`` where it is not escaped; the pieces keep their escapes."""
    pieces, current, chars = [], [], iter(text)
    for ch in chars:
        if ch == ESCAPE:
            current.append(ch + next(chars, ""))
        elif ch == sep:
            pieces.append("".join(current))
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current))
    return pieces


def _empty(value):
    return value is None or value == "" or value == []


def _format_cell(column, value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return YES if value else NO
    if column.kind in ("lines", "choices") and isinstance(value, list):
        return ENTRY_SEP.join(_escape(str(v), CELL_SEP + ENTRY_SEP) for v in value)
    return _escape(str(value), CELL_SEP)


def format_table(field, rows):
    """The textarea text of a table: one line per row, cells separated by ``|``."""
    if not isinstance(rows, list):
        return str(rows)
    return "\n".join(CELL_SEP.join(_format_cell(c, row.get(c.key)) for c in field.columns)
                     for row in rows if isinstance(row, dict))


def format_value(field, value):
    """The form text of one value (a list of checked values for ``choices``)."""
    if field.kind == "choices":
        return list(value) if isinstance(value, list) else []
    if value is None:
        return ""
    if field.kind == "bool" and isinstance(value, bool):
        return YES if value else NO
    if field.kind == "lines" and isinstance(value, list):
        return "\n".join(str(v) for v in value)
    if field.kind == "table":
        return format_table(field, value)
    return str(value)


def _inputs(fields):
    """``[(input name, field)]``: a ``record`` field (one sub-record, such as 年龄条件) is an
    input per column, named ``<field>.<column>``; every other field is one input."""
    return [(f"{f.key}.{c.key}", c) if f.kind == "record" else (f.key, f)
            for f in fields for c in (f.columns if f.kind == "record" else [f])]


def form_values(fields, record):
    """``{input name: form text}`` of ``record`` for the fields of its kind."""
    values = {}
    for name, field in _inputs(fields):
        key, _, column = name.partition(".")
        held = record.get(key)
        if column:
            held = held.get(column) if isinstance(held, dict) else None
        values[name] = format_value(field, held)
    return values


def submitted_values(fields, form):
    """``{input name: form text}`` exactly as submitted, to show the form again."""
    return {name: form.getlist(name) if field.kind == "choices" else form.get(name, "")
            for name, field in _inputs(fields)}


def _parse_scalar(field, text):
    """One value from its text; text that is not of the field's kind is kept for validation
    to name."""
    if field.kind == "longtext":
        return LINE_BREAK.sub("\n", text).strip()
    text = text.strip()
    if field.kind == "int":
        return int(text) if INTEGER.fullmatch(text) else text
    if field.kind == "bool":
        return {YES: True, NO: False}.get(text, text)
    if field.kind in ("lines", "choices"):
        return [line.strip() for line in LINE_BREAK.split(text) if line.strip()]
    return text


def _parse_cell(column, raw):
    raw = raw.strip()
    if column.kind in ("lines", "choices"):
        entries = [_unescape(e.strip()) for e in _split(raw, ENTRY_SEP)]
        return [e for e in entries if e.strip()]
    return _parse_scalar(column, _unescape(raw))


def parse_table(field, text, errors):
    """The rows of a table textarea; a row with too many cells becomes an error."""
    rows = []
    width = len(field.columns)
    for number, line in enumerate(LINE_BREAK.split(text), 1):
        if not line.strip():
            continue
        cells = _split(line, CELL_SEP)
        if len(cells) > width:
            errors.append(schema.FieldError(
                field.key, f"{field.label}：第 {number} 行有 {len(cells)} 栏，应为 {width} 栏"
                f"（用“|”分隔；文字中的“|”请写作“\\|”）"))
            continue
        cells += [""] * (width - len(cells))
        row = {}
        for column, raw in zip(field.columns, cells):
            value = _parse_cell(column, raw)
            if not _empty(value):
                row[column.key] = value
        rows.append(row)
    return rows


def _order_like(chosen, before, choices):
    """Checked values in the order the record had them, new ones in the schema's order."""
    before = before if isinstance(before, list) else []
    kept = [v for v in before if v in chosen]
    return kept + [v for v in chosen if v not in kept]


def parse_form(fields, form, original=None):
    """Read a submitted form back into a record: ``(record, errors)``.

    ``errors`` holds only what cannot be read (a table row with too many cells); the
    record still needs validating. Keys ``original`` has that the form does not show stay
    as they were, and so does an empty value it stored (``""`` rather than absent).
    """
    original = original or {}
    known = {f.key for f in fields}
    record = {k: v for k, v in original.items() if k not in known}
    found = []
    for field in fields:
        if field.kind == "choices":
            value = _order_like(form.getlist(field.key), original.get(field.key),
                                field.choices)
        elif field.kind == "table":
            value = parse_table(field, form.get(field.key, ""), found)
        elif field.kind == "record":
            value = {c.key: _parse_scalar(c, text) for c, text in
                     ((c, form.get(f"{field.key}.{c.key}", "").strip()) for c in field.columns)
                     if text} or None  # no column filled in: no condition
        else:
            value = _parse_scalar(field, form.get(field.key, ""))
        if not _empty(value):
            record[field.key] = value
        elif field.key in original and _empty(original[field.key]):
            record[field.key] = original[field.key]
    return record, found


def errors_by_field(fields, found):
    """``{field key: [message]}``; errors of no field of the form go under ``""``."""
    known = {f.key for f in fields}
    grouped = {}
    for error in found:
        key = re.match(r"[^.\[]*", error.path).group(0)
        grouped.setdefault(key if key in known else "", []).append(error.message)
    return grouped


def choice_name(field, value):
    """How a choice value is shown: codes get their name (``county`` → 县级)."""
    names = CODE_NAMES.get(field.key)
    if names and value in names:
        return f"{value} {names[value]}" if field.key == "item_type_code" else names[value]
    return value


def table_hint(field):
    """The column order of a table textarea, as shown under it."""
    parts = []
    for column in field.columns:
        note = "" if column.required else "（可空）"
        if column.kind == "bool":
            note += "（是/否）"
        elif column.kind in ("lines", "choices"):
            note += "（多条用“；”分隔）"
        parts.append(column.label + note)
    return " | ".join(parts)


def _cell_text(column, value):
    if isinstance(value, list):
        return "、".join(str(v) for v in value)
    return display_value(column, value)


def display_value(field, value):
    """A value as a reader sees it (plain text, lines separated by line breaks)."""
    if _empty(value):
        return ""
    if isinstance(value, bool):
        return YES if value else NO
    if field.kind == "choices" and isinstance(value, list):
        return "、".join(str(choice_name(field, v)) for v in value)
    if field.kind == "choice":
        return str(choice_name(field, value))
    if field.kind == "lines" and isinstance(value, list):
        return "\n".join(str(v) for v in value)
    if field.kind == "table" and isinstance(value, list):
        lines = []
        for n, row in enumerate(value, 1):
            cells = [f"{c.label}：{_cell_text(c, row.get(c.key))}" for c in field.columns
                     if isinstance(row, dict) and not _empty(row.get(c.key))]
            lines.append(f"{n}. " + "；".join(cells))
        return "\n".join(lines)
    if field.kind == "record" and isinstance(value, dict):
        return "；".join(f"{c.label}：{_cell_text(c, value.get(c.key))}" for c in field.columns
                        if not _empty(value.get(c.key)))
    return str(value)


def display_rows(fields, record):
    """``[(label, text)]`` of every field of ``record`` (empty ones included)."""
    return [(f.label, display_value(f, record.get(f.key))) for f in fields]


def changed_fields(kind, before, after):
    """``[(label, before text, after text)]`` of the fields that differ."""
    return [(f.label, display_value(f, before.get(f.key)), display_value(f, after.get(f.key)))
            for f in KIND_FIELDS[kind] if before.get(f.key) != after.get(f.key)]
