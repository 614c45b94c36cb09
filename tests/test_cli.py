"""The ``tongban`` command: node directories, accounts, info, serve, reindex, demo."""

import json
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from shared.cli import main
from tests.nodeproc import free_port_block, make_node_dir, start_node, tongban


@pytest.fixture
def runner():
    return CliRunner()


def test_init_creates_a_node_and_info_reports_it(runner, tmp_path):
    node = tmp_path / "village"
    result = runner.invoke(main, ["init", str(node), "--tier", "village", "--code",
                                  "441521101001", "--name", "西兴社区",
                                  "--parent", "http://127.0.0.1:9/"])
    assert result.exit_code == 0, result.output
    assert (node / "tongban.json").exists() and (node / "store.sqlite").exists()
    result = runner.invoke(main, ["info", str(node), "--json"])
    info = json.loads(result.output)
    assert info["tier"] == "village" and info["code"] == "441521101001"
    assert info["name"] == "西兴社区" and info["parent"] == "http://127.0.0.1:9/"
    assert info["doc_count"] == 0 and info["update_seq"] == 0 and info["docs_by_type"] == {}


@pytest.mark.parametrize("args, message", [
    (["--tier", "village", "--code", "44152110100"], "12 digits"),
    (["--tier", "township", "--code", "4415211O1"], "digits only"),
    (["--tier", "county", "--code", "441521", "--parent", "http://x/"], "no parent"),
    (["--tier", "village", "--code", "441521101001", "--parent", "ftp://x"], "http(s) URL"),
    (["--tier", "province", "--code", "44"], "Invalid value"),
])
def test_init_refuses_bad_input_and_creates_nothing(runner, tmp_path, args, message):
    node = tmp_path / "n"
    result = runner.invoke(main, ["init", str(node), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert not node.exists()


def test_init_refuses_a_non_empty_directory(runner, tmp_path):
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "notes.txt").write_text("keep me")
    result = runner.invoke(main, ["init", str(tmp_path / "n"), "--tier", "county",
                                  "--code", "441521"])
    assert result.exit_code != 0 and "not empty" in result.output
    assert (tmp_path / "n" / "notes.txt").read_text() == "keep me"


def test_user_add_reads_the_password_from_stdin_and_stores_a_slow_hash(runner, tmp_path):
    node = tmp_path / "n"
    runner.invoke(main, ["init", str(node), "--tier", "county", "--code", "441521"])
    result = runner.invoke(main, ["user", "add", str(node), "sync", "--role", "replicator"],
                           input="a-long-password\n")
    assert result.exit_code == 0, result.output
    again = runner.invoke(main, ["user", "add", str(node), "sync", "--role", "clerk"],
                          input="another-password\n")
    assert again.exit_code != 0 and "exists" in again.output
    short = runner.invoke(main, ["user", "add", str(node), "x", "--role", "clerk"],
                          input="short\n")
    assert short.exit_code != 0 and "8 characters" in short.output
    from shared.app import create_app
    from shared.models import Account, check_password

    app = create_app(node_dir=node)
    account = Account.get(Account.username == "sync")
    assert account.password_hash.startswith("scrypt$") and "a-long-password" not in \
        account.password_hash
    assert check_password(account.password_hash, "a-long-password")
    assert not check_password(account.password_hash, "wrong-password")
    assert not Account.select().where(Account.username == "x").exists()
    app.extensions["store"].close()


def test_serve_shows_the_home_page_in_chinese_and_requires_auth_on_db(tmp_path):
    node = start_node(tmp_path / "n", tier="township", code="441521101", name="梅陇镇")
    try:
        page = requests.get(node.url + "/", headers={"Accept": "text/html"}, timeout=10)
        assert page.status_code == 200 and "梅陇镇" in page.text and "镇级" in page.text
        assert "441521101" not in page.text  # the division code is for staff, not citizens
        assert page.headers["Server"] == "tongban"  # waitress, not Flask's dev server
        assert requests.get(node.db_url, timeout=10).status_code == 401
        assert requests.get(node.db_url, auth=("replicator", "wrong"), timeout=10) \
            .status_code == 401
        session = node.session()
        for i in range(3):
            session.put(f"{node.db_url}/item:{i}", json={"type": "item", "n": i}) \
                .raise_for_status()
        session.put(f"{node.db_url}/case:1", json={"type": "case"}).raise_for_status()
        info = json.loads(tongban("info", node.node_dir, "--json").stdout)
        assert info["doc_count"] == 4 and info["docs_by_type"] == {"case": 1, "item": 3}
        page = requests.get(node.url + "/", headers={"Accept": "text/html"}, timeout=10)
        # A station's front page for citizens: no store internals (those are for staff).
        assert 'id="citizen-links"' in page.text and 'id="doc-count"' not in page.text
    finally:
        node.stop()


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path):
    node_dir = tmp_path / "n"
    make_node_dir(node_dir)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = tongban("serve", node_dir, "--port", port, check=False)
    assert result.returncode != 0
    assert f"端口 {port} 已被占用 / port {port} is in use: 请换一个端口（--port）" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_init_checks_the_code_against_a_reachable_parent(tmp_path):
    township = start_node(tmp_path / "t", tier="township", code="441521101", name="梅陇镇")
    try:
        wrong = tongban("init", tmp_path / "v1", "--tier", "village", "--code", "441521102001",
                        "--parent", township.url, check=False)
        assert wrong.returncode != 0 and "does not extend" in wrong.stderr
        assert not (tmp_path / "v1").exists()
        skipped_tier = tongban("init", tmp_path / "t2", "--tier", "township", "--code",
                               "441521102", "--parent", township.url, check=False)
        assert skipped_tier.returncode != 0 and "must be a county node" in skipped_tier.stderr
        right = tongban("init", tmp_path / "v2", "--tier", "village", "--code", "441521101001",
                        "--parent", township.url)
        assert right.returncode == 0
    finally:
        township.stop()
    offline = tongban("init", tmp_path / "v3", "--tier", "village", "--code", "441521101002",
                      "--parent", township.url)
    assert "did not answer" in offline.stderr and (tmp_path / "v3" / "tongban.json").exists()


