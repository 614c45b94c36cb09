"""What differs at the county tier: its settings and its blueprint."""

from county import views

#: Settings this tier adds to or changes in the shared defaults.
DEFAULTS = {"TIER": "county"}


def init_app(app):
    """Register this tier's blueprint."""
    app.register_blueprint(views.bp)
