"""The ``tongban`` command."""

import contextlib
import errno
import getpass
import json
import logging
import secrets
import shutil
import sys
from pathlib import Path

import click

from shared import clock, identity
from shared import config as cfg
from shared.errors import EXIT_UNUSABLE, ConfigurationError

logger = logging.getLogger("tongban")


class NodeUnusable(click.ClickException):
    """The node cannot start as it is; restarting it changes nothing."""

    exit_code = EXIT_UNUSABLE


def _fail(message):
    raise click.ClickException(message)


def load_app(node_dir):
    """Create the app of a node directory, turning configuration errors into CLI errors."""
    from shared.app import create_app

    try:
        return create_app(node_dir=node_dir)
    except ConfigurationError as exc:
        raise NodeUnusable(str(exc)) from exc


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="tongban")
def main(verbose):
    """tongban (通办): county / township / village service-station nodes."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tongban").setLevel(max(logging.INFO - 10 * verbose, logging.DEBUG))


@main.command()
@click.argument("node_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--tier", required=True, type=click.Choice(cfg.TIERS))
@click.option("--code", required=True, help="Division code: county 6, township 9, village 12 digits.")
@click.option("--parent", "parent_url", default=None, help="URL of the parent node.")
@click.option("--name", default="", help="The station's name, e.g. 海城镇.")
@click.option("--enrol", "enrol_code", default=None,
              help="One-time enrolment code from the county (tongban enrol).")
@click.option("--recover", is_flag=True,
              help="A replacement PC (enrolled with a code from tongban enrol --replace): "
                   "take back the station's cases, scans, catalog and registry from the "
                   "parent before it serves.")
def init(node_dir, tier, code, parent_url, name, enrol_code, recover):
    """Create a node directory: configuration, keys and an empty store.

    A county makes the region's keys. Any other node enrols with ``--parent URL --enrol
    CODE``: it makes its key pair, registers it through the parent and receives the
    county's key, the registry and the region key.
    """
    try:
        cfg.validate_code(tier, code)
    except ConfigurationError as exc:
        _fail(str(exc))
    if parent_url is not None and not parent_url.startswith(("http://", "https://")):
        _fail(f"--parent must be an http(s) URL, not {parent_url!r}")
    if tier == "county" and parent_url:
        _fail("a county node has no parent node")
    if node_dir.exists() and any(node_dir.iterdir()):
        _fail(f"{node_dir} exists and is not empty")
    if enrol_code and not parent_url:
        _fail("--enrol needs --parent: the enrolment goes through the parent node")
    if recover and not enrol_code:
        _fail("--recover needs --enrol CODE (from tongban enrol --replace at the county) "
              "and --parent URL")
    if parent_url:
        _check_parent(parent_url, tier, code)
    enrolment = None
    if enrol_code:
        from shared.enrolment import request_enrolment

        try:
            enrolment = request_enrolment(parent_url, enrol_code, code, tier, name)
        except ConfigurationError as exc:
            _fail(str(exc))
    created_dir = not node_dir.exists()
    settings = {
        "TIER": tier,
        "NODE_CODE": code,
        "NODE_NAME": name,
        "PARENT_URL": parent_url,
        "PARENT_CODE": cfg.parent_code(code),
        "SECRET_KEY": secrets.token_hex(32),
    }
    try:
        node_dir.mkdir(parents=True, exist_ok=True)
        # Only its owner reads it: it holds SECRET_KEY (staff sessions, form tokens).
        identity.write_private(node_dir / cfg.CONFIG_FILE, (json.dumps(
            settings, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
        _set_up_identity(node_dir, tier, code, name, enrolment)
    except BaseException:
        # Nothing half-made is left behind.
        if created_dir:
            shutil.rmtree(node_dir, ignore_errors=True)
        else:
            for child in node_dir.iterdir():
                child.unlink() if child.is_file() else shutil.rmtree(child)
        raise
    click.echo(f"created {tier} node {code} {name} in {node_dir}")
    if recover:
        _recover(node_dir)
    if tier != "county" and enrolment is None:
        click.echo("note: not enrolled; it syncs only through a replicator account in "
                   "PARENT_URL until it is (tongban init --enrol)", err=True)


def _recover(node_dir):
    """Take the new node's scope back from its parent (shared/recovery.py)."""
    from shared.recovery import recover

    app = load_app(node_dir)
    try:
        found = recover(app, echo=click.echo)
    finally:
        app.extensions["store"].close()
    if not found["ok"]:
        _fail(f"recovery did not finish (see above); {node_dir} is enrolled: start "
              f"tongban syncd {node_dir} and it carries on where recovery stopped")


