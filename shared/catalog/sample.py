"""The sample catalog (shared/data/catalog-sample.json) brought up to the full item schema.

The data file records 25 livelihood items of 海丰县 (Haifeng County, Shanwei) as its own
service guides would state them: the county's departments and the township governments as
the bodies, the national and Guangdong regulations as the basis, the official portals as
the sources. The project keeps its own copy (first imported from the handbook fixture
``catalog-sample.json``, whose text was borrowed from other places' guides); edit this copy,
never the handbook's. The elements the file lacks (process steps, location, phones, routing,
life events…) are filled here from the department and the deciding tier so that the demo
region and the tests work with complete, valid items. They are sample values, not the
county's official ones (tests/test_sample_catalog.py keeps them Haifeng's).
"""

import copy
import json
import re
from importlib import resources

from shared.catalog import schema

SAMPLE_FILE = "catalog-sample.json"

#: keyword in the item name -> life events / audiences (first match wins per keyword).
LIFE_EVENT_WORDS = [
    ("养老保险参保", ["就业", "养老"]), ("养老保险待遇", ["退休", "养老"]),
    ("医疗保险", ["医疗"]), ("医疗救助", ["医疗", "困难救助"]), ("低保", ["困难救助"]),
    ("最低生活", ["困难救助"]), ("特困", ["困难救助"]), ("临时救助", ["困难救助"]),
    ("残疾", ["残疾"]), ("高龄", ["养老"]), ("老年人", ["养老"]), ("生育", ["生育", "出生"]),
    ("计划生育", ["生育"]), ("失业", ["失业"]), ("就业", ["就业"]), ("居住", ["居住"]),
    ("流动人口", ["居住"]), ("危房", ["住房", "困难救助"]), ("宅基地", ["住房"]),
    ("法律援助", ["法律服务"]), ("义务兵", ["兵役"]), ("社会保障卡", ["就业", "医疗"]),
    ("孤儿", ["困难救助", "出生"]),
]
AUDIENCE_WORDS = [
    ("残疾", ["残疾人"]), ("低保", ["困难群众"]), ("最低生活", ["困难群众"]),
    ("特困", ["困难群众"]), ("临时救助", ["困难群众"]), ("医疗救助", ["困难群众"]),
    ("危房", ["困难群众", "农村村民"]), ("高龄", ["老年人"]), ("老年人", ["老年人"]),
    ("待遇领取", ["老年人"]), ("计划生育", ["计划生育家庭"]), ("生育", ["青年"]),
    ("失业", ["失业人员"]), ("就业", ["失业人员", "青年"]), ("居住", ["流动人口"]),
    ("流动人口", ["流动人口"]), ("宅基地", ["农村村民"]), ("义务兵", ["退役军人及军属"]),
    ("孤儿", ["儿童"]), ("法律援助", ["困难群众"]),
]

CHANNEL_PREFIXES = [
    ("部门共享", "部门共享"), ("村（居）委会", "村（居）委会出具"),
    ("其他机构", "其他机构出具"), ("申请人自备", "申请人自备"),
]

#: The department of an item (its ``department``) -> the consultation phone of the county
#: body that answers for it (sample numbers of the county's 0660-66 exchange).
CONSULT_PHONES = {
    "人力资源社会保障": "0660-6612333",  # 海丰县人力资源和社会保障局
    "医疗保障": "0660-6612393",  # 海丰县医疗保障局
    "民政": "0660-6612349",  # 海丰县民政局
    "残联": "0660-6612385",  # 海丰县残疾人联合会
    "卫生健康": "0660-6612320",  # 海丰县卫生健康局
    "公安": "0660-6612110",  # 海丰县公安局
    "住房城乡建设": "0660-6612319",  # 海丰县住房和城乡建设局
    "农业农村": "0660-6612316",  # 海丰县农业农村局
    "司法行政": "0660-6612348",  # 海丰县司法局
    "退役军人事务": "0660-6612366",  # 海丰县退役军人事务局
}
DEFAULT_PHONE = "0660-6612345"  # 海丰县政务服务数据管理局
COUNTY_HALL = "海丰县政务服务中心（海城镇二环路）"
LOCATIONS = {
    "county": "各村（社区）党群服务中心便民服务站、各镇便民服务中心综合受理窗口；"
              f"也可到{COUNTY_HALL}综合受理窗口办理",
    "township": "各村（社区）党群服务中心便民服务站（代收代办）、各镇便民服务中心综合受理窗口",
}
HOURS = "工作日 上午 8:30—12:00，下午 14:30—17:30（法定节假日除外）"
TRANSIT = ("就近到所在村（社区）党群服务中心便民服务站或镇便民服务中心办理，服务站一般设在"
           f"村（居）委会办公场所内；{COUNTY_HALL}可乘县城公交在政务服务中心站下车。")
