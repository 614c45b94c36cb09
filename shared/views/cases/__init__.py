"""Staff case pages: the work list (``work``), acceptance at the window (``window``), the
case and its actions (``case``), the printable receipt and one-time notice
(``printables``) and the handle-anywhere look-up (``find``). The rules they apply live in
``shared.cases``; these modules read the form, call the desk and render.
"""

from shared.views.cases import case, find, printables, window, work
from shared.views.cases.common import bp

#: The modules that add their pages to ``bp`` when imported.
PAGES = (work, window, case, printables, find)


def init_app(app):
    """Register the staff case pages."""
    app.register_blueprint(bp)
