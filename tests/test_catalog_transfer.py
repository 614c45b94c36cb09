"""Catalog files: the sample catalog survives .xlsx and JSON exactly; every problem in an
edited workbook or a foreign file is reported where the editor can find it."""

import json
import re
import zipfile

import pytest
from openpyxl import load_workbook

from shared.catalog.sample import sample_catalog
from shared.catalog.schema import CatalogInvalid
from shared.catalog.transfer import (
    read_catalog_file,
    read_json,
    read_xlsx,
    write_catalog_file,
    write_json,
    write_xlsx,
)

SHEET_TITLES = ["事项", "申请材料", "办理流程", "收费项目", "中介服务", "中介机构"]


@pytest.fixture
def catalog():
    return sample_catalog()


@pytest.fixture
def workbook_path(tmp_path, catalog):
    path = tmp_path / "catalog.xlsx"
    write_xlsx(path, *catalog)
    return path


def column(ws, label):
    """The 1-based column of ``label`` in the header row."""
    return [c.value for c in ws[1]].index(label) + 1


def edit(path, changes, add_sheets=()):
    """Set cells by (sheet, row, label) -> value, as an editor would in Excel."""
    wb = load_workbook(path)
    for (title, row, label), value in changes.items():
        ws = wb[title]
        ws.cell(row, column(ws, label)).value = value
    for title in add_sheets:
        wb.create_sheet(title)
    wb.save(path)


def errors_of(path):
    with pytest.raises(CatalogInvalid) as caught:
        read_xlsx(path)
    return [e.message for e in caught.value.errors]


def material_row(catalog, item_id, material_name):
    """The Excel row of a material in the 申请材料 sheet (header is row 1)."""
    items, _ = catalog
    row = 2
    for item in items:
        for material in item["materials"]:
            if item["id"] == item_id and material["name"] == material_name:
                return row
            row += 1
    raise LookupError(material_name)


# ---------------------------------------------------------------------------- round trips


def test_xlsx_round_trip_is_exact(workbook_path, catalog):
    items, agencies = read_xlsx(workbook_path)
    assert items == catalog[0]
    assert agencies == catalog[1]
    assert [i["id"] for i in items] == [i["id"] for i in catalog[0]]


def test_optional_fields_stay_absent_not_blank(workbook_path, catalog):
    items, agencies = read_xlsx(workbook_path)

    def blanks(value, path):
        if value is None or value == "" or value == []:
            yield path
        elif isinstance(value, dict):
            for key, sub in value.items():
                yield from blanks(sub, f"{path}.{key}")
        elif isinstance(value, list):
            for n, sub in enumerate(value):
                yield from blanks(sub, f"{path}[{n}]")

    assert list(blanks(items, "items")) == [] and list(blanks(agencies, "agencies")) == []
    assert [sorted(i) for i in items] == [sorted(i) for i in catalog[0]]
    assert [sorted(m) for i in items for m in i["materials"]] == \
        [sorted(m) for i in catalog[0] for m in i["materials"]]
    without = next(n for n, i in enumerate(catalog[0]) if "clock_exclusions" not in i)
    assert "clock_exclusions" not in items[without]
    ws = load_workbook(workbook_path)["事项"]
    assert ws.cell(without + 2, column(ws, "不计入时限的环节")).value is None


def test_workbook_is_laid_out_for_people(workbook_path, catalog):
    items, agencies = catalog
    wb = load_workbook(workbook_path)
    assert wb.sheetnames == SHEET_TITLES
    ws = wb["事项"]
    assert ws.freeze_panes == "A2"
    assert ws.cell(1, 1).value == "事项编号" and ws.cell(1, 1).font.bold
    assert "申请材料" not in [c.value for c in ws[1]]  # tables have their own sheets
    assert ws.max_row == len(items) + 1
    first = items[0]
    assert ws.cell(2, column(ws, "可代办")).value == ("是" if first["proxy_allowed"] else "否")
    assert ws.cell(2, column(ws, "受理条件")).value == "\n".join(first["accept_conditions"])
    assert ws.cell(2, column(ws, "受理条件")).alignment.wrap_text
    assert ws.cell(2, column(ws, "法定时限")).value == first["statutory_time_limit"]
    assert ws.column_dimensions["B"].width > 10
    materials = wb["申请材料"]
    assert [c.value for c in materials[1]][:3] == ["事项编号", "材料名称", "材料类型"]
    assert materials.max_row == sum(len(i["materials"]) for i in items) + 1
    assert materials.cell(2, 1).value == first["id"]
    assert materials.cell(2, 2).value == first["materials"][0]["name"]
    assert wb["中介机构"].max_row == len(agencies) + 1


