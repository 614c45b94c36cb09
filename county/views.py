"""Pages only a county node has (县级)."""

from flask import Blueprint

bp = Blueprint("county", __name__, url_prefix="/county", template_folder="templates")
