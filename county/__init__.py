"""What differs at the county tier: its settings and its blueprint."""

from county import catalog_views, views

#: Settings this tier adds to or changes in the shared defaults.
DEFAULTS = {"TIER": "county"}


def init_app(app):
    """Register this tier's blueprints: its own and catalog authoring."""
    app.register_blueprint(views.bp)
    catalog_views.init_app(app)
