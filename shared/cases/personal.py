"""Applicants' personal data at rest: sealed with a key of the region, shown masked.

A person's name, phone, address and number are stored only as one AES-256-GCM box per
applicant; the database finds the person by the keyed hash of the number
(``identity.person_key``), never by plaintext. Every enrolled node of the region holds the
region key, so a station anywhere in the region can open a case's applicant (handle
anywhere). The box key is derived from the region key with HKDF, so the region key itself
serves only the blind index; the box is bound to its applicant by the AAD, so a sealed
profile copied onto another person does not open.
"""

import json
import logging
import os
import re
import unicodedata

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared import errors, identity
from shared.cases import idnumbers

logger = logging.getLogger(__name__)

PROFILE_VERSION = 1
DATA_KEY_INFO = b"tongban-person-data-v1"
NONCE_BYTES = 12

_MOBILE = re.compile(r"1[3-9][0-9]{9}")
# Area codes: 010 and 02x have three digits, every other one four (0xxx).
_LANDLINE = re.compile(r"(010|02[0-9]|0[3-9][0-9]{2})-?([2-9][0-9]{6,7})")


class PersonalDataInvalid(ValueError):
    """Personal data a clerk entered that is wrong; ``message`` says why (Chinese)."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class ProfileUnreadable(ValueError):
    """A sealed profile that cannot be opened: wrong key, another applicant's, tampered
    or malformed. ``message`` says so in Chinese."""

    def __init__(self, message="申请人个人信息无法解密：密钥不符或数据已被改动。"):
        super().__init__(message)
        self.message = message


# -- keys ------------------------------------------------------------------------------

def _key_bytes(region_key):
    if isinstance(region_key, str):
        region_key = identity.unb64(region_key)
    if not isinstance(region_key, bytes) or len(region_key) != 32:
        raise ValueError("a region key is 32 bytes")
    return region_key


def data_key(region_key):
    """The AES-256-GCM key of personal data, derived from the region key (bytes or base64)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=DATA_KEY_INFO).derive(_key_bytes(region_key))


def region_key_of(node_dir):
    """The region key (32 bytes) the node holds.

    :raises ConfigurationError: the node has none (it is not enrolled) or it is malformed.
    """
    text = identity.load_secrets(node_dir).get("region_key")
    if not text:
        raise errors.ConfigurationError(
            "本站没有区域密钥（尚未登记入网），不能读写申请人的个人信息。"
            "请先登记本站：tongban init --enrol")
    try:
        return _key_bytes(text)
    except ValueError as exc:
        raise errors.ConfigurationError(
            f"本站的区域密钥（{identity.SECRETS_FILE}）已损坏：{exc}") from exc


def index_applicant(region_key, number):
    """Check an applicant's number; returns ``(ApplicantNumber, blind index)``.

    The blind index is computed from the normalised number, so "11010519491231002x" and
    "110105 19491231 002X" find the same person.

    :raises IdNumberInvalid: the number is wrong.
    """
    checked = idnumbers.check_applicant_number(number)
    return checked, identity.person_key(_key_bytes(region_key), checked.number)


# -- sealed profiles -------------------------------------------------------------------

def _aad(applicant_key):
    if isinstance(applicant_key, str):
        applicant_key = applicant_key.encode("utf-8")
    if not applicant_key:
        raise ValueError("a sealed profile needs its applicant's key")
    return applicant_key


def seal_profile(region_key, applicant_key, profile):
    """Encrypt ``profile`` (name, phone, address, id_number …) for ``applicant_key``.

    :returns: ``{"v": 1, "nonce": base64, "ct": base64}`` (JSON, fit for a document).
    """
    if not isinstance(profile, dict):
        raise TypeError("a profile is a dict")
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key(region_key)).encrypt(
        nonce, identity.canonical_json(profile), _aad(applicant_key))
    return {"v": PROFILE_VERSION, "nonce": identity.b64(nonce), "ct": identity.b64(ciphertext)}


