"""The catalog in-process: the item schema, two-person publishing, versions, activation
states, and the ``tongban catalog`` commands. (Forgeries after real replication between
processes: test_catalog_tamper.py.)"""

import copy
import json

import pytest
from click.testing import CliRunner

from shared import casedocs, identity
from shared.catalog import active, publish, schema, transfer
from shared.catalog import release as rel
from shared.catalog.sample import sample_catalog
from shared.cli import main
from syncd.peers import LocalPeer
from syncd.replicator import replicate
from tests.conftest import add_account, make_app, make_county


@pytest.fixture
def county(tmp_path):
    app = make_county(tmp_path)
    add_account(app, "editor", "pw-editor-1", roles=("county_admin",))
    add_account(app, "editor2", "pw-editor-2", roles=("county_admin",))
    add_account(app, "boss", "pw-boss-1", roles=("approver",))
    with app.app_context():
        yield app
    app.extensions["store"].close()


def db_of(app):
    return app.extensions["store"].db


def release_one(app):
    items, agencies = sample_catalog()
    return publish.publish(app.extensions["store"], items, agencies, proposer="editor",
                           approver="boss", private_key=app.key)


# -- schema ----------------------------------------------------------------------------------

def test_the_sample_catalog_is_complete_under_the_schema():
    items, agencies = sample_catalog()
    assert len(items) == 25 and len(agencies) == 3
    assert schema.validate_catalog(items, agencies) == []
    # Every element of the standard is there for every item (required ones at least).
    required = [f.key for f in schema.ITEM_FIELDS if f.required]
    assert all(all(key in item for key in required) for item in items)


def _messages(item):
    return {e.path: e.message for e in schema.validate_item(item)}


@pytest.mark.parametrize("change, path, words", [
    (lambda i: i.pop("name"), "name", "事项名称：必填"),
    (lambda i: i.update(item_type="行政审批"), "item_type", "不是可选值"),
    (lambda i: i.update(max_on_site_visits=9), "max_on_site_visits", "应在 0 到 5 之间"),
    (lambda i: i.update(statutory_time_limit=2.5), "statutory_time_limit", "应为整数"),
    (lambda i: i.update(consult_phone="call me"), "consult_phone", "格式不正确"),
    (lambda i: i.update(proxy_allowed="yes"), "proxy_allowed", "应为“是”或“否”"),
    (lambda i: i.update(colour="red"), "colour", "未知字段"),
    (lambda i: i.update(item_type_code="01"), "item_type_code", "与事项类型"),
    (lambda i: i.update(handling_type="即办件", promised_time_limit=3),
     "promised_time_limit", "即办件的承诺时限应为 0"),
    (lambda i: i.update(promised_time_limit=90), "promised_time_limit", "不能长于法定时限"),
    (lambda i: i["materials"][2].update(copies=2), "materials[2].copies",
     "部门共享的材料不向申请人索要"),
    (lambda i: i["materials"][2].pop("shared_from"), "materials[2].shared_from",
     "写明由哪个部门提供"),
    (lambda i: i["materials"][2].update(necessity="可有可无"), "materials[2].necessity",
     "申请材料第 3 项·必要性"),
    (lambda i: i.update(parallel_departments=["民政", "财政"], lead_department="公安"),
     "lead_department", "应是并联审批部门之一"),
    (lambda i: i.update(fee=True), "fee_items", "须列明收费项目"),
    (lambda i: i.update(one_level=True, decide_tier="county"), "one_level", "一级办结"),
])
def test_each_bad_field_gets_a_plain_chinese_message(change, path, words):
    items, _ = sample_catalog()
    item = copy.deepcopy(items[3])  # GD-LS-04, 承诺件 decided at the county
    change(item)
    messages = _messages(item)
    assert path in messages, messages
    assert words in messages[path]


def test_a_whole_catalog_reports_duplicates_and_dangling_agencies():
    items, agencies = sample_catalog()
    items.append(copy.deepcopy(items[0]))
    agencies = [a for a in agencies if a["id"] != "ZJ-003"]
    messages = [e.message for e in schema.validate_catalog(items, agencies)]
    assert any("事项编号与第 1 项重复" in m for m in messages)
    assert any("“ZJ-003”不存在" in m for m in messages)


