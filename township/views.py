"""Pages only a township node has (镇级)."""

from flask import Blueprint

bp = Blueprint("township", __name__, url_prefix="/township", template_folder="templates")
