"""``tongban run``: one command keeps a station's ``serve`` and ``syncd`` running.

The supervisor starts both as child processes, restarts either when it exits (waiting
:data:`RUN_RESTART_BACKOFF_INITIAL <shared.config.DEFAULTS>` seconds, doubling after each
quick exit up to ``RUN_RESTART_BACKOFF_MAX``; a child that stayed up
``RUN_RESTART_RESET_AFTER`` seconds starts from the beginning again) and stops both on
SIGTERM or Ctrl-C. What it knows goes to ``<node_dir>/run-state.json`` (written whole,
atomically), which the sync status page and ``/metrics`` read::

    {"started_at": "2026-12-04T09:00:00Z", "pid": 4242, "state": "running",
     "children": {"serve": {"pid", "restarts", "last_exit_code", "last_exit_at",
                            "up_since", "next_restart_at", "command"},
                  "syncd": {...}}}

Logs go to rotating files in ``<node_dir>/logs``: ``run.log`` (the supervisor's own
lines, also on stderr), ``serve.log`` and ``syncd.log`` (each child's stdout and stderr,
read by a thread and written through a :class:`~logging.handlers.RotatingFileHandler`,
so rotation works the same on Windows, where a file held open by a child cannot be
renamed).

Portable: no fork, children in a process group of their own (Ctrl-C reaches only the
supervisor, which stops them in order), ``terminate()`` to stop them, signals that a
platform lacks are skipped. On Linux a child also ends when the supervisor is killed
(``PR_SET_PDEATHSIG``), so a ``kill -9`` leaves no orphan serving the node's files.
"""

import errno
import json
import logging
import logging.handlers
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from xml.sax.saxutils import escape

import click

from shared import clock
from shared import config as cfg
from shared.errors import EXIT_UNUSABLE, ConfigurationError
from shared.syncstatus import iso

logger = logging.getLogger("tongban.run")

#: How a node's own processes are started. ``-P`` (Python 3.11+) keeps the current
#: directory off sys.path, so a folder named ``shared`` where the user stands is never
#: imported in place of this package.
TONGBAN = [sys.executable, "-P", "-m", "shared.cli"]
STATE_FILE = "run-state.json"
LOG_DIR = "logs"
LOCK_FILE = "run.lock"
#: The children, in the order they start (and stop).
CHILDREN = ("serve", "syncd")
#: Seconds between two looks at the children.
POLL_INTERVAL = 0.2
#: The settings of ``tongban run`` (shared/config.py), each a number of at least this.
SETTINGS = {"RUN_RESTART_BACKOFF_INITIAL": 0.01, "RUN_RESTART_BACKOFF_MAX": 0.01,
            "RUN_RESTART_RESET_AFTER": 0.0, "RUN_STOP_TIMEOUT": 0.1,
            "RUN_LOG_MAX_BYTES": 1024, "RUN_LOG_BACKUPS": 1}

#: What a child process runs first on Linux: it asks to be sent SIGTERM when the thread
#: that started it ends (the supervisor's or the demo's, even by kill -9), then becomes
#: the real command (same pid), so no child outlives its parent.
_LAUNCHER = """\
import os, signal, sys
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("the parent has gone")
os.execv(sys.argv[2], sys.argv[2:])
"""


def launch_command(command):
    """``command`` as started by this process: on Linux wrapped so that it ends with the
    thread that starts it (start it from the main thread)."""
    if sys.platform.startswith("linux"):
        return [sys.executable, "-S", "-P", "-c", _LAUNCHER, str(os.getpid()), *command]
    return list(command)


def own_group():
    """``Popen`` arguments that put a child in a process group of its own, so that Ctrl-C
    at the terminal reaches only its parent, which stops it in order."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def port_free(port, host="127.0.0.1"):
    """True when nothing listens on ``host``:``port``."""
    return _bind_error(host, port) is None


def _bind_error(host, port):
    """The OSError binding ``host``:``port`` raises now, or None when it would succeed."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as sock:
            if os.name != "nt":
                # waitress binds with SO_REUSEADDR; probing the same way ignores TIME_WAIT
                # connections left by a previous run and still finds a live listener.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        return exc
    return None