# -- publishing with two people ----------------------------------------------------------------

def test_nobody_approves_their_own_proposal_and_only_approvers_approve(county):
    db = db_of(county)
    items, agencies = sample_catalog()
    publish.import_catalog(db, items, agencies, "editor")
    with pytest.raises(publish.PublishRefused, match="县级管理员"):
        publish.propose(db, "boss")
    proposal = publish.propose(db, "editor")
    with pytest.raises(publish.PublishRefused, match="已有一个发布在等待审批"):
        publish.propose(db, "editor2")
    with pytest.raises(publish.PublishRefused, match="不能审批自己提交的发布"):
        publish.approve(county.extensions["store"], proposal.id, "editor", county.key)
    with pytest.raises(publish.PublishRefused, match="没有审批人员角色"):
        publish.approve(county.extensions["store"], proposal.id, "editor2", county.key)
    assert active.active_number(db) == 0
    assert not db.execute_sql("SELECT 1 FROM document WHERE id LIKE 'release:%'").fetchall()
    release = publish.approve(county.extensions["store"], proposal.id, "boss", county.key)
    assert release["proposed_by"] == "editor" and release["approved_by"] == "boss"
    assert active.catalog_status(db)["active"]["number"] == 1
    assert publish.diff(db) == []  # the drafts became the release


def test_approval_publishes_what_was_proposed_not_later_edits(county):
    db = db_of(county)
    release_one(county)
    item = publish.working_record(db, "item", "GD-LS-04")
    item["hours"] = "周一至周五 9:00—17:00"
    publish.save_draft(db, "item", item, "editor")
    proposal = publish.propose(db, "editor")
    assert [c["fields"] for c in proposal.change_list()] == [["办理时间"]]
    late = dict(item, hours="全天")
    publish.save_draft(db, "item", late, "editor")  # after the proposal
    publish.approve(county.extensions["store"], proposal.id, "boss", county.key)
    assert active.active_item(db, "GD-LS-04")["hours"] == "周一至周五 9:00—17:00"
    # The later edit is still a draft, waiting for the next release.
    assert [(c["id"], c["fields"]) for c in publish.diff(db)] == [("GD-LS-04", ["办理时间"])]


def test_a_release_signs_every_version_and_unchanged_items_keep_theirs(county):
    db, store = db_of(county), county.extensions["store"]
    first = release_one(county)
    assert first["number"] == 1 and len(first["entries"]) == 28
    assert rel.check_signature(first, active.trusted_keys(county.config)) is None
    item = publish.working_record(db, "item", "GD-LS-07")
    item["name"] = "困难残疾人生活补贴（提标）"
    publish.save_draft(db, "item", item, "editor")
    publish.remove_record(db, "item", "GD-LS-25", "editor")
    second = publish.approve(store, publish.propose(db, "editor").id, "boss", county.key)
    ids = {e["id"] for e in second["entries"]}
    assert "item:GD-LS-07@2" in ids and "item:GD-LS-07@1" not in ids
    assert "item:GD-LS-01@1" in ids and not any(i.startswith("item:GD-LS-25@") for i in ids)
    assert active.catalog_status(db)["active"]["item_count"] == 24
    # A case pins the version it was accepted under; that version stays readable.
    pinned = active.active_item(db, "GD-LS-07")
    assert pinned["doc_id"] == "item:GD-LS-07@2" and pinned["version"] == 2
    header = casedocs.case_header("441521101001-20261122-0001", pinned["doc_id"],
                                  "441521101001", "441521101", "a" * 64,
                                  "000001795370000-00000")
    assert header["item"] == "item:GD-LS-07@2"
    assert store.get("item:GD-LS-07@1")["name"] == "困难残疾人生活补贴"


# -- activation at a node that receives the documents --------------------------------------------

@pytest.fixture
def village(tmp_path, county):
    app = make_app(tmp_path / "v", TIER="village", NODE_CODE="441521101001",
                   COUNTY_PUBLIC_KEY=county.config["COUNTY_PUBLIC_KEY"]) \
        if (tmp_path / "v").mkdir() is None else None
    yield app
    app.extensions["store"].close()


