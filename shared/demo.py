"""``tongban demo``: a whole sample region on this machine, set up and run the real way.

One county (海丰县), two of its townships and two villages under each, from the real
division codes in ``shared/data/region-haifeng.json``. The county is made with
``tongban init`` (its key, the region key, its registry entry); every other node enrols
with a one-time code from ``tongban enrol`` through its parent (a township relays its
villages' enrolments to the county). Every node then runs ``tongban run``, which keeps
its ``tongban serve`` and ``tongban syncd`` processes up; syncd signs its requests with the
node's key.

The county publishes the sample catalog (``shared/data/catalog-sample.json``) as signed
release 1: an editor account proposes it and an approver account approves it (two people).
Once every node has verified and activated it, the demo edits one item, publishes release 2
the same way and shows it arriving and activating at each node. Then one case goes the
whole way through the nodes' own pages (``shared/democase.py``): accepted at a village's
window, approved by its township, delivered back at the village. Last, it prints what
``tongban info`` says about each node's catalog.

Each node also gets a full-scope replicator account, only so that the demo can read the
nodes' ``/db`` for its progress display (passwords in ``demo-secrets.json``, mode 0600).
"""

import concurrent.futures
import json
import logging
import os
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import requests

from shared import clock, democase
from shared import config as cfg
from shared.supervisor import TONGBAN, launch_command, own_group, port_free

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
REPLICATOR_USER = "replicator"
TOWNSHIPS, VILLAGES_PER_TOWNSHIP = 2, 2
#: The item the demo revises at the county, and what the revision adds to its name.
REVISED_ITEM = "GD-LS-01"
REVISION_SUFFIX = "（2026年修订）"
#: The county's two authoring accounts (two people publish a release).
EDITOR, APPROVER = "editor", "approver"
#: Seconds between two looks at the nodes while waiting.
POLL_INTERVAL = 0.1
INDENT = {"county": "", "township": "  ", "village": "    "}


@dataclass
class DemoNode:
    """One node of the demo region and its ``tongban run`` process."""

    tier: str
    code: str
    name: str
    port: int
    node_dir: Path
    parent: "DemoNode | None" = None
    password: str = ""
    processes: dict = field(default_factory=dict, repr=False)  # "run" → Popen

    @property
    def url(self):
        """The node's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self):
        """Credentials of the node's replicator account."""
        return (REPLICATOR_USER, self.password)

    @property
    def label(self):
        """``县级 441521 海丰县`` (for people)."""
        return f"{cfg.TIER_NAMES[self.tier]} {self.code} {self.name}"


def load_region():
    """The county of the demo region with its towns and villages."""
    return json.loads((DATA_DIR / "region-haifeng.json").read_text(encoding="utf-8"))["county"]


def plan_region(base_dir, base_port):
    """The demo's nodes: county first, then each township followed by its villages."""
    county = load_region()
    nodes = [DemoNode("county", county["code"][:6], county["name"], base_port,
                      base_dir / f"county-{county['code'][:6]}")]
    port = base_port + 1
    for town in county["towns"][:TOWNSHIPS]:
        township = DemoNode("township", town["code"], town["name"], port,
                            base_dir / f"township-{town['code']}", parent=nodes[0])
        nodes.append(township)
        port += 1
        for village in town["villages"][:VILLAGES_PER_TOWNSHIP]:
            nodes.append(DemoNode("village", village["code"], village["name"], port,
                                  base_dir / f"village-{village['code']}", parent=township))
            port += 1
    return nodes


def _cli(*args, input_text=None):
    result = subprocess.run([*TONGBAN, *map(str, args)],
                            input=input_text, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"tongban {args[0]} failed: "
                           f"{result.stderr.strip() or result.stdout.strip()}")
    return result


# -- setting up the nodes ------------------------------------------------------------------

class Secrets:
    """``demo-secrets.json``: the replicator password of every node (mode 0600)."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.known = json.loads(path.read_text()) if path.exists() else {}

    def add(self, code, password):
        """Record a node's password (nodes are set up in parallel)."""
        with self.lock:
            self.known[code] = password
            # Created 0600 from the start: the passwords are never world-readable.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(self.known, out, indent=2)
            os.chmod(self.path, 0o600)


def _read_config(node):
    return json.loads((node.node_dir / cfg.CONFIG_FILE).read_text(encoding="utf-8"))


def prepare_node(node, county, known):
    """Make the node's directory the real way unless it exists; returns True when made.

    The county: ``tongban init``. Any other node: ``tongban enrol`` at the county for a
    one-time code, then ``tongban init --parent URL --enrol CODE`` (the parent serves).
    """
    if (node.node_dir / cfg.CONFIG_FILE).exists():
        _reuse_node(node, county, known)
        return False
    args = ["init", node.node_dir, "--tier", node.tier, "--code", node.code,
            "--name", node.name]
    if node.parent is not None:
        enrol_code = _cli("enrol", county.node_dir, "--code", node.code,
                          "--tier", node.tier).stdout.strip()
        args += ["--parent", node.parent.url, "--enrol", enrol_code]
    _cli(*args)
    _add_account(node, known)
    return True


