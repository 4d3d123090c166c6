"""The [charging] table of conf/cluster.toml: validated, defaulted, and given to every shard."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.engines import engine_factory
from actors.shard.engine import AccountShard
from billing.charging.config import ChargingConfig, OfflinePolicy
from cluster.config import ConfigError, load_config, parse_config
from cluster.deploy.runtime import settings_of

ROOT = Path(__file__).resolve().parent.parent


def _shard_config(tmp_path: Path, toml: str) -> ChargingConfig:
    conf = tmp_path / "cluster.toml"
    conf.write_text(toml)
    settings = settings_of(load_config(conf), data_dir=tmp_path, tariffs_dir=ROOT / "conf/tariffs")
    settings.update(shards=1, partitions=1)
    shard = engine_factory(settings)("acct-00", tmp_path / f"u{len(toml)}", 1)
    assert isinstance(shard, AccountShard)
    try:
        return shard.core.charging
    finally:
        shard.close()


def test_the_policies_reach_the_account_shards(tmp_path: Path) -> None:
    """``offline_policy`` and ``block_over_limit`` become the ChargingConfig of every shard
    the engine factory opens, in the catalogue's time zone; without the table the defaults
    (debt, no block) hold."""
    chosen = _shard_config(
        tmp_path, '[charging]\noffline_policy = "reject"\nblock_over_limit = true\n'
    )
    assert chosen == ChargingConfig(
        tz="Europe/Berlin", offline_policy=OfflinePolicy.REJECT, block_over_limit=True
    )
    assert _shard_config(tmp_path, "") == ChargingConfig(tz="Europe/Berlin")
    assert parse_config({}).charging.mapping() == {
        "offline_policy": "debt",
        "block_over_limit": False,
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"charging": {"offline_policy": "drop"}}, "charging.offline_policy: Input should be"),
        ({"charging": {"block_over_limit": 3}}, "charging.block_over_limit: Input should be"),
        ({"charging": {"block_overlimit": True}}, "charging.block_overlimit: unknown key"),
    ],
)
def test_a_bad_policy_names_the_file_and_the_key(data: dict[str, object], message: str) -> None:
    """A bad ``[charging]`` key is refused with the file and the dotted key, like any other."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="conf/cluster.toml")
    assert str(info.value).startswith(f"conf/cluster.toml: {message}")
