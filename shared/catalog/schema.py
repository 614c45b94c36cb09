"""The service item: every element of GB/T 39046-2020, declared once and validated per field.

``ITEM_FIELDS`` and ``MATERIAL_FIELDS`` (and the smaller tables beside them) are the one
description of an item that validation, the authoring form, the .xlsx columns and the public
guide all read. ``validate_item`` returns every problem at once, each as a
:class:`FieldError` whose message is plain Chinese naming the field, because a county editor
fixing an import of 1,500 rows needs all of them, not the first.

Values are JSON: strings, integers, booleans, lists and objects. Every field's kind is
checked, so a float is refused wherever it appears (it has no single canonical text, and a
release signs the canonical text of each item).
"""

import re
from dataclasses import dataclass

from shared import config as cfg

ITEM_TYPES = {  # GB/T 39046-2020 附录 A.1
    "01": "行政许可", "02": "行政处罚", "03": "行政强制", "04": "行政征收", "05": "行政给付",
    "06": "行政检查", "07": "行政确认", "08": "行政奖励", "09": "行政裁决",
    "10": "其他行政权力", "20": "公共服务",
}
LEVELS = ("国家级", "省级", "市级", "县级", "镇级", "村级")
TIERS = {tier: cfg.TIER_NAMES[tier] for tier in ("village", "township", "county")}
HANDLING_TYPES = ("即办件", "承诺件")
TIME_UNITS = ("工作日", "自然日")
ONLINE_DEPTHS = ("Ⅰ级", "Ⅱ级", "Ⅲ级", "Ⅳ级")
SERVICE_OBJECTS = ("自然人", "法人", "自然人和法人")
LIFE_EVENTS = ("出生", "上学", "就业", "失业", "婚姻", "生育", "居住", "住房", "医疗",
               "退休", "养老", "残疾", "困难救助", "兵役", "法律服务", "身后事")
AUDIENCES = ("全体居民", "儿童", "青年", "老年人", "残疾人", "困难群众", "失业人员",
             "流动人口", "农村村民", "退役军人及军属", "计划生育家庭", "企业和组织")
SOURCE_CHANNELS = ("申请人自备", "申请人填写", "部门共享", "村（居）委会出具", "其他机构出具")
SHARED_CHANNEL = "部门共享"
MATERIAL_FORMS = ("纸质", "电子", "纸质或电子", "原件核验", "原件核验或电子证照",
                  "原件核验或数据核验", "数据核验", "电子证照")
MATERIAL_TYPES = ("证件证照", "申请表格", "证明文件", "协议合同", "其他")
NECESSITIES = ("必要", "非必要", "容缺后补")
CREDIT_STATUSES = ("良好", "警示", "失信")

ITEM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{1,39}")
BASIC_CODE = re.compile(r"[0-9A-Z]{12}")
IMPLEMENTATION_CODE = re.compile(r"[0-9A-Z]{31}")
PHONE = re.compile(r"(0\d{2,3}-?\d{7,8}(-\d{1,6})?|1\d{10}|12345|\d{3,5})")
URL = re.compile(r"https?://\S+")


@dataclass(frozen=True)
class Field:
    """One element of a record: its key, Chinese label, kind and constraints.

    ``kind`` is one of ``text``, ``longtext``, ``int``, ``bool``, ``choice``, ``choices``
    (a list drawn from ``choices``), ``lines`` (a list of strings), ``table`` (a list of
    records described by ``columns``) or ``record`` (one record described by ``columns``,
    every column optional, at least one given).
    """

    key: str
    label: str
    kind: str = "text"
    required: bool = True
    choices: tuple = ()
    pattern: object = None
    minimum: int = 0
    maximum: int = 10 ** 6
    max_length: int = 500
    columns: tuple = ()
    hint: str = ""
    max_items: int = 0  # most entries of a ``lines`` list (0: no limit)


