"""What staff and citizens do to a case: each action writes immutable documents, never edits.

:class:`CaseDesk` is the one place that turns an action (accept at a window, approve,
deliver, rate …) into documents. Every action is checked the way every node will judge it:
the new event is folded together with the case's events (:func:`shared.cases.fold.fold`),
and an event the fold would ignore is refused with the fold's own Chinese reason before
anything is written. What is written goes in one ``bulk_docs`` call (header, scans and
event together), so a case never exists half accepted.

Case numbers ``<node code>-<yyyymmdd>-<seq>`` come from ``case_seq``, a counter per day
in this node's store, incremented in one SQL statement; the day is the HLC's (China
time), which never goes back, so numbers stay unique offline and after a clock fix.
"""

import datetime
import json
import logging
from dataclasses import dataclass, field

from shared import casedocs, clock, errors, identity, registry
from shared import config as cfg
from shared.cases import blobs, idnumbers, personal, scans
from shared.cases import fold as F
from shared.cases.index import item_id_of, licences_of, read_case, state_of
from shared.catalog import active, schema
from shared.hlc import NodeClock
from shared.store import reads

logger = logging.getLogger(__name__)

#: Working days a deficiency (容缺) may stay open after acceptance.
DEFICIENCY_DAYS = 5
#: Working days to the post-check of a case accepted on written commitment (告知承诺).
POSTCHECK_DAYS = 20
#: Scans older than this (days) are not offered again (history reuse).
REUSE_DAYS = 365
TIER_OF_LENGTH = cfg.TIER_BY_LENGTH
DECISIONS = ("accept", "notice", "deficiency", "commitment")


class CaseError(errors.TongbanError):
    """An action refused; ``message`` is the Chinese sentence to show."""

    #: The HTTP status a page answers with when nothing handled the refusal itself.
    status = 409

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class CasesUnavailable(CaseError):
    """This node cannot handle cases at all (not enrolled, no node directory)."""

    status = 503


@dataclass
class Actor:
    """Who acts: a staff member (username, name, office phone, department) or a citizen."""

    username: str
    name: str = ""
    phone: str = ""
    department: str = ""
    roles: tuple = ()
    citizen: bool = False

    def as_by(self):
        """The ``by`` member of an event (public: name, office phone, department)."""
        if self.citizen:
            return {"name": "申请人", "citizen": True}
        return {"username": self.username, "name": self.name or self.username,
                "phone": self.phone, "department": self.department}


CITIZEN = Actor(username="", citizen=True)
#: The card sweep (督办), acting for the node.
SWEEP = Actor(username="system", name="督办系统")


@dataclass
class ApplicantInput:
    """What the window (or the online form) knows of the applicant."""

    number: str
    name: str
    phone: str = ""
    address: str = ""
    extra: dict = field(default_factory=dict)


def _scan_sha(value):
    if not isinstance(value, str) or len(value) != 64:
        raise CaseError("扫描件编号无效")
    return value


