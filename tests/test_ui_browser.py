"""The catalog pages in a real browser: Debian's Chromium driven by Playwright.

One county node runs as its own ``tongban serve`` process with the sample catalog published
as release 1 and two staff accounts, ``editor`` (county_admin) and ``boss`` (approver).
Each test opens fresh browser contexts (own cookies) and checks what a person sees: the
public guide in Chinese with its flowchart and QR code, the print layout and its PDF, the
two-person authoring flow, the form's error messages, and login throttling.

Login throttling also counts failures per client address, and every context here comes
from 127.0.0.1: the throttling test locks that address for 15 minutes, so it runs last.
"""

import datetime
import logging
import re

import pytest
from playwright.sync_api import expect

from shared import config as cfg
from shared import identity
from shared.app import open_store
from shared.cases import idnumbers
from shared.cases.blobs import MAX_BLOB_BYTES
from shared.catalog import publish
from shared.catalog.sample import sample_catalog
from shared.models import Account, hash_password
from tests import nodeproc
from tests.conftest import needs_chromium

logger = logging.getLogger(__name__)

pytestmark = needs_chromium
CJK_FONT = "WenQuanYi Micro Hei"
PASSWORDS = {"editor": "pw-editor-2026", "boss": "pw-boss-2026"}
PENSION = "城乡居民基本养老保险参保登记"
NEW_HOURS = "工作日 9:00—12:00，14:00—17:00（2026 年起周六上午增开）"
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def county(tmp_path_factory):
    """A serving county node with the sample catalog as release 1 and two staff accounts."""
    node = nodeproc.start_node(tmp_path_factory.mktemp("ui") / "county", tier="county",
                               code="441521", name="海丰县")
    try:
        store = open_store(cfg.load_config(node.node_dir))
        try:
            for name, role in (("editor", "county_admin"), ("boss", "approver")):
                Account.create(username=name, password_hash=hash_password(PASSWORDS[name]),
                               roles=role, created="2026-11-22")
            items, agencies = sample_catalog()
            publish.publish(store, items, agencies, proposer="editor", approver="boss",
                            private_key=identity.load_private_key(node.node_dir))
        finally:
            store.close()
        yield node
    finally:
        node.stop()


@pytest.fixture
def new_page(browser, county):
    """Open a page in a fresh context (its own cookies) on the county node."""
    contexts = []

    def open_page():
        context = browser.new_context(base_url=county.url, locale="zh-CN",
                                      viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


def login_via(page, path, username):
    """Open the staff page ``path``, get sent to the login form, log in, land on ``path``."""
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("用户名").fill(username)
    page.get_by_label("密码").fill(PASSWORDS[username])
    page.get_by_role("button", name="登录").click()
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))
    expect(page.locator("#staff-user")).to_have_text(username)


