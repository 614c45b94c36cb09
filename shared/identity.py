"""Who a node is: its Ed25519 key, signed node-to-node requests, sealed secrets.

Every request one node makes to another is signed (docs/sync.md, "Signed requests"):
the serving node checks the signature against the registry, the timestamp against its
clock (±5 minutes) and the nonce against the ones it has seen. A child whose clock is off
learns the parent's time from the refusal and signs again with the offset corrected.

The region's secret (the HMAC key of citizens' ID numbers) reaches a new node sealed to an
X25519 key it made for its enrolment, so the secret never crosses the link in the clear.
"""

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import os
import re
import threading
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared import errors
from shared.clock import time as clock_time

logger = logging.getLogger(__name__)

KEY_FILE = "node.key"
SECRETS_FILE = "secrets.json"
AUTH_SCHEME = "Tongban-Node"
SIGNING_CONTEXT = b"tongban-request-v1"
#: Seconds a signed request's timestamp may differ from the serving node's clock.
WINDOW_SECONDS = 300
#: Nonces are remembered for longer than the window, so a replay is always caught.
NONCE_TTL_SECONDS = 2 * WINDOW_SECONDS
SERVER_TIME_HEADER = "X-Tongban-Time"
SEAL_INFO = b"tongban-sealed-secret-v1"


# -- encodings ---------------------------------------------------------------------------

def b64(data):
    """Standard base64 text of ``data``."""
    return base64.b64encode(data).decode("ascii")


def unb64(text):
    """Bytes of base64 ``text``; raises ValueError on anything else."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError) as exc:
        raise ValueError(f"not base64: {exc}") from exc


def canonical_json(obj):
    """The bytes that are signed for a JSON object: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


# -- keys --------------------------------------------------------------------------------

