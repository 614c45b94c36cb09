"""The public catalog pages: index, browse, search, the service guide, print view, images."""

import re
import xml.etree.ElementTree as ET
from datetime import datetime

import pytest

from shared import identity
from shared.casedocs import CHINA_TIME
from shared.catalog import active, publish, sample, schema
from shared.catalog.flowchart import flowchart_svg, wrap
from shared.catalog.qr import qr_png, qr_svg
from shared.views import catalog as catalog_views
from tests.conftest import add_account, make_county

SVG = "{http://www.w3.org/2000/svg}"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPT_NAME = '<script>alert("x")</script>养老登记'


def full_item():
    """A sample item with every optional field filled, so the guide must show them all."""
    items, _ = sample.sample_catalog()
    item = dict(next(i for i in items if i["id"] == "GD-LS-21"))
    item.update(
        id="GD-TEST-99", name="全字段测试事项", basic_code="4415210000AB",
        implementation_code="1144152100000000X5" + "3" + "4415210000AB",
        fee=True, fee_items=[{"name": "测绘费", "standard": "每宗 300 元", "basis": "示例依据"}],
        time_limit_basis="不含公示期", clock_exclusions=["公示期"],
        parallel_departments=["农业农村", "自然资源"], lead_department="农业农村",
        cross_region="全县通办", sources=["https://example.org/guide"], notes="示例备注",
        aliases=["建房"], eligibility={"min_age": 18},
    )
    assert schema.validate_item(item) == []
    return item


def make_node(tmp_path, items=None, agencies=None):
    """A node with the catalog pages; publishes ``items`` (None: publish nothing)."""
    app = make_county(tmp_path)
    key = app.key
    if "catalog" not in app.blueprints:
        catalog_views.init_app(app)
    add_account(app, "editor", "pw-editor-1", roles=("county_admin",))
    add_account(app, "boss", "pw-boss-1", roles=("approver",))
    release = None
    if items is not None:
        with app.app_context():
            release = publish.publish(app.extensions["store"], items, agencies or [],
                                      proposer="editor", approver="boss", private_key=key)
    return app, key, release


@pytest.fixture
def node(tmp_path):
    """A node whose catalog in force is the sample plus one fully filled item."""
    items, agencies = sample.sample_catalog()
    items.append(full_item())
    app, key, release = make_node(tmp_path, items, agencies)
    app.config["TEST_ITEMS"] = {i["id"]: i for i in items}
    app.config["TEST_RELEASE"] = release
    yield app
    app.extensions["store"].close()


@pytest.fixture
def pages(node):
    return node.test_client()


def html_of(response):
    return response.get_data(as_text=True)


def items_named(app, predicate):
    return [i for i in app.config["TEST_ITEMS"].values() if predicate(i)]


# -- index and browse ----------------------------------------------------------------------

def test_index_shows_facets_with_counts_and_the_release(node, pages):
    response = pages.get("/catalog")
    assert response.status_code == 200
    html = html_of(response)
    assert "按部门查找" in html and "按人生事件查找" in html and "按适用人群查找" in html
    civil = len(items_named(node, lambda i: i["department"] == "民政"))
    assert re.search(rf">民政</a> <span class=\"count\">（{civil} 项）", html)
    elderly = len(items_named(node, lambda i: "养老" in i["life_events"]))
    assert re.search(rf">养老</a> <span class=\"count\">（{elderly} 项）", html)
    disabled = len(items_named(node, lambda i: "残疾人" in i["audiences"]))
    assert re.search(rf">残疾人</a> <span class=\"count\">（{disabled} 项）", html)
    moment = datetime.fromisoformat(node.config["TEST_RELEASE"]["time"]).astimezone(CHINA_TIME)
    assert "第 1 号发布" in html
    assert f"{moment.year}年{moment.month}月{moment.day}日" in html
    assert 'action="/catalog/search"' in html
    assert "本站尚未收到目录" not in html


