"""Staff login for the web pages: server-side sessions, login throttling, roles and CSRF.

The CouchDB endpoints at ``/db`` authenticate with HTTP Basic (``shared/auth.py``); the
pages staff use in a browser log in here instead. A session is a row of
:class:`StaffSession`; the browser holds only a random token in the ``tongban_session``
cookie and the table holds its SHA-256, so a copy of the database opens no session.

A view opts in with ``@staff_required(*roles)`` (or a whole blueprint with
:func:`require_staff`): the caller must be logged in, hold one of ``roles``, and every
POST, PUT, PATCH or DELETE must carry the session's CSRF token as the ``csrf_token`` form
field or the ``X-CSRF-Token`` header. Templates get ``csrf_token()``, ``csrf_field()``
and ``current_staff()``.

Times are naive UTC datetimes from :func:`now`, which tests replace.
"""

import functools
import hashlib
import hmac
import logging
import math
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from flask import (
    Blueprint,
    current_app,
    g,
    has_request_context,
    redirect,
    render_template,
    render_template_string,
    request,
    url_for,
)
from itsdangerous import BadSignature, URLSafeSerializer
from markupsafe import Markup, escape
from peewee import CharField, DateTimeField, IntegerField

from shared import clock, models
from shared import config as cfg
from shared.db import database
from shared.errors import ConfigurationError, TongbanError

logger = logging.getLogger(__name__)

bp = Blueprint("staff", __name__)

#: Cookie name prefixes; each node appends its code (:func:`session_cookie`), so two nodes
#: on one host (the demo: 127.0.0.1, ports 8600–8606) never log each other's staff out.
COOKIE_NAME = "tongban_session"
LOGIN_CSRF_COOKIE = "tongban_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

DEFAULT_IDLE_MINUTES = cfg.DEFAULTS["STAFF_SESSION_IDLE_MINUTES"]
ABSOLUTE_LIFETIME = timedelta(hours=12)
MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
LOCKOUT = timedelta(minutes=15)
#: How stale ``last_seen`` may get before a request refreshes it.
LAST_SEEN_STEP = timedelta(seconds=30)
MAX_USERNAME_LENGTH = 150

#: Roles that may log in to the pages, with the names staff know them by.
ROLE_NAMES = {
    "clerk": "窗口人员",
    "approver": "审批人员",
    "supervisor": "督查人员",
    "county_admin": "县级管理员",
}
PAGE_ROLES = tuple(ROLE_NAMES)

BAD_CREDENTIALS = "用户名或密码错误。"
MISSING_CREDENTIALS = "请输入用户名和密码。"
NOT_STAFF = "该账号仅用于数据同步，不能登录办事页面。"
THROTTLED = "失败次数过多，请 {minutes} 分钟后再试。"
LOGIN_EXPIRED = "登录页面已过期，请重新输入用户名和密码。"
CSRF_REJECTED = "请求无效：页面已过期或来源不明，请刷新页面后重试。"
FORBIDDEN = "您没有执行此操作的权限（需要角色：{roles}）。"

MESSAGE_PAGE = """{% extends "base.html" %}
{% block title %}{{ title }} · 通办服务站{% endblock %}
{% block content %}<h2>{{ title }}</h2><p id="message">{{ message }}</p>
<p><a href="/">返回首页</a></p>{% endblock %}"""


def now():
    """The current time as a naive UTC datetime (tests replace this function)."""
    return clock.utcnow().replace(tzinfo=None)


def _per_node(prefix, app=None):
    code = (app or current_app).config.get("NODE_CODE") or ""
    return f"{prefix}_{code}" if code else prefix


def session_cookie(app=None):
    """This node's staff session cookie name (``tongban_session_<node code>``)."""
    return _per_node(COOKIE_NAME, app)


def login_csrf_cookie(app=None):
    """This node's login-form CSRF cookie name."""
    return _per_node(LOGIN_CSRF_COOKIE, app)


