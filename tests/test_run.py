"""``tongban run`` (one command keeps a station's serve and syncd up) and ``tongban service``,
with real processes: a county and a township enrolled under it, each run by ``tongban run``.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests

from shared import config, supervisor
from shared.demo import TONGBAN
from tests.nodeproc import (
    Proc,
    enrol_node,
    eventually,
    free_port,
    make_node_dir,
    staff_session,
    tongban,
    update_config,
)

COUNTY, TOWN = "441521", "441521101"
STAFF = ("wang", "staff-pass-12345")


def start_run(node_dir, port):
    """``tongban run NODE_DIR --port PORT`` in its own process, once serve answers
    (its stderr in run-<port>.out)."""
    out = Path(node_dir).parent / f"run-{port}.out"
    with open(out, "ab") as log:
        proc = Proc(subprocess.Popen([*TONGBAN, "run", str(node_dir), "--port", str(port)],
                                     stdout=log, stderr=subprocess.STDOUT),
                    f"http://127.0.0.1:{port}", out)
    eventually(lambda: proc.process.poll() is not None or answers(proc.url),
               "tongban run serving")
    assert proc.process.poll() is None, proc.log()
    return proc


def state_of(node_dir):
    return json.loads((Path(node_dir) / "run-state.json").read_text(encoding="utf-8"))


def alive(pid):
    """True while process ``pid`` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def children_up(node_dir):
    """``{name: pid}`` once run-state.json shows both children running, else None."""
    try:
        children = state_of(node_dir)["children"]
    except (OSError, ValueError, KeyError):
        return None
    pids = {name: child["pid"] for name, child in children.items()}
    return pids if set(pids) == {"serve", "syncd"} and all(
        pid and alive(pid) for pid in pids.values()) else None


def answers(url):
    try:
        return requests.get(url + "/", timeout=2).ok
    except requests.RequestException:
        return False


def processes_table(browser, url):
    """``{process name: restarts}`` from the staff status page's 本站进程 table."""
    page = browser.get(url + "/sync/status", timeout=10).text
    assert "本站进程" in page, page
    return {name: int(count) for name, count in re.findall(
        r'<tr id="process-(\w+)">.*?<td class="restarts">(\d+)</td>', page)}


@pytest.fixture
def region(tmp_path):
    """A county run by ``tongban run``; yields ``(county proc, county dir)``."""
    county_dir = make_node_dir(tmp_path / "county", code=COUNTY, name="测试县")
    county = start_run(county_dir, free_port())
    yield county, county_dir
    county.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and kill -9")
def test_run_keeps_serve_and_syncd_up_and_stops_them(region, tmp_path):
    county, county_dir = region
    town_dir = enrol_node(county_dir, county.url, tmp_path / "town", "township", TOWN, "测试镇")
    # Short waits, so that the test sees the doubling without waiting long for it.
    update_config(town_dir, RUN_RESTART_BACKOFF_INITIAL=0.1, RUN_RESTART_RESET_AFTER=600)
    tongban("user", "add", town_dir, STAFF[0], "--role", "clerk", input_text=STAFF[1] + "\n")
    port = free_port()
    town = start_run(town_dir, port)

    pids = eventually(lambda: children_up(town_dir), "run-state.json shows serve and syncd")
    assert state_of(town_dir)["state"] == "running"
    assert state_of(town_dir)["pid"] == town.process.pid
    # syncd really syncs with the county: the parent link is up.
    eventually(lambda: any(link["state"] == "up" for link in json.loads(
        tongban("sync", "status", town_dir, "--json").stdout)["links"]),
        "the township's syncd reached the county")
    browser = staff_session(town, *STAFF)
    assert processes_table(browser, town.url) == {"serve": 0, "syncd": 0}
    # The public page says nothing of the station's processes.
    assert "本站进程" not in requests.get(town.url + "/sync/status", timeout=10).text

    # A second tongban run on the same node is refused (another port: not the port's fault).
    second = tongban("run", town_dir, "--port", free_port(), check=False)
    assert second.returncode != 0 and "another tongban run is running" in second.stderr

    # kill -9 serve: it comes back on its port, and the count says so everywhere.
    os.kill(pids["serve"], signal.SIGKILL)
    eventually(lambda: (children_up(town_dir) or {}).get("serve") not in (None, pids["serve"])
               and answers(town.url), "serve restarted and answering")
    serve = state_of(town_dir)["children"]["serve"]
    assert serve["restarts"] == 1 and serve["last_exit_code"] == -9
    assert state_of(town_dir)["children"]["syncd"]["pid"] == pids["syncd"]  # untouched
    run_log = (town_dir / "logs" / "run.log").read_text(encoding="utf-8")
    assert "serve exited with code -9; restarting in 0.1 s (restart 1)" in run_log
    assert processes_table(staff_session(town, *STAFF), town.url) == {"serve": 1, "syncd": 0}
    status = tongban("sync", "status", town_dir).stdout
    assert "1 restarts" in status and "退出码 -9" in status

    # Killed again right away: the wait doubles.
    second_pid = state_of(town_dir)["children"]["serve"]["pid"]
    os.kill(second_pid, signal.SIGKILL)
    eventually(lambda: (children_up(town_dir) or {}).get("serve") not in (None, second_pid),
               "serve restarted a second time")
    assert "serve exited with code -9; restarting in 0.2 s (restart 2)" in \
        (town_dir / "logs" / "run.log").read_text(encoding="utf-8")
    # Each child's output is in its own log.
    assert "serving township node 441521101" in \
        (town_dir / "logs" / "serve.log").read_text(encoding="utf-8")
    assert "syncd for township node 441521101" in \
        (town_dir / "logs" / "syncd.log").read_text(encoding="utf-8")

    # SIGTERM: both children stop, tongban run exits 0, nothing is left running.
    last = children_up(town_dir)
    town.process.send_signal(signal.SIGTERM)
    assert town.process.wait(timeout=60) == 0, town.log()
    assert not any(alive(pid) for pid in last.values())
    final = state_of(town_dir)
    assert final["state"] == "stopped"
    assert all(child["pid"] is None for child in final["children"].values())
    assert not answers(town.url)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_kill_9_of_run_takes_its_children_with_it(region):
    county, county_dir = region
    pids = eventually(lambda: children_up(county_dir), "the county's serve and syncd")
    county.process.kill()
    county.process.wait(timeout=10)
    eventually(lambda: not any(alive(pid) for pid in pids.values()),
               "serve and syncd ended with their tongban run")