def test_browse_by_life_event_lists_exactly_its_items(node, pages):
    response = pages.get("/catalog/browse/life_event/养老")
    assert response.status_code == 200
    html = html_of(response)
    expected = items_named(node, lambda i: "养老" in i["life_events"])
    assert expected
    for item in expected:
        assert f'href="/catalog/item/{item["id"]}"' in html
    assert f"共 {len(expected)} 个事项" in html
    assert "/catalog/item/GD-LS-13" not in html  # 生育登记 is not about 养老


def test_browse_unknown_facet_or_value_is_404(pages):
    for url in ("/catalog/browse/colour/红", "/catalog/browse/department/不存在的部门"):
        response = pages.get(url)
        assert response.status_code == 404
        assert "没有找到这个页面" in html_of(response)


# -- search --------------------------------------------------------------------------------

@pytest.mark.parametrize("query, found", [
    ("养老", "城乡居民基本养老保险参保登记"),
    ("残疾人", "困难残疾人生活补贴"),
])
def test_search_finds_partial_chinese_words(pages, query, found):
    html = html_of(pages.get("/catalog/search", query_string={"q": query}))
    assert found in html.replace(f"<mark>{query}</mark>", query)
    assert f"<mark>{query}</mark>" in html
    assert re.search(r"找到 \d+ 个与“" + query + "”有关的事项", html)


def test_search_finds_words_inside_material_names(node, pages):
    html = html_of(pages.get("/catalog/search?q=户口"))
    # 临时救助 says nothing of 户口 in its name; its materials list 居民户口簿
    assert "户口" not in node.config["TEST_ITEMS"]["GD-LS-06"]["name"]
    assert 'href="/catalog/item/GD-LS-06">临时救助</a>' in html
    assert "居民<mark>户口</mark>簿" in html


def test_search_rows_show_department_handling_type_and_promised_limit(pages):
    html = html_of(pages.get("/catalog/search?q=医疗保险"))
    row = re.search(r"<tr><td><a href=\"/catalog/item/GD-LS-03\">.*?</tr>", html, re.S).group()
    assert "医疗保障" in row and "即办件" in row and "即办" in row
    html = html_of(pages.get("/catalog/search?q=危房"))
    row = re.search(r"<tr><td><a href=\"/catalog/item/GD-LS-20\">.*?</tr>", html, re.S).group()
    assert "承诺件" in row and "30 个工作日" in row


def test_search_messages_for_no_results_empty_and_too_long_queries(pages):
    html = html_of(pages.get("/catalog/search?q=火星移民"))
    assert "没有找到与“火星移民”有关的事项" in html
    assert "/catalog/item/" not in html
    for query in ("", "   "):
        html = html_of(pages.get("/catalog/search", query_string={"q": query}))
        assert "请输入要查找的事项名称或关键词" in html
    response = pages.get("/catalog/search", query_string={"q": "养" * 101})
    assert response.status_code == 400
    assert "搜索词太长" in html_of(response)


def result_ids(html):
    """The item ids of a result page, in the order listed."""
    return re.findall(r'<tr><td><a href="/catalog/item/([^"]+)">', html)


@pytest.mark.parametrize("query, first, also", [
    ("社保卡", "GD-LS-24", ()),  # 社会保障卡申领: found by its alias, listed first
    ("医保", "GD-LS-03", ("GD-LS-10",)),  # 医疗保险 and 医疗救助
    ("低保", "GD-LS-04", ()),
    ("残疾证", "GD-LS-09", ()),
    ("长寿金", "GD-LS-11", ()),
    ("宅基地", "GD-LS-21", ()),
])
def test_search_finds_items_by_their_common_short_names(node, pages, query, first, also):
    html = html_of(pages.get("/catalog/search", query_string={"q": query}))
    ids = result_ids(html)
    assert ids and ids[0] == first, ids
    assert all(i in ids for i in also)
    assert query in node.config["TEST_ITEMS"][first]["aliases"]


def test_guide_shows_aliases_and_the_age_condition(pages):
    html = html_of(pages.get("/catalog/item/GD-LS-11"))
    assert re.search(r"<th>常用简称</th>", html) and "长寿金" in html
    assert re.search(r"<th>年龄条件</th><td>年满 80 周岁</td>", html)


