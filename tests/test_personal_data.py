"""Applicants' numbers, their personal data at rest, and the audit log of staff views."""

import base64
import datetime
import json
import os
import sqlite3
import threading

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared import audit, identity
from shared.cases import personal
from shared.cases.idnumbers import (
    IdNumberInvalid,
    check_applicant_number,
    check_credit_code,
    check_resident_id,
    make_credit_code,
    make_resident_id,
)
from shared.db import open_database
from shared.errors import ConfigurationError
from tests.nodeproc import tongban

STANDARD_EXAMPLE = "11010519491231002X"  # GB 11643-1999's own example
CREDIT_EXAMPLE = "91350100M000100Y43"
TODAY = datetime.date(2024, 6, 1)


def message_of(call, *args, **kwargs):
    with pytest.raises(ValueError) as caught:
        call(*args, **kwargs)
    return caught.value.message


# -- resident ID numbers -----------------------------------------------------------------

def test_the_standards_example_is_valid_and_says_who_it_is():
    checked = check_resident_id(STANDARD_EXAMPLE)
    assert checked.number == STANDARD_EXAMPLE
    assert checked.region_code == "110105"
    assert checked.birth_date == datetime.date(1949, 12, 31)
    assert checked.sex == "女"


def test_lower_case_x_spaces_and_full_width_digits_are_accepted():
    assert check_resident_id("110105 19491231 002x").number == STANDARD_EXAMPLE
    assert check_resident_id("１１０１０５１９４９１２３１００２ｘ").number == STANDARD_EXAMPLE


def test_generated_numbers_are_valid_and_carry_the_sex_of_their_order_code():
    man = make_resident_id("441521", datetime.date(1985, 3, 7), 13)
    woman = make_resident_id("441521", "19850307", 14)
    assert check_resident_id(man).sex == "男"
    assert check_resident_id(woman).sex == "女"
    assert check_resident_id(man).birth_date == datetime.date(1985, 3, 7)


def test_a_wrong_check_digit_is_named_with_the_right_one():
    assert message_of(check_resident_id, "110105194912310025") == \
        "身份证号码校验位错误：第18位应为X，实为5。请核对号码是否输错。"


@pytest.mark.parametrize("birth, words", [
    ("20000230", "出生日期 20000230 不存在"),
    ("19991301", "出生日期 19991301 不存在"),
    ("20240602", "出生日期 20240602 晚于今天"),
    ("18991231", "出生日期 18991231 早于1900年"),
])
def test_impossible_birth_dates_are_refused(birth, words):
    number = make_resident_id("441521", birth, 11)  # a right check digit: the date is wrong
    assert words in message_of(check_resident_id, number, today=TODAY)


def test_today_is_a_possible_birth_date():
    number = make_resident_id("441521", TODAY, 11)
    assert check_resident_id(number, today=TODAY).birth_date == TODAY


@pytest.mark.parametrize("region, words", [
    ("991521", "前两位 99 不是有效的省级行政区划代码"),
    ("001521", "前两位 00 不是有效的省级行政区划代码"),
    ("440000", "前六位 440000 不是有效的县级行政区划代码"),
])
def test_regions_that_do_not_exist_are_refused(region, words):
    number = make_resident_id(region, "19800101", 21)
    assert words in message_of(check_resident_id, number)


def test_residence_permits_of_hong_kong_macao_and_taiwan_residents_are_accepted():
    for region in ("810000", "820000", "830000"):
        assert check_resident_id(make_resident_id(region, "19800101", 21)).region_code == region


@pytest.mark.parametrize("text, words", [
    ("110105491231002", "15位的旧身份证号码，请提供18位"),
    ("1101051949123100", "长度应为18位，实为16位"),
    ("11010519491231A02X", "前17位应为数字，第15位是“A”"),
    ("11010519491231002Y", "第18位应为数字或X"),
    ("", "请输入身份证号码"),
])
def test_malformed_numbers_get_a_message_saying_what_is_wrong(text, words):
    assert words in message_of(check_resident_id, text)


# -- unified social credit codes ---------------------------------------------------------

def test_a_valid_credit_code_is_returned_normalised():
    assert check_credit_code(CREDIT_EXAMPLE) == CREDIT_EXAMPLE
    assert check_credit_code(" 91350100m000100y43 ") == CREDIT_EXAMPLE
    assert make_credit_code(CREDIT_EXAMPLE[:17]) == CREDIT_EXAMPLE