def _reuse_node(node, county, known):
    """Check an existing node directory fits this region; point it at its parent's URL."""
    from shared.enrolment import update_config

    settings = _read_config(node)
    if node.parent is not None:
        county_key = _read_config(county).get("COUNTY_PUBLIC_KEY")
        if settings.get("COUNTY_PUBLIC_KEY") != county_key:
            raise RuntimeError(
                f"{node.node_dir} was not enrolled with this county's key (made by an older "
                f"demo or for another county): remove {node.node_dir.parent} and run again")
        if settings.get("PARENT_URL") != node.parent.url:  # another --base-port this time
            update_config(node.node_dir, PARENT_URL=node.parent.url)
    if node.code in known.known:
        node.password = known.known[node.code]
    else:  # an earlier run stopped between init and the account
        _add_account(node, known)


def _add_account(node, known):
    password = secrets.token_urlsafe(18)
    try:
        _cli("user", "add", node.node_dir, REPLICATOR_USER, "--role", "replicator",
             "--scope", "*", input_text=password + "\n")
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; demo-secrets.json has no password for it: remove "
                           f"{node.node_dir} and run again") from None
    node.password = password
    known.add(node.code, password)


def _author_accounts(county, known):
    """The county's editor and approver accounts (made once; passwords in the secrets)."""
    for name, role in ((EDITOR, "county_admin"), (APPROVER, "approver")):
        key = f"{county.code}:{name}"
        if key in known.known:
            continue
        password = secrets.token_urlsafe(12)
        _cli("user", "add", county.node_dir, name, "--role", role, input_text=password + "\n")
        known.add(key, password)


def _open_county(county):
    from shared import identity
    from shared.app import open_store

    return open_store(cfg.load_config(county.node_dir)), \
        identity.load_private_key(county.node_dir)


def seed_catalog(county, known):
    """Publish the sample catalog as release 1 unless a release is in force already.

    :returns: the number of the release in force.
    """
    from shared.catalog import active, publish
    from shared.catalog.sample import sample_catalog

    _author_accounts(county, known)
    store, key = _open_county(county)
    try:
        if not active.active_number(store.db):
            items, agencies = sample_catalog()
            publish.publish(store, items, agencies, proposer=EDITOR, approver=APPROVER,
                            private_key=key, note="示范目录（样例数据）")
        return active.active_number(store.db)
    finally:
        store.close()


def revision_skipped(county):
    """Why the demo does not publish its revision this time, in one line, or None.

    It is published once: a restart finds it in force; a release someone left waiting for
    approval (an interrupted run, or the authoring pages) is left for them to decide.
    """
    from shared.catalog import active, publish

    store, _ = _open_county(county)
    try:
        with publish.bound(store.db):
            waiting = publish.open_proposal()
            if waiting is not None:
                return (f"第 {waiting.number} 号发布正等待审批（{waiting.proposed_by} 提交），本次不发布"
                        "示范修订；用 tongban catalog proposal / approve / withdraw 处理 / "
                        f"release {waiting.number} is waiting for approval: the revision "
                        "is skipped")
        item = active.active_item(store.db, REVISED_ITEM)
        if item and item["name"].endswith(REVISION_SUFFIX):
            number = active.active_number(store.db)
            return (f"示范修订已发布，第 {number} 号发布在用 / the demo's revision is in "
                    f"force already (release {number})")
        return None
    finally:
        store.close()


def revise_catalog(county):
    """Edit one item at the county and publish the next release (editor, then approver).

    The item's name gets :data:`REVISION_SUFFIX` and its notes say when. Returns the new
    release number and the item's name.
    """
    from shared.catalog import publish

    store, key = _open_county(county)
    try:
        item = publish.working_record(store.db, "item", REVISED_ITEM)
        item["name"] = item["name"].removesuffix(REVISION_SUFFIX) + REVISION_SUFFIX
        stamp = clock.format_time(clock.time(), seconds=True)
        item["notes"] = f"示范修订于 {stamp}"
        publish.save_draft(store.db, "item", item, EDITOR)
        proposal = publish.propose(store.db, EDITOR, note="示范：修订一个事项")
        return publish.approve(store, proposal.id, APPROVER, key)["number"], item["name"]
    finally:
        store.close()


# -- the processes -------------------------------------------------------------------------