def _set_up_identity(node_dir, tier, code, name, enrolment):
    """Keys and registry of a new node directory (config already written)."""
    from shared import enrolment as enrol

    if tier == "county":
        enrol.update_config(node_dir, **enrol.county_identity(node_dir))
    elif enrolment is not None:
        key, settings, secrets_, registry_docs = enrolment
        enrol.install_enrolment(node_dir, key, secrets_)
        enrol.update_config(node_dir, **settings)
    app = load_app(node_dir)
    store = app.extensions["store"]
    try:
        if tier == "county":
            enrol.register_county(store, node_dir, code, name)
        elif enrolment is not None:
            enrol.store_registry(store, enrolment[3])
    finally:
        store.close()


def _check_parent(parent_url, tier, code):
    """Refuse a parent whose tier or code does not fit; only warn when it cannot be reached.

    Village links are often down when a station is set up, so an unreachable parent is
    not an error; the code is checked again when the node first syncs.
    """
    import requests

    expected_tier = cfg.PARENT_TIER.get(tier)
    try:
        response = requests.get(parent_url.rstrip("/") + "/", timeout=5,
                                headers={"Accept": "application/json"})
        node = response.json().get("tongban") or {}
    except (requests.RequestException, ValueError, AttributeError):
        click.echo(f"warning: parent {parent_url} did not answer; its code was not checked",
                   err=True)
        return
    parent_tier, parent_code = node.get("tier"), node.get("code")
    if not parent_code:
        _fail(f"{parent_url} is not a tongban node")
    if parent_tier != expected_tier:
        _fail(f"the parent of a {tier} must be a {expected_tier} node; {parent_url} is a "
              f"{parent_tier} node")
    if not code.startswith(parent_code):
        _fail(f"code {code} does not extend the parent's code {parent_code}")


def _county_store(node_dir):
    """The app and the county key of a county node directory (CLI errors otherwise)."""
    from shared import identity

    app = load_app(node_dir)
    if app.config["TIER"] != "county":
        app.extensions["store"].close()
        _fail("only the county enrols and revokes nodes")
    key = identity.load_private_key(node_dir)
    if key is None:
        app.extensions["store"].close()
        _fail(f"{node_dir} has no county key ({identity.KEY_FILE})")
    return app.extensions["store"], key


@main.command()
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--code", "node_code", required=True, help="The new node's division code.")
@click.option("--tier", required=True, type=click.Choice(["township", "village"]))
@click.option("--hours", default=72, show_default=True, type=click.IntRange(1, 24 * 30),
              help="How long the code stays valid.")
@click.option("--replace", is_flag=True,
              help="The node is registered but its PC is lost or replaced: revoke its old "
                   "key now and let the code enrol a new one.")
def enrol(node_dir, node_code, tier, hours, replace):
    """Issue a one-time enrolment code for a new node (at the county)."""
    from shared import registry

    store, key = _county_store(node_dir)
    try:
        code = registry.issue_enrolment(store, node_code, tier, hours=hours,
                                        county_key=key, replace=replace)
    except ConfigurationError as exc:
        _fail(str(exc))
    finally:
        store.close()
    click.echo(code)
    if replace:
        click.echo(f"the old key of {node_code} is revoked; the new PC takes its cases back "
                   "from the parent with tongban init ... --enrol CODE --recover", err=True)
    click.echo(f"enrolment code for {tier} {node_code}, valid {hours} h, usable once: "
               f"tongban init DIR --tier {tier} --code {node_code} --parent URL --enrol {code}",
               err=True)


@main.command()
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("node_code")
def revoke(node_dir, node_code):
    """Revoke a node (at the county): it is refused everywhere once the registry arrives."""
    from shared import errors, registry

    store, key = _county_store(node_dir)
    try:
        registry.revoke(store, key, node_code)
    except errors.NotFound as exc:
        _fail(str(exc))
    finally:
        store.close()
    click.echo(f"revoked node {node_code}")