COMPLAINT_PHONE = "12345"  # 12345 政务服务便民热线


def _words(name, table, default):
    found = []
    for word, values in table:
        if word in name:
            found.extend(v for v in values if v not in found)
    return found or list(default)


def _unit(text):
    return "自然日" if text and text.startswith("自然日") else "工作日"


def _depth(text):
    match = re.match(r"(Ⅰ|Ⅱ|Ⅲ|Ⅳ)级", text or "")
    return match.group(0) if match else "Ⅱ级"


def _channel(text):
    for prefix, channel in CHANNEL_PREFIXES:
        if text.startswith(prefix):
            return channel
    return "申请人填写"


def _material(entry):
    channel = _channel(entry["source_channel"])
    form = entry["form"] if entry["form"] in schema.MATERIAL_FORMS else "纸质或电子"
    name = entry["name"]
    kind = ("申请表格" if re.search(r"表|申请书|声明|承诺书", name) else
            "证件证照" if re.search(r"证|照|户口|卡", name) else "证明文件")
    material = {
        "name": name,
        "material_type": kind,
        "form": form,
        "copies": 0 if channel == schema.SHARED_CHANNEL else max(1, entry.get("copies") or 0),
        "necessity": entry["necessity"] if entry["necessity"] in schema.NECESSITIES else "必要",
        "source_channel": channel,
        "source_note": entry["source_channel"][:200],
        "blank_form": bool(entry.get("blank_form")),
        "sample_form": bool(entry.get("sample_form")),
    }
    if channel == schema.SHARED_CHANNEL:
        material["shared_from"] = entry.get("shared_from") or "海丰县有关部门（数据共享）"
    if kind == "申请表格":
        material["common_mistakes"] = ["漏签名或代签名", "身份证号码填写有误"]
    if entry.get("note"):
        material["note"] = entry["note"][:500]
    return material


def _steps(item, decide_tier):
    decider = item["deciding_body"]
    steps = [
        {"name": "申请", "actor": "申请人", "description": "到任一服务站或网上提交申请"},
        {"name": "受理", "actor": "综合受理窗口",
         "description": "核验材料，齐全即受理；不齐全的一次性告知"},
    ]
    if item["handling_type"] == "承诺件":
        steps.append({"name": "审核", "actor": "镇便民服务中心（初审）" if decide_tier == "county"
                      else "镇业务部门", "description": "审核申请材料与条件"})
        steps.append({"name": "决定", "actor": decider[:60],
                      "description": "作出准予或不予决定", "days": item["statutory_time_limit"]
                      if item["statutory_time_limit"] <= 365 else 365})
    steps.append({"name": "送达", "actor": "申请人选择的服务站",
                  "description": "在申请人选定的服务站领取结果或邮寄送达"})
    return steps


