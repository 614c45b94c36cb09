"""Staff login for the web pages: sessions, expiry, throttling, roles and CSRF."""

import hashlib
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Blueprint, render_template_string, request

from shared import staff
from shared.errors import ConfigurationError
from shared.models import Account
from shared.staff import StaffSession, require_staff, staff_required
from tests.conftest import add_account, form_token, make_app

PASSWORD = "correct-horse-42"
PAGE = '{% extends "base.html" %}{% block content %}<p id="page">{{ text }}</p>{% endblock %}'


class Clock:
    """A settable replacement for ``staff.now``."""

    def __init__(self):
        self.at = datetime(2024, 3, 1, 8, 0)

    def __call__(self):
        return self.at

    def advance(self, **kwargs):
        self.at += timedelta(**kwargs)


@pytest.fixture
def clock(monkeypatch):
    """Freeze the staff module's clock; tests move it forward."""
    fake = Clock()
    monkeypatch.setattr(staff, "now", fake)
    return fake


def build_app(path, **overrides):
    """A county node with the staff pages, a few test pages and five accounts.

    Returns the app and the list the approve page appends to on every accepted POST.
    """
    app = make_app(path, **overrides)
    if "staff" not in app.blueprints:
        staff.init_app(app)
    actions = []
    pages = Blueprint("staff_test", __name__, url_prefix="/t")

    @pages.route("/any")
    @staff_required
    def any_page():
        return render_template_string(PAGE, text="欢迎")

    @pages.route("/approve", methods=["GET", "POST"])
    @staff_required("approver")
    def approve():
        if request.method == "POST":
            actions.append(request.form.get("case"))
        return render_template_string(PAGE, text="审批")

    @pages.route("/review")
    @staff_required("approver", "supervisor")
    def review():
        return render_template_string(PAGE, text="复核")

    admin = Blueprint("staff_test_admin", __name__, url_prefix="/t/admin")
    require_staff(admin, "county_admin")

    @admin.route("/")
    def admin_home():
        return render_template_string(PAGE, text="管理")

    app.register_blueprint(pages)
    app.register_blueprint(admin)
    add_account(app, "clerk1", PASSWORD, roles=("clerk",))
    add_account(app, "approver1", PASSWORD, roles=("approver",))
    add_account(app, "admin1", PASSWORD, roles=("county_admin",))
    add_account(app, "supervisor1", PASSWORD, roles=("supervisor", "replicator"))
    add_account(app, "sync1", PASSWORD, roles=("replicator",))
    return app, actions


@pytest.fixture
def web(tmp_path, clock):
    """``(app, actions)`` with the fake clock installed."""
    app, actions = build_app(tmp_path)
    yield app, actions
    app.extensions["store"].close()


@pytest.fixture
def client(web):
    """A browser on the node."""
    return web[0].test_client()


def login(client, username, password=PASSWORD, next=None, addr="127.0.0.1"):
    """Fill in and submit the login form as a browser at ``addr`` would."""
    data = {"username": username, "password": password, "csrf_token": form_token(client)}
    if next is not None:
        data["next"] = next
    return client.post("/login", data=data, environ_base={"REMOTE_ADDR": addr})


def session_cookie(client):
    """The value of the browser's session cookie, or None."""
    cookie = client.get_cookie(staff.session_cookie(client.application))
    return cookie.value if cookie is not None else None


def is_login_redirect(response):
    """True when ``response`` sends the browser to the login page."""
    return response.status_code == 302 and urlsplit(response.location).path == "/login"


def session_count(app):
    with app.app_context():
        return StaffSession.select().count()


def test_login_opens_session_and_shows_user(client):
    response = login(client, "clerk1")
    assert response.status_code == 302
    assert response.location == "/"
    assert session_cookie(client)
    page = client.get("/t/any")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "欢迎" in html
    assert 'id="staff-user">clerk1<' in html
    assert "退出" in html


def test_session_cookie_flags_and_token_not_stored(web, client):
    response = login(client, "clerk1")
    header = next(h for h in response.headers.getlist("Set-Cookie")
                  if h.startswith(staff.session_cookie(client.application) + "="))
    assert "HttpOnly" in header
    assert "SameSite=Lax" in header
    assert "Path=/" in header
    token = session_cookie(client)
    with web[0].app_context():
        row = StaffSession.get()
    assert row.token_hash != token
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert row.username == "clerk1"