@main.command()
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("id_number")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--user", "username", default=None,
              help="The clerk at the counter (a staff account with role clerk or approver; "
                   "its password is read from the terminal or stdin). Without it only this "
                   "station's own cases are listed: the region is asked only for a citizen "
                   "at the counter.")
def lookup(node_dir, id_number, as_json, username):
    """Find a citizen's cases region-wide (handle anywhere) by ID number."""
    from shared import errors, identity, nodeapi
    from shared import lookup as lookups
    from shared.staff import LoginRefused

    app = load_app(node_dir)
    store = app.extensions["store"]
    region_key = identity.load_secrets(node_dir).get("region_key")
    if not region_key:
        store.close()
        _fail("this node has no region key: enrol it first (tongban init --enrol)")
    with app.app_context():
        clerk = None
        if username:
            password = getpass.getpass("密码 / password: ") if sys.stdin.isatty() \
                else sys.stdin.readline().rstrip("\r\n")
            try:
                clerk = lookups.authenticate_clerk(username, password)
            except (LoginRefused, errors.Forbidden) as refused:
                store.close()
                _fail(str(refused))
        client = nodeapi.parent_client(app, timeout=lookups.LOOKUP_TIMEOUT) \
            if app.config.get("PARENT_URL") else None
        try:
            answer = lookups.lookup_from_station(
                store, nodeapi.node_clock_of_store(app), app.config,
                identity.person_key(region_key, id_number), client, clerk=clerk)
        finally:
            if client is not None:
                client.close()
            store.close()
    if as_json:
        click.echo(json.dumps(answer, ensure_ascii=False, indent=2))
        return
    if answer.get("message"):
        click.echo(answer["message"])
    click.echo(f"共 {len(answer['cases'])} 件（由 {answer['answered_by']} 答复）")
    for case in answer["cases"]:
        click.echo(f"  {case['number']}  {case['item']}  受理站 {case['origin']}  "
                   f"办理 {case['handler']}")


@main.group()
def user():
    """Manage the node's accounts."""


