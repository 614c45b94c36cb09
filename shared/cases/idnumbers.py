"""Applicants' numbers: resident ID numbers (GB 11643-1999) and unified social credit
codes (GB 32100-2015), with a clear Chinese message for every wrong number.

A clerk types or scans the number at the counter; a typo must be caught there, with a
message that says what is wrong, before anything is stored or looked up.
"""

import datetime
import re
import unicodedata
from typing import NamedTuple

from shared import clock

#: ISO 7064 MOD 11-2 weights of the first 17 digits of a resident ID number.
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
#: Check character by (weighted sum mod 11).
ID_CHECK_CHARS = "10X98765432"
#: First two digits of a resident ID number: the GB/T 2260 province-level divisions.
PROVINCE_CODES = frozenset(
    [*range(11, 16), *range(21, 24), *range(31, 38), *range(41, 47), *range(50, 55),
     *range(61, 66), 71, 81, 82])
#: Residence permits of Hong Kong, Macao and Taiwan residents carry these region codes
#: (国务院办公厅 2018: 港澳台居民居住证), the only valid ones ending in 0000.
RESIDENCE_PERMIT_REGIONS = frozenset(["810000", "820000", "830000"])
EARLIEST_BIRTH = datetime.date(1900, 1, 1)

#: GB 32100 characters in the order of their values 0..30 (no I, O, Z, S, V).
CREDIT_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
CREDIT_VALUES = {char: value for value, char in enumerate(CREDIT_CHARS)}
CREDIT_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
#: First character: the registration authority (登记管理部门代码).
CREDIT_AUTHORITIES = frozenset("123456789ANY")

PERSON = "person"
ORGANISATION = "organisation"


class IdNumberInvalid(ValueError):
    """A resident ID number or credit code that is wrong; ``message`` says why (Chinese)."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class ResidentId(NamedTuple):
    """A checked resident ID number and what it says about its holder."""

    number: str
    region_code: str
    birth_date: datetime.date
    sex: str


class ApplicantNumber(NamedTuple):
    """An applicant's checked number: ``kind`` is ``"person"`` or ``"organisation"``."""

    kind: str
    number: str


def normalise(text):
    """``text`` as a number: full-width characters folded, white space removed, upper case."""
    if not isinstance(text, str):
        raise IdNumberInvalid("证件号码应为文字。")
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).upper()


# -- resident ID numbers (GB 11643-1999) -------------------------------------------------

def resident_check_char(first17):
    """The check character of the 17 digits ``first17`` (ISO 7064 MOD 11-2)."""
    total = sum(int(digit) * weight for digit, weight in zip(first17, ID_WEIGHTS))
    return ID_CHECK_CHARS[total % 11]


def check_resident_id(text, today=None):
    """Check a resident ID number; returns a ``ResidentId``.

    :param today: the date births may not be after (tests pass one).
    :raises IdNumberInvalid: the number is malformed, names no real region or date, or
        its check character is wrong.
    """
    number = normalise(text)
    _check_resident_shape(number)
    region = number[:6]
    _check_region(region)
    birth = _birth_date(number[6:14], today or clock.today())
    expected = resident_check_char(number[:17])
    if number[17] != expected:
        raise IdNumberInvalid(f"身份证号码校验位错误：第18位应为{expected}，实为{number[17]}。"
                              "请核对号码是否输错。")
    sex = "男" if int(number[16]) % 2 else "女"
    return ResidentId(number, region, birth, sex)


def _check_resident_shape(number):
    if not number:
        raise IdNumberInvalid("请输入身份证号码。")
    if len(number) == 15 and number.isdigit():
        raise IdNumberInvalid("这是15位的旧身份证号码，请提供18位的居民身份证号码。")
    if len(number) != 18:
        raise IdNumberInvalid(f"身份证号码长度应为18位，实为{len(number)}位。")
    for position, char in enumerate(number[:17], start=1):
        if not char.isascii() or not char.isdigit():
            raise IdNumberInvalid(f"身份证号码前17位应为数字，第{position}位是“{char}”。")
    if not (number[17].isascii() and number[17].isdigit()) and number[17] != "X":
        raise IdNumberInvalid(f"身份证号码第18位应为数字或X，实为“{number[17]}”。")


def _check_region(region):
    if region in RESIDENCE_PERMIT_REGIONS:
        return
    if int(region[:2]) not in PROVINCE_CODES:
        raise IdNumberInvalid(f"身份证号码前两位 {region[:2]} 不是有效的省级行政区划代码。")
    if region[2:] == "0000":
        raise IdNumberInvalid(f"身份证号码前六位 {region} 不是有效的县级行政区划代码。")


