"""What differs at the county tier: its settings and its blueprint."""

from county import calendar_views, catalog_views, views

#: Settings this tier adds to or changes in the shared defaults.
DEFAULTS = {"TIER": "county"}


def init_app(app):
    """Register this tier's blueprints: its own, catalog authoring and the working-day
    calendar."""
    app.register_blueprint(views.bp)
    catalog_views.init_app(app)
    calendar_views.init_app(app)
