"""Catalog authoring pages at the county: forms, drafts, diff, proposing and approving."""

import json
import re
from html import unescape
from html.parser import HTMLParser

import pytest
from werkzeug.datastructures import MultiDict

from county import catalog_views
from shared import staff
from shared.catalog import active, publish, schema
from shared.catalog.forms import display_value, form_values, parse_form
from shared.catalog.sample import sample_catalog
from tests.conftest import add_account, form_token, make_county, staff_login

PASSWORD = "correct-horse-42"
BASE = "/admin/catalog"
ITEM = "GD-LS-01"


class FormReader(HTMLParser):
    """The fields of one form of a page, as a browser would submit them."""

    def __init__(self, form_id):
        super().__init__(convert_charrefs=True)
        self.form_id, self.inside = form_id, False
        self.fields = MultiDict()
        self._textarea = self._select = None
        self._text = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.inside = attrs.get("id") == self.form_id
        if not self.inside:
            return
        if tag == "input":
            if attrs.get("type") == "checkbox" and "checked" not in attrs:
                return
            self.fields.add(attrs["name"], attrs.get("value", ""))
        elif tag == "textarea":
            self._textarea, self._text = attrs["name"], []
        elif tag == "select":
            self._select = attrs["name"]
        elif tag == "option" and "selected" in attrs:
            self.fields.add(self._select, attrs.get("value", ""))

    def handle_data(self, data):
        if self._textarea is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag == "textarea" and self._textarea is not None:
            text = "".join(self._text)
            # HTML drops the line break right after <textarea>, as browsers do.
            self.fields.add(self._textarea, text[1:] if text.startswith("\n") else text)
            self._textarea = None


def read_form(html, form_id="record-form"):
    reader = FormReader(form_id)
    reader.feed(html)
    return reader.fields


def token(browser):
    return form_token(browser, BASE + "/")


def field_block(html, key):
    """The HTML of one field of the form (label, input, hints, errors)."""
    return re.search(rf'<div class="form-field[^"]*" id="field-{key}">(.*?)</div>', html,
                     re.S).group(1)


@pytest.fixture
def app(tmp_path):
    """A county node with its key, the sample catalog published as release 1, and staff."""
    app = make_county(tmp_path)
    if "staff" not in app.blueprints:
        staff.init_app(app)
    if catalog_views.bp.name not in app.blueprints:
        catalog_views.init_app(app)
    add_account(app, "editor", PASSWORD, roles=("county_admin",))
    add_account(app, "chief", PASSWORD, roles=("county_admin", "approver"))
    add_account(app, "approver1", PASSWORD, roles=("approver",))
    add_account(app, "clerk1", PASSWORD, roles=("clerk",))
    with app.app_context():
        items, agencies = sample_catalog()
        publish.import_catalog(app.extensions["store"].db, items, agencies, "editor")
    yield app
    app.extensions["store"].close()


@pytest.fixture
def db(app):
    return app.extensions["store"].db


def login(app, username):
    return staff_login(app, username, PASSWORD)


def propose(browser, note=""):
    return browser.post(BASE + "/propose", data={"note": note, "csrf_token": token(browser)})


def proposal_id(response):
    return int(re.search(r"/proposals/(\d+)", response.location).group(1))


def decide(browser, number, action, **data):
    return browser.post(f"{BASE}/proposals/{number}/{action}",
                        data={"csrf_token": token(browser), **data})


@pytest.fixture
def published(app, db):
    """Release 1 proposed by ``editor`` and approved by ``approver1`` through the pages."""
    response = propose(login(app, "editor"), "首次发布")
    assert response.status_code == 302
    approved = decide(login(app, "approver1"), proposal_id(response), "approve")
    assert approved.status_code == 302
    assert active.catalog_status(db)["active"]["number"] == 1
    assert publish.diff(db) == []
    return app