class CaseDesk:
    """Actions on cases at one node.

    :param store: the node's store.
    :param config: the node's settings (``NODE_CODE``).
    :param region_key: the region key (bytes or base64) for keyed hashes and sealing.
    :param blobs: a ``blobs.BlobStore`` holding uploaded scans (None: no uploads here).
    :param calendar: a ``workdays.WorkCalendar`` for due dates.
    """

    def __init__(self, store, config, region_key, *, blobs=None, calendar=None, clock=None):
        self.store = store
        self.db = store.db
        self.node = config["NODE_CODE"]
        self.region_key = identity.unb64(region_key) if isinstance(region_key, str) else region_key
        self.scan_key = scans.scan_key(self.region_key)
        self.blobs = blobs
        self.calendar = calendar
        self.clock = clock or NodeClock(store)

    # -- reading -----------------------------------------------------------------------

    def item(self, item_id):
        """The item in force (with ``doc_id``/``version``), or CaseError."""
        found = active.active_item(self.db, item_id_of(item_id))
        if found is None:
            raise CaseError(f"事项 {item_id_of(item_id)} 不在本站现行的事项目录中。")
        return found

    def load(self, number):
        """``(header, events, state)`` of a case held here, or CaseError."""
        try:
            casedocs.parse_case_number(number)
        except errors.DocValidation:
            raise CaseError(f"办件编号 {number} 格式不正确（应为 站点代码-日期-序号）。")
        header, events = read_case(self.db, number)
        if header is None:
            raise CaseError(f"本站没有办件 {number}。异地办件请先用申请人证件号码查询（通办），"
                            "待同步到本站后再办理。")
        return header, events, F.fold(header, events)

    def state(self, number):
        """The folded state as indexed here (None when not held)."""
        return state_of(self.db, number)

    def applicant_key(self, number):
        """The keyed hash of an ID number or credit code (validated first)."""
        _, normalised = self.check_number(number)
        return identity.person_key(self.region_key, normalised)

    @staticmethod
    def check_number(number):
        """``(kind, normalised)`` of an applicant number, or CaseError with the reason."""
        try:
            return idnumbers.check_applicant_number(number)
        except idnumbers.IdNumberInvalid as exc:
            raise CaseError(exc.message) from exc

    def open_profile(self, doc):
        """The applicant's decrypted profile (name, phone, address, number).

        :param doc: the folded state (it holds the latest profile: a case continued at the
            window may have corrected it), or a header.
        """
        sealed = doc.get("applicant")
        if not sealed:
            return {}
        try:
            return personal.open_profile(self.region_key, doc["applicant_key"], sealed)
        except personal.ProfileUnreadable:
            logger.warning("case %s: applicant data cannot be opened with this region key",
                           doc.get("number"))
            return {}

    def checklist(self, item, applicant_key=None, on=None):
        """The materials of ``item`` and how each can be satisfied for this applicant.

        Materials the guide marks as held by another department are never asked for: an
        e-licence on record is used, else they are marked as verified from shared data.
        Scans the applicant gave in an earlier case (same material name, within
        :data:`REUSE_DAYS`) are offered again.
        """
        licences = licences_of(self.db, applicant_key, on) if applicant_key else {}
        reuse = self.reusable_scans(applicant_key, on) if applicant_key else {}
        rows = []
        for index, material in enumerate(item.get("materials") or ()):
            name = material["name"]
            row = {"index": index, "name": name, "necessity": material.get("necessity"),
                   "form": material.get("form"), "copies": material.get("copies"),
                   "source_channel": material.get("source_channel"),
                   "shared_from": material.get("shared_from", ""),
                   "source_note": material.get("source_note", ""),
                   "common_mistakes": material.get("common_mistakes") or [],
                   "licence": _licence_for(name, licences), "reuse": reuse.get(name, [])}
            if row["licence"]:
                row["auto"] = F.ELICENCE
            elif material.get("source_channel") == schema.SHARED_CHANNEL:
                row["auto"] = F.SHARED
            else:
                row["auto"] = None
            rows.append(row)
        return rows

    def reusable_scans(self, applicant_key, on=None):
        """``{material name: [{"sha", "case", "day"}, …]}``: the scans of this applicant's
        accepted cases held here (newest first), within :data:`REUSE_DAYS`.

        Only accepted cases count: a pre-application is anyone's word and must never put
        its scans or details before a clerk as the applicant's.
        """
        on = on or clock.today()
        since = (on - datetime.timedelta(days=REUSE_DAYS)).isoformat()
        found = {}
        cursor = self.db.execute_sql(
            "SELECT number, accepted_day, state FROM case_state WHERE applicant_key = ? AND "
            "accepted_day >= ? ORDER BY accepted_day DESC, updated DESC",
            (applicant_key, since))
        for number, day, text in cursor.fetchall():
            for material in json.loads(text)["materials"].values():
                if material.get("status") != F.PROVIDED:
                    continue
                offers = found.setdefault(material["name"], [])
                for sha in material.get("scans") or ():
                    if all(o["sha"] != sha for o in offers):
                        offers.append({"sha": sha, "case": number, "day": day})
        return found

    def history_profile(self, applicant_key):
        """The applicant's details from their latest accepted case held here (prefill)."""
        row = self.db.execute_sql(
            "SELECT state FROM case_state WHERE applicant_key = ? AND accepted_day IS NOT NULL "
            "ORDER BY accepted_day DESC, updated DESC LIMIT 1", (applicant_key,)).fetchone()
        return self.open_profile(json.loads(row[0])) if row else {}

    # -- routing ------------------------------------------------------------------------

    def route_for(self, item, origin=None):
        """The nodes a case accepted at ``origin`` goes through, the decider last.

        Township items are decided by the township above the station at one level (一级办结);
        county items are reviewed by that township first, then decided by the county.
        """
        origin = origin or self.node
        chain = registry.ancestors(self.db, origin)  # origin first, the county last
        county = next((c for c in chain if cfg.tier_of(c) == "county"), origin[:6])
        township = next((c for c in chain if cfg.tier_of(c) == "township"),
                        origin[:9] if len(origin) >= 9 else None)
        if item.get("decide_tier") == "township":
            return [township or county]
        if item.get("one_level") or township is None:
            return [county]
        return [township, county]

    def transfer_targets(self):
        """``[(code, name)]`` of the active townships and county a case may be handed to."""
        return [(entry.code, entry.name or entry.code)
                for entry in registry.all_entries(self.db)
                if entry.status == registry.ACTIVE and entry.tier in ("township", "county")
                and entry.code != self.node]

    def may_decide(self, state, actor):
        """None when ``actor`` may approve, reject, ask for a supplement or transfer the
        case now; else the Chinese reason (the fold's own rule)."""
        return F.decision_refusal(state, self.node, actor.as_by())

    # -- numbering ------------------------------------------------------------------------

    def next_number(self, hlc):
        """A new case number of this node for the day of ``hlc``."""
        day = casedocs.day_of(hlc)
        while True:
            row = self.db.execute_sql(
                "INSERT INTO case_seq (day, last) VALUES (?, 1) ON CONFLICT (day) "
                "DO UPDATE SET last = last + 1 RETURNING last", (day.isoformat(),)).fetchone()
            number = casedocs.case_number(self.node, day, row[0])
            # A restored backup may lag behind the documents: never reuse a number.
            if not reads.exists(self.db, "case:" + number):
                return number

    # -- writing ----------------------------------------------------------------------------

    def _event(self, number, kind, actor, parties=(), **fields):
        return casedocs.case_event(number, kind, self.node, self.clock.now(), parties=parties,
                                   by=actor.as_by(), **fields)

    def _check_and_write(self, docs, header=None, events=None):
        """Fold ``docs`` with the case as held; refuse what the fold ignores; write."""
        new_header = next((d for d in docs if d["type"] == "case"), None)
        header = header or new_header
        new_events = [d for d in docs if d["type"] == "event"]
        state = F.fold(header, list(events or ()) + new_events)
        refused = {i["event"]: i["reason"] for i in state["ignored"]}
        for event in new_events:
            if event["_id"] in refused:
                raise CaseError(refused[event["_id"]])
        with self.db.atomic():
            results = self.store.bulk_docs(docs)
        failures = [r for r in results if "error" in r]
        if failures:
            logger.error("case documents refused by the store: %s", failures[0])
            raise CaseError("办件未能保存，请重试；如仍不成功，请联系县级管理员。")
        return state

    def _scan_events(self, number, actor, wanted, allowed=None):
        """The ``scan:`` documents and ``attached`` events of ``wanted`` scans.

        :param wanted: ``[(material index, name, sha256)]``.
        :param allowed: ``{sha256: case number}`` of earlier scans the applicant may reuse;
            anything else must be a fresh upload in this station's blob store.
        """
        docs, written = [], set()
        for index, name, sha in wanted:
            data, mime = self._scan_content(sha, allowed or {})
            doc_id = scans.scan_id(number, sha)
            # One document per content and case, however many materials it stands for.
            if doc_id not in written and not reads.exists(self.db, doc_id):
                docs.append(scans.scan_doc(self.scan_key, number, self.node, data, mime))
                written.add(doc_id)
            docs.append(self._event(number, "attached", actor, material=index,
                                    material_name=name, sha256=sha, mime=mime,
                                    size=len(data)))
        return docs

    def _scan_content(self, sha, allowed):
        """The bytes and type of a scan: a fresh upload, or the applicant's earlier scan."""
        _scan_sha(sha)
        if self.blobs is not None and self.blobs.has(sha):
            try:
                data = self.blobs.get(sha)
            except (KeyError, blobs.BlobCorrupt) as exc:
                raise CaseError("扫描件文件已损坏，请重新上传。") from exc
            return data, blobs.detect_mime(data)
        if sha in allowed:
            return self.scan(allowed[sha], sha)
        raise CaseError("找不到该扫描件（或不是本申请人的材料），请重新上传。")

    def scan(self, number, sha):
        """``(bytes, mime)`` of a scan of case ``number`` (for the clerk's and approver's view)."""
        if not scans.is_sha256(sha):
            raise CaseError("该办件没有这份扫描件。")
        found = self.store.winners([scans.scan_id(number, sha)])
        doc = found.get(scans.scan_id(number, sha))
        if doc is None:
            raise CaseError("该办件没有这份扫描件（或尚未同步到本站）。")
        try:
            return scans.open_scan(self.scan_key, doc), doc.get("mime")
        except scans.ScanUnreadable as exc:
            raise CaseError(exc.message) from exc

    def _materials(self, item, checklist_input, applicant_key, decision):
        """The checklist members of an acceptance or notice, validated against the guide.

        :param checklist_input: ``{index: {"status", "scans", "problem", "needed"}}``
            for materials the applicant brings; shared ones are filled in here.
        """
        rows = self.checklist(item, applicant_key)
        materials, uploads = [], []
        for row in rows:
            given = (checklist_input.get(row["index"]) or
                     checklist_input.get(str(row["index"])) or {})
            entry = {"index": row["index"], "name": row["name"]}
            if row["auto"] == F.ELICENCE:
                entry.update(status=F.ELICENCE, licence=row["licence"]["number"])
            elif row["auto"] == F.SHARED:
                entry.update(status=F.SHARED, shared_from=row["shared_from"])
            else:
                status = given.get("status") or (F.PROVIDED if given.get("scans") else F.MISSING)
                if status not in (F.PROVIDED, F.MISSING, F.DEFECTIVE, F.COMMITTED, F.NOT_NEEDED):
                    raise CaseError(f"材料“{row['name']}”的状态无效。")
                if status == F.NOT_NEEDED and row["necessity"] == "必要":
                    status = F.MISSING
                if status == F.MISSING and row["necessity"] == "非必要":
                    status = F.NOT_NEEDED
                entry["status"] = status
                if status in F.OUTSTANDING:
                    entry["needed"] = _needed_text(row)
                    entry["why"] = given.get("problem") or (
                        "未提交" if status == F.MISSING else "材料不符合要求")
                    if given.get("problem"):
                        entry["problem"] = given["problem"]
                shas = [_scan_sha(s) for s in given.get("scans") or ()]
                if shas:
                    entry["scans"] = shas
                    uploads.extend((row["index"], row["name"], s) for s in shas)
            materials.append(entry)
        return materials, uploads

    def receive(self, item_id, applicant, materials, decision, actor, *, delivery_station=None,
                proxy=None, number=None, commitment_note="", visit=True):
        """The window's decision on an application: accept, one-time notice, accept with
        deficiency (容缺) or on written commitment (告知承诺). Returns the case number.

        :param applicant: an :class:`ApplicantInput` (its number is validated).
        :param materials: ``{index: {"status": provided|missing|defective|committed,
            "scans": [sha256], "problem": text}}`` for what the applicant brings.
        :param proxy: ``{"number", "name", "phone", "authorisation": sha256}`` of an agent.
        :param number: continue an existing case (pre-applied, or after a notice).
        :param visit: False when the applicant did not come (an online pre-application of
            an item that needs no visit).
        """
        if decision not in DECISIONS:
            raise CaseError("请选择受理、一次性告知、容缺受理或告知承诺受理。")
        if number is not None:
            item_id = self.load(number)[0]["item"]
        item = self.item(item_id)  # the version in force now, also for a continued case
        self._check_accepting_tier(item)
        kind, normalised = self.check_number(applicant.number)
        self._check_service_object(item, kind)
        applicant_key = identity.person_key(self.region_key, normalised)
        if not applicant.name.strip():
            raise CaseError("请填写申请人姓名（或单位名称）。")
        profile = self._profile(applicant, normalised)
        checked, uploads = self._materials(item, materials, applicant_key, decision)
        outstanding = [m for m in checked if m["status"] in F.OUTSTANDING]
        self._check_decision(item, decision, checked, outstanding)
        proxy_member, proxy_scans = self._proxy(item, proxy)
        reuse = {offer["sha"]: offer["case"]
                 for offers in self.reusable_scans(applicant_key).values() for offer in offers}
        sealed = personal.seal_profile(self.region_key, applicant_key, profile)
        # One write transaction: the case as it stands, the number, the clock and the
        # documents, so nothing another clerk writes meanwhile is missed.
        with self.db.atomic():
            header, events = None, []
            if number is not None:
                header, events, _ = self.load(number)
                if header["applicant_key"] != applicant_key:
                    raise CaseError("证件号码与该办件的申请人不一致。")
            hlc = self.clock.now()
            number = number or self.next_number(hlc)
            # Routed from the station that accepts (a pre-application waits here).
            route = self.route_for(item, self.node)
            delivery_station = (delivery_station or (header or {}).get("delivery_station")
                                or self.node)
            docs = []
            if header is None:
                header = casedocs.case_header(
                    number, item["doc_id"], self.node, route[-1], applicant_key, hlc,
                    item_name=item["name"], item_version=item["version"], item_hash=item["hash"],
                    applicant_kind=kind, applicant=sealed, route=route,
                    department=item.get("department", ""),
                    parallel=list(item.get("parallel_departments") or []),
                    lead_department=item.get("lead_department", ""),
                    limit=_limit(item), delivery_station=delivery_station,
                    proxy=proxy_member)
                docs.append(header)
            docs += self._scan_events(number, actor, uploads + proxy_scans, reuse)
            parties = [c for c in dict.fromkeys([*route, delivery_station]) if c != self.node]
            if decision == "notice":
                event = self._event(number, "notice", actor, materials=checked)
            else:
                fields = self._accepted(item, decision, hlc, checked, route, delivery_station,
                                        commitment_note, proxy_member, visit,
                                        continued=bool(events), sealed=sealed)
                if kind == "person":
                    # Birth date and sex (in the ID number anyway) for proactive service.
                    person = idnumbers.check_resident_id(normalised)
                    fields["applicant_facts"] = {"birth": person.birth_date.isoformat(),
                                                 "sex": person.sex}
                event = self._event(number, "accepted", actor, parties=parties, **fields)
            docs.append(event)
            self._check_and_write(docs, header, events)
        logger.info("case %s: %s at %s by %s", number, event["kind"], self.node, actor.username)
        return number

    def _accepted(self, item, decision, hlc, checked, route, delivery_station, commitment_note,
                  proxy_member, visit, continued, sealed):
        """The members of an ``accepted`` event."""
        mode = {"accept": F.NORMAL, "deficiency": F.DEFICIENCY,
                "commitment": F.COMMITMENT}[decision]
        fields = {"mode": mode, "materials": checked, "route": route,
                  "delivery_station": delivery_station, "limit": _limit(item),
                  "item": item["doc_id"], "item_version": item["version"]}
        if not visit:
            fields["visit"] = False
        if continued:
            # The header was written at first contact: what the clerk checked now wins.
            fields["applicant"] = sealed
            if proxy_member:
                fields["proxy"] = proxy_member
        elif proxy_member:
            fields["proxy"] = proxy_member
        today = casedocs.day_of(hlc)
        if mode == F.DEFICIENCY:
            fields["deficiency_due"] = self._workdays_after(today, DEFICIENCY_DAYS)
            fields["deficiency_days"] = DEFICIENCY_DAYS
        if mode == F.COMMITMENT:
            fields["postcheck_due"] = self._workdays_after(today, POSTCHECK_DAYS)
            fields["postcheck_days"] = POSTCHECK_DAYS
            fields["commitment_note"] = commitment_note or "申请人书面承诺所缺材料真实有效"
        return fields

    def _workdays_after(self, day, days):
        if self.calendar is None:
            return (day + datetime.timedelta(days=days)).isoformat()
        # A day nobody has published yet counts as an ordinary week (provisional); pages
        # count again from ``*_days`` under the calendar in force (fold.deadline_info).
        return self.calendar.add_workdays(day, days).isoformat()

    def _check_accepting_tier(self, item):
        tier = TIER_OF_LENGTH.get(len(self.node))
        if tier not in (item.get("accept_tiers") or ()):
            names = "、".join(schema.TIERS.get(t, t) for t in item.get("accept_tiers") or ())
            raise CaseError(f"事项“{item['name']}”只在{names}受理，本站不能受理。")

    @staticmethod
    def _check_service_object(item, kind):
        served = item.get("service_object", "自然人和法人")
        if kind == "person" and served == "法人":
            raise CaseError("该事项只受理法人申请，请填写统一社会信用代码。")
        if kind == "organisation" and served == "自然人":
            raise CaseError("该事项只受理自然人申请，请填写居民身份证号码。")

    @staticmethod
    def _check_decision(item, decision, checked, outstanding):
        names = "、".join(m["name"] for m in outstanding)
        committed = [m for m in checked if m["status"] == F.COMMITTED]
        if decision != "commitment" and committed:
            raise CaseError("只有告知承诺受理才能以书面承诺代替材料。")
        if decision == "accept" and outstanding:
            raise CaseError(f"仍缺少或不符合要求的材料：{names}。请出具一次性告知书，"
                            "或在事项允许时容缺受理。")
        if decision == "notice" and not outstanding:
            raise CaseError("材料已齐全，无需一次性告知，请直接受理。")
        if decision == "deficiency":
            if not item.get("deficiency_allowed"):
                raise CaseError(f"事项“{item['name']}”不允许容缺受理。")
            if not outstanding:
                raise CaseError("没有缺少的材料，请直接受理。")
            marked = {i for i, m in enumerate(item.get("materials") or ())
                      if m.get("necessity") == "容缺后补"}
            # Where the guide names the materials that may come later, only those may.
            core = [m["name"] for m in outstanding if marked and m["index"] not in marked]
            if core:
                raise CaseError("以下材料不属于可容缺后补的材料，不能容缺受理："
                                + "、".join(core) + "。")
        if decision == "commitment":
            if not item.get("commitment_allowed"):
                raise CaseError(f"事项“{item['name']}”不适用告知承诺制。")
            if outstanding:
                raise CaseError(f"告知承诺受理时，所缺材料须标记为“以书面承诺代替”：{names}。")
            if not committed:
                raise CaseError("没有以书面承诺代替的材料，请直接受理。")

    def _profile(self, applicant, normalised):
        profile = {"number": normalised, "name": applicant.name.strip()}
        if applicant.phone:
            try:
                profile["phone"] = personal.check_phone(applicant.phone)
            except personal.PersonalDataInvalid as exc:
                raise CaseError(exc.message) from exc
        if applicant.address:
            profile["address"] = applicant.address.strip()[:200]
        profile.update(applicant.extra or {})
        return profile

    def _proxy(self, item, proxy):
        if not proxy:
            return None, []
        if not item.get("proxy_allowed"):
            raise CaseError(f"事项“{item['name']}”不允许代办，须申请人本人办理。")
        kind, normalised = self.check_number(proxy.get("number", ""))
        if kind != "person":
            raise CaseError("代办人须填写居民身份证号码。")
        if not (proxy.get("name") or "").strip():
            raise CaseError("请填写代办人姓名。")
        sha = proxy.get("authorisation")
        if not sha:
            raise CaseError("代办须上传申请人签署的授权委托书。")
        agent_key = identity.person_key(self.region_key, normalised)
        profile = {"number": normalised, "name": proxy["name"].strip()}
        if proxy.get("phone"):
            try:
                profile["phone"] = personal.check_phone(proxy["phone"])
            except personal.PersonalDataInvalid as exc:
                raise CaseError(exc.message) from exc
        member = {"agent_key": agent_key, "authorisation": _scan_sha(sha),
                  "agent": personal.seal_profile(self.region_key, agent_key, profile)}
        return member, [(-1, "授权委托书", sha)]

    def supplement(self, number, materials, actor, *, visit=True):
        """Materials brought later (after a notice, a deficiency or a supplement request).

        :param materials: ``{index: [sha256, …]}`` (an empty list: checked as an original).
        """
        if not materials:
            raise CaseError("请选择补充提交的材料。")
        with self.db.atomic():
            header, events, state = self.load(number)
            entries, wanted = [], []
            for index, shas in materials.items():
                held = state["materials"].get(str(index))
                if held is None:
                    raise CaseError(f"该办件没有第 {int(index) + 1} 项材料。")
                shas = [_scan_sha(s) for s in shas or ()]
                entries.append({"index": int(index), "name": held["name"],
                                "status": F.PROVIDED, "scans": shas})
                wanted.extend((int(index), held["name"], s) for s in shas)
            docs = self._scan_events(number, actor, wanted)
            docs.append(self._event(number, "supplemented", actor, materials=entries,
                                    visit=visit))
            return self._check_and_write(docs, header, events)

    def act(self, number, kind, actor, parties=(), **fields):
        """Any other event (forward, opinion, decisions, transfer, delivery, rating …)."""
        return self._act_all(number, [(kind, actor, parties, fields)])

    def _act_all(self, number, actions):
        """Write several events at once: read the case, fold, write, in one transaction
        (two clerks, or a double click, never both succeed at something only one may do)."""
        with self.db.atomic():
            header, events, _ = self.load(number)
            docs = [self._event(number, kind, actor, parties, **fields)
                    for kind, actor, parties, fields in actions]
            return self._check_and_write(docs, header, events)

    def forward(self, number, actor, text=""):
        """Township review passed: the case goes on to the deciding county."""
        return self.act(number, "forwarded", actor, text=text or "初审通过")

    def opinion(self, number, actor, agree, text=""):
        """A parallel department's opinion (the lead department decides once all are in)."""
        if not actor.department:
            raise CaseError("您的账号未设置所属部门，不能提出并联意见。")
        return self.act(number, "opinion", actor, department=actor.department,
                        opinion="agree" if agree else "disagree", text=text)

    def request_supplement(self, number, actor, reason, materials=()):
        """Ask the applicant for more (the clock stops until they bring it)."""
        if not reason.strip():
            raise CaseError("请写明需要补正的内容和原因。")
        _, _, state = self.load(number)
        entries = []
        for index in materials:
            held = state["materials"].get(str(index))
            if held is None:
                raise CaseError(f"该办件没有第 {int(index) + 1} 项材料。")
            entries.append({"index": int(index), "name": held["name"], "status": F.DEFECTIVE,
                            "why": reason})
        return self.act(number, "supplement_requested", actor, reason=reason.strip(),
                        materials=entries)

    def approve(self, number, actor, result="", licence=None):
        """Approve; an issued certificate becomes an e-licence record later cases use."""
        fields = {"result": result.strip() or "准予办理"}
        if licence:
            if not (licence.get("name") or "").strip() or not (licence.get("number") or "").strip():
                raise CaseError("出具证照时须填写证照名称和证照编号。")
            fields["licence"] = {k: v.strip() for k, v in licence.items()
                                 if isinstance(v, str) and v.strip()}
        return self.act(number, "approved", actor, **fields)

    def reject(self, number, actor, reason):
        """Reject with a reason the citizen reads."""
        if not reason.strip():
            raise CaseError("不予批准须写明理由。")
        return self.act(number, "rejected", actor, reason=reason.strip())

    def transfer(self, number, actor, to, reason):
        """Hand the case to another township or the county (it takes this stage)."""
        if to not in dict(self.transfer_targets()):
            raise CaseError("请选择已登记的镇级或县级站点作为转办对象。")
        if not reason.strip():
            raise CaseError("转办须写明理由。")
        return self.act(number, "transferred", actor, parties=[to], to=to, reason=reason.strip())

    def change_delivery(self, number, actor, station):
        """The citizen collects the result at another station."""
        try:
            casedocs.check_code(station, "领取站点")
        except errors.DocValidation:
            raise CaseError("请选择正确的领取站点。")
        return self.act(number, "delivery_changed", actor, parties=[station], station=station)

    def check_collector(self, state, to, id_number):
        """Refuse (CaseError) unless ``id_number`` is the applicant's (``to="applicant"``) or
        the registered agent's (``"agent"``): the result goes to the right person."""
        try:
            normalised = idnumbers.normalise(id_number)
        except (TypeError, ValueError):
            normalised = ""
        key = identity.person_key(self.region_key, normalised) if normalised else None
        expected = (state.get("applicant_key") if to == "applicant"
                    else (state.get("proxy") or {}).get("agent_key"))
        if not key or key != expected:
            who = "申请人" if to == "applicant" else "代办人"
            raise CaseError(f"领取人证件号码与{who}不符，不能送达。请核对证件。")

    def deliver(self, number, actor, to="applicant", id_number=None):
        """Hand the result over at this station (``id_number``: the collector's, checked
        against the applicant's or agent's; the event records that it was)."""
        _, _, state = self.load(number)
        if id_number is not None:
            self.check_collector(state, to, id_number)
        actions = []
        if state["status"] == F.READY and state["delivery_station"] != self.node:
            # Delivery anywhere: the citizen came here instead; the change and the
            # delivery are written together.
            actions.append(("delivery_changed", actor, [self.node], {"station": self.node}))
        actions.append(("delivered", actor, (),
                        {"to": to, "id_checked": id_number is not None}))
        return self._act_all(number, actions)

    def rate(self, number, score, text=""):
        """The citizen's rating (好差评, 1–5) after delivery."""
        if not isinstance(score, int) or not 1 <= score <= 5:
            raise CaseError("请选择 1 到 5 之间的评价等级。")
        return self.act(number, "rated", CITIZEN, score=score, text=text.strip()[:500])

    def complain(self, number, text):
        """A citizen's complaint about a case."""
        if not text.strip():
            raise CaseError("请填写投诉内容。")
        return self.act(number, "complained", CITIZEN, text=text.strip()[:1000])

    def handle_complaint(self, number, actor, complaint_id, stage, text):
        """Accept or answer a complaint (stages ``accepted``, ``replied``)."""
        if stage == "replied" and not text.strip():
            raise CaseError("答复投诉须填写答复内容。")
        return self.act(number, "complaint_handled", actor, complaint=complaint_id,
                        stage=stage, text=text.strip())

    def extend(self, number, actor, days, reason):
        """An approved extension of the time limit (延长审批), with its reason."""
        if not reason.strip():
            raise CaseError("延长审批期限须写明理由。")
        return self.act(number, "extended", actor, days=days, reason=reason.strip())

    def stop_clock(self, number, actor, reason):
        """Stop the clock for a step the item excludes (听证, 现场勘查, 专家评审 …)."""
        if not reason.strip():
            raise CaseError("暂停计时须写明环节，如听证、现场勘查、专家评审。")
        return self.act(number, "clock_stopped", actor, reason=reason.strip())

    def resume_clock(self, number, actor):
        """Resume the clock after a stop."""
        return self.act(number, "clock_resumed", actor)

    def issue_card(self, number, color, due, days_left):
        """A yellow or red card from the sweep (a case event: it replicates)."""
        return self.act(number, "card", SWEEP, color=color, due=due, days_left=days_left)

    def follow_up(self, number, actor, card_id, note):
        """A supervisor's follow-up note on a card (a red card needs one)."""
        if not note.strip():
            raise CaseError("请填写跟进情况。")
        return self.act(number, "followed_up", actor, card=card_id, note=note.strip())

    def check_commitment(self, number, actor, truthful, text=""):
        """The post-check of a case accepted on written commitment."""
        return self.act(number, "commitment_checked", actor,
                        result="truthful" if truthful else "untruthful", text=text.strip())

    def preapply(self, item_id, applicant, station, materials=None):
        """A citizen's online pre-application: the case waits at ``station``."""
        item = self.item(item_id)
        if not item.get("online_application"):
            raise CaseError(f"事项“{item['name']}”暂不支持网上申请，请到服务站办理。")
        kind, normalised = self.check_number(applicant.number)
        self._check_service_object(item, kind)
        if not applicant.name.strip():
            raise CaseError("请填写申请人姓名。")
        if not applicant.phone:
            raise CaseError("请填写联系电话，以便服务站联系您。")
        try:
            casedocs.check_code(station, "station")
        except errors.DocValidation:
            raise CaseError("请选择办理站点。")
        applicant_key = identity.person_key(self.region_key, normalised)
        profile = self._profile(applicant, normalised)
        checked, uploads = self._materials(item, materials or {}, applicant_key, "notice")
        with self.db.atomic():
            hlc = self.clock.now()
            number = self.next_number(hlc)
            route = self.route_for(item, station)
            header = casedocs.case_header(
                number, item["doc_id"], self.node, route[-1], applicant_key, hlc,
                item_name=item["name"], item_version=item["version"], item_hash=item["hash"],
                applicant_kind=kind, applicant=personal.seal_profile(
                    self.region_key, applicant_key, profile),
                route=route, department=item.get("department", ""),
                parallel=list(item.get("parallel_departments") or []),
                lead_department=item.get("lead_department", ""), limit=_limit(item),
                delivery_station=station, channel="online")
            docs = [header, *self._scan_events(number, CITIZEN, uploads)]
            docs.append(self._event(number, "preapplied", CITIZEN,
                                    parties=[station] if station != self.node else [],
                                    station=station, materials=checked))
            self._check_and_write(docs)
        return number