STEP_FIELDS = (
    Field("name", "环节名称", max_length=40),
    Field("actor", "办理主体", max_length=60),
    Field("description", "办理内容", "longtext", required=False, max_length=1000),
    Field("days", "时限（工作日）", "int", required=False, maximum=365),
)

FEE_FIELDS = (
    Field("name", "收费项目", max_length=80),
    Field("standard", "收费标准", max_length=200),
    Field("basis", "收费依据", max_length=300),
)

MATERIAL_FIELDS = (
    Field("name", "材料名称", max_length=120),
    Field("material_type", "材料类型", "choice", choices=MATERIAL_TYPES),
    Field("form", "材料形式", "choice", choices=MATERIAL_FORMS),
    Field("copies", "份数", "int", maximum=99, hint="0 表示免提交（核验原件或数据共享）"),
    Field("necessity", "必要性", "choice", choices=NECESSITIES),
    Field("source_channel", "来源渠道", "choice", choices=SOURCE_CHANNELS),
    Field("shared_from", "共享部门", required=False, max_length=120,
          hint="来源渠道为“部门共享”时必填：由该部门提供，不向申请人索要"),
    Field("source_note", "来源说明", required=False, max_length=200),
    Field("blank_form", "提供空白表格", "bool"),
    Field("sample_form", "提供示例样表", "bool"),
    Field("common_mistakes", "常见错误", "lines", required=False, max_length=200),
    Field("note", "备注", "longtext", required=False, max_length=500),
)

#: What a proactive-service rule looks for in the data a county holds.
PROACTIVE_AGE, PROACTIVE_LICENCE = "达到年龄", "持有证照"
PROACTIVE_KINDS = (PROACTIVE_AGE, PROACTIVE_LICENCE)
PROACTIVE_CODE = re.compile(r"[a-z][a-z0-9_]{1,29}")

PROACTIVE_FIELDS = (
    Field("code", "规则代码", pattern=PROACTIVE_CODE, max_length=30,
          hint="小写字母、数字和下划线，如 pension；几个事项同一规则时填同一代码"),
    Field("label", "名单名称", max_length=40, hint="如：达到城乡居民养老保险待遇领取年龄"),
    Field("kind", "条件", "choice", choices=PROACTIVE_KINDS),
    Field("age", "年龄（周岁）", "int", required=False, minimum=1, maximum=150,
          hint="条件为达到年龄时必填"),
    Field("back_days", "已满多少天内", "int", required=False, maximum=3650,
          hint="只列出这些天内才满该年龄的人；不填则不限"),
    Field("ahead_days", "提前天数", "int", required=False, maximum=365,
          hint="将在这些天内满该年龄的人也列出"),
    Field("licence", "证照名称", required=False, max_length=60,
          hint="条件为持有证照时必填，如：残疾人证（有效期内的本地电子证照）"),
    Field("basis", "说明", "longtext", required=False, max_length=500,
          hint="列入名单的依据，显示在主动服务页面"),
)

ELIGIBILITY_FIELDS = (
    Field("min_age", "最低年龄（周岁）", "int", required=False, maximum=150),
    Field("max_age", "最高年龄（周岁）", "int", required=False, maximum=150),
)

INTERMEDIARY_FIELDS = (
    Field("name", "中介服务名称", max_length=120),
    Field("basis", "设定依据", max_length=300),
    Field("time_limit_days", "办理时限（工作日）", "int", maximum=365),
    Field("fee", "收费标准", max_length=200),
    Field("agencies", "可选中介机构编号", "lines", required=False, max_length=40),
)