def _read_password():
    if sys.stdin.isatty():
        password = getpass.getpass("密码 / password: ")
        again = getpass.getpass("再次输入 / again: ")
        if password != again:
            _fail("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        _fail("the password must have at least 8 characters")
    return password


@user.command("add")
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
@click.option("--role", "roles", required=True, multiple=True,
              type=click.Choice(("replicator", "clerk", "approver", "supervisor",
                                 "county_admin")))
@click.option("--scope", default="*", show_default=True, metavar="CODE|*",
              help="What a replicator account may replicate: what the node CODE may, or "
                   "everything (*).")
@click.option("--full-name", default="", help="The staff member's name, shown to citizens.")
@click.option("--phone", "office_phone", default="", help="Office phone, shown to citizens.")
@click.option("--department", default="", help="Department (parallel handling).")
def user_add(node_dir, name, roles, scope, full_name, office_phone, department):
    """Create an account; the password is read from the terminal or one line of stdin."""
    from shared.models import FULL_SCOPE, Account, hash_password

    if not name or not name.strip() or ":" in name:
        _fail("an account name must be non-empty and contain no ':'")
    if scope != FULL_SCOPE and not (scope.isdigit() and len(scope) in cfg.TIER_BY_LENGTH):
        _fail(f"--scope must be * or a node code of 6, 9 or 12 digits, not {scope!r}")
    app = load_app(node_dir)
    if Account.select().where(Account.username == name).exists():
        _fail(f"account {name!r} exists already")
    password = _read_password()
    Account.create(username=name, password_hash=hash_password(password),
                   roles=",".join(dict.fromkeys(roles)), scope=scope,
                   created=clock.utcnow(),
                   full_name=full_name.strip(), office_phone=office_phone.strip(),
                   department=department.strip())
    app.extensions["store"].close()
    where = "everything" if scope == FULL_SCOPE else f"the scope of node {scope}"
    click.echo(f"account {name} created with role {', '.join(roles)}, replicating {where}")


@main.command()
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(node_dir, as_json):
    """Print the node's tier, code, name, parent, clock and store figures (times in
    Beijing time)."""
    from shared.views.home import node_summary

    app = load_app(node_dir)
    summary = node_summary(app)
    app.extensions["store"].close()
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    for key in ("tier", "code", "name", "parent"):
        click.echo(f"{key:12} {summary[key] if summary[key] is not None else '-'}")
    click.echo(f"{'clock':12} {format_clock()}")
    for key in ("doc_count", "update_seq"):
        click.echo(f"{key:12} {summary[key] if summary[key] is not None else '-'}")
    for doc_type, count in summary["docs_by_type"].items():
        click.echo(f"{'type ' + doc_type:12} {count}")
    click.echo(f"{'catalog':12} {format_catalog(summary['catalog'])}")


def format_clock():
    """The node's clock now, e.g. ``2026-12-04 17:50:12（北京时间）``, and its skew if any."""
    line = clock.format_time(clock.time(), seconds=True)
    skew = clock.skew()
    if skew:
        line += f", shifted {skew:+.0f} s by {clock.SKEW_ENV}"
    return line


def format_catalog(catalog):
    """One line about the catalog in force, e.g. ``release 2 active, 25 items (已生效),
    published 2026-12-04 17:50（北京时间）``."""
    if catalog["release"] is None:
        line = f"no release active ({catalog['state_name']})"
    else:
        line = f"release {catalog['release']} active, {catalog['items']} items " \
               f"({catalog['state_name']})"
        published = clock.format_time(catalog.get("time"))
        if published:
            line += f", published {published}"
    if catalog["state"] not in ("ok", "none") and catalog["message"]:
        line += f": {catalog['message']}"
    return line


@main.command()
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5984, show_default=True, type=click.IntRange(0, 65535))
# Every child holds a longpoll open at its parent (up to 50 s): a township with ~20 villages
# and their tablets needs that many threads and more, or its sync rounds queue behind them.
@click.option("--threads", default=64, show_default=True, type=click.IntRange(1, 512))
def serve(node_dir, host, port, threads):
    """Serve the node (home page and /db) with waitress."""
    from waitress.server import create_server

    from shared import models, serving

    app = load_app(node_dir)
    config = app.config
    # The feeds' limit in all stays below the threads (shared/serving.py, FeedLimits).
    config["SERVE_THREADS"] = threads
    models.set_password_check_threads(config["PASSWORD_CHECK_THREADS"])
    serving.return_large_blocks()  # a check's 16 MiB is given back when it ends
    serving.raise_open_file_limit(int(config["SERVE_CONNECTION_LIMIT"]))
    try:
        server = create_server(app, host=host, port=port,
                               **serving.waitress_options(config, threads))
    except OSError as exc:
        # One line, no traceback: the usual causes are another server on the port, a
        # port below 1024 without privileges, or a --host this machine does not have.
        if exc.errno == errno.EADDRINUSE:
            _fail(f"端口 {port} 已被占用 / port {port} is in use: 请换一个端口（--port）")
        if exc.errno == errno.EACCES:
            _fail(f"没有权限使用端口 {port} / permission denied for port {port}: "
                  "请使用 1024 以上的端口（--port）")
        if exc.errno == errno.EADDRNOTAVAIL:
            _fail(f"本机没有地址 {host} / address {host} is not available: 请检查 --host")
        _fail(f"无法在 {host}:{port} 上监听 / cannot listen on {host}:{port}: {exc.strerror or exc}")
    logger.info("serving %s node %s on http://%s:%s/", config["TIER"],
                config["NODE_CODE"], host, port)
    feeds, per_principal = serving.FeedLimits.limits(config)
    logger.info("%d threads, up to %d connections; changes feeds: %d at once, %d per "
                "node or account", threads, config["SERVE_CONNECTION_LIMIT"], feeds,
                per_principal)
    serving.limit_header_time(server, float(config["SERVE_HEADER_TIMEOUT"]))
    server.print_listen("Serving on http://{}:{}")
    server.run()


def _station_options(command):
    """``--host``, ``--port`` and ``--threads`` of ``run`` and ``service``, passed to serve."""
    command = click.option("--threads", default=64, show_default=True,
                           type=click.IntRange(1, 512), help="serve's threads.")(command)
    command = click.option("--port", default=5984, show_default=True,
                           type=click.IntRange(1, 65535), help="serve's port.")(command)
    return click.option("--host", default="127.0.0.1", show_default=True,
                        help="serve's address (0.0.0.0: every interface).")(command)


