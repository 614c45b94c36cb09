"""CouchDB replication endpoints over the node's store (being written)."""

from flask import Blueprint

bp = Blueprint("couch", __name__)


def init_app(app):
    """Register the /db endpoints."""
    app.register_blueprint(bp)