def open_profile(region_key, applicant_key, sealed):
    """The profile ``seal_profile`` sealed for ``applicant_key``.

    :raises ProfileUnreadable: wrong region key, another applicant's box, a changed or
        malformed box.
    """
    if not isinstance(sealed, dict) or sealed.get("v") != PROFILE_VERSION:
        raise ProfileUnreadable("申请人个人信息的格式无法识别。")
    try:
        nonce = identity.unb64(sealed["nonce"])
        ciphertext = identity.unb64(sealed["ct"])
        plaintext = AESGCM(data_key(region_key)).decrypt(nonce, ciphertext,
                                                         _aad(applicant_key))
        profile = json.loads(plaintext.decode("utf-8"))
    except (KeyError, TypeError, ValueError, InvalidTag) as exc:
        logger.warning("a sealed profile of %.12s… did not open: %s", applicant_key,
                       type(exc).__name__)
        raise ProfileUnreadable() from exc
    if not isinstance(profile, dict):
        raise ProfileUnreadable("申请人个人信息的格式无法识别。")
    return profile


# -- masks -----------------------------------------------------------------------------

def mask_name(name):
    """``张三丰`` → ``张**``: the family name stays, the rest is hidden."""
    name = (name or "").strip()
    if len(name) <= 1:
        return "*" * len(name)
    return name[0] + "*" * (len(name) - 1)


def mask_phone(phone):
    """``13800138000`` → ``138****8000``; a landline keeps its area code and last 4 digits."""
    phone = (phone or "").strip()
    if _MOBILE.fullmatch(phone):
        return phone[:3] + "****" + phone[-4:]
    area, dash, local = phone.rpartition("-")
    if dash and area and len(local) > 4:
        return f"{area}-{'*' * (len(local) - 4)}{local[-4:]}"
    if len(phone) <= 4:
        return "*" * len(phone)
    return "*" * (len(phone) - 4) + phone[-4:]


def mask_id(number):
    """A resident ID number or credit code with only its first 6 and last 4 shown."""
    number = (number or "").strip()
    if len(number) <= 10:
        return "*" * max(len(number) - 4, 0) + number[-4:]
    return number[:6] + "*" * (len(number) - 10) + number[-4:]


def phone_last4(phone):
    """The last four digits of a phone number (what a citizen is asked to confirm)."""
    digits = re.sub(r"[^0-9]", "", phone or "")
    return digits[-4:]


# -- checks ----------------------------------------------------------------------------

def check_phone(text):
    """Check a contact phone; returns it normalised (``13800138000`` or ``0660-3312345``).

    :raises PersonalDataInvalid: not a mainland mobile or landline number.
    """
    if not isinstance(text, str):
        raise PersonalDataInvalid("联系电话应为文字。")
    phone = re.sub(r"[\s()（）]+", "", unicodedata.normalize("NFKC", text))
    if phone.startswith("+86"):
        phone = phone[3:]
    elif phone.startswith("0086"):
        phone = phone[4:]
    if not phone:
        raise PersonalDataInvalid("请输入联系电话。")
    if phone.startswith("1"):
        mobile = phone.replace("-", "")
        if _MOBILE.fullmatch(mobile):
            return mobile
        if not mobile.isdigit():
            raise PersonalDataInvalid(f"手机号码“{text.strip()}”含有数字以外的字符。")
        if len(mobile) != 11:
            raise PersonalDataInvalid(f"手机号码应为11位，“{text.strip()}”是{len(mobile)}位。")
        raise PersonalDataInvalid(f"手机号码“{text.strip()}”的第二位应为3至9。")
    if phone.startswith("0"):
        landline = _LANDLINE.fullmatch(phone)
        if landline:
            return f"{landline.group(1)}-{landline.group(2)}"
        raise PersonalDataInvalid(f"固定电话“{text.strip()}”格式不对，应为区号加7至8位号码，"
                                  "如 0660-3312345。")
    raise PersonalDataInvalid(f"“{text.strip()}”不是有效的电话号码：手机号码为以1开头的11位"
                              "数字，固定电话以区号0开头。")