@main.command()
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_station_options
def run(node_dir, host, port, threads):
    """Run the station: serve and syncd, each restarted when it exits, until SIGTERM or
    Ctrl-C. Logs in NODE_DIR/logs, restart counts in NODE_DIR/run-state.json."""
    from shared.supervisor import run_station

    sys.exit(run_station(node_dir, host=host, port=port, threads=threads))


@main.command()
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--systemd", "kind", flag_value="systemd", help="A systemd unit (Linux).")
@click.option("--windows", "kind", flag_value="windows",
              help="A WinSW service configuration (Windows).")
@click.option("--user", default=None, help="systemd: the account the station runs as.")
@_station_options
def service(node_dir, kind, user, host, port, threads):
    """Print a service definition that runs ``tongban run NODE_DIR`` at boot (see
    docs/operations.md for installing it)."""
    from shared.supervisor import service_file

    if kind is None:
        _fail("choose --systemd (Linux) or --windows (WinSW)")
    if user and kind != "systemd":
        _fail("--user is for --systemd; WinSW takes the account at install time")
    click.echo(service_file(kind, node_dir, host=host, port=port, threads=threads, user=user),
               nl=False)


@main.command()
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def retention(node_dir):
    """Purge now the closed cases beyond RETENTION_DAYS at a village (what the nightly job
    does): only those the parent confirms it holds; they stay at the township and county."""
    from shared import retention as kept

    app = load_app(node_dir)
    store = app.extensions["store"]
    try:
        if app.config["TIER"] != "village":
            _fail("retention applies only at a village; townships and the county keep "
                  "every case")
        with app.app_context():
            numbers = kept.purge_expired(app)
    finally:
        store.close()
    click.echo(f"purged {len(numbers)} closed cases" + (f": {', '.join(numbers)}"
                                                       if numbers else ""))


@main.command()
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def reindex(node_dir):
    """Rebuild every query table from the documents."""
    app = load_app(node_dir)
    store = app.extensions["store"]
    total = store.doc_count()
    with click.progressbar(length=max(total, 1), label="reindexing") as bar:
        last = [0]

        def progress(done):
            bar.update(done - last[0])
            last[0] = done

        count = store.reindex(progress=progress)
    click.echo(f"reindexed {count} documents")


@main.command()
@click.argument("source")
@click.argument("target")
@click.option("--continuous", is_flag=True, help="Keep replicating until interrupted.")
@click.option("--doc-id", "doc_ids", multiple=True, help="Replicate only these documents.")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10000))
def replicate(source, target, continuous, doc_ids, batch_size):
    """Replicate SOURCE to TARGET: each a node directory, a node URL or a CouchDB URL."""
    from syncd.commands import run_replicate  # shared imports syncd only here, lazily

    run_replicate(source, target, continuous=continuous, doc_ids=list(doc_ids) or None,
                  batch_size=batch_size)


