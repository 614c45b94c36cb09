"""A small region in one process for case tests: county, township, two villages.

Each node is a real app on its own SQLite file; :meth:`Kit.sync` copies every document
each way with ``new_edits=False`` (what replication does), so tests can cut and join
stations at will. Real processes and scopes are covered by the browser and sync tests.
"""

import datetime
import os

from shared import clock, identity, registry
from shared.casedocs import CHINA_TIME
from shared.cases import idnumbers
from shared.cases.blobs import BlobStore
from shared.cases.desk import Actor, ApplicantInput, CaseDesk
from shared.cases.scans import scan_key
from shared.catalog import publish, sample
from shared.hlc import ClockObserver, NodeClock
from shared.workdays import WorkCalendar, calendar_from_db
from tests.conftest import add_account, make_app, make_county

COUNTY, TOWNSHIP = "441521", "441521101"
VILLAGE_A, VILLAGE_B = "441521101001", "441521101002"
#: A township with no node in the kit (a transfer target that exists in the registry).
OTHER_TOWNSHIP = "441521102"
NAMES = {COUNTY: "海丰县", TOWNSHIP: "海城镇", VILLAGE_A: "东门村", VILLAGE_B: "西门村",
         OTHER_TOWNSHIP: "梅陇镇"}
#: A person born 1950-03-01 in Haifeng (their check digit computed, so always valid).
CITIZEN = idnumbers.make_resident_id("441521", datetime.date(1950, 3, 1), 123)
AGENT = idnumbers.make_resident_id("441521", datetime.date(1985, 7, 9), 456)
#: 残疾人证新办: promised 20 working days, reviewed at the township, decided at the county.
DISABILITY_CARD = "GD-LS-09"
#: The county's 2027 arrangement as tests publish it: New Year's Day off, the rest of 2027
#: the ordinary week (the holiday package ends with 2026).
YEAR_2027 = [{"date": "2027-01-01", "workday": False, "reason": "元旦"},
             {"year": 2027, "reason": "国办发明电〔2026〕1号"}]
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def parallel_item():
    """A township item decided jointly by two departments (the lead collects opinions)."""
    items, _ = sample.sample_catalog()
    item = dict(next(i for i in items if i["id"] == "GD-LS-21"))
    item.update(id="GD-TEST-PAR", name="宅基地联审测试事项",
                parallel_departments=["农业农村", "自然资源"], lead_department="农业农村",
                department="农业农村")
    # The design drawing may come later (容缺后补); nothing else may.
    item["materials"] = [dict(m) for m in item["materials"]]
    item["materials"][4]["necessity"] = "容缺后补"
    return item


