"""QR codes of a guide's address, so a printed or on-screen guide leads back to the page."""

import io

import segno

SCALE = 4
BORDER = 2


def _code(url):
    # level M survives a smudged print; no micro codes: many phone scanners can't read them
    return segno.make(url, error="m", micro=False)


def qr_svg(url, *, title="扫码查看本办事指南"):
    """An SVG element (no XML declaration, so it can be inlined in HTML) encoding ``url``."""
    out = io.BytesIO()
    _code(url).save(out, kind="svg", scale=SCALE, border=BORDER, xmldecl=False,
                    title=title, svgclass="qr", nl=False)
    return out.getvalue().decode("utf-8")


def qr_png(url, *, scale=SCALE):
    """PNG bytes encoding ``url``."""
    out = io.BytesIO()
    _code(url).save(out, kind="png", scale=scale, border=BORDER)
    return out.getvalue()