def test_json_round_trip_is_exact(tmp_path, catalog):
    path = tmp_path / "catalog.json"
    write_json(path, *catalog)
    document = json.loads(path.read_text("utf-8"))
    assert (document["format"], document["version"]) == ("tongban-catalog", 1)
    text = path.read_text("utf-8")
    assert text.startswith('{\n "format": "tongban-catalog"')
    assert catalog[0][0]["name"] in text  # readable Chinese, not \\u escapes
    assert read_json(path) == catalog


@pytest.mark.parametrize("name", ["catalog.xlsx", "catalog.json", "CATALOG.XLSX"])
def test_file_type_follows_suffix(tmp_path, catalog, name):
    path = tmp_path / name
    write_catalog_file(path, *catalog)
    assert read_catalog_file(path) == catalog
    assert zipfile.is_zipfile(path) == name.lower().endswith(".xlsx")


def test_text_that_looks_like_a_formula_or_number_stays_text(tmp_path, catalog):
    items, agencies = catalog
    items[0]["notes"] = "=SUM(A1:A2) 不是公式"
    path = tmp_path / "catalog.xlsx"
    write_xlsx(path, items, agencies)
    assert read_xlsx(path)[0][0]["notes"] == "=SUM(A1:A2) 不是公式"


def test_large_catalog_round_trips(tmp_path, catalog):
    items, agencies = catalog
    big = []
    for copy in range(60):
        for item in items:
            big.append(dict(item, id=f"{item['id']}-{copy:02d}"))
    assert len(big) == 1500
    path = tmp_path / "big.xlsx"
    write_xlsx(path, big, agencies)
    assert read_xlsx(path) == (big, agencies)


# ---------------------------------------------------------------------------- cell problems


def test_errors_in_three_sheets_are_all_reported_at_their_cells(workbook_path, catalog):
    items, _ = catalog
    second = items[1]
    material = second["materials"][0]["name"]
    row = material_row(catalog, second["id"], material)
    edit(workbook_path, {
        ("事项", 3, "可代办"): "也许",
        ("事项", 4, "咨询电话"): "abc",
        ("申请材料", row, "份数"): "两份",
        ("申请材料", row + 1, "份数"): 120,
        ("中介机构", 2, "信用状况"): "很好",
        ("中介机构", 3, "列入黑名单原因"): None,
    })
    result = None
    with pytest.raises(CatalogInvalid) as caught:
        result = read_xlsx(workbook_path)
    assert result is None
    messages = [e.message for e in caught.value.errors]
    assert messages[0] == "工作表“事项”第 3 行“可代办”：应为“是”或“否”（现为“也许”）"
    assert f"工作表“事项”第 4 行“咨询电话”：事项 {items[2]['id']}：咨询电话：格式不正确（abc）" \
        in messages
    assert f"工作表“申请材料”第 {row} 行“份数”：应为整数（现为“两份”）" in messages
    assert any(m.startswith(f"工作表“申请材料”第 {row + 1} 行“份数”：") and "99" in m
               for m in messages)
    assert any(m.startswith("工作表“中介机构”第 2 行“信用状况”：") and "很好" in m
               for m in messages)
    assert any(m.startswith("工作表“中介机构”第 3 行“列入黑名单原因”：") and "必填" in m
               for m in messages)
    assert len(messages) == 6  # the unreadable 份数 is not also reported as 必填
    paths = {e.path for e in caught.value.errors}
    assert "items[1].materials[0].copies" in paths and "agencies[1].blacklist_reason" in paths


