"""Keys, signed requests, sealed secrets and the signed registry."""

import datetime

import pytest

from shared import errors, identity, registry
from shared.store.store import Store

COUNTY, TOWN, VILLAGE = "441521", "441521101", "441521101001"


@pytest.fixture
def county_key():
    return identity.new_private_key()


@pytest.fixture
def county_store(tmp_path, county_key):
    store = Store(str(tmp_path / "county.sqlite"))
    store.add_projection(registry.NodeRegistry(
        identity.public_key_bytes(county_key)))
    registry.publish_entry(store, county_key, code=COUNTY, tier="county", name="海丰县",
                           public_key=identity.b64(identity.public_key_bytes(county_key)))
    return store


def _pub(key):
    return identity.b64(identity.public_key_bytes(key))


class Clock:
    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_signed_request_verifies_and_is_bound_to_every_part():
    key = identity.new_private_key()
    clock = Clock()
    signer = identity.RequestSigner(VILLAGE, key, clock=clock)
    verifier = identity.RequestVerifier(clock=clock)
    clock.now += 10
    headers = signer.headers("POST", "/db/_bulk_docs?x=1", b'{"docs":[]}')
    fields = identity.parse_authorization(headers["Authorization"])
    pub = identity.public_key_bytes(key)
    for method, path, body in [("GET", "/db/_bulk_docs?x=1", b'{"docs":[]}'),
                               ("POST", "/db/_bulk_docs?x=2", b'{"docs":[]}'),
                               ("POST", "/db/_bulk_docs?x=1", b'{"docs":[1]}')]:
        with pytest.raises(errors.Unauthorized, match="bad signature"):
            identity.RequestVerifier(clock=lambda: clock.now + 1).check(
                fields, pub, method, path, body)
    verifier.check(fields, pub, "POST", "/db/_bulk_docs?x=1", b'{"docs":[]}')
    with pytest.raises(errors.Unauthorized, match="replayed"):
        verifier.check(fields, pub, "POST", "/db/_bulk_docs?x=1", b'{"docs":[]}')
    other = identity.public_key_bytes(identity.new_private_key())
    with pytest.raises(errors.Unauthorized, match="bad signature"):
        verifier.check(dict(fields, nonce="ab" * 16), other, "POST", "/db/_bulk_docs?x=1",
                       b'{"docs":[]}')


def test_clock_skew_is_refused_then_corrected_from_the_server_time():
    server = Clock()
    village_clock = Clock(server.now - 86400)  # a day behind
    verifier = identity.RequestVerifier(clock=server)
    server.now += 5
    signer = identity.RequestSigner(VILLAGE, identity.new_private_key(), clock=village_clock)
    pub = identity.public_key_bytes(signer.private_key)
    fields = identity.parse_authorization(signer.headers("GET", "/db", b"")["Authorization"])
    with pytest.raises(identity.ClockSkew, match="clock skew") as refused:
        verifier.check(fields, pub, "GET", "/db", b"")
    signer.observe_server_time(refused.value.server_time)
    fields = identity.parse_authorization(signer.headers("GET", "/db", b"")["Authorization"])
    verifier.check(fields, pub, "GET", "/db", b"")


def test_request_signed_before_the_process_started_is_refused():
    clock = Clock()
    signer = identity.RequestSigner(VILLAGE, identity.new_private_key(), clock=clock)
    headers = signer.headers("GET", "/db", b"")
    clock.now += 60  # the serving process restarts a minute later: nonces are gone
    verifier = identity.RequestVerifier(clock=clock)
    fields = identity.parse_authorization(headers["Authorization"])
    with pytest.raises(errors.Unauthorized, match="before this node started"):
        verifier.check(fields, identity.public_key_bytes(signer.private_key), "GET", "/db", b"")


@pytest.mark.parametrize("header", [
    "Tongban-Node node=441521",
    "Tongban-Node node=abc, ts=1, nonce=00112233445566778899aabbccddeeff, sig=\"x\"",
    "Tongban-Node node=441521, ts=soon, nonce=00112233445566778899aabbccddeeff, sig=\"x\"",
    "Tongban-Node garbage",
])
def test_malformed_authorization_is_unauthorized(header):
    with pytest.raises(errors.Unauthorized):
        identity.parse_authorization(header)


@pytest.mark.parametrize("ts", ["nan", "NaN", "inf", "-inf", "Infinity", "1e9", "-5",
                                "+1800000000", "1_800_000_000", " 1800000000", "0x10"])
def test_a_timestamp_is_plain_decimal_seconds(ts):
    header = (f"Tongban-Node node={VILLAGE}, ts={ts}, "
              "nonce=00112233445566778899aabbccddeeff, sig=\"x\"")
    with pytest.raises(errors.Unauthorized, match="malformed timestamp"):
        identity.parse_authorization(header)


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), float("-inf"), "1800000000",
                                None])
def test_the_verifier_refuses_a_timestamp_that_is_no_finite_number(ts):
    """NaN passes every comparison: without this check a request signed with ``ts=nan``
    passed the window and the process-start check, and replayed after a restart."""
    clock = Clock()
    key = identity.new_private_key()
    nonce = "00112233445566778899aabbccddeeff"
    message = identity.signing_string("GET", "/db", b"", float("nan"), nonce, VILLAGE)
    fields = {"node": VILLAGE, "ts": ts, "nonce": nonce, "sig": identity.sign(key, message)}
    for verifier in (identity.RequestVerifier(clock=clock),
                     identity.RequestVerifier(clock=Clock(clock.now + 3600))):  # restarted
        with pytest.raises(errors.Unauthorized, match="malformed timestamp"):
            verifier.check(fields, identity.public_key_bytes(key), "GET", "/db", b"")