@pytest.mark.parametrize("username,password", [("clerk1", "wrong"), ("nobody", PASSWORD)])
def test_bad_credentials_open_no_session(web, client, username, password):
    response = login(client, username, password)
    assert response.status_code == 200
    assert "用户名或密码错误" in response.get_data(as_text=True)
    assert session_cookie(client) is None
    assert session_count(web[0]) == 0
    assert is_login_redirect(client.get("/t/any"))


def test_replicator_only_account_cannot_log_in(web, client):
    response = login(client, "sync1")
    assert response.status_code == 403
    assert "仅用于数据同步" in response.get_data(as_text=True)
    assert session_cookie(client) is None
    assert session_count(web[0]) == 0


def test_replicator_with_a_page_role_can_log_in(client):
    assert login(client, "supervisor1").status_code == 302
    assert client.get("/t/review").status_code == 200


def test_login_without_form_token_is_refused(web, client):
    client.get("/login")
    response = client.post("/login", data={"username": "clerk1", "password": PASSWORD})
    assert response.status_code == 400
    assert "登录页面已过期" in response.get_data(as_text=True)
    assert session_cookie(client) is None


def test_protected_page_sends_to_login_and_back(client):
    response = client.get("/t/approve?case=7")
    assert is_login_redirect(response)
    assert parse_qs(urlsplit(response.location).query)["next"] == ["/t/approve?case=7"]
    login_response = login(client, "approver1", next="/t/approve?case=7")
    assert login_response.location == "/t/approve?case=7"
    assert client.get(login_response.location).status_code == 200


@pytest.mark.parametrize("target", [
    "https://evil.example/", "//evil.example/x", "/\\evil.example", "\\\\evil.example",
    "javascript:alert(1)", "evil.example", "/\t/evil.example",
])
def test_next_cannot_leave_the_site(client, target):
    response = login(client, "clerk1", next=target)
    assert response.status_code == 302
    assert response.location == "/"


def test_idle_session_expires(web, client, clock):
    login(client, "clerk1")
    clock.advance(minutes=29)
    assert client.get("/t/any").status_code == 200
    clock.advance(minutes=29)  # 58 minutes after login, but only 29 idle
    assert client.get("/t/any").status_code == 200
    clock.advance(minutes=30)
    response = client.get("/t/any")
    assert is_login_redirect(response)
    assert session_cookie(client) is None
    assert session_count(web[0]) == 0


def test_idle_timeout_is_configurable(tmp_path, clock):
    app, _ = build_app(tmp_path, STAFF_SESSION_IDLE_MINUTES=5)
    try:
        client = app.test_client()
        login(client, "clerk1")
        clock.advance(minutes=4)
        assert client.get("/t/any").status_code == 200
        clock.advance(minutes=5)
        assert is_login_redirect(client.get("/t/any"))
    finally:
        app.extensions["store"].close()


def test_session_expires_after_twelve_hours_however_active(client, clock):
    login(client, "clerk1")
    for _ in range(28):  # 11 h 40 min of activity every 25 minutes
        clock.advance(minutes=25)
        assert client.get("/t/any").status_code == 200
    clock.advance(minutes=25)
    assert is_login_redirect(client.get("/t/any"))


def test_session_ends_when_account_loses_page_roles(web, client):
    login(client, "clerk1")
    with web[0].app_context():
        Account.update(roles="replicator").where(Account.username == "clerk1").execute()
    assert is_login_redirect(client.get("/t/any"))


def test_five_failures_lock_the_username(client, clock):
    for attempt in range(4):
        response = login(client, "clerk1", "wrong")
        assert "用户名或密码错误" in response.get_data(as_text=True)
    response = login(client, "clerk1", "wrong")
    assert response.status_code == 429
    assert "失败次数过多，请 15 分钟后再试" in response.get_data(as_text=True)
    response = login(client, "clerk1", PASSWORD)
    assert response.status_code == 429
    assert "失败次数过多，请 15 分钟后再试" in response.get_data(as_text=True)
    assert session_cookie(client) is None
    clock.advance(minutes=10)
    response = login(client, "clerk1", PASSWORD)
    assert "失败次数过多，请 5 分钟后再试" in response.get_data(as_text=True)
    assert session_cookie(client) is None
    clock.advance(minutes=5, seconds=1)
    assert login(client, "clerk1", PASSWORD).status_code == 302
    assert session_cookie(client)


def test_failures_spread_over_more_than_fifteen_minutes_do_not_lock(client, clock):
    for _ in range(8):
        login(client, "clerk1", "wrong")
        clock.advance(minutes=4)
    assert login(client, "clerk1", PASSWORD).status_code == 302