@main.command()
@click.option("--dir", "base_dir", default="demo-region", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where the nodes' directories go (reused when it exists).")
@click.option("--base-port", default=8600, show_default=True, type=click.IntRange(1024, 65000))
@click.option("--exit-when-synced", is_flag=True,
              help="Stop once the catalog and the county's revision of it have reached "
                   "every node (for scripts and CI).")
@click.option("--timeout", default=180.0, show_default=True,
              help="Seconds to wait for the catalog (and then the revision) to reach every "
                   "node.")
@click.option("--clock", "clock_at", metavar="DATE",
              help="Run the whole region as if it were DATE (YYYY-MM-DD, 09:00 Beijing time, "
                   "or an ISO date and time): sets TONGBAN_CLOCK_SKEW_SECONDS for every node.")
def demo(base_dir, base_port, exit_when_synced, timeout, clock_at):
    """Run a sample region: 1 county, 2 townships, 4 villages, each enrolled through its
    parent and running its own serve and syncd."""
    import os

    from shared import clock
    from shared.demo import run_demo

    if clock_at:
        try:
            os.environ[clock.SKEW_ENV] = repr(clock.skew_for(clock_at))
        except ValueError:
            _fail(f"--clock {clock_at!r}: 请写成 2027-03-02 或 2027-03-02T09:00:00+08:00 "
                  "(a date, or an ISO date and time)")
        click.echo(f"时钟：全区节点按 {clock.format_time(clock.time())} 运行 "
                   f"(clock set to {clock_at})")
    try:
        run_demo(base_dir, base_port, exit_when_synced=exit_when_synced, timeout=timeout)
    except RuntimeError as exc:
        _fail(str(exc))


@main.command()
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--once", is_flag=True,
              help="One pull and push round per link; exit non-zero when one failed.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def syncd(node_dir, once, verbose):
    """Sync the node with its parent (and upstream hub) until SIGTERM or Ctrl-C."""
    from syncd.commands import run_syncd  # shared imports syncd only here, lazily

    run_syncd(load_app(node_dir), once=once, verbose=verbose)


@main.group()
def sync():
    """Sync with the parent node."""


@sync.command("status")
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sync_status(node_dir, as_json):
    """Each link's state, last success, documents waiting and last error."""
    from shared.syncstatus import format_text, status_report

    app = load_app(node_dir)
    report = status_report(app.extensions["store"], app.config)
    app.extensions["store"].close()
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        click.echo(format_text(report))


@main.group()
def catalog():
    """The regional catalog: import, export and the release in force."""


@catalog.command("import")
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--by", "author", default="cli", show_default=True,
              help="Whose drafts these are (shown on the county's authoring pages).")
def catalog_import(node_dir, file, author):
    """Make the county's drafts exactly FILE (.xlsx or .json): all rows or none.

    Every problem is listed (sheet, row, column); nothing is imported when there is one.
    Propose and approve the release on the county's authoring pages afterwards.
    """
    from shared.catalog import publish, schema, transfer

    app = load_app(node_dir)
    if app.config["TIER"] != "county":
        _fail("the catalog is authored at the county only")
    store = app.extensions["store"]
    try:
        items, agencies = transfer.read_catalog_file(file)
        with app.app_context():
            changes = publish.import_catalog(store.db, items, agencies, author)
    except schema.CatalogInvalid as invalid:
        for error in invalid.errors:
            click.echo(error.message, err=True)
        _fail(f"{len(invalid.errors)} problem(s) in {file}: nothing imported")
    finally:
        store.close()
    counts = {kind: sum(1 for c in changes if c["change"] == kind)
              for kind in ("added", "changed", "removed")}
    click.echo(f"imported {len(items)} items and {len(agencies)} agencies as drafts: "
               f"{counts['added']} added, {counts['changed']} changed, "
               f"{counts['removed']} removed against the release in force")


@catalog.command("export")
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--published", is_flag=True,
              help="Export the release in force, without the county's drafts.")
def catalog_export(node_dir, file, published):
    """Write the catalog to FILE (.xlsx or .json): the county's working copy (drafts
    included) or, with --published and at any node, the release in force."""
    from shared.catalog import publish, schema, transfer

    app = load_app(node_dir)
    store = app.extensions["store"]
    try:
        with app.app_context():
            if published or app.config["TIER"] != "county":
                items, agencies = publish.published_records(store.db)
            else:
                items, agencies = publish.working_copy(store.db)
        transfer.write_catalog_file(file, items, agencies)
    except schema.CatalogInvalid as invalid:
        _fail(str(invalid))
    finally:
        store.close()
    click.echo(f"exported {len(items)} items and {len(agencies)} agencies to {file}")


def _proposal_app(node_dir):
    app = load_app(node_dir)
    if app.config["TIER"] != "county":
        _fail("releases are proposed and approved at the county only")
    return app


@contextlib.contextmanager
def _waiting_proposal(node_dir):
    """``(store, proposal or None)`` of the county at ``node_dir``, the models bound."""
    from shared.catalog import publish

    app = _proposal_app(node_dir)
    store = app.extensions["store"]
    try:
        with app.app_context(), publish.bound(store.db):
            yield store, publish.open_proposal()
    finally:
        store.close()