def new_private_key():
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def public_key_bytes(private_key):
    """The raw 32 bytes of the public half of ``private_key``."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_key_pem(private_key):
    """PKCS8 PEM of ``private_key`` (unencrypted: the file's mode protects it)."""
    return private_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


def write_private(path, data):
    """Write ``data`` to a new file only its owner can read (no window where others can)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def save_private_key(node_dir, private_key):
    """Store the node's key as ``node_dir/node.key`` (mode 0600)."""
    write_private(Path(node_dir) / KEY_FILE, private_key_pem(private_key))


def load_private_key(node_dir):
    """The node's Ed25519 key, or None when the node has none (not enrolled).

    :raises ConfigurationError: the key file exists but is not an Ed25519 PEM key.
    """
    path = Path(node_dir) / KEY_FILE
    if not path.is_file():
        return None
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise errors.ConfigurationError(f"{path} is not a readable key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise errors.ConfigurationError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(raw):
    """An Ed25519 public key from raw bytes or their base64 text.

    :raises ValueError: not 32 bytes of a key.
    """
    if isinstance(raw, str):
        raw = unb64(raw)
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(public_key, message, signature_b64):
    """True when ``signature_b64`` is ``public_key``'s Ed25519 signature of ``message``.

    :param public_key: raw bytes, base64 text or an ``Ed25519PublicKey``.
    """
    try:
        if not isinstance(public_key, Ed25519PublicKey):
            public_key = load_public_key(public_key)
        public_key.verify(unb64(signature_b64), message)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def sign(private_key, message):
    """Base64 Ed25519 signature of ``message``."""
    return b64(private_key.sign(message))


def save_secrets(node_dir, secrets):
    """Store the node's secrets (``region_key`` …) in ``secrets.json`` (mode 0600)."""
    write_private(Path(node_dir) / SECRETS_FILE,
                   json.dumps(secrets, indent=2, sort_keys=True).encode("utf-8"))


def load_secrets(node_dir):
    """The node's secrets, ``{}`` when it has none."""
    path = Path(node_dir) / SECRETS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise errors.ConfigurationError(f"cannot read {path}: {exc}") from exc


# -- signed requests ---------------------------------------------------------------------

def signing_string(method, path_qs, body, ts, nonce, code):
    """The bytes a node signs for one request (docs/sync.md, "Signed requests")."""
    body_hash = hashlib.sha256(body or b"").hexdigest()
    ts_text = _format_ts(ts)
    return "\n".join([SIGNING_CONTEXT.decode(), method.upper(), path_qs, body_hash,
                      ts_text, nonce, code]).encode("utf-8")


def _format_ts(ts):
    return f"{float(ts):.3f}"


_AUTH_PARAM = re.compile(r'\s*([a-z]+)=("?)([^",]*)\2\s*(?:,|$)')
#: A timestamp as ``RequestSigner`` writes it: unix seconds, decimal, no sign or exponent
#: (``float`` alone also takes ``nan``, ``inf``, ``1e9`` and ``1_0``).
_TIMESTAMP = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")


def parse_authorization(header_value):
    """The fields of a ``Tongban-Node`` Authorization header, or None when it is not one.

    :returns: ``{"node", "ts" (float), "nonce", "sig"}``.
    :raises Unauthorized: the scheme is ours but the parameters are malformed.
    """
    scheme, _, rest = (header_value or "").strip().partition(" ")
    if scheme.lower() != AUTH_SCHEME.lower():
        return None
    fields = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _AUTH_PARAM.match(rest, position)
        if not match or match.end() == position:
            raise errors.Unauthorized("malformed Tongban-Node authorization header")
        fields[match.group(1)] = match.group(3)
        position = match.end()
    missing = {"node", "ts", "nonce", "sig"} - set(fields)
    if missing:
        raise errors.Unauthorized(
            f"Tongban-Node authorization lacks {', '.join(sorted(missing))}")
    if not re.fullmatch(r"[0-9]{6,12}", fields["node"]) or \
            not re.fullmatch(r"[0-9a-f]{16,64}", fields["nonce"]):
        raise errors.Unauthorized("malformed Tongban-Node authorization header")
    if not _TIMESTAMP.fullmatch(fields["ts"]):
        raise errors.Unauthorized("malformed timestamp in Tongban-Node authorization")
    fields["ts"] = float(fields["ts"])
    return fields


class NonceCache:
    """Nonces seen recently, per node: a replayed request is recognised by its nonce.

    Kept in memory: a restarted process refuses requests signed before it started
    (``RequestVerifier``), so forgetting old nonces at a restart lets no replay through.
    """

    def __init__(self, ttl=NONCE_TTL_SECONDS):
        self.ttl = ttl
        self._seen = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def seen(self, node, nonce, now):
        """Record ``nonce`` of ``node``; True when it was already recorded."""
        key = (node, nonce)
        with self._lock:
            if now >= self._next_sweep:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
                self._next_sweep = now + self.ttl / 4
            expires = self._seen.get(key)
            if expires is not None and expires > now:
                return True
            self._seen[key] = now + self.ttl
            return False


class ClockSkew(errors.Unauthorized):
    """A signed request whose timestamp is outside the window; carries our time."""

    refusal = "clock_skew"

    def __init__(self, message, server_time):
        super().__init__(message)
        self.server_time = server_time


class RequestVerifier:
    """Checks the freshness and signature of signed requests for one serving process.

    :param clock: unix seconds (injectable for tests).
    """

    def __init__(self, clock=clock_time, window=WINDOW_SECONDS, nonces=None):
        self.clock = clock
        self.window = window
        self.nonces = nonces or NonceCache(ttl=2 * window)
        # Requests signed before this process started may have been seen by the one
        # before it, whose nonces are gone: refuse them (the client signs again).
        self.started_at = clock() - 1.0

    def check(self, fields, public_key, method, path_qs, body):
        """Verify one request's ``fields`` (from ``parse_authorization``).

        :raises Unauthorized: bad signature, replay, or a timestamp out of the window
            (``ClockSkew``, which carries the serving node's time).
        """
        now = self.clock()
        ts = fields["ts"]
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
            # NaN compares false with everything: it would pass the window and the
            # process-start check, and its request could be replayed after a restart.
            raise errors.Unauthorized("malformed timestamp in Tongban-Node authorization")
        if abs(ts - now) > self.window:
            raise ClockSkew(f"clock skew: request time {ts:.0f} is {ts - now:+.0f} s from "
                            f"this node's clock", now)
        message = signing_string(method, path_qs, body, ts, fields["nonce"], fields["node"])
        if not verify(public_key, message, fields["sig"]):
            raise errors.Unauthorized(f"bad signature from node {fields['node']}")
        if ts < self.started_at:
            raise ClockSkew("request signed before this node started; sign again", now)
        if self.nonces.seen(fields["node"], fields["nonce"], now):
            raise errors.Unauthorized(f"replayed request from node {fields['node']}")


class RequestSigner:
    """Signs the requests a node makes, correcting for a parent whose clock differs.

    :param code: this node's code.
    :param private_key: its ``Ed25519PrivateKey``.
    :param clock: unix seconds (the node's own clock, possibly wrong).
    """

    def __init__(self, code, private_key, clock=clock_time):
        self.code = code
        self.private_key = private_key
        self.clock = clock
        self.offset = 0.0  # seconds to add to our clock to get the peer's

    def headers(self, method, path_qs, body=b""):
        """The ``Authorization`` header for one request."""
        ts = round(self.clock() + self.offset, 3)
        nonce = os.urandom(16).hex()
        signature = sign(self.private_key,
                         signing_string(method, path_qs, body, ts, nonce, self.code))
        value = (f'{AUTH_SCHEME} node={self.code}, ts={_format_ts(ts)}, nonce={nonce}, '
                 f'sig="{signature}"')
        return {"Authorization": value}

    def observe_server_time(self, server_time):
        """Adopt the peer's clock (it refused our timestamp and told us its time)."""
        offset = float(server_time) - self.clock()
        if abs(offset - self.offset) > 1.0:
            logger.warning("clock differs from the peer's by %+.0f s; signing with its time",
                           offset)
        self.offset = offset


# -- sealed secrets (enrolment) ------------------------------------------------------------

def new_seal_key():
    """An X25519 key pair for receiving one sealed secret: ``(private, public_b64)``."""
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
    return private, b64(public)


def _seal_key(shared_secret, ephemeral_public, recipient_public):
    return HKDF(algorithm=hashes.SHA256(), length=32,
                salt=ephemeral_public + recipient_public,
                info=SEAL_INFO).derive(shared_secret)


def seal(recipient_public_b64, plaintext):
    """Encrypt ``plaintext`` so that only the holder of the X25519 key can read it."""
    recipient_public = unb64(recipient_public_b64)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw,
                                                           serialization.PublicFormat.Raw)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    nonce = os.urandom(12)
    ciphertext = AESGCM(_seal_key(shared, ephemeral_public, recipient_public)).encrypt(
        nonce, plaintext, None)
    return {"epk": b64(ephemeral_public), "nonce": b64(nonce), "ct": b64(ciphertext)}


def unseal(private_key, sealed):
    """Decrypt what ``seal`` made for ``private_key``'s public half.

    :raises ValueError: the box is malformed or was not sealed for this key.
    """
    try:
        ephemeral_public = unb64(sealed["epk"])
        recipient_public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
        key = _seal_key(shared, ephemeral_public, recipient_public)
        return AESGCM(key).decrypt(unb64(sealed["nonce"]), unb64(sealed["ct"]), None)
    except (KeyError, TypeError, InvalidTag) as exc:
        raise ValueError("the sealed secret cannot be opened with this key") from exc


# -- citizens ----------------------------------------------------------------------------

def person_key(region_key, id_number):
    """The keyed hash (blind index) of a resident ID number or credit code.

    The same number gives the same key at every node of the region (they share
    ``region_key``), so a case can be found region-wide without the number leaving
    the station in the clear.
    """
    if isinstance(region_key, str):
        region_key = unb64(region_key)
    normalised = id_number.strip().upper().encode("utf-8")
    return hmac.new(region_key, b"person:" + normalised, hashlib.sha256).hexdigest()