def hash_token(token):
    """The SHA-256 (hex) under which a session token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def role_names(roles):
    """The Chinese names of ``roles``, in order (unknown roles keep their code)."""
    return [ROLE_NAMES.get(role, role) for role in roles]


class StaffSession(models.BaseModel):
    """A logged-in browser: the hash of its cookie token, who, since when, its CSRF token."""

    token_hash = CharField(unique=True)
    username = CharField(index=True)
    created = DateTimeField()
    last_seen = DateTimeField()
    csrf_token = CharField()

    class Meta:
        table_name = "staff_session"

    @classmethod
    def start(cls, username, at):
        """Open a session for ``username``; returns ``(token, session)``.

        The token goes to the browser and is never stored.
        """
        token = secrets.token_urlsafe(32)
        session = cls.create(token_hash=hash_token(token), username=username, created=at,
                             last_seen=at, csrf_token=secrets.token_urlsafe(32))
        return token, session

    @classmethod
    def find(cls, token):
        """The session whose cookie token is ``token``, or None."""
        if not token:
            return None
        return cls.get_or_none(cls.token_hash == hash_token(token))

    def expired(self, at, idle):
        """True when the session was idle for ``idle`` or is older than the absolute limit."""
        return at - self.last_seen >= idle or at - self.created >= ABSOLUTE_LIFETIME

    @classmethod
    def purge(cls, at, idle):
        """Delete every expired session; returns how many."""
        return cls.delete().where((cls.last_seen <= at - idle) |
                                  (cls.created <= at - ABSOLUTE_LIFETIME)).execute()


class LoginFailure(models.BaseModel):
    """Failed logins of one user name or one client address, and any lock they caused."""

    kind = CharField()  # "user" or "ip"
    key = CharField()
    count = IntegerField(default=0)
    first_failed = DateTimeField()
    locked_until = DateTimeField(null=True)

    class Meta:
        table_name = "login_failure"
        indexes = ((("kind", "key"), True),)

    @classmethod
    def locked_for(cls, kind, key, at):
        """How long ``key`` stays locked after ``at`` (a timedelta), or None."""
        row = cls.get_or_none((cls.kind == kind) & (cls.key == key))
        if row is None or row.locked_until is None or row.locked_until <= at:
            return None
        return row.locked_until - at

    @classmethod
    def record(cls, kind, key, at):
        """Count one failure of ``key``; returns the lock's end once it reaches the limit."""
        with database.atomic():
            row = cls.get_or_none((cls.kind == kind) & (cls.key == key))
            if row is None:
                row = cls(kind=kind, key=key, count=0, first_failed=at)
            if row.count == 0 or at - row.first_failed >= FAILURE_WINDOW:
                # A new window: failures older than the window (or before a lock ended)
                # no longer count.
                row.count, row.first_failed, row.locked_until = 0, at, None
            row.count += 1
            if row.count >= MAX_FAILURES:
                row.locked_until = at + LOCKOUT
            row.save()
            return row.locked_until

    @classmethod
    def clear(cls, kind, key):
        """Forget the failures of ``key``."""
        cls.delete().where((cls.kind == kind) & (cls.key == key)).execute()

    @classmethod
    def purge(cls, at):
        """Delete rows whose window and lock are both over."""
        return cls.delete().where(
            (cls.first_failed <= at - FAILURE_WINDOW) &
            (cls.locked_until.is_null() | (cls.locked_until <= at))).execute()


class LoginRefused(TongbanError):
    """A login attempt that does not open a session; ``reason`` is shown to the user."""


class BadCredentials(LoginRefused):
    """No such account, or the wrong password."""


class NotStaff(LoginRefused):
    """The password is right but the account holds no page role (a replicator)."""


class Throttled(LoginRefused):
    """Too many failures of this user name or client address."""

    def __init__(self, retry_after):
        minutes = max(1, math.ceil(retry_after.total_seconds() / 60))
        super().__init__(THROTTLED.format(minutes=minutes))
        self.retry_after = retry_after


@dataclass(frozen=True)
class Staff:
    """The logged-in staff member of a request (``g.staff``)."""

    username: str
    roles: tuple
    csrf_token: str = field(repr=False)
    full_name: str = ""
    office_phone: str = ""
    department: str = ""

    def has_role(self, *roles):
        """True when this member holds at least one of ``roles`` (none are implied)."""
        return any(role in self.roles for role in roles)

    @property
    def role_names(self):
        """The Chinese names of this member's page roles."""
        return role_names([role for role in self.roles if role in ROLE_NAMES])


_dummy_hash = None