def test_a_wrong_credit_check_character_is_named_with_the_right_one():
    assert "校验位错误：第18位应为3，实为2" in message_of(check_credit_code, "91350100M000100Y42")


@pytest.mark.parametrize("text, words", [
    ("91350100M000100Y4", "长度应为18位，实为17位"),
    ("91350100M0001O0Y43", "第14位“O”不是有效字符"),
    ("91350100M000100I43", "第16位“I”不是有效字符"),
    ("B1350100M000100Y43", "第1位“B”不是有效的登记管理部门代码"),
    ("9135A100M000100Y43", "第3至8位应为行政区划代码"),
])
def test_malformed_credit_codes_get_a_message(text, words):
    assert words in message_of(check_credit_code, text)


def test_generated_credit_codes_verify_and_any_other_check_character_is_refused():
    for digit in "0123456789":
        code = make_credit_code(f"9144150{digit}MA4W{digit}X8Y0")
        assert check_credit_code(code) == code
        for other in set("0123456789ABCDEFGHJKLMNPQRTUWXY") - {code[17]}:
            with pytest.raises(IdNumberInvalid):
                check_credit_code(code[:17] + other)


# -- either ------------------------------------------------------------------------------

def test_applicant_numbers_are_told_apart_by_what_they_are():
    assert check_applicant_number("11010519491231002x") == ("person", STANDARD_EXAMPLE)
    assert check_applicant_number(CREDIT_EXAMPLE.lower()) == ("organisation", CREDIT_EXAMPLE)
    # 17 digits and a check character, yet a credit code.
    all_digits = make_credit_code("91440300708461136")
    assert check_applicant_number(all_digits) == ("organisation", all_digits)


def test_a_wrong_applicant_number_gets_the_message_of_what_it_looks_like():
    assert "出生日期 20250231 不存在" in message_of(check_applicant_number,
                                             make_resident_id("441521", "20250231", 11))
    assert "校验位错误：第18位应为X" in message_of(check_applicant_number,
                                           "110105194912310025")
    assert "统一社会信用代码校验位错误" in message_of(check_applicant_number,
                                             "91350100M000100Y42")
    assert "18位的居民身份证号码" in message_of(check_applicant_number, "110105491231002")
    assert "应为18位" in message_of(check_applicant_number, "12345")


# -- personal data at rest ---------------------------------------------------------------

REGION_KEY = bytes(range(32))
OTHER_REGION_KEY = bytes(range(1, 33))
PROFILE = {"name": "张三丰", "phone": "13800138000", "address": "海丰县海城镇人民路1号",
           "id_number": STANDARD_EXAMPLE}


def applicant(number=STANDARD_EXAMPLE):
    return identity.person_key(REGION_KEY, number)


def test_a_profile_round_trips_and_its_box_shows_nothing_in_the_clear():
    sealed = personal.seal_profile(REGION_KEY, applicant(), PROFILE)
    assert sealed["v"] == 1 and set(sealed) == {"v", "nonce", "ct"}
    assert personal.open_profile(REGION_KEY, applicant(), sealed) == PROFILE
    as_text = json.dumps(sealed, ensure_ascii=False)
    for value in PROFILE.values():
        assert value not in as_text
    assert "张三丰".encode("utf-8") not in base64.b64decode(sealed["ct"])
    # Two boxes of the same profile differ (fresh nonce each time).
    assert personal.seal_profile(REGION_KEY, applicant(), PROFILE)["ct"] != sealed["ct"]


def test_a_profile_does_not_open_with_the_wrong_region_key():
    sealed = personal.seal_profile(REGION_KEY, applicant(), PROFILE)
    with pytest.raises(personal.ProfileUnreadable):
        personal.open_profile(OTHER_REGION_KEY, applicant(), sealed)


def test_the_region_key_itself_is_not_the_data_key():
    sealed = personal.seal_profile(REGION_KEY, applicant(), PROFILE)
    with pytest.raises(InvalidTag):
        AESGCM(REGION_KEY).decrypt(base64.b64decode(sealed["nonce"]),
                                   base64.b64decode(sealed["ct"]), applicant().encode())


def test_a_profile_moved_to_another_applicant_does_not_open():
    sealed = personal.seal_profile(REGION_KEY, applicant(), PROFILE)
    other = applicant(make_resident_id("441521", "19850307", 13))
    with pytest.raises(personal.ProfileUnreadable):
        personal.open_profile(REGION_KEY, other, sealed)