def test_alias_hit_says_which_short_name_matched(pages):
    html = html_of(pages.get("/catalog/search?q=社保卡"))
    row = re.search(r'<tr><td><a href="/catalog/item/GD-LS-24">.*?</tr>', html, re.S).group()
    assert "常用简称：<mark>社保卡</mark>" in row


def test_a_word_every_item_needs_lists_name_matches_first_and_says_so(tmp_path):
    items, agencies = sample.sample_catalog()
    named = dict(next(i for i in items if i["id"] == "GD-LS-18"), id="GD-ZZ-01",
                 name="居民身份证申领")  # last by id: only the ranking lists it first
    assert schema.validate_item(named) == []
    app, _, _ = make_node(tmp_path, items + [named], agencies)
    try:
        html = html_of(app.test_client().get("/catalog/search?q=身份证"))
        ids = result_ids(html)
        assert ids[0] == "GD-ZZ-01" and len(ids) > 10
        hint = re.search(r'<p class="notice" id="common-word">(.*?)</p>', html, re.S).group(1)
        assert "“身份证”几乎每个事项都需要，请换一个更具体的词" in hint
        # a specific word gets no such hint
        assert 'id="common-word"' not in html_of(app.test_client().get("/catalog/search?q=低保"))
        with app.app_context():
            db = app.extensions["store"].db
            assert active.common_words(db, "身份证 低保") == ["身份证"]
            body_only = [r["item_id"] for r in active.search(db, "身份证", limit=100)][1:]
            assert body_only and all("身份证" not in i["name"] for i in items
                                     if i["id"] in body_only)
    finally:
        app.extensions["store"].close()


def test_aliases_are_validated():
    items, _ = sample.sample_catalog()
    item = dict(items[0])
    for aliases, message in ((["社" * 21], "超过 20 个字"), ([" "], "为空"),
                             (["a"] * 2, "重复"), ([f"简称{n}" for n in range(21)], "最多 20 条"),
                             ("社保卡", "应为列表")):
        errors = [str(e) for e in schema.validate_item(dict(item, aliases=aliases))]
        assert any(message in e and "常用简称" in e for e in errors), (aliases, errors)


def test_snippet_and_highlight_escape_before_marking():
    marked = catalog_views.snippet_html('<b onclick="x">【低保】</b>【')
    assert str(marked) == "&lt;b onclick=&#34;x&#34;&gt;<mark>低保</mark>&lt;/b&gt;【"
    assert str(catalog_views.highlight("<i>养老</i>", ["养老"])) == \
        "&lt;i&gt;<mark>养老</mark>&lt;/i&gt;"
    # a word that is also part of an entity must not break the escaping
    assert str(catalog_views.highlight("a&b amp", ["amp"])) == "a&amp;b <mark>amp</mark>"


# -- the guide ------------------------------------------------------------------------------

def test_guide_shows_every_filled_schema_field_with_its_label(node, pages):
    for item in node.config["TEST_ITEMS"].values():
        response = pages.get(f"/catalog/item/{item['id']}")
        assert response.status_code == 200
        html = html_of(response)
        for field in schema.ITEM_FIELDS:
            shown = re.search(rf">{re.escape(field.label)}</(th|h2|h3)>", html)
            if item.get(field.key) in (None, "", []):
                assert shown is None, (item["id"], field.key)
            else:
                assert shown, (item["id"], field.key)


def test_guide_renders_values_for_citizens(pages):
    html = html_of(pages.get("/catalog/item/GD-TEST-99"))
    assert "<th>一级办结</th><td>是</td>" in html
    assert "<th>是否收费</th><td>是</td>" in html
    assert "<th>受理层级</th><td>村级、镇级</td>" in html
    assert "<th>决定层级</th><td>镇级</td>" in html
    assert "<li>农业农村</li><li>自然资源</li>" in html
    assert "<td>测绘费</td><td>每宗 300 元</td>" in html
    assert 'href="https://example.org/guide"' in html
    assert re.search(r"<th>法定时限</th><td>\d+ 个(工作日|自然日)</td>", html)


