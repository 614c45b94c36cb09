"""The station's front page: what it offers citizens; the store's figures only for staff."""

import pytest

from shared.catalog import publish
from shared.catalog.sample import sample_catalog
from tests.conftest import add_account, make_county, staff_login

PASSWORD = "front-page-42"


@pytest.fixture
def county(tmp_path):
    app = make_county(tmp_path, NODE_NAME="海丰县", STATION_PHONE="0660-6612345",
                      STATION_ADDRESS="海丰县海城镇二环路行政服务中心一楼")
    add_account(app, "editor", PASSWORD, roles=("county_admin",))
    add_account(app, "boss", PASSWORD, roles=("approver",))
    add_account(app, "clerk", PASSWORD, roles=("clerk",))
    items, agencies = sample_catalog()
    with app.app_context():
        publish.publish(app.extensions["store"], items, agencies, proposer="editor",
                        approver="boss", private_key=app.key)
    yield app
    app.extensions["store"].close()


def page(client):
    response = client.get("/", headers={"Accept": "text/html"})
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_the_front_page_tells_citizens_what_the_station_offers(county):
    html = page(county.test_client())
    assert "<title>海丰县 · 通办服务站</title>" in html
    assert 'id="item-count">25<' in html and "个民生事项" in html
    assert "周一至周五" in html and "0660-6612345" in html and "二环路行政服务中心" in html
    for link in ("/catalog", "/progress", "/apply", "/appointments"):
        assert f'href="{link}' in html, link
    assert 'href="/catalog/browse/life_event/' in html  # browse by life event
    # None of the store's internals, and never a Python object's repr.
    for internal in ('id="doc-count"', "更新序号", "类型 agency", "built-in method", "<bound"):
        assert internal not in html, internal


def test_staff_see_the_stations_figures_in_chinese(county):
    html = page(staff_login(county, "clerk", PASSWORD))
    figures = html[html.index('id="staff-figures"'):]
    assert 'id="catalog-release">第 1 号发布，25 个事项' in figures
    assert "北京时间" in figures and 'id="doc-count">' in figures
    assert ">事项</th>" in figures and ">中介机构</th>" in figures
    assert "built-in method" not in html


def test_couchdb_clients_still_get_the_welcome_json(county):
    answer = county.test_client().get("/", headers={"Accept": "application/json"})
    assert answer.get_json()["couchdb"] == "Welcome"


def test_errors_are_plain_chinese_pages_and_json_under_db(county):
    client = county.test_client()
    missing = client.get("/no/such/page")
    assert missing.status_code == 404 and "找不到页面" in missing.get_data(as_text=True)
    assert "Not Found" not in missing.get_data(as_text=True)
    wrong = client.delete("/catalog")
    assert wrong.status_code == 405 and "不能这样操作" in wrong.get_data(as_text=True)
    couch = client.get("/db/_no_such_endpoint/x/y", headers={"Accept": "application/json"})
    assert couch.status_code in (401, 404) and couch.is_json
