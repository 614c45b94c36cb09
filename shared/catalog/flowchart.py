"""An item's process steps drawn as a vertical flowchart in plain SVG.

The guide page inlines the drawing and the print view puts it on paper, so it is drawn here
without a library or script: a 开始 terminator, one rounded box per step (name in bold, the
actor, the days), arrows between them and a 办结 terminator. Chinese text has no spaces to
break at, so lines are wrapped by counting characters, a full-width character counting one
em and a half-width one about half. Every text is escaped, and characters XML 1.0 forbids are
dropped, so the output always parses as XML whatever an item's text holds.

No ``id`` attributes or ``<defs>`` are used: several drawings may share one HTML page.
"""

import re
import unicodedata
from xml.sax.saxutils import escape, quoteattr

WIDTH = 360                 # whole drawing
BOX_WIDTH = 300
PAD = 12                    # inside a box, and around the drawing
INSET = 34                  # text keeps clear of the step number on both sides
NAME_SIZE, TEXT_SIZE = 15, 13
NAME_LINE, TEXT_LINE = 20, 18
GAP = 30                    # between two shapes; holds the arrow
TERMINAL_WIDTH, TERMINAL_HEIGHT = 120, 34
FONT = '"Microsoft YaHei", "WenQuanYi Micro Hei", "Noto Sans CJK SC", sans-serif'
STROKE, FILL, ACCENT = "#5a6b7d", "#f5f7fa", "#c0392b"

# Characters a line must not start with (Chinese typesetting keeps them on the line before).
_NO_LINE_START = set("，。、；：！？）】》」』”’,.;:!?)]}")
# Not allowed anywhere in an XML 1.0 document.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text):
    return _XML_INVALID.sub("", str(text))


def char_width(char):
    """Width of ``char`` in ems: 1 for full-width (Chinese) characters, about half otherwise."""
    return 1.0 if unicodedata.east_asian_width(char) in ("W", "F") else 0.55


def wrap(text, max_ems):
    """``text`` cut into lines no wider than ``max_ems`` (closing punctuation never starts one)."""
    lines, line, width = [], "", 0.0
    for char in _clean(text).replace("\n", " "):
        w = char_width(char)
        if line and width + w > max_ems and char not in _NO_LINE_START:
            lines.append(line.rstrip())
            line, width = "", 0.0
            if char == " ":
                continue
        line += char
        width += w
    if line.strip():
        lines.append(line.rstrip())
    return lines or [""]


def _text(x, y, text, size, *, bold=False, fill="#1f2d3d"):
    weight = ' font-weight="bold"' if bold else ""
    return (f'<text x="{x}" y="{y}" font-size="{size}"{weight} fill="{fill}" '
            f'text-anchor="middle">{escape(_clean(text))}</text>')


def _arrow(x, top, bottom):
    """A vertical arrow from ``top`` to ``bottom`` with its head drawn as a path."""
    return (f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom - 7}" stroke="{STROKE}" '
            f'stroke-width="1.5"/>'
            f'<path d="M{x - 5} {bottom - 8} L{x + 5} {bottom - 8} L{x} {bottom} Z" '
            f'fill="{STROKE}"/>')


def _terminal(cx, top, label):
    left = cx - TERMINAL_WIDTH // 2
    r = TERMINAL_HEIGHT // 2
    return (f'<rect x="{left}" y="{top}" width="{TERMINAL_WIDTH}" height="{TERMINAL_HEIGHT}" '
            f'rx="{r}" ry="{r}" fill="#fff" stroke="{ACCENT}" stroke-width="1.5"/>'
            + _text(cx, top + r + 5, label, TEXT_SIZE + 1, bold=True, fill=ACCENT))


def _step_lines(step):
    """``[(text, size, bold)]`` of one step's box: name, actor and days."""
    text_ems = (BOX_WIDTH - 2 * INSET) / TEXT_SIZE
    name_ems = (BOX_WIDTH - 2 * INSET) / NAME_SIZE
    lines = [(line, NAME_SIZE, True) for line in wrap(step.get("name") or "", name_ems)]
    if step.get("actor"):
        lines += [(line, TEXT_SIZE, False)
                  for line in wrap(f"办理主体：{step['actor']}", text_ems)]
    days = step.get("days")
    if isinstance(days, int) and not isinstance(days, bool):
        lines.append((f"时限：{days} 个工作日", TEXT_SIZE, False))
    return lines


def _step_box(cx, top, number, step):
    """SVG of one step's box and its height."""
    lines = _step_lines(step)
    height = 2 * PAD + sum(NAME_LINE if size == NAME_SIZE else TEXT_LINE
                           for _, size, _ in lines)
    left = cx - BOX_WIDTH // 2
    parts = ["<g>"]
    if step.get("description"):
        # a tooltip on screen; the guide's step table prints the description
        parts.append(f"<title>{escape(_clean(step['description']))}</title>")
    parts.append(f'<rect x="{left}" y="{top}" width="{BOX_WIDTH}" height="{height}" rx="8" '
                 f'ry="8" fill="{FILL}" stroke="{STROKE}" stroke-width="1.5"/>')
    parts.append(f'<circle cx="{left + 16}" cy="{top + 16}" r="10" fill="{ACCENT}"/>')
    parts.append(_text(left + 16, top + 20, str(number), 11, bold=True, fill="#fff"))
    y = top + PAD
    for text, size, bold in lines:
        y += NAME_LINE if size == NAME_SIZE else TEXT_LINE
        parts.append(_text(cx, y - 5, text, size, bold=bold))
    parts.append("</g>")
    return "".join(parts), height


def flowchart_svg(steps, *, title=None):
    """The steps ``[{name, actor, description?, days?}]`` as an SVG document (a string).

    :param title: the item's name; the drawing's ``<title>`` reads "<title>办理流程图".
    """
    cx = WIDTH // 2
    body, y = [], PAD
    body.append(_terminal(cx, y, "开始"))
    y += TERMINAL_HEIGHT
    for number, step in enumerate(steps or (), 1):
        body.append(_arrow(cx, y, y + GAP))
        y += GAP
        box, height = _step_box(cx, y, number, step)
        body.append(box)
        y += height
    body.append(_arrow(cx, y, y + GAP))
    y += GAP
    body.append(_terminal(cx, y, "办结"))
    y += TERMINAL_HEIGHT + PAD
    label = f"{title}办理流程图" if title else "办理流程图"
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {y}" '
            f'width="{WIDTH}" height="{y}" role="img" aria-label={quoteattr(_clean(label))} '
            f'font-family={quoteattr(FONT)} class="flowchart">'
            f"<title>{escape(_clean(label))}</title>" + "".join(body) + "</svg>")
