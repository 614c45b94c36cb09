"""Content-addressed storage of scanned materials.

A scan is stored once under ``root/<sha256[:2]>/<sha256>``, whatever its file name, and
read back only if it still hashes to its name. Scans travel inside replicated documents,
so they are kept small (:data:`MAX_BLOB_BYTES`) and limited to JPEG, PNG and PDF, which
are recognised by their first bytes, never by the file name or the declared type.
"""

import hashlib
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

logger = logging.getLogger(__name__)

MAX_BLOB_BYTES = 4 * 1024 * 1024
MIB = 1024 * 1024

#: Accepted types: (magic bytes, MIME type).
ACCEPTED = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"%PDF-", "application/pdf"),
)

#: Types people commonly upload by mistake, named in the refusal so they know what to fix.
RECOGNISED = (
    (b"GIF87a", "GIF 图片"),
    (b"GIF89a", "GIF 图片"),
    (b"BM", "BMP 图片"),
    (b"II*\x00", "TIFF 图片"),
    (b"MM\x00*", "TIFF 图片"),
    (b"PK\x03\x04", "ZIP 压缩包或 Word/Excel 文档"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "旧版 Word/Excel 文档"),
    (b"Rar!\x1a\x07", "RAR 压缩包"),
    (b"7z\xbc\xaf\x27\x1c", "7z 压缩包"),
)

_SHA256 = re.compile(r"[0-9a-f]{64}")


class BlobRefused(ValueError):
    """An upload that is not stored (too big, empty, or not a JPEG, PNG or PDF)."""

    def __init__(self, message):
        self.message = message
        super().__init__(message)


class BlobCorrupt(Exception):
    """A stored file whose content no longer hashes to its name."""

    def __init__(self, sha256):
        self.sha256 = sha256
        self.message = "扫描件文件已损坏，请重新上传或从其他站点同步。"
        super().__init__(f"blob {sha256} does not match its content")


class Blob(NamedTuple):
    """A stored scan: its hash, detected MIME type, size in bytes and original file name."""

    sha256: str
    mime: str
    size: int
    filename: str


def detect_mime(data):
    """MIME type of an accepted scan from its first bytes, or None."""
    for magic, mime in ACCEPTED:
        if data.startswith(magic):
            return mime
    return None


def describe(data):
    """Chinese name of a type that is not accepted, or None when unrecognised."""
    for magic, name in RECOGNISED:
        if data.startswith(magic):
            return name
    # WebP and HEIC carry their brand a few bytes in
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP 图片"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1"):
        return "HEIC 图片"
    return None


def check(data):
    """The MIME type of ``data`` if it may be stored; :class:`BlobRefused` otherwise."""
    size = len(data)
    if size == 0:
        raise BlobRefused("文件为空。")
    if size > MAX_BLOB_BYTES:
        # rounded up, so a file just over the limit never reads "4.0 MB"
        shown = math.ceil(size * 10 / MIB) / 10
        raise BlobRefused(f"文件过大：{shown:.1f} MB，单个文件不能超过 {MAX_BLOB_BYTES // MIB} MB。")
    mime = detect_mime(data)
    if mime is None:
        name = describe(data)
        what = f"该文件为 {name}" if name else "该文件格式无法识别"
        raise BlobRefused(f"只接受 JPG、PNG 或 PDF 格式的扫描件（{what}）。")
    return mime


def clean_filename(filename):
    """The base name of an uploaded file (browsers may send a Windows path)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:200]


class BlobStore:
    """Scans stored by SHA-256 under ``root``.

    :param key: a 32-byte AES-256-GCM key: files are then sealed at rest (the name stays
        the SHA-256 of the plain content, which is also the associated data, so a sealed
        file cannot be passed off under another name).
    """

    def __init__(self, root, key=None):
        self.root = Path(root)
        self.key = key

    def _seal(self, data, sha256):
        if self.key is None:
            return data
        nonce = os.urandom(12)
        return nonce + AESGCM(self.key).encrypt(nonce, data, sha256.encode("ascii"))

    def _open(self, stored, sha256):
        """The plain content of a stored file, or None when it is damaged."""
        if self.key is not None:
            try:
                stored = AESGCM(self.key).decrypt(stored[:12], stored[12:],
                                                  sha256.encode("ascii"))
            except (InvalidTag, ValueError):
                return None
        return stored if hashlib.sha256(stored).hexdigest() == sha256 else None

    def path(self, sha256):
        """Where the scan ``sha256`` is (or would be) stored; ValueError for a bad hash."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        sha256 = sha256.lower()
        return self.root / sha256[:2] / sha256

    def has(self, sha256):
        """Whether the scan ``sha256`` is stored (its content is not checked)."""
        return self.path(sha256).is_file()

    def put(self, data, filename):
        """Store ``data`` (once per content) and describe it; :class:`BlobRefused` if refused."""
        data = bytes(data)
        mime = check(data)
        sha256 = hashlib.sha256(data).hexdigest()
        target = self.path(sha256)
        if not self._intact(target, sha256):
            self._write(target, self._seal(data, sha256))
        return Blob(sha256, mime, len(data), clean_filename(filename))

    def get(self, sha256):
        """The content of scan ``sha256``: KeyError when absent, BlobCorrupt when damaged."""
        target = self.path(sha256)
        try:
            stored = target.read_bytes()
        except FileNotFoundError:
            raise KeyError(sha256) from None
        data = self._open(stored, target.name)
        if data is None:
            logger.error("blob %s is corrupt (%d bytes on disk)", target.name, len(stored))
            raise BlobCorrupt(target.name)
        return data

    def _intact(self, target, sha256):
        """Whether ``target`` already holds the right content (a damaged copy is replaced)."""
        try:
            stored = target.read_bytes()
        except FileNotFoundError:
            return False
        if self._open(stored, sha256) is not None:
            return True
        logger.warning("blob %s was corrupt; replacing it with the uploaded copy", sha256)
        return False

    def _write(self, target, data):
        """Write ``data`` to ``target`` atomically: a reader sees all of it or nothing."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