#: Seconds a node's ``tongban run`` gets to stop its serve and syncd before it is killed
#: (its own RUN_STOP_TIMEOUT for them is 20 s).
STOP_TIMEOUT = 30.0


def start_processes(node, log_dir):
    """Start ``tongban run`` for ``node`` (its serve and syncd log to the node's ``logs``
    folder; what run itself says goes to ``log_dir``).

    Call it only from the thread that runs the demo: on Linux the process ends with the
    thread that started it, and its serve and syncd with it.
    """
    command = [*TONGBAN, "run", str(node.node_dir), "--port", str(node.port)]
    log = open(log_dir / f"{node.tier}-{node.code}-run.log", "ab")
    # A group of its own: Ctrl-C reaches only the demo, which stops the nodes itself.
    node.processes["run"] = subprocess.Popen(
        launch_command(command), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, **own_group())
    log.close()


def check_alive(nodes):
    """Raise RuntimeError naming the first node whose serve or syncd has exited."""
    for node in nodes:
        for what, process in node.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{node.label} 的 tongban {what} 进程已退出 / tongban "
                                   f"{what} of {node.code} exited with {process.returncode}; "
                                   f"see logs/{node.tier}-{node.code}-{what}.log and "
                                   f"{node.node_dir / 'logs'}")


def wait_until_up(node, timeout=60.0):
    """Wait for the node's HTTP server; raise when its process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive([node])
        try:
            requests.get(node.url + "/", timeout=1, headers={"Accept": "application/json"})
            return
        except requests.RequestException:
            time.sleep(POLL_INTERVAL)
    raise RuntimeError(f"{node.label} did not start within {timeout:.0f} s")


def stop_processes(nodes):
    """Stop every node's ``tongban run`` (each stops its syncd and serve), villages first."""
    running = [n.processes["run"] for n in reversed(nodes) if "run" in n.processes]
    for process in running:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()  # on Linux its serve and syncd end with it
            process.wait(timeout=10)


def bring_up_below(county, nodes, known, log_dir, echo):
    """Set up (or reuse) and start every node under the serving county, each as soon as
    its parent serves: a node enrols through its parent, a village waits for its own
    township only. The set-up commands run in parallel; processes start in this thread.
    """
    created = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, len(nodes) - 1)) as pool:
        pending = {}

        def prepare(parent):
            for child in nodes:
                if child.parent is parent:
                    pending[pool.submit(prepare_node, child, county, known)] = (child, "made")

        prepare(county)
        while pending:
            done, _ = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                node, step = pending.pop(future)
                result = future.result()
                if step == "made":
                    created[node.code] = result
                    start_processes(node, log_dir)
                    pending[pool.submit(wait_until_up, node)] = (node, "up")
                else:
                    _show_setup(node, created[node.code], echo)
                    prepare(node)


# -- what the demo shows -------------------------------------------------------------------

def catalog_of(node, session=requests):
    """A node's catalog summary (``/status/catalog``), or None when it does not answer."""
    try:
        response = session.get(node.url + "/status/catalog", timeout=5)
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError):
        return None


def wait_for_release(nodes, number, started, timeout, echo, timed=True):
    """Show release ``number`` (published at monotonic time ``started``) becoming active at
    each node; returns ``{code: seconds from publishing to activation}``.

    :param timed: say how long each node took (not for a release published before the
        nodes were set up: it arrives with their first sync).
    """
    deadline = time.monotonic() + timeout
    arrived = {}
    session = requests.Session()
    while len(arrived) < len(nodes):
        check_alive(nodes)
        for node in nodes:
            if node.code in arrived:
                continue
            catalog = catalog_of(node, session)
            if catalog and (catalog.get("release") or 0) >= number:
                arrived[node.code] = seconds = time.monotonic() - started
                after = f" after {seconds:.1f} s" if timed else ""
                echo(f"  {INDENT[node.tier]}{node.label}: 第 {number} 号发布已验证生效 / "
                     f"release {number} verified and active{after} "
                     f"({catalog['items']} 个事项)")
        if time.monotonic() > deadline:
            missing = ", ".join(n.code for n in nodes if n.code not in arrived)
            raise RuntimeError(f"release {number} did not reach {missing} within "
                               f"{timeout:.0f} s")
        time.sleep(POLL_INTERVAL)
    return arrived


def info_lines(nodes):
    """What ``tongban info`` prints about each node's catalog (run for real)."""
    def catalog_line(node):
        output = _cli("info", node.node_dir).stdout
        return next((line for line in output.splitlines() if line.startswith("catalog")),
                    "catalog -")

    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        return dict(zip((n.code for n in nodes), pool.map(catalog_line, nodes)))


class _Stop(Exception):
    """SIGTERM or SIGHUP: stop the region as Ctrl-C would."""


def _raise_stop(signum, frame):
    raise _Stop(signum)


