"""Node configuration: defaults, the node directory's file, overrides; validated at start-up."""

import json
import logging
import re
from pathlib import Path

from shared.errors import ConfigurationError

logger = logging.getLogger(__name__)

CONFIG_FILE = "tongban.json"
STORE_FILE = "store.sqlite"

TIERS = ("county", "township", "village")
#: Length of a division code at each tier (统计用区划代码).
CODE_LENGTH = {"county": 6, "township": 9, "village": 12}
TIER_BY_LENGTH = {length: tier for tier, length in CODE_LENGTH.items()}
PARENT_TIER = {"township": "county", "village": "township"}
TIER_NAMES = {"county": "县级", "township": "镇级", "village": "村级"}

DEFAULTS = {
    "TIER": None,
    "NODE_CODE": None,
    "NODE_NAME": "",
    "PARENT_URL": None,
    "DB_PATH": None,
    "SECRET_KEY": None,
    "REVS_LIMIT": 1000,
    "MAX_DOCUMENT_SIZE": 8 * 1024 * 1024,
    # Replication requests carry whole batches; allow a batch of maximum-size documents.
    "MAX_REQUEST_SIZE": 64 * 1024 * 1024,
    "LONGPOLL_MAX_TIMEOUT": 60.0,
    # base64 of the county's Ed25519 public key: registry entries must verify with it.
    "COUNTY_PUBLIC_KEY": None,
    # More county public keys (base64) that verify catalog releases: during a key rotation
    # the old and the new key both verify.
    "CATALOG_TRUSTED_KEYS": [],
    # Where citizens reach the progress pages from home (printed as the receipt's QR code),
    # e.g. the county's public site, which holds every case; None: this node's own address.
    "PUBLIC_URL": None,
}


def parent_code(code):
    """The division code of the node above ``code`` (None for a county)."""
    tier = TIER_BY_LENGTH.get(len(code))
    if tier == "village":
        return code[:9]
    if tier == "township":
        return code[:6]
    return None


def validate_code(tier, code):
    """Raise ConfigurationError unless ``code`` is a division code of ``tier``."""
    if tier not in TIERS:
        raise ConfigurationError(f"unknown tier {tier!r}: choose one of {', '.join(TIERS)}")
    if not isinstance(code, str) or not re.fullmatch(r"[0-9]+", code or ""):
        raise ConfigurationError(f"node code {code!r} must be digits only")
    if len(code) != CODE_LENGTH[tier]:
        raise ConfigurationError(
            f"a {tier} code has {CODE_LENGTH[tier]} digits; {code!r} has {len(code)}")


def validate(config):
    """Check a merged configuration; raises ConfigurationError before the first request."""
    validate_code(config.get("TIER"), config.get("NODE_CODE"))
    if not config.get("DB_PATH"):
        raise ConfigurationError("DB_PATH is not set")
    if not config.get("SECRET_KEY"):
        raise ConfigurationError("SECRET_KEY is not set")
    public = config.get("PUBLIC_URL")
    if public is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", str(public)):
        raise ConfigurationError(f"PUBLIC_URL must be an http(s) address, not {public!r}")
    for key in ("REVS_LIMIT", "MAX_DOCUMENT_SIZE"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigurationError(f"{key} must be a positive integer, not {value!r}")
    return config


def load_config(node_dir, overrides=None):
    """Read ``node_dir/tongban.json`` over the defaults, then ``overrides``; validate."""
    node_dir = Path(node_dir)
    path = node_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigurationError(f"{node_dir} is not a tongban node (no {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    config = dict(DEFAULTS)
    config.update(data)
    config["NODE_DIR"] = str(node_dir)
    if not config.get("DB_PATH"):
        config["DB_PATH"] = str(node_dir / STORE_FILE)
    elif not Path(config["DB_PATH"]).is_absolute():
        config["DB_PATH"] = str(node_dir / config["DB_PATH"])
    config.update(overrides or {})
    return validate(config)
