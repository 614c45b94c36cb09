"""A node stays up (issue 12, findings 5 and 6), against real ``tongban serve`` processes.

* 150 idle connections that sent half a request header (slowloris) leave room for a normal
  request, and are closed once ``SERVE_HEADER_TIMEOUT`` passes, trickling or not;
* 200 longpolls from one scoped account: the node answers other requests, the feeds
  beyond ``FEED_MAX_PER_PRINCIPAL`` are refused with CouchDB's 429 at once, and once the
  clients have gone their feeds end within seconds, not at their timeout;
* feeds are capped per principal and in all (429 / 503), and a feed ends when its client
  goes away;
* wrong Basic passwords: 64 parallel clients on many addresses and accounts grow serve's
  resident memory by less than 50 MiB (a few password checks at a time); after the
  throttle engages, wrong passwords are refused without a check (429) while the right
  password of another account, from another address, still works.

Everything binds to 127.0.0.1 (clients take other 127.x source addresses to be other
stations); every wait is bounded and the nodes are stopped by the fixtures. The only time
bounds asserted are the issue's availability bounds (an answer within 5 s).
"""

import base64
import http.client
import json
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shared import auth, errors
from shared import config as cfg
from tests import nodeproc
from tests.nodeproc import eventually

TOWNSHIP, VILLAGE = "441521101", "441521101001"
TABLET, TABLET_PASSWORD = "tablet", "tablet-secret-1"
ANSWER_WITHIN = 5.0  # the availability bound (seconds)
# The defaults the process tests rely on (read with .get so that this file also runs,
# and fails on its assertions, against a tree from before these settings).
PER_PRINCIPAL = cfg.DEFAULTS.get("FEED_MAX_PER_PRINCIPAL", 8)
FAILURE_LIMIT = cfg.DEFAULTS.get("AUTH_FAILURE_LIMIT", 10)


# -- clients --------------------------------------------------------------------------------


def basic(username, password):
    token = base64.b64encode(f"{username}:{password}".encode("utf-8")).decode("ascii")
    return f"Basic {token}"


