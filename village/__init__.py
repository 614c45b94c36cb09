"""What differs at the village tier: its settings, and in ``jobs`` what only a village
schedules."""

#: Settings this tier adds to or changes in the shared defaults.
DEFAULTS = {"TIER": "village"}


def init_app(app):
    """Nothing of its own: every page a village node serves is every node's."""
