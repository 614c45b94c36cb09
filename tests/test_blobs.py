"""Content-addressed scans: what is accepted, how it is stored, and damage detection."""

import hashlib
import os

import pytest

from shared.cases.blobs import MAX_BLOB_BYTES, Blob, BlobCorrupt, BlobRefused, BlobStore

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"scan of an ID card" * 10
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"household register" * 10
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n"


@pytest.fixture
def store(tmp_path):
    return BlobStore(tmp_path / "blobs")


@pytest.mark.parametrize("data, mime", [(JPEG, "image/jpeg"), (PNG, "image/png"),
                                        (PDF, "application/pdf")])
def test_accepted_scan_is_stored_under_its_hash(store, tmp_path, data, mime):
    blob = store.put(data, "扫描件.bin")
    sha = hashlib.sha256(data).hexdigest()
    assert blob == Blob(sha, mime, len(data), "扫描件.bin")
    assert store.path(sha) == tmp_path / "blobs" / sha[:2] / sha
    assert store.path(sha).read_bytes() == data
    assert store.has(sha)
    assert store.get(sha) == data


def test_type_comes_from_the_content_not_the_name(store):
    assert store.put(PNG, "photo.jpg").mime == "image/png"
    with pytest.raises(BlobRefused):
        store.put(b"MZ\x90\x00 a program", "scan.pdf")


def test_identical_content_is_stored_once(store, tmp_path):
    first = store.put(JPEG, "a.jpg")
    second = store.put(JPEG, "b.jpg")
    assert first.sha256 == second.sha256
    assert (first.filename, second.filename) == ("a.jpg", "b.jpg")
    files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert files == [store.path(first.sha256)]  # and no temporary file is left behind


def test_browser_path_is_reduced_to_the_file_name(store):
    assert store.put(PDF, "C:\\fakepath\\营业执照.pdf").filename == "营业执照.pdf"
    assert store.put(PDF, "../../etc/passwd").filename == "passwd"


def test_too_big_is_refused_with_its_size(store, tmp_path):
    data = b"%PDF-" + b"\x00" * (int(5.2 * 1024 * 1024) - 5)
    with pytest.raises(BlobRefused) as caught:
        store.put(data, "big.pdf")
    assert caught.value.message == "文件过大：5.2 MB，单个文件不能超过 4 MB。"
    assert not (tmp_path / "blobs").exists()


def test_just_over_the_limit_does_not_read_as_the_limit(store):
    with pytest.raises(BlobRefused) as caught:
        store.put(b"%PDF-" + b"\x00" * (MAX_BLOB_BYTES - 4), "big.pdf")
    assert caught.value.message == "文件过大：4.1 MB，单个文件不能超过 4 MB。"


def test_exactly_the_limit_is_accepted(store):
    data = b"%PDF-" + b"\x00" * (MAX_BLOB_BYTES - 5)
    assert store.put(data, "limit.pdf").size == MAX_BLOB_BYTES


def test_empty_file_is_refused(store):
    with pytest.raises(BlobRefused) as caught:
        store.put(b"", "empty.jpg")
    assert caught.value.message == "文件为空。"
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("data, name", [
    (b"GIF89a\x01\x00\x01\x00", "GIF 图片"),
    (b"PK\x03\x04\x14\x00\x06\x00", "ZIP 压缩包或 Word/Excel 文档"),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "WebP 图片"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00", "HEIC 图片"),
])
def test_other_known_type_is_named_in_the_refusal(store, data, name):
    with pytest.raises(BlobRefused) as caught:
        store.put(data, "scan.jpg")
    assert caught.value.message == f"只接受 JPG、PNG 或 PDF 格式的扫描件（该文件为 {name}）。"


def test_unrecognised_type_is_refused(store):
    with pytest.raises(BlobRefused) as caught:
        store.put("身份证正反面".encode("utf-8"), "scan.png")
    assert caught.value.message == "只接受 JPG、PNG 或 PDF 格式的扫描件（该文件格式无法识别）。"


def test_absent_scan_is_a_key_error(store):
    sha = hashlib.sha256(b"never stored").hexdigest()
    assert not store.has(sha)
    with pytest.raises(KeyError):
        store.get(sha)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ab" * 31, "g" * 64, "", None])
def test_malformed_hash_is_refused_before_touching_the_disk(store, bad):
    with pytest.raises(ValueError):
        store.get(bad)
    with pytest.raises(ValueError):
        store.path(bad)


def test_upper_case_hash_finds_the_scan(store):
    blob = store.put(PNG, "a.png")
    assert store.get(blob.sha256.upper()) == PNG


def test_damaged_file_is_detected_on_read(store):
    blob = store.put(JPEG, "id.jpg")
    path = store.path(blob.sha256)
    path.write_bytes(JPEG[:-1] + b"!")
    with pytest.raises(BlobCorrupt) as caught:
        store.get(blob.sha256)
    assert caught.value.sha256 == blob.sha256
    assert "损坏" in caught.value.message


def test_uploading_again_repairs_a_damaged_file(store):
    blob = store.put(JPEG, "id.jpg")
    store.path(blob.sha256).write_bytes(b"\xff\xd8\xff truncated")
    store.put(JPEG, "id.jpg")
    assert store.get(blob.sha256) == JPEG


def test_scan_survives_a_new_store_on_the_same_root(store, tmp_path):
    blob = store.put(PDF, "a.pdf")
    again = BlobStore(str(tmp_path / "blobs"))
    assert again.get(blob.sha256) == PDF
    assert os.path.isfile(again.path(blob.sha256))