def test_pages_need_login(app):
    browser = app.test_client()
    for response in (browser.get(BASE + "/"), browser.get(f"{BASE}/item/{ITEM}/edit"),
                     browser.post(BASE + "/propose")):
        assert response.status_code == 302
        assert response.location.startswith("/login")


def test_roles(app):
    clerk = login(app, "clerk1")
    assert clerk.get(BASE + "/").status_code == 403
    assert clerk.get(f"{BASE}/item/{ITEM}/preview").status_code == 403
    approver = login(app, "approver1")
    assert approver.get(BASE + "/").status_code == 200
    assert approver.get(f"{BASE}/item/{ITEM}/edit").status_code == 403


def test_list_shows_status_release_and_search(published, db):
    editor = login(published, "editor")
    with published.app_context():
        publish.remove_record(db, "item", "GD-LS-02", "editor")
    page = editor.get(BASE + "/").get_data(as_text=True)
    assert 'id="active-number">1<' in page
    row = re.search(r'<tr id="item-GD-LS-02">(.*?)</tr>', page, re.S).group(1)
    assert "待删除" in row
    assert "已发布" in re.search(rf'<tr id="item-{ITEM}">(.*?)</tr>', page, re.S).group(1)
    assert "待删除 1" in page
    found = editor.get(BASE + "/?q=低保").get_data(as_text=True)
    assert re.findall(r'<tr id="item-([^"]+)">', found) == ["GD-LS-04"]
    found = editor.get(BASE + "/?q=gd-ls-2").get_data(as_text=True)
    assert len(re.findall(r'<tr id="item-([^"]+)">', found)) == 6


def test_create_with_errors_keeps_input_and_saves_nothing(published, db):
    editor = login(published, "editor")
    form = {"id": "GD-NEW-01", "name": "", "consult_phone": "电话号码",
            "statutory_time_limit": "十天", "fee": "否",
            "materials": "身份证|证件证照|原件核验|0|必要|申请人自备||||否|否||\n多|余|栏"
                         "|||||||||||||||",
            "csrf_token": token(editor)}
    response = editor.post(BASE + "/item/new", data=form)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "事项名称：必填" in field_block(html, "name")
    assert "咨询电话：格式不正确" in field_block(html, "consult_phone")
    assert 'value="电话号码"' in field_block(html, "consult_phone")
    assert "法定时限：应为整数" in field_block(html, "statutory_time_limit")
    materials = field_block(html, "materials")
    assert "第 2 行有" in materials and "多|余|栏" in materials
    assert "事项类型：必填" in field_block(html, "item_type")
    assert 'value="GD-NEW-01"' in field_block(html, "id")
    assert publish.diff(db) == []
    assert publish.CatalogDraft.select().count() == 0


def test_create_existing_id_is_refused(published, db):
    editor = login(published, "editor")
    with published.app_context():
        values = form_values(schema.ITEM_FIELDS, publish.working_record(db, "item", ITEM))
    data = MultiDict([(k, v) for k, v in values.items() if not isinstance(v, list)])
    for key, value in values.items():
        if isinstance(value, list):
            for entry in value:
                data.add(key, entry)
    data["name"] = "重复编号的事项"
    data["csrf_token"] = token(editor)
    response = editor.post(BASE + "/item/new", data=data)
    assert response.status_code == 422
    assert "GD-LS-01 已存在" in field_block(response.get_data(as_text=True), "id")
    assert publish.diff(db) == []


def test_create_then_remove_unpublished_draft(published, db):
    editor = login(published, "editor")
    data = read_form(editor.get(f"{BASE}/item/{ITEM}/edit").get_data(as_text=True))
    data["id"], data["name"] = "GD-NEW-02", "新增的测试事项"
    response = editor.post(BASE + "/item/new", data=data)
    assert response.status_code == 302
    page = editor.get(BASE + "/").get_data(as_text=True)
    assert "已保存草稿：新增事项 GD-NEW-02" in page
    assert "草稿新增" in re.search(r'<tr id="item-GD-NEW-02">(.*?)</tr>', page, re.S).group(1)
    assert [c["change"] for c in publish.diff(db)] == ["added"]
    editor.post(f"{BASE}/item/GD-NEW-02/remove", data={"csrf_token": token(editor)})
    assert publish.diff(db) == []
    assert publish.CatalogDraft.select().count() == 0