def test_other_schemes_are_not_ours():
    assert identity.parse_authorization("Basic dXNlcjpwYXNz") is None
    assert identity.parse_authorization("") is None


def test_sealed_secret_opens_only_with_its_key():
    private, public = identity.new_seal_key()
    box = identity.seal(public, b"region secret")
    assert identity.unseal(private, box) == b"region secret"
    stranger, _ = identity.new_seal_key()
    with pytest.raises(ValueError):
        identity.unseal(stranger, box)
    with pytest.raises(ValueError):
        identity.unseal(private, dict(box, ct=identity.b64(b"x" * 40)))


def test_person_key_is_stable_keyed_and_normalised():
    key_a, key_b = identity.b64(b"a" * 32), identity.b64(b"b" * 32)
    number = "44152119800101123x"
    assert identity.person_key(key_a, number) == identity.person_key(key_a, " " + number.upper())
    assert identity.person_key(key_a, number) != identity.person_key(key_b, number)
    assert number not in identity.person_key(key_a, number)


def test_key_files_round_trip(tmp_path):
    assert identity.load_private_key(tmp_path) is None
    key = identity.new_private_key()
    identity.save_private_key(tmp_path, key)
    assert (tmp_path / identity.KEY_FILE).stat().st_mode & 0o077 == 0
    assert identity.public_key_bytes(identity.load_private_key(tmp_path)) == \
        identity.public_key_bytes(key)
    (tmp_path / identity.KEY_FILE).write_text("not a key")
    with pytest.raises(errors.ConfigurationError):
        identity.load_private_key(tmp_path)


# -- registry ------------------------------------------------------------------------------

def test_registry_keeps_only_entries_signed_by_the_county(county_store, county_key):
    assert registry.lookup(county_store.db, COUNTY).status == "active"
    forger = identity.new_private_key()
    forged = registry.make_entry(forger, code=TOWN, tier="township", name="假镇",
                                 public_key=_pub(forger))
    county_store.put(forged)
    assert registry.lookup(county_store.db, TOWN) is None
    tampered = registry.make_entry(county_key, code="441521102", tier="township",
                                   name="小漠镇", public_key=_pub(forger))
    tampered["status"] = "revoked"
    county_store.put(tampered)
    assert registry.lookup(county_store.db, "441521102") is None


def test_enrolment_code_is_one_time_expiring_and_bound(county_store, county_key):
    node_key = identity.new_private_key()
    seal_private, seal_public = identity.new_seal_key()
    region_key = identity.b64(b"r" * 32)
    code = registry.issue_enrolment(county_store, TOWN, "township")
    request = {"enrol_code": code, "code": TOWN, "tier": "township", "name": "梅陇镇",
               "public_key": _pub(node_key), "seal_key": seal_public}
    with pytest.raises(errors.Forbidden, match="issued for"):
        registry.redeem_enrolment(county_store, county_key, dict(request, code="441521102"),
                                  region_key=region_key)
    answer = registry.redeem_enrolment(county_store, county_key, request,
                                       region_key=region_key)
    assert identity.unseal(seal_private, answer["sealed_region_key"]) == b"r" * 32
    assert {d["code"] for d in answer["registry"]} == {COUNTY, TOWN}
    assert registry.lookup(county_store.db, TOWN).public_key == identity.public_key_bytes(node_key)
    with pytest.raises(errors.Forbidden, match="already been used"):
        registry.redeem_enrolment(county_store, county_key, request, region_key=region_key)
    later = registry.utcnow() + datetime.timedelta(hours=73)
    stale = registry.issue_enrolment(county_store, VILLAGE, "village")
    with pytest.raises(errors.Forbidden, match="expired"):
        registry.redeem_enrolment(county_store, county_key,
                                  dict(request, enrol_code=stale, code=VILLAGE, tier="village"),
                                  region_key=region_key, now=later)
    with pytest.raises(errors.Forbidden, match="unknown"):
        registry.redeem_enrolment(county_store, county_key,
                                  dict(request, enrol_code="AAAA-BBBB-CCCC-DDDD"),
                                  region_key=region_key)


def test_enrolment_needs_an_active_parent(county_store):
    with pytest.raises(errors.ConfigurationError, match="enrol it first"):
        registry.issue_enrolment(county_store, VILLAGE, "village")


def test_revocation_is_a_higher_signed_version(county_store, county_key):
    registry.publish_entry(county_store, county_key, code=TOWN, tier="township", name="梅陇镇",
                           public_key=_pub(identity.new_private_key()))
    version = registry.registry_version(county_store.db)
    registry.revoke(county_store, county_key, TOWN)
    entry = registry.lookup(county_store.db, TOWN)
    assert (entry.status, entry.version) == ("revoked", 2)
    assert registry.registry_version(county_store.db) > version
    with pytest.raises(errors.NotFound):
        registry.revoke(county_store, county_key, "441521109")


def test_ancestry_follows_the_registry_before_the_code(county_store, county_key):
    assert registry.ancestors(county_store.db, VILLAGE) == [VILLAGE, TOWN, COUNTY]
    # a village moved under another township: only its registry entry changes
    registry.publish_entry(county_store, county_key, code=VILLAGE, tier="village",
                           name="某村", public_key=_pub(identity.new_private_key()),
                           parent="441521102")
    assert registry.is_ancestor_or_self(county_store.db, "441521102", VILLAGE)
    assert not registry.is_ancestor_or_self(county_store.db, TOWN, VILLAGE)
    assert registry.is_ancestor_or_self(county_store.db, COUNTY, VILLAGE)
