"""Opening a unit's engine: an AccountShard or a RatingPartition, from plain settings.

Settings cross process boundaries (they are constructor arguments of Ray
actors), so they are a plain dict built by ``cluster.deploy.runtime.settings_of``;
the catalogue is loaded once per host process and shared by its units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.host import Engine, EngineFactory
from actors.partition.engine import PartitionConfig, RatingPartition
from actors.routing import unit_kind
from actors.shard.engine import AccountShard
from billing.bundles import CatalogueTariff
from billing.charging.config import ChargingConfig, OfflinePolicy
from billing.fraud import FraudConfig
from billing.rating import load_catalogue

__all__ = ["charging_config", "engine_factory"]


def charging_config(settings: dict[str, Any], tz: str) -> ChargingConfig:
    """The charging policies of the ``[charging]`` table (validated by ``cluster.config``;
    absent keys keep ``ChargingConfig``'s defaults). Cycles are calendar months in the
    operator's time zone: the catalogue's, ``tz``."""
    table = settings.get("charging") or {}
    return ChargingConfig(
        tz=tz,
        offline_policy=OfflinePolicy(table.get("offline_policy", OfflinePolicy.DEBT.value)),
        block_over_limit=bool(table.get("block_over_limit", False)),
    )


def engine_factory(settings: dict[str, Any]) -> EngineFactory:
    """A factory opening units under ``settings`` (shards, partitions, tariffs_dir...)."""
    catalogue = load_catalogue(settings["tariffs_dir"])
    tariff = CatalogueTariff(catalogue)
    partition_config = PartitionConfig(
        shards=int(settings["shards"]), partitions=int(settings["partitions"])
    )
    cache_max = int(settings.get("cache_entries_max", 50_000))
    charging = charging_config(settings, catalogue.timezone)
    # The [fraud] table of the cluster config, validated there; no rule table: no rules run.
    fraud_table = settings.get("fraud")
    fraud = FraudConfig.from_mapping(fraud_table) if fraud_table else None
    # [charging] session_validity_s: the Validity-Time the shards grant online quota for.
    validity_s = int(settings.get("session_validity_s", 300))

    def open_unit(unit_id: str, path: Path, epoch: int, *, resume: bool = False) -> Engine:
        if unit_kind(unit_id) == "account":
            return AccountShard.open(
                path,
                epoch=epoch,
                resume=resume,
                tariff=tariff,
                unit_id=unit_id,
                catalogue=catalogue,
                charging=charging,
                fraud=fraud,
                cache_accounts_max=cache_max,
                session_validity_s=validity_s,
            )
        return RatingPartition.open(
            path,
            epoch=epoch,
            unit_id=unit_id,
            catalogue=catalogue,
            config=partition_config,
            resume=resume,
        )

    return open_unit