def test_every_sample_item_round_trips_through_the_edit_form(published, db):
    editor = login(published, "editor")
    items, _ = sample_catalog()
    for item in items:
        page = editor.get(f"{BASE}/item/{item['id']}/edit")
        assert page.status_code == 200
        response = editor.post(f"{BASE}/item/{item['id']}/edit",
                               data=read_form(page.get_data(as_text=True)))
        assert response.status_code == 302, item["id"]
    assert publish.diff(db) == []
    assert publish.CatalogDraft.select().count() == 0


def test_awkward_values_round_trip():
    items, agencies = sample_catalog()
    item = json.loads(json.dumps(items[0]))
    item["audiences"] = ["老年人", "全体居民"]  # not the schema's order
    item["process_steps"][0]["description"] = "第一行|含竖线\n第二行 \\ 反斜杠；分号"
    item["materials"][2]["common_mistakes"] = ["含“；”的一条；还是一条", "第二条|竖线"]
    item["notes"] = "多行\n备注"
    for fields, record in ((schema.ITEM_FIELDS, item), (schema.AGENCY_FIELDS, agencies[0])):
        values = form_values(fields, record)
        form = MultiDict()
        for key, value in values.items():
            for entry in value if isinstance(value, list) else [value.replace("\n", "\r\n")]:
                form.add(key, entry)
        parsed, found = parse_form(fields, form, record)
        assert found == []
        assert parsed == record


def test_edit_one_field_shows_in_diff(published, db):
    editor = login(published, "editor")
    data = read_form(editor.get(f"{BASE}/item/{ITEM}/edit").get_data(as_text=True))
    old_name = data["name"]
    data["name"] = "城乡居民养老保险参保登记（新）"
    assert editor.post(f"{BASE}/item/{ITEM}/edit", data=data).status_code == 302
    page = editor.get(BASE + "/").get_data(as_text=True)
    assert "已修改" in re.search(rf'<tr id="item-{ITEM}">(.*?)</tr>', page, re.S).group(1)
    diff = editor.get(BASE + "/diff").get_data(as_text=True)
    section = re.search(rf'id="change-item-{ITEM}">(.*?)</section>', diff, re.S).group(1)
    rows = re.findall(r"<tr><td>(.*?)</td><td[^>]*>(.*?)</td><td[^>]*>(.*?)</td></tr>",
                      section, re.S)
    assert rows == [("事项名称", old_name, "城乡居民养老保险参保登记（新）")]
    preview = editor.get(f"{BASE}/item/{ITEM}/preview").get_data(as_text=True)
    assert 'id="guide-title">城乡居民养老保险参保登记（新）<' in preview
    assert "<h2>申请材料</h2>" in preview and "本事项第 2 版" in preview
    # Typing the old value back leaves nothing to publish.
    data["name"] = old_name
    assert editor.post(f"{BASE}/item/{ITEM}/edit", data=data).status_code == 302
    assert publish.diff(db) == []
    assert publish.CatalogDraft.select().count() == 0


def test_propose_and_two_person_approval(published, db):
    chief = login(published, "chief")
    data = read_form(chief.get(f"{BASE}/item/{ITEM}/edit").get_data(as_text=True))
    data["name"] = "城乡居民养老保险参保登记（新）"
    chief.post(f"{BASE}/item/{ITEM}/edit", data=data)
    response = propose(chief, "改名")
    assert response.status_code == 302
    number = proposal_id(response)
    page = chief.get(response.location).get_data(as_text=True)
    assert "第 2 号发布申请" in page and "chief" in page and "事项名称" in page

    refused = decide(chief, number, "approve")
    assert refused.status_code == 409
    assert "提交人不能审批自己提交的发布" in refused.get_data(as_text=True)
    assert active.catalog_status(db)["active"]["number"] == 1

    approver = login(published, "approver1")
    done = decide(approver, number, "approve")
    assert done.status_code == 302
    page = approver.get(done.location).get_data(as_text=True)
    assert "第 2 号发布已签发（已生效）" in page
    assert 'id="release-number">第 2 号' in page
    assert active.catalog_status(db)["active"]["number"] == 2
    assert active.active_item(db, ITEM)["name"] == "城乡居民养老保险参保登记（新）"
    assert publish.diff(db) == []