def test_whole_number_floats_are_integers_and_fractions_are_refused(workbook_path, catalog):
    items, _ = catalog
    n, item = next((n, i) for n, i in enumerate(items) if i["materials"][0]["copies"] > 0)
    row = material_row(catalog, item["id"], item["materials"][0]["name"])
    ws = load_workbook(workbook_path)["申请材料"]
    letter = chr(ord("A") + column(ws, "份数") - 1)
    # Excel itself writes some whole numbers as "2.0"; openpyxl would write "2", so patch
    # the stored XML the way such a file looks.
    patched = workbook_path.with_name("patched.xlsx")
    with zipfile.ZipFile(workbook_path) as source, zipfile.ZipFile(patched, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "xl/worksheets/sheet2.xml":
                text = data.decode("utf-8")
                text, count = re.subn(rf'(<c r="{letter}{row}"[^>]*>)<v>\d+</v>',
                                      r"\1<v>2.0</v>", text)
                assert count == 1
                data = text.encode("utf-8")
            target.writestr(info, data)
    copies = read_xlsx(patched)[0][n]["materials"][0]["copies"]
    assert copies == 2 and type(copies) is int

    edit(workbook_path, {("申请材料", row, "份数"): 2.5})
    assert errors_of(workbook_path) == [f"工作表“申请材料”第 {row} 行“份数”：应为整数（现为“2.5”）"]


def test_excel_booleans_and_typed_digits_are_accepted(workbook_path, catalog):
    edit(workbook_path, {("事项", 2, "可代办"): True, ("事项", 2, "可预约"): False,
                         ("事项", 2, "投诉电话"): 12345, ("事项", 2, "到现场次数"): " 1 "})
    item = read_xlsx(workbook_path)[0][0]
    assert item["proxy_allowed"] is True and item["appointment_allowed"] is False
    assert item["complaint_phone"] == "12345"
    assert item["max_on_site_visits"] == 1


def test_date_in_a_text_cell_is_explained(workbook_path):
    import datetime
    edit(workbook_path, {("事项", 2, "办理时间"): datetime.datetime(2024, 8, 30)})
    [message] = errors_of(workbook_path)
    assert message.startswith("工作表“事项”第 2 行“办理时间”：应为文字")
    assert "日期" in message


# ---------------------------------------------------------------------------- structure


def test_unknown_and_missing_columns_are_reported_once(workbook_path):
    wb = load_workbook(workbook_path)
    ws = wb["办理流程"]
    ws.cell(1, ws.max_column + 1).value = "负责人"
    ws = wb["事项"]
    ws.delete_cols(column(ws, "交通指引"))
    wb.save(workbook_path)
    messages = errors_of(workbook_path)
    assert messages == [
        "工作表“事项”第 1 行“交通指引”：缺少这一列",
        "工作表“办理流程”第 1 行“负责人”：未知的列（第 F 列），请删除或改用模板中的列名",
    ]  # and no "交通指引：必填" on each of the 25 rows


def test_material_row_for_unknown_item_is_reported(workbook_path):
    edit(workbook_path, {("申请材料", 5, "事项编号"): "GD-XX-99",
                         ("办理流程", 3, "事项编号"): None})
    messages = errors_of(workbook_path)
    assert "工作表“申请材料”第 5 行“事项编号”：工作表“事项”中没有编号为“GD-XX-99”的事项" \
        in messages
    assert any(m.startswith("工作表“办理流程”第 3 行“事项编号”：必填") for m in messages)
    assert len(messages) == 2


def test_missing_and_unknown_sheets_are_reported(workbook_path):
    wb = load_workbook(workbook_path)
    del wb["申请材料"]
    wb.create_sheet("Sheet1")
    wb.save(workbook_path)
    messages = errors_of(workbook_path)
    assert messages[0] == "工作表“申请材料”：缺少这个工作表"
    assert messages[1].startswith("工作表“Sheet1”：不是目录的工作表")
    assert len(messages) == 2  # not "申请材料：必填" on every item


def test_blank_rows_are_skipped_and_row_numbers_stay_true(workbook_path, catalog):
    wb = load_workbook(workbook_path)
    ws = wb["申请材料"]
    ws.insert_rows(4, amount=2)
    wb.save(workbook_path)
    assert read_xlsx(workbook_path) == catalog
    edit(workbook_path, {("申请材料", 8, "材料类型"): "照片"})
    [message] = errors_of(workbook_path)
    assert message.startswith("工作表“申请材料”第 8 行“材料类型”：")


def test_schema_rules_across_sheets_point_at_the_row(workbook_path, catalog):
    items, _ = catalog
    edit(workbook_path, {("事项", 4, "是否收费"): "是"})  # but no rows in 收费项目
    [message] = errors_of(workbook_path)
    assert message == f"工作表“事项”第 4 行：事项 {items[2]['id']}：收费项目：" \
        "收费事项须列明收费项目、标准和依据"

    wb = load_workbook(workbook_path)
    wb["收费项目"].append([items[2]["id"], "工本费", "每证 10 元", "省物价文件"])
    wb.save(workbook_path)
    assert read_xlsx(workbook_path)[0][2]["fee_items"] == [
        {"name": "工本费", "standard": "每证 10 元", "basis": "省物价文件"}]


# ---------------------------------------------------------------------------- foreign files


def test_text_file_named_xlsx_is_refused_in_chinese(tmp_path):
    path = tmp_path / "catalog.xlsx"
    path.write_text("事项编号,事项名称\nGD-1,测试\n", encoding="utf-8")
    with pytest.raises(CatalogInvalid) as caught:
        read_catalog_file(path)
    [error] = caught.value.errors
    assert "不是有效的 Excel 工作簿" in error.message


def test_other_zip_named_xlsx_is_refused(tmp_path):
    path = tmp_path / "catalog.xlsx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CatalogInvalid, match="不是有效的 Excel 工作簿"):
        read_catalog_file(path)


@pytest.mark.parametrize("name,words", [("catalog.csv", "不支持的文件类型“.csv”"),
                                        ("catalog.xls", "另存为 .xlsx"),
                                        ("catalog", "无扩展名")])
def test_unsupported_suffix(tmp_path, catalog, name, words):
    with pytest.raises(CatalogInvalid, match=words):
        read_catalog_file(tmp_path / name)
    with pytest.raises(CatalogInvalid, match=words):
        write_catalog_file(tmp_path / name, *catalog)
    assert not (tmp_path / name).exists()


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(CatalogInvalid, match="文件不存在"):
        read_catalog_file(tmp_path / "none.xlsx")


@pytest.mark.parametrize("document,words", [
    ({"items": []}, "不是通办目录文件"),
    ([], "不是通办目录文件"),
    ({"format": "tongban-catalog", "version": 2, "items": [], "agencies": []}, "版本"),
    ({"format": "tongban-catalog", "version": 1, "items": {}, "agencies": []}, "事项列表"),
    ({"format": "tongban-catalog", "version": 1, "items": []}, "中介机构列表"),
    ({"format": "tongban-catalog", "version": 1, "items": [], "agencies": [], "x": 1},
     "未知的键“x”"),
])
def test_wrong_json_shape_is_refused(tmp_path, document, words):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(CatalogInvalid, match=words):
        read_catalog_file(path)


def test_sample_fixture_shape_is_not_a_catalog_file(tmp_path):
    from importlib import resources
    text = resources.files("shared").joinpath("data", "catalog-sample.json").read_text("utf-8")
    path = tmp_path / "fixture.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogInvalid, match="不是通办目录文件"):
        read_json(path)


def test_bad_json_names_line_and_column(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text('{"format": "tongban-catalog",\n "version": 1,,\n}', encoding="utf-8")
    with pytest.raises(CatalogInvalid) as caught:
        read_json(path)
    [error] = caught.value.errors
    assert error.message.startswith("JSON 格式错误：第 2 行第 15 列")


def test_json_record_errors_name_the_record(tmp_path, catalog):
    items, agencies = catalog
    items[2]["materials"][0]["copies"] = 2.5
    del items[4]["name"]
    agencies[0]["credit_status"] = "很好"
    path = tmp_path / "catalog.json"
    write_json(path, items, agencies)
    result = None
    with pytest.raises(CatalogInvalid) as caught:
        result = read_json(path)
    assert result is None
    messages = [e.message for e in caught.value.errors]
    assert f"事项 {items[2]['id']}（第 3 项）：申请材料第 1 项·份数：应为整数" in messages
    assert f"事项 {items[4]['id']}（第 5 项）：事项名称：必填" in messages
    assert any(m.startswith("中介机构 ZJ-001（第 1 个）：") and "很好" in m for m in messages)


def test_json_with_bom_is_read(tmp_path, catalog):
    path = tmp_path / "catalog.json"
    write_json(path, *catalog)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_json(path) == catalog


def test_aliases_and_age_condition_are_columns(workbook_path, catalog):
    items, _ = catalog
    ws = load_workbook(workbook_path)["事项"]
    row = 2 + [i["id"] for i in items].index("GD-LS-11")
    assert ws.cell(row, column(ws, "常用简称")).value == "高龄津贴\n长寿金\n老人津贴"
    assert ws.cell(row, column(ws, "最低年龄（周岁）")).value == 80
    assert ws.cell(row, column(ws, "最高年龄（周岁）")).value is None
    edit(workbook_path, {("事项", row, "最高年龄（周岁）"): 120,
                         ("事项", row, "常用简称"): "长寿金\n敬老金"})
    read, _ = read_xlsx(workbook_path)
    item = next(i for i in read if i["id"] == "GD-LS-11")
    assert item["eligibility"] == {"min_age": 80, "max_age": 120}
    assert item["aliases"] == ["长寿金", "敬老金"]
    assert "eligibility" not in next(i for i in read if i["id"] == "GD-LS-01")
    edit(workbook_path, {("事项", row, "最低年龄（周岁）"): 130})
    [message] = errors_of(workbook_path)
    assert f"第 {row} 行“最低年龄（周岁）”" in message and \
        "最低年龄 130 不能大于最高年龄 120" in message
    edit(workbook_path, {("事项", row, "最低年龄（周岁）"): "八十",
                         ("事项", row, "常用简称"): "长" * 21})
    messages = errors_of(workbook_path)
    assert any(f"第 {row} 行“最低年龄（周岁）”" in m and "应为整数" in m for m in messages)
    assert any(f"第 {row} 行“常用简称”" in m and "超过 20 个字" in m for m in messages), messages