def get(node, path, credentials=None, source="127.0.0.1", timeout=ANSWER_WITHIN):
    """``GET path`` from ``source`` (a 127.x address): ``(status, headers, body)``."""
    port = int(node.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        headers = {"Accept": "application/json"}
        if credentials:
            headers["Authorization"] = basic(*credentials)
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def timed_get(node, path, credentials=None, source="127.0.0.1"):
    """``get`` and how long it took (seconds)."""
    started = time.monotonic()
    status, headers, body = get(node, path, credentials, source)
    return status, headers, body, time.monotonic() - started


def open_raw(node, data, source="127.0.0.1"):
    """A socket to the node that has sent ``data`` (bytes) and nothing more."""
    port = int(node.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(source, 0))
    sock.sendall(data)
    return sock


def request_head(path, credentials=None):
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Accept: application/json"]
    if credentials:
        lines.append(f"Authorization: {basic(*credentials)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def read_answer(sock, timeout):
    """``(status, body bytes)`` of the answer on ``sock``, or None when none began within
    ``timeout`` seconds (a feed still waiting). Reads the body by Content-Length."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return ("closed", data) if data else None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while length is not None and len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, body
    except socket.timeout:
        return None


def closed_by_server(socks, timeout):
    """Those of ``socks`` the server closed (EOF or reset) within ``timeout`` seconds."""
    readable, _, _ = select.select(socks, [], [], timeout)
    closed = []
    for sock in readable:
        sock.settimeout(0.5)
        try:
            if sock.recv(1024) == b"":
                closed.append(sock)
        except ConnectionError:
            closed.append(sock)
        except socket.timeout:
            pass
    return closed


def answers_within(socks, wanted, timeout):
    """``{sock: (status, body)}`` of the answers that arrive on ``socks`` until ``wanted``
    have arrived and no other follows for a second, or ``timeout`` seconds pass."""
    answers, deadline = {}, time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = [sock for sock in socks if sock not in answers]
        quiet = 1.0 if len(answers) >= wanted else 0.5
        readable, _, _ = select.select(waiting, [], [], quiet)
        if not readable:
            if len(answers) >= wanted:
                break
            continue
        for sock in readable:
            answer = read_answer(sock, 2.0)
            if answer is not None:
                answers[sock] = answer
    return answers


def close_all(socks):
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass


def longpoll_path(timeout_ms=60000, heartbeat_ms=None):
    path = f"/db/_changes?feed=longpoll&since=now&timeout={timeout_ms}"
    return path + (f"&heartbeat={heartbeat_ms}" if heartbeat_ms else "")


def status_of_proc(pid, field):
    """A field of /proc/<pid>/status in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


# -- nodes ----------------------------------------------------------------------------------


def township(tmp_path, **settings):
    """A township directory with the full-scope ``replicator`` and a scoped ``tablet``
    account (made with the CLI), ``settings`` written to its tongban.json."""
    node_dir = nodeproc.make_node_dir(tmp_path / "town", tier="township", code=TOWNSHIP,
                                      name="测试镇")
    nodeproc.tongban("user", "add", node_dir, TABLET, "--role", "replicator",
                     "--scope", VILLAGE, input_text=TABLET_PASSWORD + "\n")
    if settings:
        nodeproc.update_config(node_dir, **settings)
    return node_dir


@pytest.fixture
def serve_nodes():
    """Start ``tongban serve`` on a directory; every node started is stopped after."""
    started = []

    def start(node_dir):
        node = nodeproc.start_serve(node_dir)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


REPLICATOR = (nodeproc.REPLICATOR_USER, nodeproc.REPLICATOR_PASSWORD)
TABLET_AUTH = (TABLET, TABLET_PASSWORD)


# -- slowloris --------------------------------------------------------------------------------


def test_idle_half_sent_headers_neither_block_the_node_nor_stay_open(tmp_path, serve_nodes):
    node = serve_nodes(township(tmp_path, SERVE_HEADER_TIMEOUT=8, SERVE_CLEANUP_INTERVAL=1))
    partial = b"GET /db HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow"
    socks = []
    try:
        for index in range(150):
            socks.append(open_raw(node, partial, source=f"127.0.2.{index + 1}"))
        opened = time.monotonic()
        # Within the header timeout, with every idle connection open: a normal request
        # (and an authenticated one) still answers within 5 s.
        status, _, body, took = timed_get(node, "/db", REPLICATOR)
        assert status == 200 and json.loads(body)["db_name"], body
        status, _, _, took_home = timed_get(node, "/")
        assert status == 200
        assert time.monotonic() - opened < 8, "the header timeout passed before the check"
        print(f"\nslowloris: /db answered in {took:.3f} s, / in {took_home:.3f} s "
              "with 150 idle connections open")
        # Ten of them trickle a byte a second: still a header that never ends.
        trickling, quiet = socks[:10], socks[10:]
        stop = threading.Event()

        def trickle():
            while not stop.wait(1.0):
                for sock in trickling:
                    try:
                        sock.send(b"x")
                    except OSError:
                        pass

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            # The header timeout (8 s, looked for every second) closes them all; the idle
            # timeout (30 s) would never close the trickling ones.
            closed_at = {}

            def all_closed():
                waiting = [sock for sock in socks if sock not in closed_at]
                for sock in closed_by_server(waiting, 0.2):
                    closed_at[sock] = time.monotonic() - opened
                return len(closed_at) == len(socks)

            eventually(all_closed, "the server closing every half-sent header", timeout=25)
        finally:
            stop.set()
            thread.join(5)
        print(f"slowloris: all 150 closed by the server {max(closed_at.values()):.1f} s "
              f"after opening (trickling ones by "
              f"{max(closed_at[sock] for sock in trickling):.1f} s)")
        assert len(quiet) == 140
        assert get(node, "/db", REPLICATOR)[0] == 200
    finally:
        close_all(socks)


# -- longpolls ------------------------------------------------------------------------------


def test_a_flood_of_longpolls_from_one_account_leaves_the_node_reachable(tmp_path,
                                                                         serve_nodes):
    node = serve_nodes(township(tmp_path))
    per_principal = PER_PRINCIPAL
    # The tablet's first login (its password is checked once, then remembered).
    assert get(node, "/db", TABLET_AUTH)[0] == 200
    head = request_head(longpoll_path(), TABLET_AUTH)
    socks = []
    try:
        started = time.monotonic()
        for _ in range(200):
            socks.append(open_raw(node, head))
        # The node answers others (and the home page) within 5 s during the flood.
        status, _, _, took = timed_get(node, "/db", REPLICATOR, source="127.0.3.1")
        assert status == 200
        status, _, _, took_home = timed_get(node, "/", source="127.0.3.2")
        assert status == 200
        # Feeds beyond the account's limit are refused at once with CouchDB's error.
        refused = list(answers_within(socks, 200 - per_principal, timeout=20).values())
        assert len(refused) >= 200 - per_principal
        for status, body in refused:
            assert status == 429, (status, body)
            error = json.loads(body)
            assert error["error"] == "too_many_requests" and "上限" in error["reason"]
        print(f"\nlongpoll flood: /db answered in {took:.3f} s, / in {took_home:.3f} s; "
              f"{len(refused)} of 200 refused with 429 within "
              f"{time.monotonic() - started:.1f} s, {200 - len(refused)} waiting")
    finally:
        close_all(socks)
    gone = time.monotonic()
    # The clients have gone: their waiting feeds end within seconds (they asked for 60 s),
    # so the account may open as many again, each of which waits its full second.
    freed = {}

    def feeds_again():
        with ThreadPoolExecutor(per_principal) as pool:
            results = list(pool.map(
                lambda _: get(node, longpoll_path(timeout_ms=1000), TABLET_AUTH,
                              timeout=10)[0],
                range(per_principal)))
        if all(status == 200 for status in results):
            freed.setdefault("after", time.monotonic() - gone)
            return True
        return False

    eventually(feeds_again, "the feeds of the gone clients ending", timeout=20, interval=0.2)
    print(f"longpoll flood: the account's {per_principal} feeds free again "
          f"{freed['after']:.1f} s after its clients went away")
    assert freed["after"] < 15  # not the 60 s the longpolls asked for
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(
            lambda index: get(node, "/db", REPLICATOR, source=f"127.0.4.{index + 1}")[0],
            range(60)))
    assert statuses == [200] * 60


def test_feeds_are_capped_per_principal_and_in_all_and_end_with_their_client(
        tmp_path, serve_nodes):
    node = serve_nodes(township(tmp_path, FEED_MAX_PER_PRINCIPAL=2, FEED_MAX_CONCURRENT=3))
    # Warm the credential cache so that each feed below is only a feed.
    assert get(node, "/db", TABLET_AUTH)[0] == 200
    assert get(node, "/db", REPLICATOR)[0] == 200
    waiting = longpoll_path(heartbeat_ms=200)
    socks = []

    def open_feed(credentials):
        sock = open_raw(node, request_head(waiting, credentials))
        socks.append(sock)
        return sock, read_answer(sock, ANSWER_WITHIN)

    try:
        # A waiting feed sends its status line with its first heartbeat.
        first, answer = open_feed(TABLET_AUTH)
        assert answer is not None and answer[0] == 200
        second, answer = open_feed(TABLET_AUTH)
        assert answer is not None and answer[0] == 200
        _, answer = open_feed(TABLET_AUTH)
        assert answer is not None and answer[0] == 429
        assert json.loads(answer[1])["error"] == "too_many_requests"
        _, answer = open_feed(REPLICATOR)
        assert answer is not None and answer[0] == 200
        _, answer = open_feed(REPLICATOR)
        assert answer is not None and answer[0] == 503
        body = json.loads(answer[1])
        assert body["error"] == "service_unavailable" and "上限" in body["reason"]
        # A continuous feed counts as well.
        status, headers, _ = get(node, "/db/_changes?feed=continuous&timeout=60000",
                                 TABLET_AUTH)
        assert status == 429 and headers.get("Retry-After")
        # Short requests are not feeds: the node answers them.
        assert get(node, "/db/_changes", TABLET_AUTH)[0] == 200
        # One client goes away: its feed ends, and the tablet may open one again.
        first.close()
        socks.remove(first)
        gone = time.monotonic()

        def admitted():
            sock, answer = open_feed(TABLET_AUTH)
            if answer is not None and answer[0] == 200:
                return True
            socks.remove(sock)
            sock.close()
            return False

        eventually(admitted, "a feed slot freed by the client leaving", timeout=15,
                   interval=0.2)
        print(f"\nfeed caps: a gone client's slot was free again after "
              f"{time.monotonic() - gone:.1f} s")
    finally:
        close_all(socks)


# -- wrong passwords --------------------------------------------------------------------------


ACCOUNTS = 16


def test_parallel_wrong_passwords_grow_serve_memory_by_less_than_50_mib(tmp_path,
                                                                        serve_nodes):
    from shared.app import create_app
    from tests.conftest import add_account

    node_dir = township(tmp_path)
    app = create_app(node_dir=node_dir)  # more accounts, quicker than the CLI
    try:
        for index in range(ACCOUNTS):
            add_account(app, f"tablet{index:02d}", f"right-password-{index}",
                        scope=VILLAGE)
    finally:
        app.extensions["store"].close()
    node = serve_nodes(node_dir)
    pid = node.process.pid
    # Warm up: one login, then 64 parallel requests (remembered credentials) so that every
    # serve thread has run once before the baseline.
    assert get(node, "/db", REPLICATOR)[0] == 200
    with ThreadPoolExecutor(64) as pool:
        assert set(pool.map(
            lambda i: get(node, "/db", REPLICATOR, source=f"127.0.5.{i + 1}")[0],
            range(64))) == {200}
    time.sleep(0.5)
    baseline = status_of_proc(pid, "VmRSS")
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        hwm_reset = True
    except OSError:
        hwm_reset = False
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            try:
                peak[0] = max(peak[0], status_of_proc(pid, "VmRSS"))
            except (OSError, AssertionError):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def client(index):
        """Three wrong guesses from one address (each client its own), at one account."""
        account = f"tablet{index % ACCOUNTS:02d}"
        return [get(node, "/db", (account, f"guess-{index}-{attempt}"),
                    source=f"127.0.6.{index + 1}", timeout=60)[0]
                for attempt in range(3)]

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(64) as pool:
            statuses = [status for result in pool.map(client, range(64)) for status in result]
    finally:
        stop.set()
        sampler.join(5)
    took = time.monotonic() - started
    if hwm_reset:
        peak[0] = max(peak[0], status_of_proc(pid, "VmHWM"))
    growth_mib = (peak[0] - baseline) / 1024
    checked = statuses.count(401)
    print(f"\nwrong passwords: 64 clients x 3 guesses in {took:.1f} s; {checked} checked "
          f"(401), {statuses.count(429)} refused unchecked (429); serve VmRSS "
          f"{baseline / 1024:.0f} MiB -> peak {peak[0] / 1024:.0f} MiB "
          f"(+{growth_mib:.1f} MiB)")
    assert set(statuses) <= {401, 429}
    # Each account takes at most AUTH_FAILURE_LIMIT checks in its window.
    assert checked <= ACCOUNTS * FAILURE_LIMIT
    assert growth_mib < 50
    # The node still serves, and remembered logins need no check.
    assert get(node, "/db", REPLICATOR, source="127.0.7.1")[0] == 200


def test_wrong_passwords_are_refused_unchecked_once_the_throttle_engages(tmp_path,
                                                                        serve_nodes):
    node = serve_nodes(township(tmp_path))
    limit = FAILURE_LIMIT
    attacker, station, other = "127.0.8.66", "127.0.8.3", "127.0.8.4"
    # The tablet works from its station before the guessing starts.
    assert get(node, "/db", TABLET_AUTH, source=station)[0] == 200
    # 40 guesses in a row at the tablet's password from one address.
    answers = [timed_get(node, "/db", (TABLET, f"guess-{attempt}"), source=attacker)
               for attempt in range(40)]
    statuses = [answer[0] for answer in answers]
    assert statuses[:limit] == [401] * limit  # each checked, then counted
    assert statuses[limit:] == [429] * (40 - limit)  # refused without a check
    for status, headers, body, took in answers[limit:]:
        error = json.loads(body)
        assert error["error"] == "too_many_requests" and "分钟后再试" in error["reason"]
        assert int(headers["Retry-After"]) > 0
        assert took < ANSWER_WITHIN
    refused_times = [answer[3] for answer in answers[limit:]]
    checked_times = [answer[3] for answer in answers[:limit]]
    print(f"\nthrottle: {limit} guesses checked (max {max(checked_times) * 1000:.0f} ms), "
          f"then {40 - limit} refused (max {max(refused_times) * 1000:.0f} ms, "
          f"median {sorted(refused_times)[len(refused_times) // 2] * 1000:.1f} ms)")
    # 64 parallel guesses from the same address: none is checked.
    with ThreadPoolExecutor(64) as pool:
        burst = list(pool.map(
            lambda i: get(node, "/db", (TABLET, f"parallel-{i}"), source=attacker)[0],
            range(64)))
    assert burst == [429] * 64
    # Another account's right password, never used before, from another address: works.
    assert get(node, "/db", REPLICATOR, source=other)[0] == 200
    # The tablet itself still works at its station.
    assert get(node, "/db", TABLET_AUTH, source=station)[0] == 200
    # The guessing address is locked for everyone it has not already proven: even a right
    # password it never used is refused unchecked there.
    status, _, body = get(node, "/db", ("nobody-yet", "x"), source=attacker)
    assert status == 429


def test_parallel_first_logins_of_one_client_cost_one_check(tmp_path, serve_nodes):
    """A client opening many connections at once (PouchDB) is checked once, not refused."""
    node = serve_nodes(township(tmp_path))
    with ThreadPoolExecutor(48) as pool:
        statuses = list(pool.map(lambda _: get(node, "/db", TABLET_AUTH)[0], range(48)))
    assert statuses == [200] * 48


# -- the pieces, in process ---------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_failure_throttle_locks_windows_and_known_addresses():
    clock = FakeClock()
    throttle = auth.FailureThrottle(limit=3, window=60, lockout=120, max_keys=100,
                                    clock=clock)
    home = throttle.keys("tablet", "10.0.0.1")
    throttle.begin(home)
    throttle.finish(home, True, "tablet")  # the tablet logs in from home
    guesses = throttle.keys("tablet", "10.0.0.66")
    for _ in range(3):
        throttle.begin(guesses)
        throttle.finish(guesses, False)
    with pytest.raises(auth.Throttled) as refused:
        throttle.begin(guesses)
    assert refused.value.code == 429 and refused.value.retry_after == 120
    # Locked for another address too, but not where the account logged in before.
    with pytest.raises(auth.Throttled):
        throttle.begin(throttle.keys("tablet", "10.0.0.2"))
    throttle.begin(home)
    throttle.finish(home, True, "tablet")
    # Checks in progress count towards the limit: a fourth at once is refused.
    clock.now += 121
    fresh = throttle.keys("other", "10.0.0.9")
    throttle.begin(fresh)
    throttle.begin(fresh)
    throttle.begin(fresh)
    with pytest.raises(auth.Throttled) as busy:
        throttle.begin(fresh)
    assert busy.value.description == auth.BUSY
    for _ in range(3):
        throttle.finish(fresh, True, "other")
    # Failures spread beyond the window do not lock.
    spread = throttle.keys("spread", "10.0.0.10")
    for _ in range(6):
        throttle.begin(spread)
        throttle.finish(spread, False)
        clock.now += 40
    throttle.begin(spread)
    # The table is bounded.
    for index in range(500):
        throttle.begin(throttle.keys(None, f"10.1.{index // 250}.{index % 250}"))
    assert len(throttle._entries) <= 100


def test_feed_limits_stay_below_the_threads():
    from shared import serving

    assert serving.FeedLimits.limits({"SERVE_THREADS": 64, "FEED_MAX_PER_PRINCIPAL": 8}) \
        == (48, 8)
    assert serving.FeedLimits.limits({"SERVE_THREADS": 16, "FEED_MAX_CONCURRENT": 40,
                                      "FEED_MAX_PER_PRINCIPAL": 2}) == (15, 2)
    assert serving.FeedLimits.limits(cfg.DEFAULTS)[0] == 48
    limits = serving.FeedLimits()
    assert limits.acquire("a", 2, 1) is None
    assert limits.acquire("a", 2, 1) == "principal"
    assert limits.acquire("b", 2, 1) is None
    assert limits.acquire("c", 2, 1) == "total"
    limits.release("a")
    assert limits.acquire("c", 2, 1) is None and limits.total == 2


@pytest.mark.parametrize("setting", ["SERVE_CONNECTION_LIMIT", "FEED_MAX_PER_PRINCIPAL",
                                     "AUTH_FAILURE_LIMIT", "PASSWORD_CHECK_THREADS"])
def test_bad_staying_up_settings_are_refused_at_start(tmp_path, setting):
    node_dir = tmp_path / "n"
    node_dir.mkdir()
    (node_dir / cfg.CONFIG_FILE).write_text(json.dumps(
        {"TIER": "township", "NODE_CODE": TOWNSHIP, "SECRET_KEY": "x", setting: 0}))
    with pytest.raises(errors.ConfigurationError) as raised:
        cfg.load_config(node_dir)
    assert setting in str(raised.value)


def test_serve_passes_the_settings_to_waitress():
    from shared import serving

    options = serving.waitress_options(dict(cfg.DEFAULTS), 64)
    assert options["connection_limit"] == 500 and options["channel_timeout"] == 30
    assert options["cleanup_interval"] == 5 and options["channel_request_lookahead"] == 1
    assert options["threads"] == 64
