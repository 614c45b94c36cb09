"""What differs at the township tier: its settings and its blueprint."""

from township import views

#: Settings this tier adds to or changes in the shared defaults.
DEFAULTS = {"TIER": "township"}


def init_app(app):
    """Register this tier's blueprint."""
    app.register_blueprint(views.bp)
