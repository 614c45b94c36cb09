"""What differs at the township tier: its settings."""

#: Settings this tier adds to or changes in the shared defaults.
DEFAULTS = {"TIER": "township"}


def init_app(app):
    """Nothing of its own: every page a township node serves is every node's."""
