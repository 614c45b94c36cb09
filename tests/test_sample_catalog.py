"""The sample catalog reads as 海丰县's own: no other place's text, official sources only,
no placeholder names, no hollow fields, the county's phone numbers.

The sample region is the first thing a county official sees; the catalog was first imported
from a fixture assembled from other places' guides, and these checks keep such text out.
"""

import json
import re
import unicodedata
from importlib import resources
from urllib.parse import urlsplit

import pytest

from shared.catalog import sample, schema

#: Other places whose guides the fixture borrowed from, and every other prefecture-level
#: city of Guangdong (汕尾市, the county's own prefecture, and the province may be named),
#: plus the other counties of 汕尾.
OTHER_PLACES = (
    "广州", "深圳", "珠海", "汕头", "佛山", "韶关", "湛江", "肇庆", "江门", "茂名", "惠州",
    "梅州", "河源", "阳江", "清远", "东莞", "中山", "潮州", "揭阳", "云浮",
    "陆丰", "陆河",
    "番禺", "榕城", "郑州", "淮南", "鹤岗", "尖山",
)
#: Words of the fixture's provenance notes and placeholders that must not reach a citizen.
PLACEHOLDERS = ("某", "typical", "unsourced", "sourced", "XX", "××", "待补充")
OFFICIAL_HOST = re.compile(r"(?:[a-z0-9-]+\.)*gov\.cn")
URL = re.compile(r"https?://[^\s，。；、）)\"']+")
PHONE_IN_TEXT = re.compile(r"(?<!\d)0\d{2,3}-\d{7,8}(?!\d)")
PHONE = re.compile(r"0660-\d{7}|12345|123\d\d")
PHONE_KEYS = ("consult_phone", "complaint_phone", "phone")
#: Members holding codes rather than text.
CODE_KEYS = ("id", "accept_tiers", "decide_tier", "agencies", "item_type_code")


def strings(value, path=""):
    """``(path, text)`` of every string inside ``value``."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for index, entry in enumerate(value):
            yield from strings(entry, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, entry in value.items():
            yield from strings(entry, f"{path}.{key}" if path else key)


def texts():
    """Every string of the sample catalog as published, then of the project's data file."""
    items, agencies = sample.sample_catalog()
    found = []
    for kind, records in (("item", items), ("agency", agencies)):
        for record in records:
            found += [(f"{kind} {record['id']}: {path}", text)
                      for path, text in strings(record)]
    raw = json.loads(resources.files("shared").joinpath(
        "data", sample.SAMPLE_FILE).read_text("utf-8"))
    found += [(f"{sample.SAMPLE_FILE}: {path}", text) for path, text in strings(raw)]
    return found


def _key(path):
    return re.sub(r"\[\d+\]", "", path.rsplit(": ", 1)[-1]).rsplit(".", 1)[-1]


def test_the_sample_is_still_a_complete_valid_catalog():
    items, agencies = sample.sample_catalog()
    assert len(items) == 25 and len(agencies) == 3
    assert schema.validate_catalog(items, agencies) == []


def test_no_other_place_is_named():
    found = [(path, place, text) for path, text in texts()
             for place in OTHER_PLACES if place in text]
    assert found == []


def test_no_placeholder_or_provenance_words():
    found = [(path, word, text) for path, text in texts() if _key(path) not in CODE_KEYS
             for word in PLACEHOLDERS if word in text]
    assert found == []


def test_sources_and_links_are_official_sites():
    items, _ = sample.sample_catalog()
    assert all(item.get("sources") for item in items)  # every guide says where it comes from
    links = [(path, url) for path, text in texts() for url in URL.findall(text)]
    assert links
    foreign = [(path, url) for path, url in links
               if not OFFICIAL_HOST.fullmatch(urlsplit(url).hostname or "")]
    assert foreign == []
    assert not [path for path, text in texts() if "bendibao" in text.lower()]


def test_no_text_is_only_punctuation():
    def hollow(text):
        return not any(unicodedata.category(c)[0] in "LN" for c in text)
    assert [(path, text) for path, text in texts() if hollow(text)] == []


def test_every_item_explains_its_time_limit_and_names_a_haifeng_body():
    items, _ = sample.sample_catalog()
    for item in items:
        assert len(item.get("time_limit_basis", "")) >= 10, item["id"]
        for key in ("implementing_body", "deciding_body", "accepting_body"):
            assert "海丰县" in item[key] or "镇" in item[key], (item["id"], key, item[key])
        assert "海丰县" in item["location"] or "镇" in item["location"], item["id"]


def test_phones_are_the_countys_or_hotlines():
    fields = [(path, text) for path, text in texts() if _key(path) in PHONE_KEYS]
    assert fields
    assert [(p, t) for p, t in fields if not PHONE.fullmatch(t)] == []
    in_text = [(path, number) for path, text in texts() for number in PHONE_IN_TEXT.findall(text)
               if not number.startswith("0660-")]
    assert in_text == []


@pytest.mark.parametrize("text, problem", [
    ("东莞示例由镇街作出审批决定", "place"),
    ("郑州示例为受理之日起25个工作日", "place"),
    ("汕尾市某房屋安全鉴定有限公司", "placeholder"),
    ("）", "hollow"),
    ("http://m.dg.bendibao.com/dgzffw/dibao", "link"),
    ("0755-12345678", "phone"),
])
def test_the_checks_catch_what_the_borrowed_sample_had(text, problem):
    """The old sample's faults, each caught by its check (the checks are not vacuous)."""
    caught = {
        "place": any(place in text for place in OTHER_PLACES),
        "placeholder": any(word in text for word in PLACEHOLDERS),
        "hollow": not any(unicodedata.category(c)[0] in "LN" for c in text),
        "link": any(not OFFICIAL_HOST.fullmatch(urlsplit(u).hostname or "")
                    for u in URL.findall(text)),
        "phone": any(not n.startswith("0660-") for n in PHONE_IN_TEXT.findall(text)),
    }
    assert caught[problem]
    assert OFFICIAL_HOST.fullmatch("www.gdzwfw.gov.cn") and OFFICIAL_HOST.fullmatch("gov.cn")
    assert not OFFICIAL_HOST.fullmatch("gov.cn.example.com")