def backoff_delay(quick_exits, initial, maximum):
    """Seconds to wait before restarting a child that exited ``quick_exits`` times in a
    row without staying up (0 for the first): ``initial`` doubled each time, at most
    ``maximum``."""
    return min(float(maximum), float(initial) * 2 ** min(quick_exits, 64))


def read_state(node_dir):
    """``<node_dir>/run-state.json`` as a dict, or None when absent or unreadable."""
    try:
        state = json.loads((Path(node_dir) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def run_settings(config):
    """The ``RUN_*`` settings of a node's configuration, checked.

    :raises ConfigurationError: one is not a number or too small.
    """
    settings = {}
    for key, least in SETTINGS.items():
        value = config.get(key, cfg.DEFAULTS[key])
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < least:
            raise ConfigurationError(f"{key} must be a number of at least {least}, not {value!r}")
        settings[key] = value
    return settings


class Child:
    """One supervised process (serve or syncd), its log file and its restart record."""

    def __init__(self, name, command, log_path, settings):
        self.name = name
        self.command = command
        self.output = logging.handlers.RotatingFileHandler(
            log_path, maxBytes=int(settings["RUN_LOG_MAX_BYTES"]),
            backupCount=int(settings["RUN_LOG_BACKUPS"]), encoding="utf-8")
        self.output.setFormatter(logging.Formatter("%(message)s"))
        self.process = None
        self.reader = None
        self.restarts = 0
        self.quick_exits = 0
        self.last_exit_code = None
        self.last_exit_at = None
        self.up_since = None
        self.started = None  # monotonic
        self.restart_at = None  # monotonic, while waiting to restart
        self.next_restart_at = None  # the same on the node's clock, for people

    def write(self, line):
        """One line into the child's log file."""
        self.output.handle(logging.makeLogRecord({"msg": line.rstrip("\r\n")}))

    def start(self, env):
        """Start the process and the thread that copies its output into the log."""
        self.process = subprocess.Popen(
            launch_command(self.command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, **own_group())
        self.started = time.monotonic()
        self.up_since = iso(clock.time())
        self.restart_at = self.next_restart_at = None
        self.write(f"--- tongban run: {self.name} started, pid {self.process.pid} "
                   f"({self.up_since}) ---")
        self.reader = threading.Thread(target=self._copy, args=(self.process.stdout,),
                                       name=f"{self.name}-output", daemon=True)
        self.reader.start()

    def _copy(self, pipe):
        for raw in iter(pipe.readline, b""):
            try:
                self.write(raw.decode("utf-8", errors="replace"))
            except Exception:  # noqa: BLE001, S110 - a full disk must not stop the child's pipe
                pass
        pipe.close()

    def running(self):
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def exited(self, code):
        """Record that the process ended with ``code``; returns the seconds it was up."""
        seconds = time.monotonic() - self.started
        self.last_exit_code = code
        self.last_exit_at = iso(clock.time())
        self.up_since = None
        self.finish_output()
        self.process = None
        return seconds

    def finish_output(self, timeout=2.0):
        """Let the reader copy what the ended process wrote last."""
        if self.reader is not None:
            self.reader.join(timeout)
            self.reader = None

    def state(self):
        """This child's member of ``run-state.json``."""
        return {"pid": self.process.pid if self.process is not None else None,
                "restarts": self.restarts, "last_exit_code": self.last_exit_code,
                "last_exit_at": self.last_exit_at, "up_since": self.up_since,
                "next_restart_at": self.next_restart_at, "command": self.command}


class Supervisor:
    """Runs a node's children until :meth:`request_stop`; see the module's docstring."""

    def __init__(self, node_dir, settings, host="127.0.0.1", port=5984, threads=64):
        self.node_dir = Path(node_dir)
        self.settings = settings
        self.url = f"http://{host}:{port}/"
        log_dir = self.node_dir / LOG_DIR
        log_dir.mkdir(exist_ok=True)
        where = str(self.node_dir)
        commands = {
            "serve": [*TONGBAN, "-v", "serve", where, "--host", host, "--port", str(port),
                      "--threads", str(threads)],
            "syncd": [*TONGBAN, "syncd", where],
        }
        self.children = [Child(name, commands[name], log_dir / f"{name}.log", settings)
                         for name in CHILDREN]
        self.started_at = iso(clock.time())
        self.state = "starting"
        self.stop_signal = None
        self.exit_code = 0
        # Lines appear in the log as they are written; the logs are UTF-8 on every platform.
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}

    def request_stop(self, signum=None, frame=None):
        """Stop at the next look (a signal handler: SIGTERM, SIGINT, SIGHUP, SIGBREAK)."""
        if self.stop_signal is None:
            self.stop_signal = signum or 0

    def run(self):
        """Start the children and keep them running until a stop is requested; then stop
        them. Returns the process's exit code (0: a clean stop)."""
        logger.info("tongban run %s: serve on %s, syncd; logs in %s", self.node_dir,
                    self.url, self.node_dir / LOG_DIR)
        try:
            for child in self.children:
                self._start(child)
            self.state = "running"
            self.write_state()
            while self.stop_signal is None:
                self.step(time.monotonic())
                time.sleep(POLL_INTERVAL)
        finally:
            self.stop()
        return self.exit_code

    def _start(self, child):
        try:
            child.start(self.env)
        except OSError as exc:  # the interpreter vanished (an upgrade in progress?)
            logger.error("cannot start %s: %s", child.name, exc)
            child.started = time.monotonic()
            self._schedule_restart(child, None, 0.0)
            return
        if child.restarts:
            logger.info("%s restarted (pid %d, restart %d)", child.name, child.process.pid,
                        child.restarts)
        else:
            logger.info("%s started (pid %d)", child.name, child.process.pid)

    def step(self, now):
        """One look at the children: record exits, schedule and make restarts."""
        changed = False
        for child in self.children:
            if self.stop_signal is not None:
                return  # an exit now is the stop's: stop() records it
            if child.process is not None:
                code = child.process.poll()
                if code is None:
                    continue
                seconds_up = child.exited(code)
                if code == EXIT_UNUSABLE:
                    # A bad setting or a damaged store: every restart would fail the same.
                    logger.error("%s cannot start on %s as it is (see %s); stopping, not "
                                 "restarting", child.name, self.node_dir,
                                 self.node_dir / LOG_DIR / f"{child.name}.log")
                    self.exit_code = EXIT_UNUSABLE
                    self.request_stop()
                    self.write_state()
                    return
                self._schedule_restart(child, code, seconds_up)
                changed = True
            elif child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._start(child)
                changed = True
        if changed:
            self.write_state()

    def _schedule_restart(self, child, code, seconds_up):
        if seconds_up >= self.settings["RUN_RESTART_RESET_AFTER"]:
            child.quick_exits = 0  # it stayed up: back to the shortest wait
        delay = backoff_delay(child.quick_exits, self.settings["RUN_RESTART_BACKOFF_INITIAL"],
                              self.settings["RUN_RESTART_BACKOFF_MAX"])
        child.quick_exits += 1
        child.restart_at = time.monotonic() + delay
        child.next_restart_at = iso(clock.time() + delay)
        if code is not None:
            logger.warning("%s exited with code %s; restarting in %s s (restart %d)",
                           child.name, code, f"{delay:g}", child.restarts + 1)

    def stop(self):
        """Terminate the children, wait ``RUN_STOP_TIMEOUT`` seconds, kill what is left."""
        self.state = "stopping"
        for child in self.children:
            if child.process is not None and not child.running():  # ended since the last look
                child.exited(child.process.returncode)
        running = [child for child in self.children if child.running()]
        if running:
            logger.info("stopping %s", ", ".join(child.name for child in running))
        for child in running:
            child.process.terminate()  # SIGTERM; on Windows TerminateProcess
        deadline = time.monotonic() + float(self.settings["RUN_STOP_TIMEOUT"])
        for child in running:
            try:
                code = child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %g s: killed", child.name,
                               self.settings["RUN_STOP_TIMEOUT"])
                child.process.kill()
                code = child.process.wait()
            child.exited(code)
            logger.info("%s stopped (code %s)", child.name, code)
        for child in self.children:
            child.restart_at = child.next_restart_at = None
        self.state = "stopped"
        self.write_state()
        for child in self.children:
            child.output.close()

    def write_state(self):
        """Write ``run-state.json`` whole: a temporary file, then ``os.replace``."""
        state = {"started_at": self.started_at, "pid": os.getpid(), "state": self.state,
                 "url": self.url,
                 "stopped_at": iso(clock.time()) if self.state == "stopped" else None,
                 "children": {child.name: child.state() for child in self.children}}
        path = self.node_dir / STATE_FILE
        temporary = path.with_name(STATE_FILE + ".tmp")
        try:
            temporary.write_text(json.dumps(state, ensure_ascii=False, indent=2) + "\n",
                                 encoding="utf-8")
            for attempt in range(5):
                try:
                    os.replace(temporary, path)
                    return
                except PermissionError:  # Windows: a reader has the file open just now
                    if attempt == 4:
                        raise
                    time.sleep(0.05)
        except OSError as exc:  # the next change writes it again
            logger.warning("cannot write %s: %s", path, exc)


# -- the command ---------------------------------------------------------------------

#: Signals that stop the station, where the platform has them.
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGBREAK")


def running(node_dir):
    """True when a ``tongban run`` holds ``node_dir`` now (its ``run.lock``)."""
    if not (Path(node_dir) / LOCK_FILE).exists():
        return False
    try:
        handle = _lock(node_dir)
    except click.ClickException:
        return True
    handle.close()
    return False


def _lock(node_dir):
    """Hold ``<node_dir>/run.lock`` for this process's life (released when it ends, even
    by kill -9), or raise ClickException when another ``tongban run`` holds it."""
    handle = open(Path(node_dir) / LOCK_FILE, "a+b")  # noqa: SIM115 - held until exit
    try:
        handle.seek(0)  # every process locks the same byte
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise click.ClickException(
            f"{node_dir} 已由另一个 tongban run 运行 / another tongban run is running this "
            "node") from None
    return handle


def _check_port(host, port):
    error = _bind_error(host, port)
    if error is None:
        return
    if error.errno == errno.EADDRINUSE:
        reason = f"端口 {port} 已被占用 / port {port} is in use"
    elif error.errno == errno.EACCES:
        reason = f"没有权限使用端口 {port} / permission denied for port {port}"
    else:
        reason = f"无法在 {host}:{port} 上监听 / cannot listen on {host}:{port}: " \
                 f"{error.strerror or error}"
    raise click.ClickException(f"{reason}: nothing was started (--host, --port)")


def run_station(node_dir, host="127.0.0.1", port=5984, threads=64):
    """``tongban run``: check the node, then supervise serve and syncd until stopped.

    Nothing is started or written when the node directory, its ``RUN_*`` settings or the
    port are wrong.

    :raises click.ClickException: with the reason.
    """
    node_dir = Path(node_dir).resolve()
    try:
        settings = run_settings(cfg.load_config(node_dir))
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    # A second run on this node is told so, not "port in use" (and a refused start
    # writes nothing: the lock file is only made once the port is free).
    lock = _lock(node_dir) if (node_dir / LOCK_FILE).exists() else None
    _check_port(host, port)
    lock = lock or _lock(node_dir)
    supervisor = Supervisor(node_dir, settings, host=host, port=port, threads=threads)
    handler = logging.handlers.RotatingFileHandler(
        node_dir / LOG_DIR / "run.log", maxBytes=int(settings["RUN_LOG_MAX_BYTES"]),
        backupCount=int(settings["RUN_LOG_BACKUPS"]), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    previous = {}
    for name in STOP_SIGNALS:
        if hasattr(signal, name):
            previous[name] = signal.signal(getattr(signal, name), supervisor.request_stop)
    try:
        code = supervisor.run()
        how = f"signal {supervisor.stop_signal}" if supervisor.stop_signal else "request"
        logger.info("tongban run stopped (%s)", how)
        return code
    finally:
        for name, handler_before in previous.items():
            signal.signal(getattr(signal, name), handler_before)
        logger.removeHandler(handler)
        handler.close()
        lock.close()


# -- service files -------------------------------------------------------------------

def _run_arguments(node_dir, host, port, threads):
    return ["run", str(node_dir), "--host", host, "--port", str(port),
            "--threads", str(threads)]


def _systemd_quote(word):
    if word and not any(c in word for c in ' \t"\'\\;$%'):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') \
        .replace("%", "%%").replace("$", "$$") + '"'


def _systemd_value(text):
    """``text`` with systemd's specifier character escaped (``%`` → ``%%``)."""
    return text.replace("%", "%%")


def systemd_unit(node_dir, config, host, port, threads, user=None):
    """A systemd unit that runs ``tongban run`` on ``node_dir`` (absolute paths)."""
    stop = float(config.get("RUN_STOP_TIMEOUT", cfg.DEFAULTS["RUN_STOP_TIMEOUT"]))
    command = " ".join(_systemd_quote(w) for w in
                       [*TONGBAN, *_run_arguments(node_dir, host, port, threads)])
    lines = [
        "[Unit]",
        _systemd_value(f"Description=tongban station {config['NODE_CODE']} "
                       f"{config.get('NODE_NAME') or ''}".rstrip() + f" ({config['TIER']})"),
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        *([f"User={user}"] if user else []),
        f"WorkingDirectory={_systemd_value(str(node_dir))}",
        f"ExecStart={command}",
        "Environment=PYTHONUNBUFFERED=1",
        # tongban run restarts serve and syncd itself; systemd restarts tongban run.
        "Restart=on-failure",
        # A node that cannot start as it is (a bad setting, a damaged store) exits 78.
        f"RestartPreventExitStatus={EXIT_UNUSABLE}",
        "RestartSec=5",
        # SIGTERM to tongban run only: it stops its children in order (and kills them
        # after RUN_STOP_TIMEOUT); systemd kills whatever is left after TimeoutStopSec.
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={int(stop) + 15}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def service_id(config):
    """The service's name: ``tongban-<code>``."""
    return f"tongban-{config['NODE_CODE']}"


def winsw_xml(node_dir, config, host, port, threads):
    """A WinSW configuration (``tongban-<code>.xml``) that runs ``tongban run`` as a
    Windows service."""
    stop = float(config.get("RUN_STOP_TIMEOUT", cfg.DEFAULTS["RUN_STOP_TIMEOUT"]))
    name = f"tongban {config['NODE_CODE']} {config.get('NODE_NAME') or ''}".rstrip()
    arguments = [*TONGBAN[1:], *_run_arguments(node_dir, host, port, threads)]
    lines = [
        "<service>",
        f"  <id>{escape(service_id(config))}</id>",
        f"  <name>{escape(name)}</name>",
        (f"  <description>tongban {escape(cfg.TIER_NAMES[config['TIER']])}服务站"
         "（serve + syncd, tongban run）</description>"),
        f"  <executable>{escape(TONGBAN[0])}</executable>",
        # One element per argument: WinSW quotes each as needed.
        *[f"  <argument>{escape(word)}</argument>" for word in arguments],
        f"  <workingdirectory>{escape(str(node_dir))}</workingdirectory>",
        "  <startmode>Automatic</startmode>",
        '  <env name="PYTHONUNBUFFERED" value="1"/>',
        '  <env name="PYTHONIOENCODING" value="utf-8"/>',
        # tongban run's own output; serve's and syncd's logs are in the node's logs folder.
        f"  <logpath>{escape(str(node_dir / LOG_DIR))}</logpath>",
        '  <log mode="roll-by-size">',
        "    <sizeThreshold>10240</sizeThreshold>",
        "    <keepFiles>8</keepFiles>",
        "  </log>",
        '  <onfailure action="restart" delay="10 sec"/>',
        '  <onfailure action="restart" delay="60 sec"/>',
        "  <resetfailure>1 hour</resetfailure>",
        # Ctrl+C to tongban run first, which stops serve and syncd itself.
        "  <stopparentprocessfirst>true</stopparentprocessfirst>",
        f"  <stoptimeout>{int(stop) + 15} sec</stoptimeout>",
        "</service>",
    ]
    return "\n".join(lines) + "\n"


def service_file(kind, node_dir, host="127.0.0.1", port=5984, threads=64, user=None):
    """``tongban service``: the systemd unit or the WinSW XML for ``node_dir``.

    :raises click.ClickException: the directory is not a node, or its settings are wrong.
    """
    node_dir = Path(node_dir).resolve()
    try:
        config = cfg.load_config(node_dir)
        run_settings(config)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    if kind == "systemd":
        return systemd_unit(node_dir, config, host, port, threads, user=user)
    return winsw_xml(node_dir, config, host, port, threads)