@catalog.command("proposal")
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def catalog_proposal(node_dir):
    """The release waiting for approval: its number, who proposed it, what it changes."""
    with _waiting_proposal(node_dir) as (_, proposal):
        if proposal is None:
            click.echo("没有等待审批的发布 / no release is waiting for approval")
            return
        click.echo(f"release {proposal.number} proposed by {proposal.proposed_by} at "
                   f"{clock.format_time(proposal.proposed_at)}"
                   + (f": {proposal.note}" if proposal.note else ""))
        for change in proposal.change_list():
            fields = "、".join(change.get("fields") or ())
            click.echo(f"  {change['change']:8} {change['kind']:8} {change['id']} "
                       f"{change.get('name') or ''}" + (f"（{fields}）" if fields else ""))


def _decide_proposal(node_dir, decide):
    """Run ``decide(store, proposal)`` on the waiting release; its refusals as CLI errors."""
    from shared.catalog import publish

    with _waiting_proposal(node_dir) as (store, proposal):
        if proposal is None:
            _fail("no release is waiting for approval")
        try:
            return proposal, decide(store, proposal)
        except publish.PublishRefused as refused:
            _fail(str(refused))


@catalog.command("approve")
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--by", "approver", required=True,
              help="The approving account (role approver; not the proposer).")
def catalog_approve(node_dir, approver):
    """Approve and sign the waiting release with the county's key (two people: the
    approver is never the proposer)."""
    from shared import identity
    from shared.catalog import publish

    _, release = _decide_proposal(node_dir, lambda store, proposal: publish.approve(
        store, proposal.id, approver, identity.load_private_key(node_dir)))
    click.echo(f"release {release['number']} approved by {approver}, signed and in force")


@catalog.command("withdraw")
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--by", "proposer", required=True, help="The account that proposed it.")
def catalog_withdraw(node_dir, proposer):
    """Take the waiting release back (its drafts stay, to be edited and proposed again)."""
    from shared.catalog import publish

    proposal, _ = _decide_proposal(
        node_dir, lambda store, proposal: publish.withdraw(proposal.id, proposer))
    click.echo(f"release {proposal.number} withdrawn by {proposer}; the drafts are kept")


@catalog.command("status")
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def catalog_status(node_dir, as_json):
    """The release in force, its item count, the verification state and the working-day
    calendar's alarms (times in Beijing time; ``--json`` keeps the stored values)."""
    from shared.catalog.active import catalog_status as status_of
    from shared.syncstatus import calendar_lines, calendar_report, format_time

    app = load_app(node_dir)
    store = app.extensions["store"]
    try:
        status = status_of(store.db)
        status["calendar"] = calendar_report(store.db)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(status, ensure_ascii=False, indent=2))
        return
    active = status["active"]
    if active:
        click.echo(f"release      {active['number']} (published "
                   f"{clock.format_time(active['time']) or active['time']}), "
                   f"key {active['key_id']}")
        click.echo(f"items        {active['item_count']} items, {active['agency_count']} agencies")
        click.echo(f"activated    {format_time(active['activated_at'])}")
    else:
        click.echo("release      none active")
    click.echo(f"verification {status['state']} ({status['state_name']}): {status['message']}")
    for alarm in status["alarms"]:
        click.echo(f"alarm        {format_time(alarm['at'])} {alarm['message']}")
    for line in calendar_lines(status["calendar"]):
        click.echo(line)


@main.group()
def audit():
    """The audit log of staff views of personal data."""


@audit.command("verify")
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def audit_verify(ctx, node_dir, as_json):
    """Check the node's audit log: every entry's MAC, the chain and both copies of its
    head. Exits 1 when anything was edited, removed, inserted or reordered."""
    from shared import audit as audit_log

    app = load_app(node_dir)
    store = app.extensions["store"]
    try:
        report = audit_log.verify_node(node_dir, store.db)
    except ConfigurationError as exc:
        _fail(str(exc))
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(report._asdict(), ensure_ascii=False, indent=2))
    elif report.ok:
        click.echo(f"audit log intact: {report.entries} entries")
    else:
        for problem in report.problems:
            click.echo(problem)
        click.echo(f"audit log NOT intact ({report.entries} entries checked)")
    if not report.ok:
        ctx.exit(1)


# -- backups (shared/backup.py) ----------------------------------------------------------

