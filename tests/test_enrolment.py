"""Enrolment of nodes with one-time codes, through real node processes."""

import json
import stat

import pytest

from shared import identity, registry
from shared.app import create_app
from tests.nodeproc import enrol_node, start_node, tongban

COUNTY, TOWN, VILLAGE = "441521", "441521101", "441521101001"


def registry_of(node_dir):
    """``{code: NodeEntry}`` of a node directory's verified registry."""
    app = create_app(node_dir=node_dir)
    store = app.extensions["store"]
    try:
        return {entry.code: entry for entry in registry.all_entries(store.db)}
    finally:
        store.close()


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    """A county and a township (enrolled directly), both serving."""
    base = tmp_path_factory.mktemp("region")
    county = start_node(base / "county", tier="county", code=COUNTY, name="海丰县")
    enrol_node(county.node_dir, county.url, base / "town", "township", TOWN, "梅陇镇")
    town = start_node(base / "town", create=False)
    yield base, county, town
    town.stop()
    county.stop()


def test_county_makes_the_region_keys_and_signs_its_own_entry(region):
    base, county, _town = region
    config = json.loads((county.node_dir / "tongban.json").read_text())
    key = identity.load_private_key(county.node_dir)
    assert config["COUNTY_PUBLIC_KEY"] == identity.b64(identity.public_key_bytes(key))
    for name in (identity.KEY_FILE, identity.SECRETS_FILE, "tongban.json"):
        assert stat.S_IMODE((county.node_dir / name).stat().st_mode) == 0o600
    assert len(identity.unb64(identity.load_secrets(county.node_dir)["region_key"])) == 32
    entries = registry_of(county.node_dir)
    assert entries[COUNTY].tier == "county" and entries[COUNTY].status == "active"


def test_a_village_enrols_through_its_township(region):
    base, county, town = region
    village_dir = enrol_node(county.node_dir, town.url, base / "village", "village",
                             VILLAGE, "西兴社区")
    village_entries = registry_of(village_dir)
    assert set(village_entries) == {COUNTY, TOWN, VILLAGE}
    key = identity.load_private_key(village_dir)
    assert village_entries[VILLAGE].public_key == identity.public_key_bytes(key)
    # the region key arrived sealed and is the county's
    assert identity.load_secrets(village_dir)["region_key"] == \
        identity.load_secrets(county.node_dir)["region_key"]
    config = json.loads((village_dir / "tongban.json").read_text())
    assert config["COUNTY_PUBLIC_KEY"] == json.loads(
        (county.node_dir / "tongban.json").read_text())["COUNTY_PUBLIC_KEY"]
    # the township relayed it and knows the village at once, before any replication
    assert VILLAGE in registry_of(town.node_dir)


def test_an_enrolment_code_works_once(region, tmp_path):
    base, county, _town = region
    code = tongban("enrol", county.node_dir, "--code", "441521102", "--tier",
                   "township").stdout.strip()
    args = ["--tier", "township", "--code", "441521102", "--parent", county.url, "--enrol", code]
    tongban("init", tmp_path / "first", *args)
    again = tongban("init", tmp_path / "second", *args, check=False)
    assert again.returncode != 0 and "already been used" in again.stderr
    assert not (tmp_path / "second").exists()


@pytest.mark.parametrize("change, message", [
    ({"--enrol": "AAAA-BBBB-CCCC-DDDD"}, "unknown enrolment code"),
    ({"--code": "441521103"}, "issued for township 441521104"),
])
def test_a_wrong_code_is_refused_and_leaves_nothing(region, tmp_path, change, message):
    base, county, _town = region
    code = tongban("enrol", county.node_dir, "--code", "441521104", "--tier",
                   "township").stdout.strip()
    options = {"--tier": "township", "--code": "441521104", "--parent": county.url,
               "--enrol": code}
    options.update(change)
    args = [part for pair in options.items() for part in pair]
    result = tongban("init", tmp_path / "n", *args, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "n").exists()


def test_enrolment_with_the_parent_offline_says_so(region, tmp_path):
    base, county, _town = region
    result = tongban("init", tmp_path / "n", "--tier", "township", "--code", "441521105",
                     "--parent", "http://127.0.0.1:9", "--enrol", "AAAA-BBBB-CCCC-DDDD",
                     check=False)
    assert result.returncode != 0 and "cannot be reached" in result.stderr
    assert not (tmp_path / "n").exists()


def test_enrol_refuses_a_village_whose_township_is_not_enrolled(region):
    base, county, _town = region
    result = tongban("enrol", county.node_dir, "--code", "441521109001", "--tier", "village",
                     check=False)
    assert result.returncode != 0 and "enrol it first" in result.stderr


def test_only_the_county_enrols_and_revokes(region):
    base, _county, town = region
    for args in (["enrol", town.node_dir, "--code", "441521101002", "--tier", "village"],
                 ["revoke", town.node_dir, VILLAGE]):
        result = tongban(*args, check=False)
        assert result.returncode != 0 and "only the county" in result.stderr


def test_revoke_publishes_a_signed_revocation(region):
    base, county, _town = region
    code = "441521106"
    enrol_code = tongban("enrol", county.node_dir, "--code", code, "--tier",
                         "township").stdout.strip()
    tongban("init", base / "to-revoke", "--tier", "township", "--code", code, "--parent",
            county.url, "--enrol", enrol_code)
    assert tongban("revoke", county.node_dir, code).returncode == 0
    assert registry_of(county.node_dir)[code].status == "revoked"
    missing = tongban("revoke", county.node_dir, "441521199", check=False)
    assert missing.returncode != 0 and "not in the registry" in missing.stderr
