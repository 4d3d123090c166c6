"""conf/cluster.toml: shipped defaults, validation errors that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import ClusterConfig, ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_file_equals_the_defaults() -> None:
    """The commented conf/cluster.toml states exactly the built-in defaults."""
    assert load_config(REPO / "conf" / "cluster.toml") == ClusterConfig()


def test_health_settings_map_to_ray_system_config() -> None:
    """Health settings become Ray's four health_check_* system-config keys."""
    config = parse_config({"health": {"period_ms": 200, "failure_threshold": 5}})
    assert config.health.ray_system_config() == {
        "health_check_period_ms": 200,
        "health_check_timeout_ms": 500,
        "health_check_failure_threshold": 5,
        "health_check_initial_delay_ms": 1000,
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"health": {"period_ms": 0}}, "conf/cluster.toml: health.period_ms: must be > 0"),
        ({"healt": {}}, "conf/cluster.toml: healt: unknown key"),
        (
            {"sharding": {"shards": 16, "shards_per_actor": 3}},
            "conf/cluster.toml: sharding.shards_per_actor: must divide sharding.shards",
        ),
        ({"gateway": {"port": 70000}}, "conf/cluster.toml: gateway.port: must be <= 65535"),
    ],
)
def test_errors_name_file_and_key(data: dict[str, object], message: str) -> None:
    """Each invalid setting is reported as '<file>: <dotted.key>: <reason>'."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="conf/cluster.toml")
    assert str(info.value) == message


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    """A missing file is an error unless allowed; broken TOML names the file."""
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    assert load_config(tmp_path / "nope.toml", missing_ok=True) == ClusterConfig()
    bad = tmp_path / "bad.toml"
    bad.write_text("[health\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid TOML"):
        load_config(bad)
