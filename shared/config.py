"""Node configuration: defaults, the node directory's file, overrides; validated at start-up."""

import difflib
import importlib
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
    # The parent's division code, written by ``tongban init`` (informational).
    "PARENT_CODE": None,
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
    # -- staff sessions and supervision --
    # Minutes a staff session lives without a request.
    "STAFF_SESSION_IDLE_MINUTES": 30.0,
    # Send staff cookies over HTTPS only (set when the node is served behind TLS).
    "STAFF_COOKIE_SECURE": False,
    # A case in progress gets its yellow card this many working days before it is due.
    "CARD_YELLOW_DAYS": 2,
    # -- syncd (syncd/daemon.py) --
    # The periodic round is the safety net: the longpoll brings the parent's changes and a
    # local write starts a push. Every 5 minutes, not every 30 s: 420 idle nodes' rounds
    # were most of a region's idle traffic and CPU (docs/benchmarks.md), and village links
    # are slow and metered.
    "SYNC_INTERVAL": 300.0,
    # Seconds between retries after a failed round: doubling from SYNC_BACKOFF_BASE up to
    # SYNC_MAX_BACKOFF.
    "SYNC_MAX_BACKOFF": 300.0,
    "SYNC_BACKOFF_BASE": 1.0,
    # How often (seconds) syncd looks at its own store for local writes to push.
    "SYNC_WATCH_INTERVAL": 0.2,
    # Seconds the longpoll on the parent's _changes waits for a change.
    "SYNC_LONGPOLL_TIMEOUT": 50.0,
    # Seconds any one request to the parent may take.
    "SYNC_REQUEST_TIMEOUT": 60.0,
    # Documents per replication batch: 200 of ~4 KB catalog items keep a village's syncd
    # under ~90 MiB while it takes in a whole catalog (500 cost ~15 MiB more at its peak).
    "SYNC_BATCH_SIZE": 100,
    # Replicate with this URL instead of the parent's /db (a test proxy, a relay).
    "UPSTREAM_URL": None,
    # -- retention (shared/retention.py) --
    # Days a village keeps a closed case (delivered or withdrawn, no open complaint) after
    # its last event; older ones are purged locally and stay at the township and county.
    "RETENTION_DAYS": 365,
    # -- tongban run (shared/supervisor.py) --
    # Seconds before a child (serve, syncd) that exited is started again; doubled after
    # each exit that follows a short run, up to RUN_RESTART_BACKOFF_MAX.
    "RUN_RESTART_BACKOFF_INITIAL": 1.0,
    # The longest wait (seconds) before a restart.
    "RUN_RESTART_BACKOFF_MAX": 60.0,
    # Seconds a child must stay up for its next restart to wait the shortest time again.
    "RUN_RESTART_RESET_AFTER": 60.0,
    # Seconds serve and syncd get to stop after SIGTERM before they are killed.
    "RUN_STOP_TIMEOUT": 20.0,
    # Size in bytes at which logs/run.log, serve.log and syncd.log are rotated...
    "RUN_LOG_MAX_BYTES": 10 * 1024 * 1024,
    # ...and how many rotated files of each are kept (serve.log.1 … serve.log.5).
    "RUN_LOG_BACKUPS": 5,
    # -- health (shared/views/health.py: /healthz, /metrics) --
    # /healthz says "degraded" when the store's filesystem has fewer free bytes than this.
    "HEALTH_DISK_FREE_MIN_BYTES": 512 * 1024 * 1024,
    # Seconds /healthz's test write may wait for the store's write lock before "fail".
    "HEALTH_WRITE_TIMEOUT": 5.0,
    # A scraper on this machine reads /metrics without logging in. Set false behind a
    # reverse proxy on the same machine: every request would come from loopback.
    "METRICS_FROM_LOOPBACK": True,
    # -- backups (shared/backup.py, the backup job of every tier) --
    # How often syncd backs the node up: "daily", "hourly" or "off".
    "BACKUP_SCHEDULE": "daily",
    # The hour (Beijing time, 0-23) of the daily backup; a PC off then backs up on waking.
    "BACKUP_HOUR": 2,
    # Where scheduled backups go (relative: to the node directory); None: <node_dir>/backups.
    "BACKUP_DIR": None,
    # How many scheduled backups are kept (the newest; older ones are deleted).
    "BACKUP_KEEP": 7,
    # File holding the passphrase that seals the keys; None: backups leave the keys out.
    "BACKUP_PASSPHRASE_FILE": None,
    # -- store (shared/store/schema.py: schema version, upgrades, the check at start) --
    # Run PRAGMA quick_check on the store when serve, syncd or the CLI opens it (a damaged
    # file then stops the node with how to restore it); false skips it on a huge store.
    "STORE_QUICK_CHECK": True,
}