class Kit:
    """The nodes, their desks and staff actors."""

    def __init__(self, base, wall_clock=None):
        """:param wall_clock: a callable giving the time (epoch seconds) every node's
        clock reads: tests freeze it, and move it on, across real holiday periods."""
        self.region_key = os.urandom(32)
        self.apps = {}
        self.checkpoints = {}
        (base / COUNTY).mkdir()
        county = make_county(base / COUNTY, NODE_CODE=COUNTY)
        self.apps[COUNTY] = county
        add_account(county, "editor", "pw-editor-1", roles=("county_admin",))
        add_account(county, "boss", "pw-boss-1", roles=("approver",))
        items, agencies = sample.sample_catalog()
        items.append(parallel_item())
        with county.app_context():
            publish.publish(self.store(COUNTY), items, agencies, proposer="editor",
                            approver="boss", private_key=county.key)
        public = identity.b64(identity.public_key_bytes(county.key))
        for code, tier in ((TOWNSHIP, "township"), (VILLAGE_A, "village"),
                           (VILLAGE_B, "village")):
            (base / code).mkdir()
            self.apps[code] = make_app(base / code, TIER=tier, NODE_CODE=code,
                                       COUNTY_PUBLIC_KEY=public, NODE_DIR=str(base / code))
        # Registry entries (signed by the county), as enrolment would have made them.
        for code, tier in ((COUNTY, "county"), (TOWNSHIP, "township"), (VILLAGE_A, "village"),
                           (VILLAGE_B, "village"), (OTHER_TOWNSHIP, "township")):
            key = county.key if code == COUNTY else identity.new_private_key()
            registry.publish_entry(self.store(COUNTY), county.key, code=code, tier=tier,
                                   name=NAMES[code],
                                   public_key=identity.b64(identity.public_key_bytes(key)))
        self.calendar = WorkCalendar()
        if wall_clock is not None:
            for code in self.apps:  # received events must not pull a clock to real time
                for projection in self.store(code).projections:
                    if isinstance(projection, ClockObserver):
                        projection.wall_clock = wall_clock
        self.desks = {code: CaseDesk(self.store(code), app.config, self.region_key,
                                     blobs=BlobStore(base / code / "blobs",
                                                     key=scan_key(self.region_key)),
                                     calendar=calendar_from_db(self.store(code).db),
                                     clock=NodeClock(self.store(code), wall_clock))
                      for code, app in self.apps.items()}
        self.sync()

    def store(self, code):
        return self.apps[code].extensions["store"]

    def desk(self, code):
        return self.desks[code]

    def sync(self, *codes):
        """Copy what changed since the last copy between the given nodes (all by default),
        both ways, as replication would (the winning revision with its history)."""
        codes = codes or tuple(self.apps)
        for source in codes:
            for target in codes:
                if target == source:
                    continue
                since = self.checkpoints.get((source, target), 0)
                rows, last_seq = self.store(source).changes(since)
                docs = [self.store(source).get(row["id"], revs=True) for row in rows]
                if docs:
                    self.store(target).bulk_docs(docs, new_edits=False)
                self.checkpoints[(source, target)] = last_seq

    def join(self, code, number):
        """Handle anywhere: the county answers ``code``'s look-up (a ``joined`` event making
        it a participant), then everything syncs."""
        from shared import lookup
        from shared.hlc import NodeClock

        county = self.store(COUNTY)
        lookup.join_cases(county, NodeClock(county), [{"number": number}], code, COUNTY)
        self.sync()

    def close(self):
        for app in self.apps.values():
            app.extensions["store"].close()


class FrozenClock:
    """The time every node's clock reads (``Kit(wall_clock=…)``); ``at(day, hour)`` moves
    it to that hour, China time.

    :param env: a pytest ``monkeypatch``: the node clock (``shared.clock``: pages, "today",
        node processes started meanwhile) is moved there too, so one time holds.
    """

    def __init__(self, day, env=None):
        self.env = env
        self.at(day)

    def at(self, day, hour=10):
        self.now = datetime.datetime(day.year, day.month, day.day, hour,
                                     tzinfo=CHINA_TIME).timestamp()
        if self.env is not None:
            self.env.setenv(clock.SKEW_ENV, repr(clock.skew_for(
                datetime.datetime.fromtimestamp(self.now, CHINA_TIME))))

    def __call__(self):
        return self.now


def clerk(name="clerk-a"):
    return Actor(username=name, name="王小明", phone="0660-3300001", roles=("clerk",))


def approver(department="", name="approver-t"):
    return Actor(username=name, name="李审批", phone="0660-3300002", department=department,
                 roles=("approver",))


def applicant(number=CITIZEN):
    return ApplicantInput(number=number, name="陈阿婆", phone="13800138000",
                          address="海丰县海城镇某村 12 号")


def upload(desk, data=PDF):
    """Put a scan in ``desk``'s blob store; returns its sha256."""
    return desk.blobs.put(data, "scan.pdf").sha256


def full_materials(desk, item_id, leave_out=()):
    """A scan for every material of ``item_id`` the applicant brings (but ``leave_out``)."""
    rows = desk.checklist(desk.item(item_id))
    return {row["index"]: {"scans": [upload(desk, PDF + b"%" + str(row["index"]).encode())]}
            for row in rows if row["auto"] is None and row["index"] not in leave_out}
