"""Scanned materials as documents: ``scan:<case number>:<sha256>``, sealed, immutable.

A scan travels with its case (the scopes treat ``scan:`` like ``event:``) but in its own
document, so events stay small: folding a case never reads megabytes, and the replicator
can take at most a couple of scans per batch (``syncd.replicator.MAX_HEAVY_PER_BATCH``).
The content is sealed with AES-256-GCM under a key derived from the region key; the
SHA-256 of the plain content names the document and is the associated data, and it is
checked again after opening, so a scan can be neither read without the key nor swapped.
"""

import base64
import hashlib
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared import identity

SCAN_PREFIX = "scan:"
SCAN_KEY_INFO = b"tongban-scan-v1"
MIMES = ("application/pdf", "image/png", "image/jpeg")
_SHA = re.compile(r"[0-9a-f]{64}")


class ScanUnreadable(ValueError):
    """A scan document that does not open with this region key, or whose content changed."""

    def __init__(self, message="扫描件无法打开：密钥不符或内容已被改动。"):
        super().__init__(message)
        self.message = message


def scan_key(region_key):
    """The AES-256-GCM key of scans (derived from the region key, bytes or base64)."""
    if isinstance(region_key, str):
        region_key = identity.unb64(region_key)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=SCAN_KEY_INFO).derive(region_key)


def scan_id(number, sha256):
    """The id of scan ``sha256`` of case ``number``."""
    return f"{SCAN_PREFIX}{number}:{sha256}"


def is_sha256(value):
    """True for 64 lower-case hex digits."""
    return isinstance(value, str) and bool(_SHA.fullmatch(value))


def scan_doc(key, number, node, data, mime):
    """The ``scan:`` document of ``data`` (``key`` from :func:`scan_key`)."""
    sha256 = hashlib.sha256(data).hexdigest()
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, data, sha256.encode("ascii"))
    return {"_id": scan_id(number, sha256), "type": "scan", "case": number, "node": node,
            "sha256": sha256, "mime": mime, "size": len(data),
            "data": base64.b64encode(nonce + sealed).decode("ascii")}


def open_scan(key, doc):
    """The plain content of a scan document; :class:`ScanUnreadable` when it cannot be."""
    try:
        stored = base64.b64decode(doc["data"], validate=True)
        data = AESGCM(key).decrypt(stored[:12], stored[12:], doc["sha256"].encode("ascii"))
    except (KeyError, TypeError, ValueError, InvalidTag, AttributeError) as exc:
        raise ScanUnreadable() from exc
    if hashlib.sha256(data).hexdigest() != doc["sha256"]:
        raise ScanUnreadable()
    return data