def test_five_failures_lock_the_client_address(client):
    for name in ("a", "b", "c", "d", "e"):
        login(client, name, "wrong", addr="10.0.0.7")
    response = login(client, "clerk1", PASSWORD, addr="10.0.0.7")
    assert response.status_code == 429
    assert "失败次数过多" in response.get_data(as_text=True)
    assert login(client, "clerk1", PASSWORD, addr="10.0.0.8").status_code == 302


def test_successful_login_clears_the_username_count(client):
    for _ in range(4):
        login(client, "clerk1", "wrong", addr="10.0.0.1")
    assert login(client, "clerk1", PASSWORD, addr="10.0.0.1").status_code == 302
    client.delete_cookie(staff.session_cookie(client.application))  # another browser, at another address
    for _ in range(4):
        login(client, "clerk1", "wrong", addr="10.0.0.2")
    assert login(client, "clerk1", PASSWORD, addr="10.0.0.2").status_code == 302


def test_logout_deletes_the_session(web, client):
    login(client, "clerk1")
    old_token = session_cookie(client)
    token = form_token(client, "/t/any")  # the 退出 form in the page header
    response = client.post("/logout", data={"csrf_token": token})
    assert is_login_redirect(response)
    assert session_cookie(client) is None
    assert session_count(web[0]) == 0
    client.set_cookie(staff.session_cookie(client.application), old_token)
    assert is_login_redirect(client.get("/t/any"))


def test_logout_without_csrf_token_is_refused(client):
    login(client, "clerk1")
    response = client.post("/logout")
    assert response.status_code == 400
    assert "请求无效" in response.get_data(as_text=True)
    assert client.get("/t/any").status_code == 200


def test_post_without_or_with_wrong_csrf_token_changes_nothing(web, client):
    _, actions = web
    login(client, "approver1")
    token = form_token(client, "/t/approve")
    for data in ({"case": "1"}, {"case": "1", "csrf_token": "forged"},
                 {"case": "1", "csrf_token": ""}):
        response = client.post("/t/approve", data=data)
        assert response.status_code == 400
        assert "页面已过期或来源不明" in response.get_data(as_text=True)
    assert actions == []
    assert client.post("/t/approve", data={"case": "2", "csrf_token": token}).status_code == 200
    assert client.post("/t/approve", data={"case": "3"},
                       headers={"X-CSRF-Token": token}).status_code == 200
    assert actions == ["2", "3"]


def test_csrf_token_of_another_session_is_refused(web, client):
    _, actions = web
    other = web[0].test_client()
    login(other, "approver1")
    other_token = form_token(other, "/t/approve")
    login(client, "approver1")
    response = client.post("/t/approve", data={"case": "1", "csrf_token": other_token})
    assert response.status_code == 400
    assert actions == []


def test_post_without_session_goes_to_login(web, client):
    response = client.post("/t/approve", data={"case": "1"})
    assert is_login_redirect(response)
    assert web[1] == []


@pytest.mark.parametrize("username", ["clerk1", "admin1"])
def test_missing_role_is_forbidden(web, client, username):
    login(client, username)
    response = client.get("/t/approve")
    assert response.status_code == 403
    assert "您没有执行此操作的权限（需要角色：审批人员）" in response.get_data(as_text=True)
    token = form_token(client, "/t/any")
    assert client.post("/t/approve", data={"case": "1", "csrf_token": token}).status_code == 403
    assert web[1] == []


def test_any_listed_role_is_enough(client):
    login(client, "clerk1")
    response = client.get("/t/review")
    assert response.status_code == 403
    assert "需要角色：审批人员或督查人员" in response.get_data(as_text=True)
    client.post("/logout", data={"csrf_token": form_token(client, "/t/any")})
    login(client, "approver1")
    assert client.get("/t/review").status_code == 200


def test_guarded_blueprint(client):
    assert is_login_redirect(client.get("/t/admin/"))
    login(client, "approver1")
    response = client.get("/t/admin/")
    assert response.status_code == 403
    assert "县级管理员" in response.get_data(as_text=True)
    client.post("/logout", data={"csrf_token": form_token(client, "/t/any")})
    login(client, "admin1")
    assert client.get("/t/admin/").status_code == 200


def test_unknown_role_is_a_programming_error():
    with pytest.raises(ValueError):
        staff_required("admin")
    with pytest.raises(ValueError):
        staff_required("replicator")


def test_idle_minutes_must_be_positive(tmp_path):
    with pytest.raises(ConfigurationError):
        app = make_app(tmp_path, STAFF_SESSION_IDLE_MINUTES=0)
        try:
            if "staff" not in app.blueprints:
                staff.init_app(app)
        finally:
            app.extensions["store"].close()