def test_reindex_rebuilds_the_type_counts(tmp_path, runner):
    node = tmp_path / "n"
    runner.invoke(main, ["init", str(node), "--tier", "county", "--code", "441521"])
    from shared.app import create_app

    app = create_app(node_dir=node)
    store = app.extensions["store"]
    store.bulk_docs([{"_id": f"i{i}", "type": "item"} for i in range(5)])
    store.db.execute_sql("DELETE FROM doc_type")
    store.close()
    result = runner.invoke(main, ["reindex", str(node)])
    # five items and the county's own registry entry
    assert result.exit_code == 0 and "reindexed 6 documents" in result.output
    info = json.loads(runner.invoke(main, ["info", str(node), "--json"]).output)
    assert info["docs_by_type"] == {"item": 5, "node": 1}
    assert info["catalog"]["items"] == 0 and info["enrolled"] is True


def _region_processes(region):
    """Pids of processes whose command line names a directory of ``region``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(region).encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:  # the process ended while we looked
            pass
    return found


def _info_of(node_dirs):
    """``{directory name: tongban info --json}`` of the given nodes (run in parallel)."""
    with ThreadPoolExecutor(len(node_dirs)) as pool:
        infos = pool.map(lambda d: json.loads(tongban("info", d, "--json").stdout), node_dirs)
    return dict(zip((d.name for d in node_dirs), infos))


#: Leaves a release proposal waiting at the county directory given (run in a subprocess).
PROPOSE = """
import sys
from shared import config
from shared.app import open_store
from shared.catalog import publish
store = open_store(config.load_config(sys.argv[1]))
with publish.bound(store.db):
    item = publish.working_record(store.db, "item", "GD-LS-02")
    publish.save_draft(store.db, "item", dict(item, hours="全天"), "editor")
    publish.propose(store.db, "editor", note="waiting")