def test_reject_needs_a_reason_and_withdraw_only_by_proposer(published, db):
    editor = login(published, "editor")
    editor.post(f"{BASE}/item/GD-LS-02/remove", data={"csrf_token": token(editor)})
    number = proposal_id(propose(editor))
    approver = login(published, "approver1")
    refused = decide(approver, number, "reject", reason="   ")
    assert refused.status_code == 409
    assert "退回须写明理由" in refused.get_data(as_text=True)
    assert publish.open_proposal().id == number
    refused = decide(approver, number, "withdraw")
    assert refused.status_code == 409
    assert "只有提交人可以撤回" in refused.get_data(as_text=True)
    assert decide(approver, number, "reject", reason="不应删除").status_code == 302
    assert publish.open_proposal() is None
    assert "不应删除" in approver.get(f"{BASE}/proposals/{number}").get_data(as_text=True)
    assert [c["change"] for c in publish.diff(db)] == ["removed"]  # the draft stays


def test_propose_refusals_are_shown(published, db):
    editor = login(published, "editor")
    response = propose(editor)
    assert response.status_code == 409
    assert "草稿与现行目录没有差别，无需发布" in response.get_data(as_text=True)
    # Removing an agency an item still names breaks the catalog as a whole.
    editor.post(f"{BASE}/agency/ZJ-001/remove", data={"csrf_token": token(editor)})
    response = propose(editor)
    assert response.status_code == 422
    assert "引用的中介机构“ZJ-001”不存在" in response.get_data(as_text=True)
    assert publish.open_proposal() is None


def test_approve_without_county_key_is_refused(published, db, tmp_path):
    editor = login(published, "editor")
    editor.post(f"{BASE}/item/GD-LS-02/remove", data={"csrf_token": token(editor)})
    number = proposal_id(propose(editor))
    empty = tmp_path / "no-key"
    empty.mkdir()
    published.config["NODE_DIR"] = str(empty)
    response = decide(login(published, "approver1"), number, "approve")
    assert response.status_code == 409
    assert "没有县级签名密钥" in response.get_data(as_text=True)
    assert publish.open_proposal().id == number
    assert active.catalog_status(db)["active"]["number"] == 1


def test_post_without_csrf_token_changes_nothing(published, db):
    editor = login(published, "editor")
    data = read_form(editor.get(f"{BASE}/item/{ITEM}/edit").get_data(as_text=True))
    data["name"] = "不应保存"
    del data["csrf_token"]
    assert editor.post(f"{BASE}/item/{ITEM}/edit", data=data).status_code == 400
    assert editor.post(f"{BASE}/item/{ITEM}/remove").status_code == 400
    assert editor.post(BASE + "/propose").status_code == 400
    assert publish.diff(db) == []
    assert publish.ReleaseProposal.select().count() == 1


# -- the approver sees what is signed -----------------------------------------------------------

REVIEW_ROW = re.compile(r'<tr class="field-change"><th scope="row">(.*?)</th>'
                        r'<td class="value before">(.*?)</td><td class="value after">(.*?)</td>'
                        r'</tr>', re.S)


def plain(html):
    """The text a reader sees of an HTML fragment."""
    return unescape(re.sub(r"<[^>]+>", "", html))


def review_rows(page, kind, record_id):
    """``{label: (old html, new html)}`` of one record's section of the proposal review."""
    section = re.search(rf'<section class="change review" id="review-{kind}-{record_id}">'
                        r"(.*?)</section>", page, re.S)
    assert section, f"no review of {kind} {record_id}"
    return {label: (before, after) for label, before, after in REVIEW_ROW.findall(section.group(1))}