def _send(source, target, doc_ids=None):
    replicate(LocalPeer(source.extensions["store"]), LocalPeer(target.extensions["store"]),
              doc_ids=doc_ids)


def test_a_release_waits_for_its_items_then_activates(county, village):
    release = release_one(county)
    vdb = db_of(village)
    assert active.catalog_status(vdb)["state"] == "none"
    _send(county, village, doc_ids=[release["_id"], *[e["id"] for e in release["entries"][:5]]])
    status = active.catalog_status(vdb)
    assert status["active"] is None and status["state"] == "waiting"
    assert "还缺 23 个事项" in status["message"]
    _send(county, village)
    status = active.catalog_status(vdb)
    assert status["state"] == "ok" and status["active"]["number"] == 1
    assert [s["name"] for s in active.search(vdb, "高龄")] == ["高龄老人津贴申领（80周岁以上）"]


def test_an_older_release_arriving_late_never_replaces_a_newer_one(county, village):
    first = release_one(county)
    db = db_of(county)
    item = publish.working_record(db, "item", "GD-LS-02")
    item["hours"] = "全天"
    publish.save_draft(db, "item", item, "editor")
    second = publish.approve(county.extensions["store"], publish.propose(db, "editor").id,
                             "boss", county.key)
    newest = [second["_id"], *[e["id"] for e in second["entries"]]]
    _send(county, village, doc_ids=newest)
    assert active.active_number(db_of(village)) == 2
    _send(county, village, doc_ids=[first["_id"]])
    assert active.active_number(db_of(village)) == 2
    assert active.active_item(db_of(village), "GD-LS-02")["hours"] == "全天"


def test_a_release_that_fails_to_install_leaves_the_one_in_force_whole(county, village,
                                                                       monkeypatch):
    release_one(county)
    _send(county, village)
    vdb = db_of(village)
    assert active.active_number(vdb) == 1 and len(active.active_items(vdb)) == 25
    db = db_of(county)
    publish.remove_record(db, "item", "GD-LS-02", "editor")
    publish.approve(county.extensions["store"], publish.propose(db, "editor").id, "boss",
                    county.key)

    def broken(*args, **kwargs):
        raise OSError("disk I/O error")
    monkeypatch.setattr(active, "_install_calendar", broken)
    _send(county, village)
    # Release 1 is still in force, whole: the removal of GD-LS-02 was rolled back with the
    # rest of release 2's installation, and the failure is said on the status page.
    assert active.active_number(vdb) == 1
    assert len(active.active_items(vdb)) == 25
    assert active.active_item(vdb, "GD-LS-02") is not None
    status = active.catalog_status(vdb)
    assert status["state"] == "failed" and "内部错误" in status["message"]
    # Replication went on: release 2's documents are stored, and it activates once the
    # installation works (the next write that touches the catalog tries again).
    monkeypatch.undo()
    active.CatalogActivation(village.extensions["store"],
                             active.trusted_keys(village.config)).activate(vdb)
    assert active.active_number(vdb) == 2 and len(active.active_items(vdb)) == 24


def test_a_node_without_the_county_key_activates_nothing(county, tmp_path):
    release_one(county)
    (tmp_path / "u").mkdir()
    stranger = make_app(tmp_path / "u", TIER="village", NODE_CODE="441521101002")
    try:
        _send(county, stranger)
        status = active.catalog_status(db_of(stranger))
        assert status["active"] is None and status["state"] == "unverifiable"
    finally:
        stranger.extensions["store"].close()


def test_the_status_page_and_summary_tell_failed_from_not_received(county, village):
    client = village.test_client()
    assert "尚未收到目录" in client.get("/sync/status").get_data(as_text=True)
    release = release_one(county)
    forged = dict(rel.sign_release(identity.new_private_key(), number=2, time="2026-11-22",
                                   entries=release["entries"], proposed_by="x",
                                   approved_by="y"))
    village.extensions["store"].put(forged)
    page = client.get("/sync/status").get_data(as_text=True)
    assert "目录告警" in page and "不是本县的密钥" in page
    summary = client.get("/status/catalog").get_json()
    assert summary["state"] == "failed" and summary["release"] is None
    _send(county, village)
    summary = client.get("/status/catalog").get_json()
    assert summary["release"] == 1 and "不是本县的密钥" in summary["alarm"]


