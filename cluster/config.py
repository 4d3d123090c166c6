"""Cluster configuration: ``conf/cluster.toml``, validated on load.

Every setting has a default, so an empty file (or no file) is a valid local
cluster. Errors name the file and the dotted key, e.g.
``conf/cluster.toml: health.period_ms: must be > 0``, and unknown keys are
refused, because a misspelt key that is silently ignored is a setting the
operator believes is on and is not.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from billing.fraud import FraudConfig, FraudConfigError

__all__ = [
    "DEFAULT_PATH",
    "BatchConfig",
    "ClusterConfig",
    "ConfigError",
    "FraudTable",
    "GatewayConfig",
    "HealthConfig",
    "LimitsConfig",
    "RayConfig",
    "ShardingConfig",
    "StorageConfig",
    "load_config",
    "parse_config",
]

DEFAULT_PATH = Path("conf/cluster.toml")


class ConfigError(ValueError):
    """Raised by :func:`load_config` when the file is missing, not TOML, or invalid.

    The message is one line per problem, each ``<file>: <dotted.key>: <reason>``.
    """


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShardingConfig(_Section):
    """How the account space and the usage stream are cut up."""

    shards: int = Field(default=16, gt=0, le=4096)
    partitions: int = Field(default=8, gt=0, le=4096)
    shards_per_actor: int = Field(default=1, gt=0, le=64)


class StorageConfig(_Section):
    """Where shard databases live and how they are written."""

    data_dir: Path = Path("data")
    mode: Literal["shared", "replicated"] = "shared"
    sync: bool = True
    read_cache_entries_max: int = Field(default=100_000, ge=0)
    takeover_fence_timeout_ms: int = Field(default=5_000, gt=0)


class GatewayConfig(_Section):
    """The gRPC gateway, one per node."""

    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)


class HealthConfig(_Section):
    """Ray's node health checks (GCS -> raylet), passed in the head's ``_system_config``.

    A killed raylet refuses the check at once, so it is declared dead after about
    ``period_ms * failure_threshold``; a hung one times out each check, which
    adds up to ``timeout_ms`` per attempt.
    """

    period_ms: int = Field(default=500, gt=0)
    timeout_ms: int = Field(default=500, gt=0)
    failure_threshold: int = Field(default=3, gt=0)
    initial_delay_ms: int = Field(default=1_000, ge=0)

    def ray_system_config(self) -> dict[str, int]:
        """The ``_system_config`` entries Ray expects, keyed by Ray's own names."""
        return {
            "health_check_period_ms": self.period_ms,
            "health_check_timeout_ms": self.timeout_ms,
            "health_check_failure_threshold": self.failure_threshold,
            "health_check_initial_delay_ms": self.initial_delay_ms,
        }


class BatchConfig(_Section):
    """Batch sizes on the data plane (one synced WriteBatch per shard batch)."""

    records_max: int = Field(default=1_000, gt=0, le=100_000)
    linger_ms: int = Field(default=2, ge=0)


class LimitsConfig(_Section):
    """Back-pressure: beyond these the gateway answers RESOURCE_EXHAUSTED."""

    inflight_batches_per_shard_max: int = Field(default=4, gt=0)
    inflight_records_per_gateway_max: int = Field(default=50_000, gt=0)
    stream_records_max: int = Field(default=10_000, gt=0)


class RayConfig(_Section):
    """How :mod:`cluster.deploy.localray` starts a simulated local cluster."""

    temp_root: Path = Path("/tmp")
    num_cpus_per_node: int = Field(default=2, ge=0)
    object_store_bytes_per_node: int = Field(default=100 * 1024 * 1024, ge=78 * 1024 * 1024)
    include_dashboard: bool = False
    start_timeout_s: float = Field(default=60.0, gt=0)


Action = Literal["alert", "block"]


class VelocityTable(_Section):
    """``[fraud.velocity]``; an unset key takes ``billing.fraud.VelocityRule``'s default."""

    calls: int | None = Field(default=None, gt=0)
    window_s: int | None = Field(default=None, gt=0)
    international_classes: list[str] | None = None
    action: Action | None = None