store.close()
"""


def _demo(region, base_port, *extra):
    """``tongban demo --exit-when-synced`` in a subprocess: ``(returncode, stdout, stderr)``.

    On time-out the demo gets SIGTERM, on which it stops its nodes before exiting.
    """
    from shared.demo import TONGBAN

    process = subprocess.Popen(
        [*TONGBAN, "demo", "--dir", str(region), "--base-port", str(base_port),
         "--exit-when-synced", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        process.terminate()
        out, err = process.communicate(timeout=60)
        pytest.fail(f"the demo did not finish:\n{out}\n{err}")
    return process.returncode, out, err


def test_demo_brings_the_catalog_to_every_node(tmp_path):
    from shared.demo import REVISION_SUFFIX, port_free

    base_port = free_port_block(7)
    region = tmp_path / "region"
    returncode, stdout, stderr = _demo(region, base_port)
    assert returncode == 0, stdout + stderr
    assert "release 1 in force (signed; proposed by editor, approved by approver)" in stdout
    assert stdout.count("enrolled ") == 6
    assert stdout.count("release 1 verified and active") == 7
    assert stdout.count("release 2 verified and active") == 7
    assert (region / "demo-secrets.json").stat().st_mode & 0o777 == 0o600
    villages = sorted(region.glob("village-*"))
    assert len(villages) == 4
    nodes = _info_of([region / "county-441521", *villages])
    for name, info in nodes.items():
        # Enrolled the real way; release 2 verified and in force everywhere.
        assert info["enrolled"] is True, name
        assert info["catalog"]["release"] == 2 and info["catalog"]["items"] == 25, name
        assert info["catalog"]["state"] == "ok", name
    # One case went the whole way through the nodes' pages, and says so.
    assert re.search(r"accepted case \d{12}-\d{8}-\d{4} \(GD-LS-04\)", stdout), stdout
    assert re.search(r"due \d{4}-\d{2}-\d{2}\n", stdout), stdout  # 2026: not provisional
    assert "in the approver's queue after" in stdout and "delivered; the case took" in stdout
    # The demo printed what tongban info says, for every node.
    assert stdout.count("release 2 active, 25 items (已生效)") == 7
    # The edited item is what a village's public guide shows.
    guide = tongban("catalog", "export", villages[0], tmp_path / "v.json", check=False)
    assert guide.returncode == 0, guide.stderr
    exported = json.loads((tmp_path / "v.json").read_text(encoding="utf-8"))
    revised = [i for i in exported["items"] if i["name"].endswith(REVISION_SUFFIX)]
    assert [i["id"] for i in revised] == ["GD-LS-01"]

    # A second run reuses the region: no new enrolment, no new release, no second case;
    # it says in one line what it skipped.
    returncode, again, stderr = _demo(region, base_port)
    assert returncode == 0, again + stderr
    assert "release 2 in force" in again and "enrolled " not in again
    assert again.count("reused ") == 7 and again.count("release 2 verified and active") == 7
    assert "the demo's revision is in force already (release 2)" in again
    assert "release 3" not in again
    assert "the demo case is done already" in again and "accepted case" not in again

    # A release left waiting for approval (an interrupted run, or the authoring pages)
    # does not stop the demo: it comes up, says so, and the CLI can decide it.
    county_dir = region / "county-441521"
    propose = subprocess.run([sys.executable, "-P", "-c", PROPOSE, str(county_dir)],
                             capture_output=True, text=True, timeout=60)
    assert propose.returncode == 0, propose.stderr
    returncode, third, stderr = _demo(region, base_port)
    assert returncode == 0, third + stderr
    assert "release 3 is waiting for approval: the revision is skipped" in third
    waiting = tongban("catalog", "proposal", county_dir)
    assert "release 3 proposed by editor" in waiting.stdout and "GD-LS-02" in waiting.stdout
    refused = tongban("catalog", "approve", county_dir, "--by", "editor", check=False)
    assert refused.returncode != 0 and "不能审批自己提交的发布" in refused.stderr
    tongban("catalog", "withdraw", county_dir, "--by", "editor")
    assert "没有等待审批的发布" in tongban("catalog", "proposal", county_dir).stdout
    # Nothing is left running: every port is free and no process names the region.
    assert all(port_free(base_port + offset) for offset in range(7))
    assert _region_processes(region) == []


def test_the_demo_runs_in_a_year_whose_holidays_are_not_published(tmp_path):
    # Every node of the region runs on 2 March 2027 (the package ends with 2026): the case
    # goes the whole way and its due date says it is provisional.
    base_port = free_port_block(7)
    returncode, stdout, stderr = _demo(tmp_path / "region", base_port, "--clock", "2027-03-02")
    assert returncode == 0, stdout + stderr
    assert "2027-03-02 09:" in stdout  # the clock line
    assert re.search(r"accepted case \d{12}-20270302-0001 \(GD-LS-04\)", stdout), stdout
    # 13 working days from Tuesday 2 March, counted as ordinary weeks.
    assert "due 2027-03-19（暂定：2027 年节假日安排尚未发布" in stdout, stdout
    assert "delivered; the case took" in stdout
    assert _region_processes(tmp_path / "region") == []


def test_commands_ignore_a_shared_folder_where_the_user_stands(tmp_path):
    # Users run tongban beside other folders (the handbook has one named shared/); the
    # processes tongban starts must import this package, not whatever sits in the cwd.
    impostor = tmp_path / "shared"
    impostor.mkdir()
    (impostor / "cli.py").write_text("raise SystemExit('imported the wrong shared package')\n")
    result = tongban("init", tmp_path / "n", "--tier", "county", "--code", "441521",
                     cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "n" / "tongban.json").exists()


def test_a_non_editable_install_gets_every_template_and_data_file(tmp_path):
    """``pip install .`` (the README's demo command) must carry the pages and sample data."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True, timeout=300)
    names = set(zipfile.ZipFile(next(tmp_path.glob("tongban-*.whl"))).namelist())
    wanted = {str(p.relative_to(root)) for pattern in ("*/templates/**/*.html", "shared/data/*")
              for p in root.glob(pattern)}
    assert wanted and wanted <= names, sorted(wanted - names)