# -- the command line ----------------------------------------------------------------------------

@pytest.fixture
def county_dir(tmp_path):
    runner = CliRunner()
    node_dir = tmp_path / "county"
    result = runner.invoke(main, ["init", str(node_dir), "--tier", "county", "--code", "441521"])
    assert result.exit_code == 0, result.output
    return node_dir


def test_catalog_import_is_all_or_nothing_and_export_round_trips(county_dir, tmp_path):
    runner = CliRunner()
    items, agencies = sample_catalog()
    good = tmp_path / "catalog.xlsx"
    transfer.write_xlsx(good, items, agencies)
    bad_items = copy.deepcopy(items)
    bad_items[4]["max_on_site_visits"] = 9
    bad_items[9]["consult_phone"] = "电话"
    bad = tmp_path / "bad.json"
    transfer.write_json(bad, bad_items, agencies)

    refused = runner.invoke(main, ["catalog", "import", str(county_dir), str(bad)])
    assert refused.exit_code != 0
    assert "2 problem(s)" in refused.output and "nothing imported" in refused.output
    assert "到现场次数" in refused.output and "咨询电话" in refused.output
    exported = tmp_path / "empty.json"
    assert runner.invoke(main, ["catalog", "export", str(county_dir), str(exported)]).exit_code == 0
    assert json.loads(exported.read_text(encoding="utf-8"))["items"] == []

    imported = runner.invoke(main, ["catalog", "import", str(county_dir), str(good)])
    assert imported.exit_code == 0, imported.output
    assert "28 added" in imported.output  # 25 items, 3 agencies
    out = tmp_path / "out.xlsx"
    assert runner.invoke(main, ["catalog", "export", str(county_dir), str(out)]).exit_code == 0
    assert transfer.read_xlsx(out) == (items, agencies)


def test_catalog_status_says_what_is_in_force(county_dir):
    runner = CliRunner()
    result = runner.invoke(main, ["catalog", "status", str(county_dir), "--json"])
    assert result.exit_code == 0
    status = json.loads(result.output)
    assert status["active"] is None and status["state"] == "none"
    text = runner.invoke(main, ["catalog", "status", str(county_dir)]).output
    assert "none active" in text and "尚未收到任何目录发布" in text


def test_search_results_come_in_pages_of_twenty(county):
    release_one(county)
    db = db_of(county)
    total = active.search_count(db, "证")
    assert total > 20  # 身份证, 户口簿… appear in most items
    client = county.test_client()
    first = client.get("/catalog/search", query_string={"q": "证"}).get_data(as_text=True)
    assert f"找到 {total} 个与“证”有关的事项，第 1 / 2 页" in first
    rows = first.split('<table class="items">')[1].split("</table>")[0]
    assert rows.count("<tr><td>") == 20
    assert "下一页" in first and "上一页" not in first
    second = client.get("/catalog/search", query_string={"q": "证", "page": 2})
    html = second.get_data(as_text=True)
    rows = html.split('<table class="items">')[1].split("</table>")[0]
    assert rows.count("<tr><td>") == total - 20
    assert "第 2 / 2 页" in html and "上一页" in html and "下一页" not in html
    shown = {s["item_id"] for s in active.search(db, "证", limit=20)} | \
        {s["item_id"] for s in active.search(db, "证", limit=20, offset=20)}
    assert len(shown) == total  # every match is on one of the pages, none twice
    beyond = client.get("/catalog/search", query_string={"q": "证", "page": 99})
    assert "第 2 / 2 页" in beyond.get_data(as_text=True)


def test_reindex_rebuilds_the_catalog_in_force_from_the_documents(county):
    release_one(county)
    db, store = db_of(county), county.extensions["store"]
    before = active.catalog_status(db)["active"]
    db.execute_sql("DELETE FROM catalog_item")  # a damaged query table
    store.reindex()
    after = active.catalog_status(db)["active"]
    assert (after["number"], after["item_count"], after["agency_count"]) == \
        (before["number"], 25, 3)
    assert [s["name"] for s in active.search(db, "宅基地")] == [
        "农村村民宅基地申请（宅基地和建房规划许可审批）"]
