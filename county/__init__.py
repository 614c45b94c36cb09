"""What differs at the county tier: its settings and its pages."""

from county import calendar_views, catalog_views

#: Settings this tier adds to or changes in the shared defaults.
DEFAULTS = {"TIER": "county"}


def init_app(app):
    """Register this tier's pages: catalog authoring and the working-day calendar."""
    catalog_views.init_app(app)
    calendar_views.init_app(app)