def test_guide_marks_shared_materials_as_not_to_be_submitted(pages):
    html = html_of(pages.get("/catalog/item/GD-LS-20"))
    assert "由公安机关（户籍人口库）提供，无需申请人提交" in html
    row = re.search(r"<tr><td>1</td>.*?</tr>", html, re.S).group()  # 申请表: not shared
    assert "无需申请人提交" not in row and "1 份" in row


def test_guide_tags_blacklisted_agencies(pages):
    html = html_of(pages.get("/catalog/item/GD-LS-20"))
    agencies = dict((re.search(r"^\s*(\S+)", li).group(1), li) for li in
                    re.findall(r'<li class="agency">(.*?)</li>', html, re.S))
    assert 'class="tag-black"' in agencies["海丰县恒固房屋安全鉴定有限公司"]
    assert "黑名单" in agencies["海丰县恒固房屋安全鉴定有限公司"]
    assert "失信" in agencies["海丰县恒固房屋安全鉴定有限公司"]
    assert "黑名单" not in agencies["海丰县建筑工程质量检测站"]


def test_guide_inlines_flowchart_qr_and_versions(node, pages):
    html = html_of(pages.get("/catalog/item/GD-LS-20"))
    svg = re.search(r'<svg[^>]*class="flowchart".*?</svg>', html, re.S).group()
    root = ET.fromstring(svg)
    assert root.get("role") == "img"
    texts = "".join(root.itertext())
    for step in node.config["TEST_ITEMS"]["GD-LS-20"]["process_steps"]:
        assert step["name"] in texts
    # the QR code encodes this page's absolute address
    assert qr_svg("http://localhost/catalog/item/GD-LS-20") in html
    assert "目录第 1 号发布" in html and "本事项第 1 版" in html
    assert 'href="/catalog/item/GD-LS-20/print"' in html


def test_print_view_is_a4_with_a_print_button_hidden_on_paper(pages):
    response = pages.get("/catalog/item/GD-LS-20/print")
    assert response.status_code == 200
    html = html_of(response)
    assert "@page { size: A4" in html
    assert 'onclick="window.print()"' in html and ">打印</button>" in html
    print_css = re.search(r"@media print \{(.*?)\n\}", html, re.S).group(1)
    assert ".print-button" in print_css and "display: none" in print_css
    assert "page-break-inside: avoid" in html
    assert "由公安机关（户籍人口库）提供，无需申请人提交" in html
    assert 'class="flowchart"' in html and "本事项第 1 版" in html


def test_flowchart_and_qr_endpoints(node, pages):
    response = pages.get("/catalog/item/GD-LS-20/flowchart.svg")
    assert response.status_code == 200
    assert response.mimetype == "image/svg+xml"
    root = ET.fromstring(response.data)
    assert root.tag == f"{SVG}svg"
    assert root.find(f"{SVG}title").text == "农村危房改造补助申请办理流程图"
    response = pages.get("/catalog/item/GD-LS-20/qr.png")
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.data.startswith(PNG_MAGIC)
    assert response.data == qr_png("http://localhost/catalog/item/GD-LS-20")


def test_unknown_item_is_a_chinese_404_everywhere(pages):
    for suffix in ("", "/print", "/flowchart.svg", "/qr.png"):
        response = pages.get(f"/catalog/item/GD-NOPE{suffix}")
        assert response.status_code == 404
        assert "没有找到这个页面" in html_of(response)


# -- node states and hostile content ---------------------------------------------------------

def test_node_without_a_release_says_so(tmp_path):
    app, _, _ = make_node(tmp_path)
    pages = app.test_client()
    for url in ("/catalog", "/catalog/search?q=养老"):
        response = pages.get(url)
        assert response.status_code == 200
        assert "本站尚未收到目录，请稍后再试" in html_of(response)
    assert pages.get("/catalog/item/GD-LS-01").status_code == 404
    app.extensions["store"].close()