def tier_of(code):
    """The tier of a division code by its length (None for anything else)."""
    return TIER_BY_LENGTH.get(len(code)) if isinstance(code, str) else None


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
    check_kinds(config)
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


#: The kind of value of each setting whose default is None (the others take their
#: default's kind: an int default a whole number, a float default any number).
NULLABLE_KINDS = {
    "TIER": str, "NODE_CODE": str, "PARENT_URL": str, "PARENT_CODE": str, "DB_PATH": str, "SECRET_KEY": str,
    "COUNTY_PUBLIC_KEY": str, "PUBLIC_URL": str, "FEED_MAX_CONCURRENT": int,
    "UPSTREAM_URL": str,
    "BACKUP_DIR": str, "BACKUP_PASSPHRASE_FILE": str,
}
#: Set by the node itself, never read from its file.
DERIVED = ("NODE_DIR",)


def _kind_of(key):
    default = DEFAULTS[key]
    return NULLABLE_KINDS.get(key, object) if default is None else type(default)


def _of_kind(value, kind):
    if kind is object or value is None:
        return True
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


_KIND_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "an object"}


def check_kinds(config):
    """Raise ConfigurationError for a known setting holding a value of the wrong kind."""
    for key in DEFAULTS:
        kind = _kind_of(key)
        if key in config and not _of_kind(config[key], kind):
            raise ConfigurationError(
                f"{key} must be {_KIND_NAMES.get(kind, kind.__name__)}, "
                f"not {config[key]!r}")


def tier_defaults(tier):
    """What the tier's package (county, township, village) sets over the shared defaults."""
    if tier not in TIERS:
        return {}
    return dict(importlib.import_module(tier).DEFAULTS)


def read_node_file(node_dir):
    """The settings of ``node_dir/tongban.json``.

    :raises ConfigurationError: no such file, not a JSON object, or a key that is no
        setting (a typo such as ``SYNC_INTERVALL`` is named, with what it may mean).
    """
    path = Path(node_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigurationError(f"{node_dir} is not a tongban node (no {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} must hold a JSON object of settings")
    for key in data:
        if key not in DEFAULTS or key in DERIVED:
            close = difflib.get_close_matches(str(key), DEFAULTS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigurationError(f"{path}: unknown setting {key!r}{hint}")
    return data


def layered(node_file=None, overrides=None, node_dir=None):
    """Settings in their order: shared defaults, the tier's, the node's file, ``overrides``.

    The tier is the one the overrides or the file name. Not validated: see ``validate``.
    """
    node_file, overrides = node_file or {}, overrides or {}
    tier = overrides.get("TIER") or node_file.get("TIER")
    config = dict(DEFAULTS)
    config.update(tier_defaults(tier))
    config.update(node_file)
    if node_dir is not None:
        node_dir = Path(node_dir)
        config["NODE_DIR"] = str(node_dir)
        if not config.get("DB_PATH"):
            config["DB_PATH"] = str(node_dir / STORE_FILE)
        elif not Path(config["DB_PATH"]).is_absolute():
            config["DB_PATH"] = str(node_dir / config["DB_PATH"])
    config.update(overrides)
    return config


def load_config(node_dir, overrides=None):
    """A node's settings (see ``layered``) from its directory, validated."""
    return validate(layered(read_node_file(node_dir), overrides, node_dir))