ITEM_FIELDS = (
    Field("id", "事项编号", pattern=ITEM_ID, max_length=40,
          hint="字母、数字和连字符，如 GD-LS-01"),
    Field("name", "事项名称", max_length=100),
    Field("basic_code", "基本编码", required=False, pattern=BASIC_CODE,
          hint="12 位数字或大写字母"),
    Field("implementation_code", "实施编码", required=False, pattern=IMPLEMENTATION_CODE,
          hint="31 位：实施主体统一社会信用代码(18) + 行使层级(1) + 基本编码(12)"),
    Field("item_type", "事项类型", "choice", choices=tuple(ITEM_TYPES.values())),
    Field("item_type_code", "事项类型代码", "choice", choices=tuple(ITEM_TYPES)),
    Field("exercise_level", "行使层级", "choice", choices=LEVELS),
    Field("department", "主管部门", max_length=60),
    Field("implementing_body", "实施主体", max_length=120),
    Field("legal_basis", "设定依据", "lines", max_length=300),
    Field("accept_conditions", "受理条件", "lines", max_length=500),
    Field("process_steps", "办理流程", "table", columns=STEP_FIELDS),
    Field("materials", "申请材料", "table", columns=MATERIAL_FIELDS),
    Field("fee", "是否收费", "bool", hint="是：须列明收费项目、标准和依据"),
    Field("fee_items", "收费项目", "table", required=False, columns=FEE_FIELDS),
    Field("statutory_time_limit", "法定时限", "int", maximum=3650),
    Field("statutory_time_limit_unit", "法定时限单位", "choice", choices=TIME_UNITS),
    Field("promised_time_limit", "承诺时限", "int", maximum=3650, hint="0 表示即办"),
    Field("promised_time_limit_unit", "承诺时限单位", "choice", choices=TIME_UNITS),
    Field("time_limit_basis", "时限说明", "longtext", required=False, max_length=500),
    Field("clock_exclusions", "不计入时限的环节", "lines", required=False, max_length=120,
          hint="如：公示期、听证、现场勘查、专家评审"),
    Field("handling_type", "办件类型", "choice", choices=HANDLING_TYPES),
    Field("max_on_site_visits", "到现场次数", "int", maximum=5),
    Field("online_depth", "网上办理深度", "choice", choices=ONLINE_DEPTHS),
    Field("online_application", "可网上申请", "bool"),
    Field("accept_tiers", "受理层级", "choices", choices=tuple(TIERS),
          hint="可多选"),
    Field("decide_tier", "决定层级", "choice", choices=("township", "county")),
    Field("one_level", "一级办结", "bool", hint="是：由受理所在镇直接决定，不再逐级上报"),
    Field("parallel_departments", "并联审批部门", "lines", required=False, max_length=60),
    Field("lead_department", "牵头部门", required=False, max_length=60),
    Field("accepting_body", "受理机构", max_length=200),
    Field("deciding_body", "决定机构", max_length=200),
    Field("location", "办理地点", max_length=200),
    Field("hours", "办理时间", max_length=200),
    Field("transit", "交通指引", "longtext", max_length=500),
    Field("consult_phone", "咨询电话", pattern=PHONE, max_length=30),
    Field("complaint_phone", "投诉电话", pattern=PHONE, max_length=30),
    Field("service_object", "服务对象", "choice", choices=SERVICE_OBJECTS),
    Field("audiences", "适用人群", "choices", choices=AUDIENCES),
    Field("life_events", "人生事件", "choices", choices=LIFE_EVENTS),
    Field("aliases", "常用简称", "lines", required=False, max_length=20, max_items=20,
          hint="群众常说的简称或别名，每行一个，如：社保卡、低保；搜索时按事项名称对待"),
    Field("eligibility", "年龄条件", "record", required=False, columns=ELIGIBILITY_FIELDS,
          hint="按身份证号码计算的周岁；网上预申请时先核对，不符合的不能提交"),
    Field("proactive", "主动服务", "record", required=False, columns=PROACTIVE_FIELDS,
          hint="按已掌握的数据找出可能符合条件但尚未申请的群众，由服务站联系告知"),
    Field("proxy_allowed", "可代办", "bool"),
    Field("appointment_allowed", "可预约", "bool"),
    Field("commitment_allowed", "可告知承诺", "bool"),
    Field("deficiency_allowed", "可容缺受理", "bool"),
    Field("cross_region", "通办范围", required=False, max_length=200),
    Field("intermediary_services", "中介服务", "table", required=False,
          columns=INTERMEDIARY_FIELDS),
    Field("sources", "信息来源", "lines", required=False, pattern=URL, max_length=300),
    Field("notes", "备注", "longtext", required=False, max_length=2000),
)