def platform_fonts(page, selector):
    """``{family: glyph count}`` of the fonts Chromium actually drew ``selector``'s text with."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    cdp.detach()
    return {f["familyName"]: f["glyphCount"] for f in fonts}


def test_public_catalog_search_and_guide_in_chinese(new_page, tmp_path):
    page = new_page()
    page.goto("/catalog")
    expect(page.get_by_role("heading", name="办事指南", level=1)).to_be_visible()
    expect(page.locator("#release")).to_contain_text("现行目录：第")
    departments = page.locator("#facet-department")
    expect(departments.get_by_role("heading", name="按部门查找")).to_be_visible()
    assert departments.get_by_role("link").count() >= 2
    for facet in ("department", "life_event", "audience"):
        expect(page.locator(f"#facet-{facet} .count").first).to_have_text(
            re.compile(r"^（[1-9]\d* 项）$"))

    # The real search form: type and submit, as a citizen would.
    page.get_by_role("searchbox", name="搜索事项").fill("养老")
    page.get_by_role("button", name="搜索").click()
    expect(page).to_have_url(re.compile(r"/catalog/search\?q="))
    expect(page.locator("#count")).to_contain_text("与“养老”有关的事项")
    result = page.locator("table.items").get_by_role("link", name=PENSION, exact=True)
    expect(result).to_be_visible()
    expect(result.locator("mark").first).to_have_text("养老")
    result.click()

    expect(page).to_have_url(re.compile(r"/catalog/item/GD-LS-01$"))
    expect(page.get_by_role("heading", name=PENSION, level=1)).to_be_visible()
    expect(page.get_by_role("heading", name="申请材料")).to_be_visible()
    expect(page.locator("table.materials tbody tr").first).to_be_visible()
    flowchart = page.locator(".flowchart-box svg")
    expect(flowchart).to_be_visible()
    assert flowchart.bounding_box()["height"] > 100
    qr_code = page.locator("#qr svg")
    expect(qr_code).to_be_visible()
    box = qr_code.bounding_box()
    assert box["width"] > 50 and box["height"] > 50
    expect(page.locator("#qr")).to_contain_text("扫码查看本指南")

    # The title is drawn with a CJK font's own glyphs (a tofu box would come from another
    # font, or from none). document.fonts.check() cannot tell: it answers true for any
    # installed or missing system font, so ask Chromium which platform font it used.
    fonts = platform_fonts(page, "#item-name")
    assert fonts.get(CJK_FONT, 0) >= len(PENSION), fonts
    width = page.locator("#item-name").evaluate(
        "el => { const r = document.createRange(); r.selectNodeContents(el);"
        " return r.getBoundingClientRect().width; }")
    size = float(page.locator("#item-name").evaluate(
        "el => getComputedStyle(el).fontSize").removesuffix("px"))
    assert width > 0.8 * size * len(PENSION)
    shot = tmp_path / "guide-GD-LS-01.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    logger.info("screenshot of the guide for a human: %s", shot)


def test_print_view_hides_controls_and_prints_to_pdf(new_page, tmp_path):
    page = new_page()
    page.goto("/catalog/item/GD-LS-01")
    page.get_by_role("link", name="打印版").click()
    expect(page).to_have_url(re.compile(r"/catalog/item/GD-LS-01/print$"))
    print_button = page.get_by_role("button", name="打印")
    expect(print_button).to_be_visible()  # on screen, the button is there to press

    page.emulate_media(media="print")
    expect(print_button).to_be_hidden()
    expect(page.get_by_role("link", name="返回办事指南")).to_be_hidden()
    expect(page.get_by_role("heading", name=PENSION, level=1)).to_be_visible()
    expect(page.get_by_role("heading", name="申请材料")).to_be_visible()
    expect(page.locator(".guide .flowchart-box svg")).to_be_visible()
    expect(page.locator("#qr svg")).to_be_visible()

    pdf = page.pdf(format="A4")
    assert pdf.startswith(b"%PDF-")
    pages = len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", pdf))
    assert pages >= 2, f"the whole guide on {pages} page(s)"
    (tmp_path / "guide-GD-LS-01.pdf").write_bytes(pdf)


def test_guide_prints_on_three_pages_with_the_qr_code_beside_other_content(new_page):
    """The QR code once filled a 4th page on its own: it now heads page 1 with the version."""
    page = new_page()
    page.goto("/catalog/item/GD-LS-01/print")
    page.emulate_media(media="print")
    pdf = page.pdf(format="A4")
    pages = len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", pdf))
    assert 1 <= pages <= 3, f"the guide on {pages} pages"
    # Laid out at A4's printable width (186 mm), the QR code sits on the first page's
    # height (267 mm) together with the title and the version line.
    page.set_viewport_size({"width": 703, "height": 1009})
    qr, version = page.locator("#qr svg").bounding_box(), page.locator("#guide-version")
    assert qr["y"] + qr["height"] < 1009
    assert version.bounding_box()["y"] < 1009 and page.locator("#item-name").is_visible()


def test_long_source_urls_wrap_on_a_phone(new_page):
    page = new_page()
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto("/catalog/item/GD-LS-01")
    expect(page.get_by_role("heading", name=PENSION, level=1)).to_be_visible()
    page.locator(".guide table.fields td").first.evaluate(
        "td => { const a = document.createElement('a'); a.href = '#';"
        " a.textContent = 'https://www.gd.gov.cn/zwgk/' + 'wjk/'.repeat(40) + 'content.html';"
        " td.appendChild(a); }")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375


def applicant_id(years=40):
    today = datetime.date.today()
    return idnumbers.make_resident_id("441521", datetime.date(today.year - years, 3, 1), 7)


def test_apply_form_says_the_limit_and_refuses_a_large_file_before_sending(new_page, tmp_path):
    page = new_page()
    page.goto("/apply/GD-LS-04")
    page.get_by_label("申请人居民身份证号码").fill(applicant_id())
    page.get_by_role("button", name="下一步").click()
    fields = page.locator("input[type=file]")
    expect(fields.first).to_be_visible()
    limit = f"每个不超过 {MAX_BLOB_BYTES // (1024 * 1024)} MB"
    for i in range(fields.count()):
        described = fields.nth(i).get_attribute("aria-describedby")
        expect(page.locator(f"#{described}")).to_contain_text(limit)

    posts = []
    page.on("request", lambda request: posts.append(request.url)
            if request.method == "POST" else None)
    big = tmp_path / "扫描件.pdf"
    big.write_bytes(b"%PDF-1.4\n" + b"0" * (MAX_BLOB_BYTES + 1024))
    first = fields.first
    first.set_input_files(str(big))
    note = page.locator(f"#{first.get_attribute('id')}-upload-note")
    expect(note).to_contain_text("文件“扫描件.pdf”过大：4.1 MB，单个文件不能超过 4 MB")
    page.get_by_role("button", name="提交预申请").click()
    page.wait_for_timeout(300)
    assert posts == [], "the form was sent with a file over the limit"
    expect(page).to_have_url(re.compile(r"/apply/GD-LS-04$"))

    # A large phone photo is redrawn smaller and replaces the chosen file.
    first.evaluate("""async input => {
        const canvas = document.createElement('canvas');
        canvas.width = 3000; canvas.height = 2400;
        const ctx = canvas.getContext('2d');
        const image = ctx.createImageData(3000, 2400);
        for (let i = 0; i < image.data.length; i += 4) {
            const n = Math.random() * 60;
            image.data[i] = 120 + n; image.data[i + 1] = 90 + n; image.data[i + 2] = 60 + n;
            image.data[i + 3] = 255;
        }
        ctx.putImageData(image, 0, 0);
        const blob = await new Promise(done => canvas.toBlob(done, 'image/png'));
        const dt = new DataTransfer();
        dt.items.add(new File([blob], 'IMG_0001.png', {type: 'image/png'}));
        input.files = dt.files;
        input.dispatchEvent(new Event('change'));
        return blob.size;
    }""")
    expect(note).to_contain_text(re.compile(r"照片“IMG_0001\.png”已压缩为 \d+KB"))
    sent = first.evaluate("input => [input.files[0].name, input.files[0].type, input.files[0].size]")
    assert sent[0] == "IMG_0001.jpg" and sent[1] == "image/jpeg" and sent[2] <= MAX_BLOB_BYTES
    assert first.evaluate("input => input.validationMessage") == ""


def test_two_person_publishing_through_the_pages(new_page):
    editor = new_page()
    login_via(editor, "/admin/catalog/", "editor")
    editor.get_by_role("textbox", name="按编号或名称查找").fill("医疗保险参保")
    editor.get_by_role("button", name="查找").click()
    expect(editor.locator("#item-list tr[id]")).to_have_count(1)
    editor.locator("#item-GD-LS-03").get_by_role("link", name="编辑").click()
    expect(editor.get_by_role("heading", name="编辑事项 GD-LS-03")).to_be_visible()
    hours = editor.get_by_label("办理时间")
    old_hours = hours.input_value()
    assert old_hours and old_hours != NEW_HOURS
    hours.fill(NEW_HOURS)
    editor.get_by_role("button", name="保存草稿").click()
    expect(editor.get_by_role("status")).to_contain_text("已保存草稿：事项 GD-LS-03")
    expect(editor.locator("#item-GD-LS-03 td.status-changed")).to_have_text("已修改")

    editor.get_by_role("link", name="变更对比与提交发布").click()
    change = editor.locator("#change-item-GD-LS-03")
    expect(change).to_contain_text("已修改：事项 GD-LS-03")
    row = change.get_by_role("row").filter(has_text="办理时间")
    expect(row.locator("td.before")).to_have_text(old_hours)
    expect(row.locator("td.after")).to_have_text(NEW_HOURS)
    editor.get_by_label("说明").fill("调整医保参保登记的办理时间")
    editor.get_by_role("button", name="提交发布，等待审批").click()
    expect(editor.get_by_role("status")).to_contain_text("已提交第 2 号发布，等待审批人员审批")
    expect(editor.locator("#proposal-state")).to_have_text("待审批")
    proposal_path = re.sub(r"^https?://[^/]+", "", editor.url)

    # The proposer holds no approver role: no approve button, and a forged POST carrying
    # the page's own CSRF token is refused all the same.
    expect(editor.get_by_role("button", name="批准并签发")).to_have_count(0)
    editor.evaluate("""path => {
        const form = document.createElement('form');
        form.method = 'post';
        form.action = path + '/approve';
        form.appendChild(document.querySelector('input[name=csrf_token]').cloneNode());
        document.body.appendChild(form);
        form.submit();
    }""", proposal_path)
    expect(editor.get_by_role("heading", name="没有权限")).to_be_visible()
    expect(editor.locator("#message")).to_contain_text("需要角色：审批人员")
    editor.goto(proposal_path)
    expect(editor.locator("#proposal-state")).to_have_text("待审批")

    boss = new_page()
    login_via(boss, proposal_path, "boss")
    expect(boss.get_by_role("heading", name="第 2 号发布申请")).to_be_visible()
    expect(boss.locator("#proposal-changes")).to_contain_text("GD-LS-03")
    # Where the signature is given, the approver sees what is signed: the old and the new
    # value of every changed field, side by side.
    review = boss.locator("#review-item-GD-LS-03 tr.field-change").filter(has_text="办理时间")
    expect(review.locator("td.before")).to_contain_text(old_hours[:6])
    expect(review.locator("td.after")).to_contain_text("2026 年起周六上午增开")
    boss.get_by_role("button", name="批准并签发").click()
    expect(boss.get_by_role("status")).to_have_text("第 2 号发布已签发（已生效）")
    expect(boss.locator("#release-number")).to_have_text("第 2 号（现行目录）")

    public = new_page()
    public.goto("/catalog/item/GD-LS-03")
    hours_row = public.locator(".guide tr").filter(
        has=public.locator("th", has_text=re.compile("^办理时间$")))
    expect(hours_row.locator("td")).to_have_text(NEW_HOURS)
    expect(public.locator("#guide-version")).to_contain_text("目录第 2 号发布 · 本事项第 2 版")
    public.goto("/sync/status")
    expect(public.locator("#catalog td.release")).to_have_text("第 2 号")


def test_wrong_input_is_shown_next_to_the_fields_and_nothing_is_saved(new_page):
    page = new_page()
    path = "/admin/catalog/item/GD-LS-05/edit"
    login_via(page, path, "editor")
    visits, name = page.get_by_label("到现场次数"), page.get_by_label("事项名称")
    hours = page.get_by_label("办理时间")
    posts = []
    page.on("request", lambda request: posts.append(request.url)
            if request.method == "POST" else None)
    visits.fill("9")
    name.fill("")
    hours.fill("只在周三上午办理")
    first_audience = page.get_by_role("group", name="适用人群").get_by_role("checkbox").first
    audience_checked = not first_audience.is_checked()
    first_audience.set_checked(audience_checked)
    page.get_by_role("button", name="保存草稿").click()
    # The browser itself stops the form first (the input's max is 5) ...
    assert visits.evaluate("el => el.validity.rangeOverflow && el.validationMessage !== ''")

    # ... and a browser that does not (or a crafted request) meets the server's checks.
    page.locator("#record-form").evaluate("form => { form.noValidate = true; }")
    page.get_by_role("button", name="保存草稿").click()
    expect(page.locator("#form-errors")).to_contain_text("有 2 处需要修改")
    assert len(posts) == 1 and posts[0].endswith(path)  # the first click sent nothing
    expect(page.locator("#field-max_on_site_visits .field-error")).to_have_text(
        "到现场次数：应在 0 到 5 之间（现为 9）")
    expect(page.locator("#field-name .field-error")).to_have_text("事项名称：必填")
    expect(page.locator("#field-hours .field-error")).to_have_count(0)
    expect(visits).to_have_value("9")
    expect(name).to_have_value("")
    expect(hours).to_have_value("只在周三上午办理")
    if audience_checked:
        expect(first_audience).to_be_checked()
    else:
        expect(first_audience).not_to_be_checked()

    page.get_by_role("link", name="变更对比与提交发布").click()
    expect(page.get_by_role("heading", name="草稿与现行目录的差别")).to_be_visible()
    expect(page.locator("#change-item-GD-LS-05")).to_have_count(0)
    page.get_by_role("link", name="目录列表").click()
    expect(page.locator("#item-GD-LS-05 td").nth(3)).to_have_text("已发布")


def test_login_throttling_is_shown(new_page):
    """Runs last: it locks logins from 127.0.0.1 for the rest of the module."""
    page = new_page()
    page.goto("/login")
    error = page.locator("#login-error")
    for attempt in range(1, 6):
        page.get_by_label("用户名").fill("boss")
        page.get_by_label("密码").fill(f"wrong-{attempt}")
        with page.expect_navigation():
            page.get_by_role("button", name="登录").click()
        if attempt < 5:
            expect(error).to_have_text("用户名或密码错误。")
    expect(error).to_have_text(re.compile(r"^失败次数过多，请 1[45] 分钟后再试。$"))
    expect(page.get_by_label("用户名")).to_have_value("boss")

    # While locked, even the right password does not open a session.
    page.get_by_label("密码").fill(PASSWORDS["boss"])
    with page.expect_navigation():
        page.get_by_role("button", name="登录").click()
    expect(error).to_contain_text("失败次数过多")
    expect(page.locator("#staff-user")).to_have_count(0)