def test_marked_texts_are_escaped_and_show_what_differs():
    before, after = catalog_views._marked("工作日 8:30—12:00", "工作日 9:00—12:00")
    assert before == '工作日 <del class="diff-del">8:30</del>—12:00'
    assert after == '工作日 <ins class="diff-ins">9:00</ins>—12:00'
    before, after = catalog_views._marked("a < b\n第二行", 'a < b\n<script>"x"</script>\n第三行')
    assert "<script>" not in after and "&lt;script&gt;" in after
    assert before.startswith("a &lt; b\n") and after.startswith("a &lt; b\n")
    assert plain(after) == 'a < b\n<script>"x"</script>\n第三行'
    assert catalog_views._marked("", "新内容") == ("（空）", '<ins class="diff-ins">新内容</ins>')
    assert catalog_views._marked("旧内容", "") == ('<del class="diff-del">旧内容</del>', "（空）")


def test_approve_page_shows_old_and_new_values_side_by_side(published, db):
    item_id = "GD-LS-04"
    evil = '<script>alert("签名")</script>'
    with published.app_context():
        old = publish.working_record(db, "item", item_id)
        new = json.loads(json.dumps(old))
        new["time_limit_basis"] = old["time_limit_basis"] + "（本县另行承诺）" + evil
        new["hours"] = "周一至周五 上午 9:00—12:00"
        new["materials"][0]["name"] = old["materials"][0]["name"] + "（2027 年版）"
        publish.save_draft(db, "item", new, "editor")
    editor = login(published, "editor")
    number = proposal_id(propose(editor, "调整低保指南"))
    approver = login(published, "approver1")
    page = approver.get(f"{BASE}/proposals/{number}").get_data(as_text=True)
    assert 'id="approve-form"' in page  # the signature is given on this very page
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert "现行（第 1 号发布）" in page and "拟发布（第 2 号）" in page
    fields = {f.key: f for f in schema.ITEM_FIELDS}
    rows = review_rows(page, "item", item_id)
    assert list(rows) == ["申请材料", "时限说明", "办理时间"]  # the schema's order
    for key in ("materials", "hours", "time_limit_basis"):
        before, after = rows[fields[key].label]
        assert plain(before) == display_value(fields[key], old[key])  # in full
        assert plain(after) == display_value(fields[key], new[key])
    before, after = rows["时限说明"]
    assert '<ins class="diff-ins">（本县另行承诺）&lt;script&gt;' in after
    assert "diff-del" not in before  # the old text was only added to
    before, after = rows["办理时间"]
    assert "diff-del" in before and "diff-ins" in after
    before, after = rows["申请材料"]
    assert plain(before).count("\n") == len(old["materials"]) - 1  # the whole old list
    assert plain(after).count("\n") == len(new["materials"]) - 1  # and the whole new list
    assert re.search(r'<ins class="diff-ins">[^<]*2027 年版[^<]*</ins>', after)
    assert after.count("diff-ins") == 1 and before.count("diff-del") == 0
    # The proposer sees the same, and after approval the page keeps showing what was signed,
    # against the release that was in force before.
    assert review_rows(editor.get(f"{BASE}/proposals/{number}").get_data(as_text=True),
                       "item", item_id) == rows
    assert decide(approver, number, "approve").status_code == 302
    page = approver.get(f"{BASE}/proposals/{number}").get_data(as_text=True)
    assert "此前（第 1 号发布）" in page and "本申请（第 2 号）" in page
    assert review_rows(page, "item", item_id) == rows
    assert 'id="approve-form"' not in page