AGENCY_FIELDS = (
    Field("id", "机构编号", pattern=ITEM_ID, max_length=40),
    Field("name", "机构名称", max_length=120),
    Field("credit_code", "统一社会信用代码", required=False,
          pattern=re.compile(r"[0-9A-HJ-NPQRTUWXY]{18}")),
    Field("services", "服务范围", "lines", max_length=120),
    Field("credit_status", "信用状况", "choice", choices=CREDIT_STATUSES),
    Field("blacklisted", "列入黑名单", "bool"),
    Field("blacklist_reason", "列入黑名单原因", required=False, max_length=300),
    Field("phone", "联系电话", required=False, pattern=PHONE, max_length=30),
)

FIELD_BY_KEY = {f.key: f for f in ITEM_FIELDS}
#: Keys the release machinery adds to a published item; an author never sets them.
PUBLISHED_KEYS = ("type", "version")


@dataclass(frozen=True)
class FieldError:
    """One problem: where (``path`` such as ``materials[2].copies``) and what, in Chinese."""

    path: str
    message: str

    def __str__(self):
        return self.message


class CatalogInvalid(ValueError):
    """An item or an import failed validation; ``errors`` lists every problem."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("；".join(str(e) for e in self.errors[:5]))


def _check_value(field, value, path, label, errors):
    """Append the problems of one value of ``field`` to ``errors``."""
    def fail(message):
        errors.append(FieldError(path, f"{label}：{message}"))

    if value is None or value == "" or value == []:
        if field.required:
            fail("必填")
        return
    kind = field.kind
    if kind in ("text", "longtext"):
        if not isinstance(value, str):
            return fail("应为文字")
        if len(value) > field.max_length:
            return fail(f"不能超过 {field.max_length} 个字（现有 {len(value)} 个）")
        if field.pattern is not None and not field.pattern.fullmatch(value):
            return fail(f"格式不正确（{value}）" + (f"，{field.hint}" if field.hint else ""))
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return fail("应为整数")
        if not field.minimum <= value <= field.maximum:
            return fail(f"应在 {field.minimum} 到 {field.maximum} 之间（现为 {value}）")
    elif kind == "bool":
        if not isinstance(value, bool):
            return fail("应为“是”或“否”")
    elif kind == "choice":
        if value not in field.choices:
            return fail(f"“{value}”不是可选值，可选：{'、'.join(field.choices)}")
    elif kind == "choices":
        if not isinstance(value, list):
            return fail("应为列表")
        for entry in value:
            if entry not in field.choices:
                fail(f"“{entry}”不是可选值，可选：{'、'.join(field.choices)}")
        if len(set(value)) != len(value):
            fail("有重复的值")
    elif kind == "lines":
        if not isinstance(value, list):
            return fail("应为列表（每行一条）")
        if field.max_items and len(value) > field.max_items:
            fail(f"最多 {field.max_items} 条（现有 {len(value)} 条）")
        for n, entry in enumerate(value, 1):
            if not isinstance(entry, str) or not entry.strip():
                fail(f"第 {n} 条为空或不是文字")
            elif len(entry) > field.max_length:
                fail(f"第 {n} 条超过 {field.max_length} 个字")
            elif field.pattern is not None and not field.pattern.fullmatch(entry):
                fail(f"第 {n} 条格式不正确（{entry}）")
    elif kind == "record":
        if not isinstance(value, dict):
            return fail("应为一个记录")
        if not any(value.get(c.key) is not None for c in field.columns):
            return fail("至少填写一项")
        _check_record(field.columns, value, path, f"{label}·", errors)
    elif kind == "table":
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            return fail("应为记录列表")
        for n, row in enumerate(value, 1):
            _check_record(field.columns, row, f"{path}[{n - 1}]", f"{label}第 {n} 项·",
                          errors)


def _check_record(fields, record, prefix, label_prefix, errors):
    """Check every field of ``record`` against ``fields``; unknown keys are errors."""
    known = {f.key for f in fields}
    for field in fields:
        path = f"{prefix}.{field.key}" if prefix else field.key
        _check_value(field, record.get(field.key), path, label_prefix + field.label, errors)
    for key in sorted(set(record) - known - set(PUBLISHED_KEYS)):
        if key.startswith("_"):
            continue
        path = f"{prefix}.{key}" if prefix else key
        errors.append(FieldError(path, f"{label_prefix}未知字段“{key}”"))


def _label(path):
    key, _, sub = path.partition(".")
    field = FIELD_BY_KEY[key]
    if sub:  # a member of a record field: "主动服务·年龄（周岁）"
        return f"{field.label}·" + next(c.label for c in field.columns if c.key == sub)
    return field.label


def validate_item(item):
    """Every problem of one item (an empty list when it is valid)."""
    if not isinstance(item, dict):
        return [FieldError("", "事项应为一个记录（JSON 对象）")]
    errors = []
    _check_record(ITEM_FIELDS, item, "", "", errors)
    if errors:
        return errors  # the cross-field rules below assume well-typed values

    def fail(path, message):
        errors.append(FieldError(path, f"{_label(path.split('[')[0])}：{message}"))

    if ITEM_TYPES[item["item_type_code"]] != item["item_type"]:
        fail("item_type_code", f"代码 {item['item_type_code']} 对应“"
             f"{ITEM_TYPES[item['item_type_code']]}”，与事项类型“{item['item_type']}”不符")
    basic, implementation = item.get("basic_code"), item.get("implementation_code")
    if implementation and basic and not implementation.endswith(basic):
        fail("implementation_code", "后 12 位应与基本编码一致")
    if item["promised_time_limit_unit"] == item["statutory_time_limit_unit"] and \
            item["promised_time_limit"] > item["statutory_time_limit"]:
        fail("promised_time_limit", f"承诺时限 {item['promised_time_limit']} 不能长于法定时限 "
             f"{item['statutory_time_limit']}")
    if item["handling_type"] == "即办件" and item["promised_time_limit"] != 0:
        fail("promised_time_limit", "即办件的承诺时限应为 0")
    if item["handling_type"] == "承诺件" and item["statutory_time_limit"] == 0:
        fail("statutory_time_limit", "承诺件应有法定时限")
    if item["handling_type"] == "承诺件" and item["promised_time_limit"] == 0:
        fail("promised_time_limit", "承诺件的承诺时限至少为 1（0 表示即办件）")
    if item["fee"] and not item.get("fee_items"):
        fail("fee_items", "收费事项须列明收费项目、标准和依据")
    if not item["fee"] and item.get("fee_items"):
        fail("fee_items", "不收费的事项不应列收费项目")
    if item["decide_tier"] not in ("township", "county"):
        fail("decide_tier", "只能是 township 或 county")
    if item["one_level"] and item["decide_tier"] != "township":
        fail("one_level", "一级办结只适用于由镇决定的事项")
    tier_order = list(TIERS)
    if all(tier_order.index(t) > tier_order.index(item["decide_tier"])
           for t in item["accept_tiers"]):
        fail("accept_tiers", "受理层级不能全部高于决定层级")
    parallel = item.get("parallel_departments") or []
    lead = item.get("lead_department")
    if parallel and not lead:
        fail("lead_department", "有并联审批部门时须指定牵头部门")
    if lead and lead not in parallel:
        fail("lead_department", f"牵头部门“{lead}”应是并联审批部门之一")
    names = [m["name"] for m in item["materials"]]
    for n, material in enumerate(item["materials"]):
        path = f"materials[{n}]"
        label = f"申请材料第 {n + 1} 项（{material['name']}）"
        if names.count(material["name"]) > 1:
            errors.append(FieldError(path + ".name", f"{label}：材料名称重复"))
        shared = material["source_channel"] == SHARED_CHANNEL
        if shared and not material.get("shared_from"):
            errors.append(FieldError(path + ".shared_from",
                                     f"{label}：部门共享的材料须写明由哪个部门提供"))
        if shared and material["copies"] != 0:
            errors.append(FieldError(path + ".copies",
                                     f"{label}：部门共享的材料不向申请人索要，份数应为 0"))
        if material["necessity"] == "容缺后补" and not item["deficiency_allowed"]:
            errors.append(FieldError(path + ".necessity",
                                     f"{label}：事项不允许容缺受理，材料不能标为容缺后补"))
    aliases = item.get("aliases") or []
    if len(set(aliases)) != len(aliases):
        fail("aliases", "有重复的简称")
    ages = item.get("eligibility") or {}
    if ages.get("min_age") is not None and ages.get("max_age") is not None and \
            ages["min_age"] > ages["max_age"]:
        fail("eligibility", f"最低年龄 {ages['min_age']} 不能大于最高年龄 {ages['max_age']}")
    step_names = [s["name"] for s in item["process_steps"]]
    if len(set(step_names)) != len(step_names):
        fail("process_steps", "环节名称重复")
    rule = item.get("proactive") or {}
    if rule.get("kind") == PROACTIVE_AGE and rule.get("age") is None:
        fail("proactive.age", "条件为达到年龄时须填写年龄")
    if rule.get("kind") == PROACTIVE_LICENCE and not rule.get("licence"):
        fail("proactive.licence", "条件为持有证照时须填写证照名称")
    return errors


def validate_agency(agency):
    """Every problem of one intermediary agency record."""
    if not isinstance(agency, dict):
        return [FieldError("", "中介机构应为一个记录（JSON 对象）")]
    errors = []
    _check_record(AGENCY_FIELDS, agency, "", "中介机构·", errors)
    if not errors and agency["blacklisted"] and not agency.get("blacklist_reason"):
        errors.append(FieldError("blacklist_reason", "中介机构·列入黑名单原因：列入黑名单时必填"))
    return errors


def check_item(item):
    """Raise :class:`CatalogInvalid` unless ``item`` is valid."""
    errors = validate_item(item)
    if errors:
        raise CatalogInvalid(errors)


def validate_catalog(items, agencies=()):
    """Every problem of a whole catalog, each path prefixed by the record it is in.

    Besides each record's own rules: ids are unique, and every agency an intermediary
    service names exists.
    """
    errors = []
    seen = {}
    for n, item in enumerate(items):
        has_id = isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]
        where = item["id"] if has_id else f"第 {n + 1} 项"
        for error in validate_item(item):
            errors.append(FieldError(f"items[{n}].{error.path}", f"事项 {where}：{error.message}"))
        if has_id:
            if item["id"] in seen:
                errors.append(FieldError(f"items[{n}].id", f"事项 {where}：事项编号与第 "
                                         f"{seen[item['id']] + 1} 项重复"))
            seen.setdefault(item["id"], n)
    agency_ids = set()
    for n, agency in enumerate(agencies):
        has_id = isinstance(agency, dict) and isinstance(agency.get("id"), str) and agency["id"]
        where = agency["id"] if has_id else f"第 {n + 1} 个"
        for error in validate_agency(agency):
            errors.append(FieldError(f"agencies[{n}].{error.path}",
                                     f"中介机构 {where}：{error.message}"))
        if has_id:
            if agency["id"] in agency_ids:
                errors.append(FieldError(f"agencies[{n}].id", f"中介机构 {where}：编号重复"))
            agency_ids.add(agency["id"])
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        for s, service in enumerate(item.get("intermediary_services") or []):
            for agency in (service.get("agencies") or []) if isinstance(service, dict) else []:
                if isinstance(agency, str) and agency not in agency_ids:
                    errors.append(FieldError(
                        f"items[{n}].intermediary_services[{s}].agencies",
                        f"事项 {item.get('id')}：中介服务第 {s + 1} 项引用的中介机构"
                        f"“{agency}”不存在"))
    return errors