@pytest.mark.parametrize("spoil", [
    lambda s: {**s, "ct": base64.b64encode(bytes([base64.b64decode(s["ct"])[0] ^ 1]) +
                                           base64.b64decode(s["ct"])[1:]).decode()},
    lambda s: {**s, "nonce": base64.b64encode(b"\0" * 12).decode()},
    lambda s: {**s, "ct": "not base64!"},
    lambda s: {"v": 1, "ct": s["ct"]},
    lambda s: {**s, "v": 2},
    lambda s: "a string",
])
def test_a_tampered_or_malformed_profile_is_unreadable(spoil):
    sealed = personal.seal_profile(REGION_KEY, applicant(), PROFILE)
    with pytest.raises(personal.ProfileUnreadable) as caught:
        personal.open_profile(REGION_KEY, applicant(), spoil(sealed))
    assert caught.value.message.startswith("申请人个人信息")


def test_the_blind_index_ignores_how_the_number_was_typed():
    checked, key = personal.index_applicant(REGION_KEY, "110105 19491231 002x")
    assert checked == ("person", STANDARD_EXAMPLE)
    assert key == personal.index_applicant(REGION_KEY, STANDARD_EXAMPLE)[1] == applicant()
    with pytest.raises(IdNumberInvalid):
        personal.index_applicant(REGION_KEY, "110105194912310025")


def test_masks_hide_all_but_what_a_clerk_needs():
    assert personal.mask_name("张三丰") == "张**"
    assert personal.mask_name("李四") == "李*"
    assert personal.mask_phone("13800138000") == "138****8000"
    assert personal.mask_phone("0660-3312345") == "0660-***2345"
    assert personal.mask_id(STANDARD_EXAMPLE) == "110105********002X"
    assert personal.mask_id(CREDIT_EXAMPLE) == "913501********0Y43"
    assert personal.phone_last4("138 0013 8000") == "8000"


@pytest.mark.parametrize("text, normalised", [
    ("13800138000", "13800138000"),
    ("+86 138-0013-8000", "13800138000"),
    ("0660-3312345", "0660-3312345"),
    ("06603312345", "0660-3312345"),
    ("(020)83331234", "020-83331234"),
])
def test_phones_are_normalised(text, normalised):
    assert personal.check_phone(text) == normalised


@pytest.mark.parametrize("text, words", [
    ("1380013800", "应为11位"),
    ("12800138000", "第二位应为3至9"),
    ("1380013800a", "数字以外的字符"),
    ("0660-123", "区号加7至8位号码"),
    ("88888888", "不是有效的电话号码"),
    ("", "请输入联系电话"),
])
def test_wrong_phones_get_a_message(text, words):
    assert words in message_of(personal.check_phone, text)


def test_a_node_without_a_region_key_is_told_to_enrol(tmp_path):
    with pytest.raises(ConfigurationError) as caught:
        personal.region_key_of(tmp_path)
    assert "尚未登记入网" in str(caught.value)
    identity.save_secrets(tmp_path, {"region_key": identity.b64(REGION_KEY)})
    assert personal.region_key_of(tmp_path) == REGION_KEY


# -- the audit log ---------------------------------------------------------------------

@pytest.fixture
def node(tmp_path):
    """A node directory with a store database and its audit log of 20 entries."""
    identity.save_secrets(tmp_path, {"region_key": identity.b64(REGION_KEY)})
    db = open_database(tmp_path / "store.sqlite")
    audit.create_tables(db)
    audit.create_tables(db)  # idempotent
    log = audit.NodeAudit(tmp_path, db)
    for number in range(1, 21):
        log.record(f"clerk{number % 3}", "view_person", f"person-{number % 4}",
                   {"case": f"441521-20240601-{number:04d}", "fields": ["name", "phone"]},
                   at=datetime.datetime(2024, 6, 1, 8, number, tzinfo=datetime.timezone.utc))
    yield log
    db.close()


def raw_sql(log, *statements):
    """Change the SQLite file behind the app's back, as an attacker with the file would."""
    with sqlite3.connect(log.db.database) as conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def test_an_untouched_log_verifies(node):
    report = node.verify()
    assert report == (True, 20, [])
    newest = node.entries(limit=3)
    assert [e["seq"] for e in newest] == [20, 19, 18]
    assert newest[0]["detail"] == {"case": "441521-20240601-0020", "fields": ["name", "phone"]}
    assert newest[0]["at"] == "2024-06-01T08:20:00.000+00:00"
    assert {e["subject"] for e in node.entries(subject="person-1")} == {"person-1"}
    assert len(node.entries(subject="person-1", limit=100)) == 5