def normalise(entry):
    """One fixture entry as a complete item of the schema."""
    decide_tier = "township" if entry.get("decide_level", "").startswith("镇级") else "county"
    name = entry["name"]
    promised = entry.get("promised_time_limit") or 0
    statutory = entry.get("statutory_time_limit") or 0
    handling = entry["handling_type"] if entry["handling_type"] in schema.HANDLING_TYPES \
        else "承诺件"
    if handling == "承诺件" and promised == 0:
        handling = "即办件"  # the fixture's convention: a promised limit of 0 means 即办件
    if handling == "即办件":
        promised = 0
    if handling == "承诺件" and statutory == 0:
        statutory = max(promised, 1)
    charged = not entry.get("fee", "不收费").startswith(("不收费", "首次申领免"))
    department = re.split(r"[（/]", entry["domain"])[0]
    item = {
        "id": entry["id"],
        "name": name,
        "item_type": entry["item_type"],
        "item_type_code": entry["item_type_code"],
        "exercise_level": "镇级" if decide_tier == "township" else "县级",
        "department": department,
        "implementing_body": entry["deciding_body"][:120],
        "legal_basis": entry["legal_basis"] or ["（依据待补充）"],
        "accept_conditions": entry.get("accept_conditions") or [
            f"符合{name}办理条件的申请人", "申请材料齐全、符合法定形式"],
        "materials": [_material(m) for m in entry["materials"]],
        "fee": charged,
        "statutory_time_limit": statutory,
        "statutory_time_limit_unit": _unit(entry.get("statutory_time_limit_unit")),
        "promised_time_limit": promised,
        "promised_time_limit_unit": _unit(entry.get("promised_time_limit_unit")),
        "time_limit_basis": (entry.get("time_limit_basis") or "")[:500],
        "clock_exclusions": [e[:120] for e in entry.get("clock_exclusions") or []],
        "handling_type": handling,
        "max_on_site_visits": min(5, entry.get("max_on_site_visits") or 0),
        "online_depth": _depth(entry.get("online_depth")),
        "online_application": _depth(entry.get("online_depth")) in ("Ⅲ级", "Ⅳ级"),
        "accept_tiers": ["village", "township"],
        "decide_tier": decide_tier,
        "one_level": decide_tier == "township",
        "accepting_body": entry["accepting_body"][:200],
        "deciding_body": entry["deciding_body"][:200],
        "location": LOCATIONS[decide_tier],
        "hours": HOURS,
        "transit": TRANSIT,
        "consult_phone": CONSULT_PHONES.get(department, DEFAULT_PHONE),
        "complaint_phone": COMPLAINT_PHONE,
        "service_object": entry["service_object"],
        "audiences": _words(name, AUDIENCE_WORDS, ["全体居民"]),
        "life_events": _words(name, LIFE_EVENT_WORDS, ["困难救助"]),
        "proxy_allowed": bool(entry.get("proxy_allowed")),
        "appointment_allowed": True,
        "commitment_allowed": bool(entry.get("commitment_allowed")),
        "deficiency_allowed": handling == "承诺件",
        "sources": [s for s in entry.get("sources") or [] if schema.URL.fullmatch(s)],
    }
    item["process_steps"] = _steps(item, decide_tier)
    if charged:
        item["fee_items"] = [{"name": "工本费", "standard": entry["fee"][:200],
                              "basis": "按国家和省有关收费规定"}]
    if entry.get("cross_region"):
        item["cross_region"] = entry["cross_region"][:200]
    if entry.get("notes"):
        item["notes"] = str(entry["notes"])[:2000]
    if entry.get("aliases"):
        item["aliases"] = list(entry["aliases"])
    if entry.get("eligibility"):
        item["eligibility"] = dict(entry["eligibility"])
    if entry.get("proactive"):
        item["proactive"] = dict(entry["proactive"])
    for record, fields in [(item, schema.ITEM_FIELDS),
                           *((m, schema.MATERIAL_FIELDS) for m in item["materials"])]:
        optional = {f.key for f in fields if not f.required}
        for key in [k for k, v in record.items() if v in ("", []) and k in optional]:
            del record[key]
    return item


SAMPLE_AGENCIES = [
    {"id": "ZJ-001", "name": "海丰县建筑工程质量检测站", "services": ["房屋安全鉴定"],
     "credit_status": "良好", "blacklisted": False, "phone": "0660-6600001"},
    {"id": "ZJ-002", "name": "海丰县恒固房屋安全鉴定有限公司", "services": ["房屋安全鉴定"],
     "credit_status": "失信", "blacklisted": True,
     "blacklist_reason": "出具虚假鉴定报告，列入失信名单（示例数据）", "phone": "0660-6600002"},
    {"id": "ZJ-003", "name": "海丰县测绘服务中心", "services": ["宅基地测绘", "房屋测绘"],
     "credit_status": "良好", "blacklisted": False, "phone": "0660-6600003"},
]
#: item id -> intermediary services it may need (sample values).
SAMPLE_SERVICES = {
    "GD-LS-20": [{"name": "房屋安全鉴定", "basis": "《农村危房改造基本安全技术导则》",
                  "time_limit_days": 10, "fee": "由财政承担，申请人不付费",
                  "agencies": ["ZJ-001", "ZJ-002"]}],
    "GD-LS-21": [{"name": "宅基地测绘", "basis": "《不动产登记暂行条例实施细则》",
                  "time_limit_days": 5, "fee": "按市场调节价收取，参考价每宗 300 元",
                  "agencies": ["ZJ-003"]}],
}


def repeated_items(count):
    """``count`` valid items for benchmarks: the sample items repeated with new ids and
    names (``GD-LS-01-002``, ``…（第2批）``)."""
    items, _ = sample_catalog()
    result = []
    for index in range(count):
        item = copy.deepcopy(items[index % len(items)])
        batch = index // len(items) + 1
        item["id"] = f"{item['id']}-{batch:03d}"
        item["name"] = f"{item['name']}（第{batch}批）"
        result.append(item)
    return result


def sample_catalog():
    """The sample catalog as ``(items, agencies)``, every record valid under the schema."""
    text = resources.files("shared").joinpath("data", SAMPLE_FILE).read_text("utf-8")
    items = [normalise(entry) for entry in json.loads(text)["items"]]
    for item in items:
        if item["id"] in SAMPLE_SERVICES:
            item["intermediary_services"] = [dict(s) for s in SAMPLE_SERVICES[item["id"]]]
    return items, [dict(a) for a in SAMPLE_AGENCIES]