def test_bad_input_starts_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = tongban("run", empty, check=False)
    assert result.returncode != 0 and "is not a tongban node" in result.stderr
    assert list(empty.iterdir()) == []

    node_dir = make_node_dir(tmp_path / "county", code=COUNTY)
    before = sorted(p.name for p in node_dir.iterdir())
    update_config(node_dir, RUN_RESTART_BACKOFF_MAX="soon")
    result = tongban("run", node_dir, "--port", free_port(), check=False)
    assert result.returncode != 0 and "RUN_RESTART_BACKOFF_MAX must be a number" in result.stderr
    update_config(node_dir, RUN_RESTART_BACKOFF_MAX=60)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = tongban("run", node_dir, "--port", busy.getsockname()[1], check=False)
    assert result.returncode != 0 and "is in use: nothing was started" in result.stderr
    assert sorted(p.name for p in node_dir.iterdir()) == before  # no logs, no run-state


class _Scripted(supervisor.Supervisor):
    """A supervisor whose children are small Python scripts instead of serve and syncd."""

    def __init__(self, node_dir, scripts, **settings):
        defaults = {key: config.DEFAULTS[key] for key in supervisor.SETTINGS}
        super().__init__(node_dir, {**defaults, **settings})
        for child in self.children:
            child.command = [sys.executable, "-c", scripts[child.name]]


def test_a_node_that_cannot_start_is_not_restarted_forever(tmp_path):
    # A damaged store: serve (and syncd) exit 78 at once, and every restart would do the
    # same. tongban run says so, stops the other child and exits 78 (systemd's unit does
    # not restart on 78 either).
    from tests.test_disk_full import FIXTURE_STORE, corrupt

    node_dir = make_node_dir(tmp_path / "node")
    shutil.copyfile(FIXTURE_STORE, node_dir / "store.sqlite")
    corrupt(node_dir / "store.sqlite")
    result = subprocess.run([*TONGBAN, "run", str(node_dir), "--port", str(free_port())],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 78, result.stderr
    assert "cannot start" in result.stderr and "not restarting" in result.stderr
    assert "restarting in" not in result.stderr
    state = state_of(node_dir)
    assert state["state"] == "stopped"
    assert all(child["restarts"] == 0 for child in state["children"].values())
    assert "数据库文件已损坏" in (node_dir / "logs" / "serve.log").read_text(encoding="utf-8") \
        or "数据库文件已损坏" in (node_dir / "logs" / "syncd.log").read_text(encoding="utf-8")


def serve_restart_waits(node_dir, caplog, serve_script, restarts, **settings):
    """Supervise ``serve_script`` as serve (and a sleeper as syncd) in a thread until serve
    was restarted ``restarts`` times, then stop; returns ``(exit code, the waits logged)``."""
    caplog.set_level("INFO", logger="tongban.run")
    scripted = _Scripted(node_dir, {"serve": serve_script,
                                    "syncd": "import time; time.sleep(60)"}, **settings)
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=scripted.run()))
    thread.start()
    try:
        eventually(lambda: scripted.children[0].restarts >= restarts, "serve's restarts")
    finally:
        scripted.request_stop()
        thread.join(30)
    return result.get("code"), [re.search(r"restarting in (\S+) s", line).group(1)
                                for line in caplog.messages
                                if line.startswith("serve exited with code")]