def test_an_edited_entry_is_named(node):
    raw_sql(node, """UPDATE audit_log SET detail = '{"case":"other"}' WHERE seq = 7""")
    report = node.verify()
    assert not report.ok and report.entries == 20
    assert report.problems == ["entry 7: MAC does not match (edited)"]


def test_an_entry_edited_with_its_mac_breaks_the_chain_after_it(node):
    raw_sql(node, "UPDATE audit_log SET staff = 'nobody', mac = '" + "ab" * 32 +
            "' WHERE seq = 7")
    assert node.verify().problems == ["entry 7: MAC does not match (edited)",
                                      "entry 8: does not follow entry 7 (reordered, "
                                      "inserted or its prev edited)"]


def test_an_edited_link_of_the_chain_is_caught_twice(node):
    raw_sql(node, "UPDATE audit_log SET prev = (SELECT mac FROM audit_log WHERE seq = 6) "
            "WHERE seq = 8")
    assert node.verify().problems == ["entry 8: does not follow entry 7 (reordered, "
                                      "inserted or its prev edited)",
                                      "entry 8: MAC does not match (edited)"]


def test_deleting_the_newest_entries_and_restoring_the_old_head_row_is_caught_by_the_file(
        tmp_path):
    db = open_database(tmp_path / "store.sqlite")
    log = audit.NodeAudit(tmp_path, db)
    for number in range(17):
        log.record("clerk", "view_person", "person-1")
    old_head = db.execute_sql("SELECT seq, mac, tag FROM audit_head").fetchone()
    for number in range(3):
        log.record("clerk", "view_person", "person-2")
    assert log.verify().ok
    raw_sql(log, "DELETE FROM audit_log WHERE seq > 17",
            "UPDATE audit_head SET seq = %d, mac = '%s', tag = '%s'" % old_head)
    # Without the file the log looks whole: that is why the head is kept twice.
    assert audit.verify(db, log.key, head_file=None).ok
    report = log.verify()
    assert report.entries == 17
    assert report.problems == ["entries 18-20 missing (head file audit-head.json says 20)"]
    db.close()


def test_deleting_the_newest_entries_is_caught_by_both_heads(node):
    raw_sql(node, "DELETE FROM audit_log WHERE seq > 17")
    assert node.verify().problems == [
        "entries 18-20 missing (audit head row says 20)",
        "entries 18-20 missing (head file audit-head.json says 20)"]


def test_a_removed_entry_in_the_middle_is_a_gap(node):
    raw_sql(node, "DELETE FROM audit_log WHERE seq IN (12, 13)")
    assert node.verify().problems == ["entries 12-13 missing (seq gap after 11: next is 14)"]


def test_removed_first_entries_are_missing(node):
    raw_sql(node, "DELETE FROM audit_log WHERE seq <= 2")
    assert node.verify().problems == ["entries 1-2 missing (the log starts at 3)"]


def test_swapped_entries_are_caught(node):
    raw_sql(node,
            "UPDATE audit_log SET seq = 100 WHERE seq = 5",
            "UPDATE audit_log SET seq = 5 WHERE seq = 6",
            "UPDATE audit_log SET seq = 6 WHERE seq = 100")
    problems = node.verify().problems
    assert "entry 5: MAC does not match (edited)" in problems
    assert "entry 6: MAC does not match (edited)" in problems
    assert any(p.startswith("entry 5: does not follow entry 4") for p in problems)


def test_an_inserted_entry_is_caught(node):
    raw_sql(node, "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 10",
            "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000",
            "INSERT INTO audit_log VALUES (10, '2024-06-01T08:09:30.000+00:00', 'clerk1', "
            "'view_person', 'person-1', '{}', (SELECT mac FROM audit_log WHERE seq = 9), "
            "'" + "00" * 32 + "')")
    problems = node.verify().problems
    assert problems[0] == "entry 10: MAC does not match (edited)"
    assert "entry 11: MAC does not match (edited)" in problems
    assert "entry 21: MAC does not match (edited)" in problems
    assert any("audit head row says 20 but the log goes to 21" in p for p in problems)


