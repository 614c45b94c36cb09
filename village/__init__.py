"""What differs at the village tier: its settings and its blueprint."""

from village import views

#: Settings this tier adds to or changes in the shared defaults.
DEFAULTS = {"TIER": "village"}


def init_app(app):
    """Register this tier's blueprint."""
    app.register_blueprint(views.bp)