def test_approve_page_shows_added_records_in_full_and_names_removed_ones(published, db):
    with published.app_context():
        added = dict(publish.working_record(db, "item", ITEM), id="GD-NEW-09",
                     name="新增的<b>测试</b>事项")
        publish.save_draft(db, "item", added, "editor")
        publish.remove_record(db, "item", "GD-LS-02", "editor")
        publish.save_calendar_entries(db, [{"date": "2026-03-04", "workday": False,
                                            "reason": "台风停工"}], "editor")
    number = proposal_id(propose(login(published, "editor")))
    page = login(published, "approver1").get(f"{BASE}/proposals/{number}")
    page = page.get_data(as_text=True)
    section = re.search(r'id="review-item-GD-NEW-09">(.*?)</section>', page, re.S).group(1)
    assert "新增的&lt;b&gt;测试&lt;/b&gt;事项" in section and "<b>测试" not in section
    shown = dict(re.findall(r'<tr><th scope="row">(.*?)</th><td class="value after">(.*?)</td>',
                            section, re.S))
    labels = [f.label for f in schema.ITEM_FIELDS if display_value(f, added.get(f.key))]
    assert list(shown) == labels  # every filled field of the new record
    assert plain(shown["申请材料"]) == display_value(
        next(f for f in schema.ITEM_FIELDS if f.key == "materials"), added["materials"])
    removed = re.search(r'id="review-item-GD-LS-02">(.*?)</section>', page, re.S).group(1)
    assert "批准后将从目录中删除事项 GD-LS-02（城乡居民基本养老保险待遇领取（申领））" in removed
    calendar = re.search(r'id="review-calendar-2026-03-04">(.*?)</section>', page, re.S).group(1)
    assert '<td class="value before">（空）</td>' in calendar
    assert "台风停工" in plain(calendar)


def test_aliases_and_age_condition_are_edited_in_the_item_form(published, db):
    editor = login(published, "editor")
    page = editor.get(f"{BASE}/item/GD-LS-11/edit").get_data(as_text=True)
    assert "常用简称" in field_block(page, "aliases")
    ages = field_block(page, "eligibility")
    assert 'name="eligibility.min_age" value="80"' in ages
    assert 'name="eligibility.max_age" value=""' in ages
    data = read_form(page)
    assert data["aliases"].splitlines() == ["高龄津贴", "长寿金", "老人津贴"]
    data["eligibility.min_age"], data["eligibility.max_age"] = "90", "70"
    refused = editor.post(f"{BASE}/item/GD-LS-11/edit", data=data)
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    assert "最低年龄 90 不能大于最高年龄 70" in field_block(html, "eligibility")
    assert 'name="eligibility.min_age" value="90"' in html  # the input is kept
    data["eligibility.min_age"], data["eligibility.max_age"] = "", ""
    assert editor.post(f"{BASE}/item/GD-LS-11/edit", data=data).status_code == 302
    assert "eligibility" not in publish.working_record(db, "item", "GD-LS-11")
    data["eligibility.min_age"] = "85"
    assert editor.post(f"{BASE}/item/GD-LS-11/edit", data=data).status_code == 302
    assert publish.working_record(db, "item", "GD-LS-11")["eligibility"] == {"min_age": 85}


def test_an_alias_edited_at_the_county_changes_search_after_a_release(published, db):
    assert [r["item_id"] for r in active.search(db, "敬老金")] == []
    editor = login(published, "editor")
    data = read_form(editor.get(f"{BASE}/item/GD-LS-11/edit").get_data(as_text=True))
    data["aliases"] = data["aliases"] + "\n敬老金"
    assert editor.post(f"{BASE}/item/GD-LS-11/edit", data=data).status_code == 302
    assert [r["item_id"] for r in active.search(db, "敬老金")] == []  # a draft: not yet
    response = propose(editor, "增加简称")
    assert decide(login(published, "approver1"), proposal_id(response),
                  "approve").status_code == 302
    assert active.catalog_status(db)["active"]["number"] == 2
    assert [r["item_id"] for r in active.search(db, "敬老金")] == ["GD-LS-11"]
    assert active.active_item(db, "GD-LS-11")["aliases"][-1] == "敬老金"