class _DefaultCreateGroup(click.Group):
    """``tongban backup DIR FILE`` runs ``backup create``; ``backup verify FILE`` verifies."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


_PASSPHRASE_FILE = click.option(
    "--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="File holding the passphrase of the keys (else $TONGBAN_BACKUP_PASSPHRASE, else "
         "asked on the terminal).")


def _backup_passphrase(passphrase_file, confirm=False, needed=True):
    """The passphrase (file, environment, terminal); None when there is none to ask for."""
    from shared import backup

    def ask():
        if not sys.stdin.isatty():
            if needed:
                _fail("no passphrase: give --passphrase-file or set "
                      f"{backup.PASSPHRASE_ENV}")
            return None
        passphrase = getpass.getpass("备份口令 / backup passphrase: ")
        if confirm and getpass.getpass("再次输入 / again: ") != passphrase:
            _fail("the two passphrases differ")
        return passphrase

    try:
        return backup.read_passphrase(passphrase_file, prompt=ask)
    except backup.BackupError as exc:
        _fail(str(exc))


@main.group(cls=_DefaultCreateGroup)
def backup():
    """Back up a node while it serves (tongban backup DIR FILE), or check a backup
    (tongban backup verify FILE)."""


@backup.command("create")
@click.argument("node_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_PASSPHRASE_FILE
@click.option("--without-keys", is_flag=True,
              help="Leave node.key, secrets.json and SECRET_KEY out (no passphrase).")
def backup_create(node_dir, file, passphrase_file, without_keys):
    """Write a consistent copy of the node at NODE_DIR (store, scans, config, audit head,
    keys sealed under a passphrase) into the zip FILE."""
    from shared import backup as backups

    passphrase = None if without_keys else _backup_passphrase(passphrase_file, confirm=True)
    try:
        manifest = backups.create(node_dir, file, passphrase, keys=not without_keys)
    except backups.BackupError as exc:
        _fail(str(exc))
    keys = "keys sealed" if manifest["keys"]["included"] else "WITHOUT keys"
    click.echo(f"backup of {manifest['node']['tier']} node {manifest['node']['code']} "
               f"written to {file}: {manifest['store']['doc_count']} documents, "
               f"{manifest['blobs']} scans, {manifest['audit']['entries']} audit entries, "
               f"{keys}")


@backup.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_PASSPHRASE_FILE
@click.pass_context
def backup_verify(ctx, file, passphrase_file):
    """Check a backup: every member's sha256, the store, the audit chain and, with the
    passphrase, the keys. Exits 1 on any problem."""
    from shared import backup as backups

    passphrase = _backup_passphrase(passphrase_file, needed=False)
    try:
        result = backups.verify(file, passphrase)
    except backups.BackupError as exc:
        click.echo(f"FAIL  {exc}")
        click.echo(f"备份不可用 / backup NOT OK: {file}")
        ctx.exit(1)
    marks = {True: "ok  ", False: "FAIL", None: "--  "}
    for check in result.checks:
        click.echo(f"{marks[check.ok]}  {check.what}")
    if result.ok:
        click.echo(f"备份完好 / backup OK: {file}")
    else:
        click.echo(f"备份有问题 / backup NOT OK: {file}")
        ctx.exit(1)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("node_dir", type=click.Path(file_okay=False, path_type=Path))
@_PASSPHRASE_FILE
@click.option("--force", is_flag=True,
              help="Restore into a non-empty NODE_DIR: its content is moved aside first.")
@click.option("--without-keys", is_flag=True,
              help="Accept a backup that holds no keys.")
def restore(file, node_dir, passphrase_file, force, without_keys):
    """Bring the node of backup FILE back into NODE_DIR (new or empty), after checking it."""
    from shared import backup as backups

    passphrase = _backup_passphrase(passphrase_file, needed=not without_keys)
    try:
        manifest, moved = backups.restore(file, node_dir, passphrase, force=force,
                                          without_keys=without_keys)
    except backups.BackupError as exc:
        _fail(str(exc))
    if moved:
        click.echo(f"the former content of {node_dir} is in {moved}")
    click.echo(f"restored {manifest['node']['tier']} node {manifest['node']['code']} "
               f"{manifest['node']['name']} into {node_dir}: "
               f"{manifest['store']['doc_count']} documents, {manifest['blobs']} scans "
               f"(backup of {clock.format_time(manifest['created_at'])})")


if __name__ == "__main__":  # pragma: no cover
    main()