def test_restarts_back_off_doubling_to_the_maximum(tmp_path, caplog):
    code, waits = serve_restart_waits(
        tmp_path, caplog, "import sys; print('failing'); sys.exit(3)", 5,
        RUN_RESTART_BACKOFF_INITIAL=0.05, RUN_RESTART_BACKOFF_MAX=0.2,
        RUN_RESTART_RESET_AFTER=600, RUN_STOP_TIMEOUT=10)
    assert code == 0
    assert waits[:5] == ["0.05", "0.1", "0.2", "0.2", "0.2"]
    assert not any("syncd exited" in line for line in caplog.messages)
    state = state_of(tmp_path)
    assert state["state"] == "stopped" and state["children"]["serve"]["last_exit_code"] == 3
    assert state["children"]["serve"]["restarts"] >= 5
    assert state["children"]["syncd"]["restarts"] == 0
    assert "failing" in (tmp_path / "logs" / "serve.log").read_text(encoding="utf-8")


def test_a_child_that_stayed_up_waits_the_shortest_time_again(tmp_path, caplog):
    # Up long enough each time (RUN_RESTART_RESET_AFTER 0): the wait never doubles. Its
    # output is more than a log file holds: the log rotates.
    _, waits = serve_restart_waits(
        tmp_path, caplog, "[print('y' * 300) for _ in range(10)]", 3,
        RUN_RESTART_BACKOFF_INITIAL=0.05, RUN_RESTART_BACKOFF_MAX=10,
        RUN_RESTART_RESET_AFTER=0, RUN_LOG_MAX_BYTES=2048, RUN_LOG_BACKUPS=2)
    assert set(waits) == {"0.05"}
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert {"serve.log", "serve.log.1", "serve.log.2"} <= set(logs)
    assert "serve.log.3" not in logs


def test_backoff_delay():
    assert [supervisor.backoff_delay(n, 1, 60) for n in range(8)] == \
        [1, 2, 4, 8, 16, 32, 60, 60]
    assert supervisor.backoff_delay(10_000, 1, 60) == 60


def test_service_files(tmp_path):
    node_dir = make_node_dir(tmp_path / "county station", code=COUNTY, name="测试县")
    absolute = str(node_dir.resolve())
    unit = tongban("service", node_dir, "--systemd", "--port", "8600", "--host", "0.0.0.0",
                   "--user", "tongban").stdout
    lines = unit.splitlines()
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start == (f"ExecStart={sys.executable} -P -m shared.cli run \"{absolute}\" "
                          "--host 0.0.0.0 --port 8600 --threads 64")
    for wanted in ("[Service]", "Restart=on-failure", "User=tongban",
                   f"WorkingDirectory={absolute}", "KillSignal=SIGTERM", "KillMode=mixed",
                   "TimeoutStopSec=35", "WantedBy=multi-user.target"):
        assert wanted in lines, wanted
    assert "User=" not in tongban("service", node_dir, "--systemd").stdout

    xml = tongban("service", node_dir, "--windows", "--port", "8600").stdout
    service = ET.fromstring(xml)
    assert service.findtext("id") == "tongban-441521"
    assert "测试县" in service.findtext("name")
    assert service.findtext("executable") == sys.executable
    assert [a.text for a in service.findall("argument")] == [
        "-P", "-m", "shared.cli", "run", absolute, "--host", "127.0.0.1", "--port", "8600",
        "--threads", "64"]
    assert service.findtext("workingdirectory") == absolute
    assert service.find("log").get("mode") == "roll-by-size"
    assert [f.get("action") for f in service.findall("onfailure")] == ["restart", "restart"]
    assert service.findtext("stoptimeout") == "35 sec"

    neither = tongban("service", node_dir, check=False)
    assert neither.returncode != 0 and "choose --systemd" in neither.stderr
    not_a_node = tongban("service", tmp_path, "--systemd", check=False)
    assert not_a_node.returncode != 0 and "is not a tongban node" in not_a_node.stderr
