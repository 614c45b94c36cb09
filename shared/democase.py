"""The demo's case: staff accounts at every node and one application taken all the way.

A clerk at a village accepts a 低保 (minimum living allowance) application at the window,
exactly as the browser would (the window's form, CSRF tokens, uploaded scans); the case
replicates to the township that decides it, whose approver approves it; the decision comes
back and the clerk hands the result over. Everything goes through the nodes' own pages
over HTTP. The item's 13-working-day limit gives the case a due date, shown as the case
page shows it (暂定 when it runs into a year whose holidays are not published yet).
"""

import logging
import re
import secrets
import time

import requests

logger = logging.getLogger(__name__)

#: The demo case's item: decided by the township at one level, 13 working days.
CASE_ITEM = "GD-LS-04"
_DUE = re.compile(r'id="due-date">([0-9-]+)</span>(<span class="provisional"[^>]*title="([^"]*)")?')
#: A demo citizen (a valid resident ID number of Haifeng, born 1990-05-12).
CASE_CITIZEN = "441521199005122318"
#: Staff per tier: (username, role, full name, office phone).
STAFF = {
    "village": (("clerk", "clerk", "窗口人员", "0660-3300001"),),
    "township": (("approver", "approver", "审批人员", "0660-3300002"),
                 ("supervisor", "supervisor", "督查人员", "0660-3300003")),
    # The county's approver is the catalog's (shared.demo.APPROVER); it decides cases too.
    "county": (("supervisor", "supervisor", "督查人员", "0660-3300004"),),
}
SCAN = b"%PDF-1.4\n% tongban demo scan\n%%EOF\n"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def staff_key(node, username):
    """The key of a staff password in ``demo-secrets.json``."""
    return f"staff:{node.code}:{username}"


def add_staff(node, known, cli):
    """Make the node's staff accounts once (passwords in the demo secrets)."""
    for username, role, name, phone in STAFF[node.tier]:
        key = staff_key(node, username)
        if key in known.known:
            continue
        password = secrets.token_urlsafe(12)
        cli("user", "add", node.node_dir, username, "--role", role, "--full-name", name,
            "--phone", phone, input_text=password + "\n")
        known.add(key, password)


class StaffSession:
    """A logged-in staff member of one node, using its pages like a browser."""

    def __init__(self, node, username, password):
        self.url = node.url
        self.http = requests.Session()
        page = self.http.get(f"{self.url}/login", timeout=10)
        page.raise_for_status()
        answer = self.http.post(f"{self.url}/login", timeout=10, data={
            "username": username, "password": password, "next": "/cases/",
            "csrf_token": _TOKEN.search(page.text).group(1)})
        answer.raise_for_status()
        if "staff-user" not in answer.text:
            raise RuntimeError(f"cannot log in as {username} at {node.code}")

    def token(self, path):
        page = self.http.get(self.url + path, timeout=10)
        page.raise_for_status()
        return _TOKEN.search(page.text).group(1)

    def post(self, path, data, files=None):
        data = {"csrf_token": self.token("/cases/"), **data}
        answer = self.http.post(self.url + path, data=data, files=files, timeout=30,
                                allow_redirects=False)
        if answer.status_code not in (302, 303):
            message = re.search(r'id="error"[^>]*>(.*?)<', answer.text, re.S)
            raise RuntimeError(f"{path} refused ({answer.status_code}): "
                               f"{message.group(1).strip() if message else answer.text[:200]}")
        return answer.headers["Location"]

    def due(self, number):
        """``(due date, provisional reason or "")`` as the case page shows it, or None."""
        page = self.http.get(f"{self.url}/cases/{number}", timeout=10)
        found = _DUE.search(page.text) if page.status_code == 200 else None
        return (found.group(1), found.group(3) or "") if found else None

    def status(self, number):
        """The case's status as its page shows it (None when the node does not hold it)."""
        page = self.http.get(f"{self.url}/cases/{number}", timeout=10)
        if page.status_code != 200:
            return None
        found = re.search(r'id="status"[^>]*data-status="([a-z_]+)"', page.text)
        return found.group(1) if found else None


