"""Pages only a village node has (村级)."""

from flask import Blueprint

bp = Blueprint("village", __name__, url_prefix="/village", template_folder="templates")