def test_an_entry_appended_without_the_key_is_caught(node):
    raw_sql(node, "INSERT INTO audit_log VALUES (21, '2024-06-02T00:00:00.000+00:00', "
            "'x', 'view_person', 'person-1', '{}', "
            "(SELECT mac FROM audit_log WHERE seq = 20), '" + "00" * 32 + "')")
    problems = node.verify().problems
    assert problems[0] == "entry 21: MAC does not match (edited)"
    assert len(problems) == 3  # and both heads say 20


def test_an_edited_head_row_or_head_file_is_caught(node):
    raw_sql(node, "UPDATE audit_head SET seq = 19")
    assert node.verify().problems == ["audit head row: MAC does not match (edited)"]
    node.head_file.write_text("not json")
    assert "head file audit-head.json: unreadable" in node.verify().problems[-1]
    node.head_file.unlink()
    assert "head file audit-head.json is missing (the log has 20 entries)" in \
        node.verify().problems


def test_a_log_checked_with_another_key_fails_on_every_entry(node):
    report = audit.verify(node.db, audit.derive_key(os.urandom(32)), node.head_file)
    assert not report.ok and report.entries == 20
    assert report.problems[0] == "entry 1: MAC does not match (edited)"


def test_appending_resumes_the_chain_and_the_head_file_follows(node):
    seq = node.record("supervisor", "view_person", "person-9")
    assert seq == 21 and node.verify() == (True, 21, [])
    head = json.loads(node.head_file.read_text())
    assert head["seq"] == 21
    if os.name == "posix":
        assert node.head_file.stat().st_mode & 0o777 == 0o600


def test_concurrent_writers_keep_one_chain(node):
    def write(name):
        for _ in range(10):
            node.record(name, "view_person", "person-1")

    threads = [threading.Thread(target=write, args=(f"clerk-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert node.verify() == (True, 60, [])


def test_entries_need_who_what_and_whom(node):
    with pytest.raises(ValueError):
        node.record("", "view_person", "person-1")
    assert node.verify().entries == 20


def test_the_audit_key_is_kept_outside_the_database_next_to_the_region_key(node, tmp_path):
    secrets = identity.load_secrets(tmp_path)
    assert secrets["region_key"] == identity.b64(REGION_KEY) and secrets["audit_key"]
    assert audit.audit_key_of(tmp_path) == node.key
    assert node.key != base64.b64decode(secrets["audit_key"])  # derived, not the secret
    with open(tmp_path / "store.sqlite", "rb") as handle:
        assert secrets["audit_key"].encode() not in handle.read()


def test_a_node_without_a_log_verifies_without_making_a_key(tmp_path):
    db = open_database(tmp_path / "store.sqlite")
    assert audit.verify_node(tmp_path, db) == (True, 0, [])
    assert "audit_key" not in identity.load_secrets(tmp_path)
    assert audit.entries(db) == []
    db.close()


# -- tongban audit verify ----------------------------------------------------------------

def test_the_cli_reports_an_intact_log_then_the_tampered_entry(tmp_path):
    node_dir = tmp_path / "county"
    tongban("init", node_dir, "--tier", "county", "--code", "441521")
    fresh = tongban("audit", "verify", node_dir)
    assert fresh.returncode == 0 and fresh.stdout.strip() == "audit log intact: 0 entries"

    # As the web app does: the key from the node dir, the head file beside the store.
    db = open_database(node_dir / "store.sqlite")
    key = audit.audit_key_of(node_dir)
    for number in range(5):
        audit.record(db, key, "clerk", "view_person", f"person-{number}", {"fields": ["name"]})
    db.close()
    assert json.loads((node_dir / "audit-head.json").read_text())["seq"] == 5
    intact = tongban("audit", "verify", node_dir)
    assert intact.returncode == 0 and intact.stdout.strip() == "audit log intact: 5 entries"

    with sqlite3.connect(node_dir / "store.sqlite") as conn:
        conn.execute("UPDATE audit_log SET staff = 'somebody else' WHERE seq = 3")
    conn.close()
    broken = tongban("audit", "verify", node_dir, check=False)
    assert broken.returncode == 1
    assert broken.stdout.splitlines()[0] == "entry 3: MAC does not match (edited)"
    as_json = tongban("audit", "verify", node_dir, "--json", check=False)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout) == {
        "ok": False, "entries": 5, "problems": ["entry 3: MAC does not match (edited)"]}
