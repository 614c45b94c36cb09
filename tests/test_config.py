"""Settings: one declaration, layered defaults → tier → node file → explicit dict, and a
node file with a typo or a wrong kind of value refused at start-up with its name."""

import json

import pytest

import village
from shared import config as cfg
from shared.app import create_app
from shared.errors import ConfigurationError
from syncd import daemon
from tests import nodeproc


@pytest.fixture
def node_dir(tmp_path):
    path = tmp_path / "v"
    nodeproc.make_node_dir(path, tier="village", code="441521101001", name="东门村")
    return path


def write_settings(node_dir, **settings):
    path = node_dir / cfg.CONFIG_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(settings)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_the_node_file_path_keeps_the_tiers_defaults_in_their_order(node_dir, monkeypatch):
    monkeypatch.setattr(village, "DEFAULTS", dict(village.DEFAULTS, NODE_OFFLINE_AFTER=99,
                                                  LOOKUP_LIMIT_PER_HOUR=7))
    app = create_app(node_dir=node_dir)
    try:
        # The tier's value over the shared default, on the path `tongban serve` takes.
        assert app.config["NODE_OFFLINE_AFTER"] == 99
        assert app.config["NODE_DIR"] == str(node_dir)
    finally:
        app.extensions["store"].close()
    write_settings(node_dir, NODE_OFFLINE_AFTER=120)
    app = create_app({"LOOKUP_LIMIT_PER_HOUR": 3}, node_dir=node_dir)
    try:
        # The node's file over the tier; the explicit dict over the file.
        assert app.config["NODE_OFFLINE_AFTER"] == 120
        assert app.config["LOOKUP_LIMIT_PER_HOUR"] == 3
    finally:
        app.extensions["store"].close()
    assert cfg.load_config(node_dir)["NODE_OFFLINE_AFTER"] == 120
    assert cfg.load_config(node_dir)["LOOKUP_LIMIT_PER_HOUR"] == 7


def test_syncd_reads_its_settings_from_the_one_declaration(node_dir):
    write_settings(node_dir, SYNC_INTERVAL=42)
    settings = daemon.settings(cfg.load_config(node_dir))
    assert settings["SYNC_INTERVAL"] == 42
    assert settings["SYNC_BATCH_SIZE"] == cfg.DEFAULTS["SYNC_BATCH_SIZE"]
    assert set(daemon.DEFAULTS) <= set(cfg.DEFAULTS)


@pytest.mark.parametrize("settings, words", [
    ({"SYNC_INTERVALL": 30}, "unknown setting 'SYNC_INTERVALL' (did you mean SYNC_INTERVAL?)"),
    ({"NODE_DIR": "/elsewhere"}, "unknown setting 'NODE_DIR'"),
    ({"SYNC_INTERVAL": "fast"}, "SYNC_INTERVAL must be a number, not 'fast'"),
    ({"SYNC_BATCH_SIZE": 2.5}, "SYNC_BATCH_SIZE must be a whole number, not 2.5"),
    ({"STAFF_COOKIE_SECURE": "yes"}, "STAFF_COOKIE_SECURE must be true or false"),
    ({"PUBLIC_URL": 8080}, "PUBLIC_URL must be a string, not 8080"),
    ({"CATALOG_TRUSTED_KEYS": "abc"}, "CATALOG_TRUSTED_KEYS must be a list"),
])
def test_a_bad_node_file_is_refused_at_start_with_the_key_named(node_dir, settings, words):
    write_settings(node_dir, **settings)
    before = (node_dir / cfg.CONFIG_FILE).read_bytes()
    with pytest.raises(ConfigurationError, match=None) as raised:
        cfg.load_config(node_dir)
    assert words in str(raised.value)
    # The command line says the same and stops before it opens anything.
    result = nodeproc.tongban("info", node_dir, check=False)
    assert result.returncode != 0 and words in result.stderr
    assert "Traceback" not in result.stderr
    assert (node_dir / cfg.CONFIG_FILE).read_bytes() == before


def test_a_node_file_that_is_not_an_object_is_refused(node_dir):
    (node_dir / cfg.CONFIG_FILE).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="must hold a JSON object"):
        cfg.load_config(node_dir)


def test_every_setting_with_no_default_declares_its_kind():
    undeclared = [key for key, value in cfg.DEFAULTS.items()
                  if value is None and key not in cfg.NULLABLE_KINDS]
    assert undeclared == []