class SpendSpikeTable(_Section):
    """``[fraud.spend_spike]``; an unset key takes ``billing.fraud.SpikeRule``'s default."""

    # A ratio: 3, 2.5 or "5/2"; checked by billing.fraud (ClusterConfig._fraud_rules_load).
    factor: Any = None
    trailing_cycles: int | None = Field(default=None, gt=0)
    min_history: int | None = Field(default=None, gt=0)
    action: Action | None = None


class PremiumTable(_Section):
    """``[fraud.premium]``; an unset key takes ``billing.fraud.PremiumRule``'s default."""

    premium_prefixes: list[str] | None = None
    premium_classes: list[str] | None = None
    action: Action | None = None


class FraudTable(_Section):
    """``[fraud]``: the fraud and risk rules the account shards run on charged usage.

    No table (the default) runs nothing. A rule runs when its sub-table is
    present (``[fraud.velocity]``, ``[fraud.spend_spike]``, ``[fraud.premium]``);
    a ``[fraud]`` without any of them runs nothing either.
    """

    velocity: VelocityTable | None = None
    spend_spike: SpendSpikeTable | None = None
    premium: PremiumTable | None = None

    def mapping(self) -> dict[str, dict[str, Any]]:
        """The rules as the plain TOML-shaped table ``FraudConfig.from_mapping`` reads
        (only the keys set), for the settings that cross process boundaries."""
        rules = {
            "velocity": self.velocity,
            "spend_spike": self.spend_spike,
            "premium": self.premium,
        }
        return {
            name: table.model_dump(exclude_none=True)
            for name, table in rules.items()
            if table is not None
        }

    def rules(self) -> FraudConfig | None:
        """The rules as ``billing.fraud`` runs them; ``None`` when no rule is set."""
        table = self.mapping()
        return FraudConfig.from_mapping(table) if table else None


class ClusterConfig(_Section):
    """The whole of ``conf/cluster.toml``."""

    sharding: ShardingConfig = ShardingConfig()
    storage: StorageConfig = StorageConfig()
    gateway: GatewayConfig = GatewayConfig()
    health: HealthConfig = HealthConfig()
    batch: BatchConfig = BatchConfig()
    limits: LimitsConfig = LimitsConfig()
    ray: RayConfig = RayConfig()
    fraud: FraudTable | None = None

    @model_validator(mode="after")
    def _actors_divide_shards(self) -> ClusterConfig:
        if self.sharding.shards % self.sharding.shards_per_actor != 0:
            raise ValueError("sharding.shards_per_actor: must divide sharding.shards")
        return self

    @model_validator(mode="after")
    def _fraud_rules_load(self) -> ClusterConfig:
        """The rules' own checks (billing.fraud), their errors naming the key."""
        if self.fraud is not None:
            try:
                self.fraud.rules()
            except FraudConfigError as exc:
                raise ValueError(f"fraud.{exc}") from None
        return self


def _reason(error: Any) -> str:
    ctx = error.get("ctx") or {}
    kind = error["type"]
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
    if kind in bounds:
        key = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt"}[kind]
        return f"must be {bounds[kind]} {ctx[key]}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if kind == "extra_forbidden":
        return "unknown key"
    msg: str = error["msg"]
    return msg.removeprefix("Value error, ")


def _describe(source: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        reason = _reason(error)
        # Model-level checks put the key inside the message ("a.b: why").
        lines.append(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], *, source: str = "<config>") -> ClusterConfig:
    """Validate an already-parsed TOML mapping; raise :class:`ConfigError` naming ``source``."""
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(source, exc)) from None


def load_config(path: Path | str = DEFAULT_PATH, *, missing_ok: bool = False) -> ClusterConfig:
    """Read and validate a cluster TOML file.

    With ``missing_ok`` a missing file yields the defaults; otherwise it is an
    error, since a typo in ``--config`` should not quietly start a default cluster.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return ClusterConfig()
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:  # unreadable: permissions, a folder, an I/O error
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(path))