def accept_at_window(clerk, village_code):
    """Accept the demo application with every material; returns the case number."""
    token = clerk.token("/cases/window")
    checklist = clerk.http.post(f"{clerk.url}/cases/window", timeout=30, data={
        "csrf_token": token, "step": "lookup", "item": CASE_ITEM, "applicant": CASE_CITIZEN})
    checklist.raise_for_status()
    indexes = sorted(set(re.findall(r'name="m(\d+)_status"', checklist.text)), key=int)
    form = {"csrf_token": token, "step": "decide", "item": CASE_ITEM,
            "applicant": CASE_CITIZEN, "name": "示范申请人", "phone": "13800138000",
            "address": "海丰县", "delivery_station": village_code, "decision": "accept"}
    files = []
    for index in indexes:
        form[f"m{index}_status"] = "provided"
        files.append((f"m{index}_files", (f"material-{index}.pdf", SCAN, "application/pdf")))
    answer = clerk.http.post(f"{clerk.url}/cases/window", data=form, files=files, timeout=30,
                             allow_redirects=False)
    target = answer.headers.get("Location", "")
    found = re.search(r"/cases/([0-9]+-[0-9]{8}-[0-9]+)/receipt", target)
    if answer.status_code not in (302, 303) or not found:
        raise RuntimeError(f"the demo case was not accepted ({answer.status_code})")
    return found.group(1)


def _wait(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)


#: Where ``demo-secrets.json`` keeps the demo case's number, so a restart resumes it.
CASE_KEY = "demo_case"


def run_case(village, township, known, echo, timeout=60.0):
    """Take one case from the village's window through the township and back.

    A restart never adds a second demo case: the number is kept in the demo secrets, a
    case left half-way is taken on from where it stands, a finished one is only named.

    :returns: ``{"number", "to_township", "decision_back", "total", "skipped"}`` (seconds).
    """
    clerk = StaffSession(village, "clerk", known.known[staff_key(village, "clerk")])
    approver = StaffSession(township, "approver", known.known[staff_key(township, "approver")])
    started = time.monotonic()
    number = known.known.get(CASE_KEY)
    status = clerk.status(number) if number else None
    if status == "done":
        echo(f"  跳过 / skipped: 示范办件 {number} 已办结 / the demo case is done already")
        return {"number": number, "to_township": 0.0, "decision_back": 0.0, "total": 0.0,
                "skipped": True}
    if status is None:
        number = accept_at_window(clerk, village.code)
        known.add(CASE_KEY, number)
        echo(f"  {village.label}: 窗口受理 / accepted case {number} ({CASE_ITEM})")
        status = "handling"
    else:
        echo(f"  {village.label}: 继续办理 / resuming case {number} ({status})")
    due = clerk.due(number)
    if due:
        mark = f"（暂定：{due[1]}）/ provisional" if due[1] else ""
        echo(f"  {village.label}: 办结期限 / due {due[0]}{mark}")
    to_township = back = 0.0
    if status == "handling":
        _wait("the case reaches the township", lambda: approver.status(number) == "handling",
              timeout)
        to_township = time.monotonic() - started
        echo(f"  {township.label}: 进入审批队列 / in the approver's queue after "
             f"{to_township:.1f} s")
        approver.post(f"/cases/{number}/approve", {"result": "准予纳入最低生活保障",
                                                   "confirm": "1"})
        decided = time.monotonic()
        _wait("the decision reaches the village", lambda: clerk.status(number) == "ready",
              timeout)
        back = time.monotonic() - decided
        echo(f"  {village.label}: 审批结果已到站 / the decision arrived after {back:.1f} s")
    clerk.post(f"/cases/{number}/deliver", {"to": "applicant", "collector_id": CASE_CITIZEN,
                                            "confirm": "1"})
    total = time.monotonic() - started
    echo(f"  {village.label}: 结果已送达 / delivered; the case took {total:.1f} s end to end")
    echo(f"  办理进度 / progress: {village.url}/progress/{number} "
         "（输入申请人姓名“示范申请人”）")
    return {"number": number, "to_township": to_township, "decision_back": back,
            "total": total, "skipped": False}
