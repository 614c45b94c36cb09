"""Setting up a node's identity: the county makes the region's keys, others enrol.

``tongban init`` calls these. The county makes its Ed25519 key, the region key (HMAC key
of citizens' ID numbers) and its own signed registry entry. Every other node makes a key
pair, sends the public half with a one-time enrolment code to its parent (which relays it
to the county), and receives the county's public key, the registry and the region key
sealed to a one-off X25519 key.
"""

import json
import logging
import os
from pathlib import Path

from shared import config as cfg
from shared import errors, identity, registry
from shared.nodeclient import NodeClient, ParentUnreachable

logger = logging.getLogger(__name__)


def update_config(node_dir, **settings):
    """Merge ``settings`` into ``node_dir/tongban.json``."""
    path = Path(node_dir) / cfg.CONFIG_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(settings)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def county_identity(node_dir):
    """Make the county's key and the region key; returns the settings to record."""
    key = identity.new_private_key()
    identity.save_private_key(node_dir, key)
    identity.save_secrets(node_dir, {"region_key": identity.b64(os.urandom(32))})
    return {"COUNTY_PUBLIC_KEY": identity.b64(identity.public_key_bytes(key))}


def register_county(store, node_dir, code, name):
    """Write the county's own signed entry into its registry."""
    key = identity.load_private_key(node_dir)
    registry.publish_entry(store, key, code=code, tier="county", name=name,
                           public_key=identity.b64(identity.public_key_bytes(key)))


def request_enrolment(parent_url, enrol_code, code, tier, name, *, timeout=30.0):
    """Ask the parent (relaying to the county) to enrol this node.

    :returns: ``(private_key, settings, secrets, registry_docs)`` to install.
    :raises ConfigurationError: refused, or the parent cannot be reached (in plain words).
    """
    key = identity.new_private_key()
    seal_private, seal_public = identity.new_seal_key()
    request = {"enrol_code": enrol_code, "code": code, "tier": tier, "name": name,
               "public_key": identity.b64(identity.public_key_bytes(key)),
               "seal_key": seal_public}
    client = NodeClient(parent_url, timeout=timeout)
    try:
        answer = client.post("/sync/enrol", request)
    except ParentUnreachable as exc:
        raise errors.ConfigurationError(
            f"the parent {client.base_url} cannot be reached; enrol when the link is up "
            f"({exc.original})") from exc
    except errors.PeerError as exc:
        raise errors.ConfigurationError(f"enrolment refused: {exc}") from exc
    finally:
        client.close()
    county_public = answer.get("county_public_key", "")
    entry = answer.get("entry") or {}
    if not registry.verify_entry(county_public, entry) or entry.get("code") != code or \
            entry.get("public_key") != request["public_key"]:
        raise errors.ConfigurationError("the enrolment answer does not carry a valid "
                                        "registry entry for this node")
    try:
        region_key = identity.unseal(seal_private, answer["sealed_region_key"])
    except (KeyError, ValueError) as exc:
        raise errors.ConfigurationError("the region key in the enrolment answer cannot "
                                        "be opened") from exc
    return (key, {"COUNTY_PUBLIC_KEY": county_public},
            {"region_key": identity.b64(region_key)}, answer.get("registry") or [entry])


def install_enrolment(node_dir, key, secrets):
    """Write the node's key and secrets (the config update is the caller's)."""
    identity.save_private_key(node_dir, key)
    identity.save_secrets(node_dir, secrets)


def store_registry(store, docs):
    """Write relayed registry documents unchanged (their revisions kept)."""
    docs = [d for d in docs if isinstance(d, dict) and
            str(d.get("_id", "")).startswith(registry.NODE_PREFIX)]
    if docs:
        failures = store.bulk_docs(docs, new_edits=False)
        for failure in failures:
            logger.warning("registry document %s not stored: %s", failure.get("id"),
                           failure.get("reason"))