def run_demo(base_dir, base_port, exit_when_synced=False, echo=click.echo, timeout=120.0):
    """Create (or reuse), start and sync the demo region; returns when stopped.

    :param exit_when_synced: stop everything once the catalog and its revision have
        reached every node (used by tests and CI); otherwise run until Ctrl-C.
    :returns: ``{"first": {code: seconds}, "release": number, "revision": {code: seconds},
        "info": {code: catalog line}}`` (empty after Ctrl-C).
    :raises RuntimeError: a port is busy, a node cannot be set up, or a process died.
    """
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    nodes = plan_region(base_dir, base_port)
    busy = [n.port for n in nodes if not port_free(n.port)]
    if busy:
        raise RuntimeError(f"ports {busy} are in use: choose another --base-port")
    known = Secrets(base_dir / "demo-secrets.json")
    log_dir = base_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    county = nodes[0]
    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, _raise_stop)
    echo(f"示范区域 / demo region in {base_dir} (logs in {log_dir} and each node's logs/)")
    try:
        started = time.monotonic()
        created = prepare_node(county, county, known)
        _show_setup(county, created, echo)
        first = seed_catalog(county, known)
        echo(f"  县级目录 / county catalog: release {first} in force (signed; proposed by "
             f"{EDITOR}, approved by {APPROVER})")
        start_processes(county, log_dir)
        wait_until_up(county)
        bring_up_below(county, nodes, known, log_dir, echo)
        echo(f"  {len(nodes)} 个站点已由 tongban run 启动 / tongban run (serve and syncd) "
             f"running for {len(nodes)} nodes ({time.monotonic() - started:.1f} s)")
        setup_done = time.monotonic()
        first_arrival = wait_for_release(nodes, first, setup_done, timeout, echo, timed=False)
        echo("")
        changed_at = time.monotonic()
        skipped = revision_skipped(county)
        if skipped:
            echo(f"  跳过 / skipped: {skipped}")
            number, arrival = first, first_arrival
        else:
            number, name = revise_catalog(county)
            echo(f"县级发布 / the county publishes release {number}: {REVISED_ITEM} → {name}")
            arrival = wait_for_release(nodes, number, changed_at, timeout, echo)
        echo("")
        echo("一件办件走完全程 / one case end to end:")
        for node in nodes:
            democase.add_staff(node, known, _cli)
        village = next(n for n in nodes if n.tier == "village")
        case = democase.run_case(village, village.parent, known, echo, timeout)
        echo("")
        echo("tongban info (目录 / catalog):")
        lines = info_lines(nodes)
        for node in nodes:
            echo(f"  {INDENT[node.tier]}{node.code:12} {lines[node.code]}")
        echo("")
        echo(f"公开目录 / public catalog at any node, e.g. {nodes[-1].url}/catalog")
        echo(f"账号 / accounts (passwords in {known.path}):")
        for url, account, purpose in (
                (f"{village.url}/cases/window", "clerk", "窗口人员：受理、一次性告知、送达 / "
                                                         "the window at each village"),
                (f"{village.parent.url}/cases/", "approver", "审批人员：镇级审批 / decides at each "
                                                             "township"),
                (f"{village.parent.url}/dashboard/", "supervisor", "督查人员：镇级效能督查 / "
                                                                   "the township's dashboard"),
                (f"{county.url}/dashboard/", "supervisor", "督查人员：全县效能督查、红牌跟进 / "
                                                           "the county's dashboard"),
                (f"{county.url}/admin/catalog", EDITOR, "县级管理员：编辑目录、提交发布 / "
                                                        "edits and proposes the catalog"),
                (f"{county.url}/admin/catalog", APPROVER, "审批人员：审批并签发目录 / approves "
                                                          "and signs releases")):
            echo(f"  {account:10} {url:40} {purpose}")
        result = {"first": first_arrival, "release": number, "revision": arrival,
                  "info": lines, "case": case}
        if exit_when_synced:
            return result
        echo("按 Ctrl-C 停止 / press Ctrl-C to stop")
        while True:
            check_alive(nodes)
            time.sleep(1)
    except (KeyboardInterrupt, _Stop):
        echo("正在停止 / stopping …")
        return {}
    finally:
        if in_main:
            # The stop is bounded (a process that will not stop is killed); a second
            # Ctrl-C must not cut it short and leave nodes half-stopped.
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous.setdefault(signum, signal.signal(signum, signal.SIG_IGN))
        stop_processes(nodes)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        echo("示范区域已停止 / demo stopped")


def _show_setup(node, created, echo):
    how = "enrolled" if created and node.parent else "created " if created else "reused  "
    echo(f"  {how} {node.tier:8} {node.code:12} {node.name}  {node.url}")