def _burn_password_check(password):
    """Spend as long as a real check, so that a missing account is not told by timing."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = models.hash_password(secrets.token_hex(8))
    models.check_password(_dummy_hash, password)


def authenticate(username, password, address):
    """The account ``username`` may log in to the pages with ``password`` from ``address``.

    :returns: the :class:`~shared.models.Account`.
    :raises Throttled: too many recent failures of the name or the address (the password
        is not checked).
    :raises BadCredentials: unknown name or wrong password (counted against both).
    :raises NotStaff: right password, but the account holds no page role.
    """
    at = now()
    if not username or not password:
        raise BadCredentials(MISSING_CREDENTIALS)
    # Names are counted as typed (accounts are case-sensitive), cut to bound the table.
    user_key = username[:MAX_USERNAME_LENGTH]
    waits = [w for w in (LoginFailure.locked_for("user", user_key, at),
                         LoginFailure.locked_for("ip", address, at)) if w is not None]
    if waits:
        logger.info("login of %s from %s refused: throttled", username, address)
        raise Throttled(max(waits))
    account = None
    if len(username) <= MAX_USERNAME_LENGTH:
        account = models.Account.get_or_none(models.Account.username == username)
    if account is None:
        _burn_password_check(password)
    if account is None or not models.check_password(account.password_hash, password):
        logger.info("failed login of %s from %s", username, address)
        locks = [lock for lock in (LoginFailure.record("user", user_key, at),
                                   LoginFailure.record("ip", address, at)) if lock]
        if locks:
            logger.warning("login of %s from %s locked until %s", username, address, max(locks))
            raise Throttled(max(locks) - at)
        raise BadCredentials(BAD_CREDENTIALS)
    LoginFailure.clear("user", user_key)
    if not any(role in PAGE_ROLES for role in account.role_list):
        logger.info("login of %s refused: no page role", username)
        raise NotStaff(NOT_STAFF)
    return account


def idle_timeout(app=None):
    """How long a session lives without a request (``STAFF_SESSION_IDLE_MINUTES``)."""
    minutes = (app or current_app).config.get("STAFF_SESSION_IDLE_MINUTES", DEFAULT_IDLE_MINUTES)
    return timedelta(minutes=minutes)


def load_staff():
    """Resolve the request's session cookie to a :class:`Staff`, or None.

    An expired session, or one whose account is gone or lost every page role, is deleted
    and its cookie cleared. A live session's idle clock restarts.
    """
    session = StaffSession.find(request.cookies.get(session_cookie()))
    if session is None:
        if request.cookies.get(session_cookie()):
            g._staff_clear_cookie = True
        return None
    at = now()
    account = models.Account.get_or_none(models.Account.username == session.username)
    roles = tuple(account.role_list) if account is not None else ()
    if session.expired(at, idle_timeout()) or not any(r in PAGE_ROLES for r in roles):
        session.delete_instance()
        g._staff_clear_cookie = True
        return None
    if at - session.last_seen >= LAST_SEEN_STEP:
        # The idle clock needs minutes, not every request: no write on most page views.
        StaffSession.update(last_seen=at).where(StaffSession.id == session.id).execute()
    return Staff(username=session.username, roles=roles, csrf_token=session.csrf_token,
                 full_name=account.full_name, office_phone=account.office_phone,
                 department=account.department)


def current_staff():
    """The logged-in staff member of this request (``g.staff``), or None; loads it once."""
    if not has_request_context():
        return None
    if not g.get("_staff_loaded"):
        g.staff = load_staff()
        g._staff_loaded = True
    return g.get("staff")


def _login_serializer():
    return URLSafeSerializer(current_app.secret_key, salt="tongban.staff.login-csrf")


def _login_csrf_token():
    """The pre-session token of the login form, kept in a signed cookie."""
    token = g.get("_login_csrf")
    if token is None:
        try:
            token = _login_serializer().loads(request.cookies.get(login_csrf_cookie(), ""))
        except BadSignature:
            token = None
        if not isinstance(token, str) or not token:
            token = secrets.token_urlsafe(32)
            g._login_csrf_new = True
        g._login_csrf = token
    return token


def csrf_token():
    """The CSRF token forms must send: the session's, or before login the login form's."""
    staff = current_staff()
    return staff.csrf_token if staff is not None else _login_csrf_token()


def csrf_field():
    """A hidden ``csrf_token`` input for a form."""
    return Markup(f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf_token())}">')


def _submitted_csrf():
    return request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""


def csrf_valid(expected):
    """True when the request carries ``expected`` as its CSRF token."""
    return bool(expected) and hmac.compare_digest(_submitted_csrf().encode("utf-8"),
                                                  expected.encode("utf-8"))


def safe_next(target):
    """``target`` when it is a path on this site, else ``/`` (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    # Browsers read a backslash as a slash ("/\host" means "//host") and drop tabs and
    # newlines, so neither may appear.
    if "\\" in target or any(ord(ch) < 32 or ord(ch) == 127 for ch in target):
        return "/"
    return target


def message_page(status, title, message):
    """A small Chinese page with one message, as a response with ``status``."""
    body = render_template_string(MESSAGE_PAGE, title=title, message=message)
    return current_app.response_class(body, status=status, mimetype="text/html")


#: Plain Chinese pages for the errors a person can meet (CouchDB-style JSON under /db).
ERROR_PAGES = {
    404: ("找不到页面", "您要找的页面不存在。请检查网址，或返回首页。"),
    405: ("不能这样操作", "该页面不支持这种操作。请返回上一页，按页面上的按钮重试。"),
    413: ("提交的内容太大", "上传的文件或填写的内容超过了本站允许的大小。请缩小文件后再试。"),
    500: ("服务出错", "本站暂时无法完成这次请求，请稍后再试；如一再出现，请联系管理员。"),
}
_COUCH_ERRORS = {404: "not_found", 405: "method_not_allowed", 413: "too_large",
                 500: "unknown_error"}


def error_page(exc):
    """An HTTP error as a person reads it (a CouchDB client under /db gets JSON)."""
    code = getattr(exc, "code", None) or 500
    if request.path == "/db" or request.path.startswith(("/db/", "/sync/")):
        body = {"error": _COUCH_ERRORS.get(code, "unknown_error"),
                "reason": getattr(exc, "description", "") or ""}
        return current_app.json.response(body), code
    title, message = ERROR_PAGES.get(code, ERROR_PAGES[500])
    return message_page(code, title, message)


def _login_redirect():
    target = request.path
    if request.query_string:
        target += "?" + request.query_string.decode("utf-8", "replace")
    return redirect(url_for("staff.login", next=target))


def check_access(roles):
    """Refuse this request unless staff holding one of ``roles`` sent it (all if none).

    :returns: None to let the view run, or the response to send instead: a redirect to
        the login page, a 403 for a missing role, a 400 for a missing or wrong CSRF token.
    """
    staff = current_staff()
    if staff is None:
        return _login_redirect()
    if roles and not staff.has_role(*roles):
        logger.info("%s refused at %s: needs %s", staff.username, request.path, roles)
        return message_page(403, "没有权限",
                            FORBIDDEN.format(roles="或".join(role_names(roles))))
    if request.method in UNSAFE_METHODS and not csrf_valid(staff.csrf_token):
        logger.warning("CSRF token missing or wrong: %s %s by %s",
                       request.method, request.path, staff.username)
        return message_page(400, "请求无效", CSRF_REJECTED)
    return None


def _check_roles(roles):
    unknown = [role for role in roles if role not in PAGE_ROLES]
    if unknown:
        raise ValueError(f"not page roles: {', '.join(unknown)} (choose from {PAGE_ROLES})")


def staff_required(*roles):
    """Decorate a view: logged-in staff holding one of ``roles`` (any staff if none).

    Also usable bare (``@staff_required``). See :func:`check_access` for the answers.
    """
    if len(roles) == 1 and callable(roles[0]):
        return staff_required()(roles[0])
    _check_roles(roles)

    def decorate(view):
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            refusal = check_access(roles)
            if refusal is not None:
                return refusal
            return view(*args, **kwargs)
        guarded.staff_roles = roles
        return guarded
    return decorate


def require_staff(blueprint, *roles):
    """Guard every route of ``blueprint`` as ``@staff_required(*roles)`` would.

    Call it before the blueprint is registered.
    """
    _check_roles(roles)
    blueprint.before_request(functools.partial(check_access, roles))


def _login_page(target, error=None, status=200, username=""):
    body = render_template("staff/login.html", error=error, next=target, username=username)
    response = current_app.response_class(body, status=status, mimetype="text/html")
    return response


def _set_session_cookie(response, token):
    response.set_cookie(session_cookie(), token, httponly=True, samesite="Lax", path="/",
                        secure=bool(current_app.config.get("STAFF_COOKIE_SECURE"))
                        or request.is_secure)


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The login form; a correct POST opens a session and goes to ``next``."""
    target = safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_staff() is not None:
            return redirect(target)
        return _login_page(target)
    username = request.form.get("username", "").strip()
    if not csrf_valid(_login_csrf_token()):
        return _login_page(target, LOGIN_EXPIRED, status=400, username=username)
    address = request.remote_addr or "unknown"
    try:
        account = authenticate(username, request.form.get("password", ""), address)
    except Throttled as exc:
        response = _login_page(target, exc.reason, status=429, username=username)
        response.headers["Retry-After"] = str(math.ceil(exc.retry_after.total_seconds()))
        return response
    except NotStaff as exc:
        return _login_page(target, exc.reason, status=403, username=username)
    except LoginRefused as exc:
        return _login_page(target, exc.reason, username=username)
    at = now()
    # A session the browser already held is replaced, never reused (session fixation).
    old = StaffSession.find(request.cookies.get(session_cookie()))
    if old is not None:
        old.delete_instance()
    StaffSession.purge(at, idle_timeout())
    LoginFailure.purge(at)
    token, _ = StaffSession.start(account.username, at)
    logger.info("%s logged in from %s", account.username, address)
    response = redirect(target)
    _set_session_cookie(response, token)
    response.delete_cookie(login_csrf_cookie(), path="/")
    g._login_csrf_new = False
    return response


@bp.route("/logout", methods=["POST"])
def logout():
    """End the session (its row is deleted) and go to the login page."""
    staff = current_staff()
    if staff is not None:
        if not csrf_valid(staff.csrf_token):
            return message_page(400, "请求无效", CSRF_REJECTED)
        StaffSession.delete().where(
            StaffSession.token_hash == hash_token(request.cookies[session_cookie()])).execute()
        logger.info("%s logged out", staff.username)
    response = redirect(url_for("staff.login"))
    response.delete_cookie(session_cookie(), path="/")
    return response


def _after_request(response):
    """Set or clear this module's cookies; keep pages carrying tokens out of caches."""
    if g.get("_login_csrf_new"):
        response.set_cookie(login_csrf_cookie(), _login_serializer().dumps(g._login_csrf),
                            httponly=True, samesite="Lax", path="/",
                            secure=bool(current_app.config.get("STAFF_COOKIE_SECURE"))
                            or request.is_secure)
    if g.get("_staff_clear_cookie"):
        response.delete_cookie(session_cookie(), path="/")
    if g.get("staff") is not None or g.get("_login_csrf") is not None:
        response.headers["Cache-Control"] = "no-store"
    return response


def station_title():
    """``<station name> · 通办服务站``: every page says which station it is."""
    name = current_app.config.get("NODE_NAME") or ""
    return f"{name} · 通办服务站" if name else "通办服务站"


def offline_banner():
    """For a logged-in staff member's page: the station's offline banner, or None."""
    from shared import syncstatus

    if current_staff() is None:
        return None
    try:
        return syncstatus.offline_banner(current_app.extensions["store"], current_app.config)
    except Exception:  # noqa: BLE001 - a page never fails on its banner
        logger.exception("cannot work out the offline banner")
        return None


def init_app(app):
    """Create the session and failure tables, register the login pages and template helpers."""
    minutes = app.config.setdefault("STAFF_SESSION_IDLE_MINUTES", DEFAULT_IDLE_MINUTES)
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0:
        raise ConfigurationError(
            f"STAFF_SESSION_IDLE_MINUTES must be a positive number, not {minutes!r}")
    app.extensions["store"].db.create_tables([StaffSession, LoginFailure], safe=True)
    app.register_blueprint(bp)
    app.after_request(_after_request)
    for code in ERROR_PAGES:
        app.register_error_handler(code, error_page)
    app.jinja_env.globals.update(csrf_token=csrf_token, csrf_field=csrf_field,
                                 current_staff=current_staff, offline_banner=offline_banner,
                                 station_title=station_title)