def _licence_for(material_name, licences):
    """The e-licence that stands for a material: same name, or named inside it
    (``残疾人证`` for ``中华人民共和国残疾人证（第二代）``)."""
    if material_name in licences:
        return licences[material_name]
    for name, licence in licences.items():
        if len(name) >= 3 and name in material_name:
            return licence
    return None


def _limit(item):
    """The time limit counted for a case: the promised one (0: 即办, the same day), else
    the statutory one."""
    if item.get("promised_time_limit") is not None:
        return {"days": item["promised_time_limit"],
                "unit": item.get("promised_time_limit_unit", "工作日"), "kind": "promised"}
    if item.get("statutory_time_limit"):
        return {"days": item["statutory_time_limit"],
                "unit": item.get("statutory_time_limit_unit", "工作日"), "kind": "statutory"}
    return {"days": 0, "unit": "工作日", "kind": "immediate"}


def _needed_text(row):
    """What the applicant must bring for a material (the one-time notice's wording)."""
    parts = [f"{row['name']}（{row['form']}"]
    if row.get("copies"):
        parts.append(f"，{row['copies']} 份")
    parts.append("）")
    if row.get("source_note"):
        parts.append(f"；{row['source_note']}")
    if row.get("common_mistakes"):
        parts.append("；注意：" + "、".join(row["common_mistakes"]))
    return "".join(parts)
