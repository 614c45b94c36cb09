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
    # -- staying up (tongban serve; see shared/serving.py) --
    # Open connections waitress keeps (more wait in the listen backlog): well above a
    # township's children, tablets and browsers, so idle or half-open sockets cannot fill it.
    "SERVE_CONNECTION_LIMIT": 500,
    # Seconds a connection with no request running may stay silent (keep-alive, or opened
    # and never used); a longpoll in progress is not idle.
    "SERVE_CHANNEL_TIMEOUT": 30,
    # Seconds a request's header may take to arrive in full (a slowloris trickling bytes).
    "SERVE_HEADER_TIMEOUT": 20,
    # How often (seconds) waitress looks for idle connections and late headers.
    "SERVE_CLEANUP_INTERVAL": 5,
    # Longpoll, continuous and eventsource feeds open at once: None is three quarters of
    # serve's threads (48 of 64), so that feeds never hold every thread; always fewer
    # than the threads.
    "FEED_MAX_CONCURRENT": None,
    # Feeds one principal (a node, or a Basic account) may hold open at once; syncd holds
    # one at its parent, a PouchDB live replication one.
    "FEED_MAX_PER_PRINCIPAL": 8,
    # Wrong Basic passwords: after AUTH_FAILURE_LIMIT failures of one account, or from one
    # address, within AUTH_FAILURE_WINDOW seconds, further attempts are refused (429,
    # no password check) for AUTH_LOCKOUT seconds.
    "AUTH_FAILURE_LIMIT": 10,
    "AUTH_FAILURE_WINDOW": 300,
    "AUTH_LOCKOUT": 300,
    # Password checks (scrypt, 16 MiB each) running at once in one process.
    "PASSWORD_CHECK_THREADS": 2,
    # base64 of the county's Ed25519 public key: registry entries must verify with it.
    "COUNTY_PUBLIC_KEY": None,
    # More county public keys (base64) that verify catalog releases: during a key rotation
    # the old and the new key both verify.
    "CATALOG_TRUSTED_KEYS": [],
    # Where citizens reach the progress pages from home (printed as the receipt's QR code),
    # e.g. the county's public site, which holds every case; None: this node's own address.
    "PUBLIC_URL": None,
    # What the station's front page tells citizens (empty: a default hours line, no phone).
    # Answered handle-anywhere look-ups a station may make an hour (then refused, with an
    # alarm to the county's supervisors).
    "LOOKUP_LIMIT_PER_HOUR": 60,
    # Seconds without a request from a child node after which its parent lists it offline
    # (its syncd's longpoll comes back at least every minute).
    "NODE_OFFLINE_AFTER": 150,
    "STATION_HOURS": "",
    "STATION_PHONE": "",
    "STATION_ADDRESS": "",
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
    limit = config.get("LOOKUP_LIMIT_PER_HOUR", DEFAULTS["LOOKUP_LIMIT_PER_HOUR"])
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ConfigurationError(
            f"LOOKUP_LIMIT_PER_HOUR must be a whole number of at least 0, not {limit!r}")
    for key in STAYING_UP_SETTINGS:
        value = config.get(key, DEFAULTS[key])
        if key == "FEED_MAX_CONCURRENT" and value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 1:
            raise ConfigurationError(f"{key} must be a number of at least 1, not {value!r}")
    return config


#: The settings of shared/serving.py and the Basic throttle, checked by ``validate``.
STAYING_UP_SETTINGS = (
    "SERVE_CONNECTION_LIMIT", "SERVE_CHANNEL_TIMEOUT", "SERVE_HEADER_TIMEOUT",
    "SERVE_CLEANUP_INTERVAL", "FEED_MAX_CONCURRENT", "FEED_MAX_PER_PRINCIPAL",
    "AUTH_FAILURE_LIMIT", "AUTH_FAILURE_WINDOW", "AUTH_LOCKOUT", "PASSWORD_CHECK_THREADS")


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