def test_failed_release_keeps_the_previous_one_and_warns(tmp_path):
    items, agencies = sample.sample_catalog()
    app, _, _ = make_node(tmp_path, items, agencies)
    changed = [dict(i, name="被篡改的名称") if i["id"] == "GD-LS-01" else i for i in items]
    with app.app_context():  # a release signed with a key this node does not trust
        publish.publish(app.extensions["store"], changed, agencies, proposer="editor",
                        approver="boss", private_key=identity.new_private_key())
        assert active.catalog_status(app.extensions["store"].db)["state"] == active.FAILED
    pages = app.test_client()
    html = html_of(pages.get("/catalog"))
    assert "目录验证失败，本站继续使用上一版" in html
    assert "第 1 号发布" in html
    html = html_of(pages.get("/catalog/item/GD-LS-01"))
    assert "城乡居民基本养老保险参保登记" in html and "被篡改的名称" not in html
    app.extensions["store"].close()


def test_markup_in_an_item_name_is_escaped_everywhere(tmp_path):
    items, agencies = sample.sample_catalog()
    items[0]["name"] = SCRIPT_NAME
    items[0]["process_steps"][0]["name"] = "<b>申请</b>"
    assert schema.validate_item(items[0]) == []
    app, _, _ = make_node(tmp_path, items, agencies)
    pages = app.test_client()
    item_id = items[0]["id"]
    for url in (f"/catalog/item/{item_id}", f"/catalog/item/{item_id}/print",
                "/catalog/search?q=养老登记", "/catalog/search?q=alert",
                "/catalog/browse/life_event/养老"):
        html = html_of(pages.get(url))
        assert "<script" not in html, url
        assert "&lt;script&gt;" in html, url
    svg = pages.get(f"/catalog/item/{item_id}/flowchart.svg").data
    root = ET.fromstring(svg)
    assert root.find(f"{SVG}title").text == SCRIPT_NAME + "办理流程图"
    assert "<b>申请</b>" in "".join(root.itertext())
    app.extensions["store"].close()


# -- flowchart and QR ------------------------------------------------------------------------

def test_flowchart_is_valid_xml_whatever_the_text():
    steps = [
        {"name": "申请 & <受理>", "actor": 'say "hi" & \'bye\'', "days": 3},
        {"name": "审核\x01\x0b", "actor": "镇（街道）" * 12, "description": "a < b"},
        {"name": "决定", "actor": "县级部门", "days": 0},
    ]
    svg = flowchart_svg(steps, title="标题 <x> & \"y\"")
    root = ET.fromstring(svg)
    assert root.get("role") == "img"
    assert root.find(f"{SVG}title").text == '标题 <x> & "y"办理流程图'
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts[0] == "开始" and texts[-1] == "办结"
    joined = "".join(texts)
    assert "申请 & <受理>" in joined and "审核" in joined and "决定" in joined
    assert "时限：3 个工作日" in texts and "时限：0 个工作日" in texts
    # the long actor wrapped onto several lines, none wider than the box allows
    actor_lines = [t for t in texts if "镇（街道）" in t]
    assert len(actor_lines) >= 3
    assert all(len(t) <= 18 for t in actor_lines)


def test_flowchart_grows_with_its_steps():
    def height(svg):
        return float(ET.fromstring(svg).get("viewBox").split()[3])

    one = flowchart_svg([{"name": "申请", "actor": "申请人"}])
    three = flowchart_svg([{"name": f"环节{n}", "actor": "窗口"} for n in range(3)])
    long_name = flowchart_svg([{"name": "很长的环节名称" * 5, "actor": "申请人"}])
    assert height(three) > height(one)
    assert height(long_name) > height(one)


def test_wrap_keeps_closing_punctuation_on_the_line_before():
    lines = wrap("甲乙丙丁，戊己", 4)
    assert lines[0] == "甲乙丙丁，"
    assert not any(line.startswith("，") for line in lines)
    assert wrap("", 4) == [""]


def test_qr_svg_is_inlinable_and_png_is_png():
    svg = qr_svg("http://localhost/catalog/item/GD-LS-01")
    assert svg.startswith("<svg") and "<?xml" not in svg
    ET.fromstring(svg)
    assert qr_png("http://localhost/catalog/item/GD-LS-01").startswith(PNG_MAGIC)