def _birth_date(digits, today):
    try:
        birth = datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        raise IdNumberInvalid(f"身份证号码中的出生日期 {digits} 不存在。") from None
    if birth > today:
        raise IdNumberInvalid(f"身份证号码中的出生日期 {digits} 晚于今天。")
    if birth < EARLIEST_BIRTH:
        raise IdNumberInvalid(f"身份证号码中的出生日期 {digits} 早于1900年。")
    return birth


def make_resident_id(region_code, birth_date, seq):
    """A resident ID number with the right check character (tests, benchmarks, demos).

    :param birth_date: a ``date`` or ``"YYYYMMDD"``.
    :param seq: the 3-digit order code (0-999); odd for a man, even for a woman.
    """
    if isinstance(birth_date, datetime.date):
        birth_date = birth_date.strftime("%Y%m%d")
    first17 = f"{region_code}{birth_date}{int(seq):03d}"
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError(f"not the 17 digits of a resident ID number: {first17!r}")
    return first17 + resident_check_char(first17)


# -- unified social credit codes (GB 32100-2015) -----------------------------------------

def credit_check_char(first17):
    """The check character of the 17 characters ``first17`` (GB 32100, mod 31)."""
    total = sum(CREDIT_VALUES[char] * weight for char, weight in zip(first17, CREDIT_WEIGHTS))
    return CREDIT_CHARS[(31 - total % 31) % 31]


def check_credit_code(text):
    """Check a unified social credit code; returns it normalised (upper case, no spaces).

    :raises IdNumberInvalid: wrong length, a character the standard does not use, an
        unknown registration authority, a region code that is not digits, or a wrong
        check character.
    """
    code = normalise(text)
    if not code:
        raise IdNumberInvalid("请输入统一社会信用代码。")
    if len(code) != 18:
        raise IdNumberInvalid(f"统一社会信用代码长度应为18位，实为{len(code)}位。")
    for position, char in enumerate(code, start=1):
        if char not in CREDIT_VALUES:
            raise IdNumberInvalid(f"统一社会信用代码第{position}位“{char}”不是有效字符"
                                  "（只用数字和除 I、O、Z、S、V 以外的大写字母）。")
    if code[0] not in CREDIT_AUTHORITIES:
        raise IdNumberInvalid(f"统一社会信用代码第1位“{code[0]}”不是有效的登记管理部门代码。")
    if not code[2:8].isdigit():
        raise IdNumberInvalid(f"统一社会信用代码第3至8位应为行政区划代码（6位数字），"
                              f"实为“{code[2:8]}”。")
    expected = credit_check_char(code[:17])
    if code[17] != expected:
        raise IdNumberInvalid(f"统一社会信用代码校验位错误：第18位应为{expected}，"
                              f"实为{code[17]}。请核对代码是否输错。")
    return code


def make_credit_code(body17):
    """``body17`` followed by its GB 32100 check character (tests, benchmarks, demos)."""
    body17 = body17.upper()
    if len(body17) != 17 or any(char not in CREDIT_VALUES for char in body17):
        raise ValueError(f"not the 17 characters of a credit code: {body17!r}")
    return body17 + credit_check_char(body17)


# -- either ----------------------------------------------------------------------------

def check_applicant_number(text):
    """Check an applicant's number, a resident ID number or a credit code.

    Many credit codes are 17 digits and a check character too, so the shape alone does
    not decide: a number that looks like a resident ID number (a year 19xx/20xx, a month
    and a day in place) is checked as one, and only as one.

    :returns: ``ApplicantNumber(kind, number)``, kind ``"person"`` or ``"organisation"``.
    :raises IdNumberInvalid: it is neither (the message fits what it looks like).
    """
    number = normalise(text)
    if not number:
        raise IdNumberInvalid("请输入证件号码：居民身份证号码或统一社会信用代码。")
    if len(number) == 15 and number.isdigit():
        check_resident_id(number)  # raises the message about old 15-digit numbers
    if len(number) != 18:
        raise IdNumberInvalid(f"证件号码应为18位（居民身份证号码或统一社会信用代码），"
                              f"实为{len(number)}位。")
    if _looks_like_resident_id(number):
        # No fallback to a credit code: a mistyped ID number often passes the credit
        # code's check (about 1 typo in 30), which would file the person under the wrong
        # key. The clerk is told the ID number is wrong instead.
        return ApplicantNumber(PERSON, check_resident_id(number).number)
    return ApplicantNumber(ORGANISATION, check_credit_code(number))


def _looks_like_resident_id(number):
    """17 digits, a digit or X, and a plausible birth date in place.

    The date need not exist (20250231 is a typo in a resident ID number, and the clerk
    should be told so), only have a year 19xx or 20xx, a month and a day in range.
    """
    if not (number[:17].isascii() and number[:17].isdigit()) or \
            number[17] not in "0123456789X":
        return False
    year, month, day = number[6:10], int(number[10:12]), int(number[12:14])
    return year[:2] in ("19", "20") and 1 <= month <= 12 and 1 <= day <= 31
