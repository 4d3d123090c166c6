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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from billing.billrun.run import BillRunConfig
from billing.fraud import FraudConfig, FraudConfigError

__all__ = [
    "DEFAULT_PATH",
    "BatchConfig",
    "BillRunsConfig",
    "ChargingTable",
    "ClockConfig",
    "ClusterConfig",
    "ConfigError",
    "DutiesConfig",
    "FraudTable",
    "GatewayConfig",
    "HealthConfig",
    "InspectionConfig",
    "LimitsConfig",
    "RayConfig",
    "SecurityConfig",
    "ShardingConfig",
    "StorageConfig",
    "load_config",
    "parse_config",
    "storage_mode",
]

DEFAULT_PATH = Path("conf/cluster.toml")


class ConfigError(ValueError):
    """Raised by :func:`load_config` when the file is missing, not TOML, or invalid.

    The message is one line per problem, each ``<file>: <dotted.key>: <reason>``.
    """


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# More host processes than that on one node is a mistake, not a machine.
_HOSTS_PER_NODE_MAX = 256


class ShardingConfig(_Section):
    """How the account space and the usage stream are cut up, and over how many host
    processes of a node the units spread."""

    shards: int = Field(default=16, gt=0, le=4096)
    partitions: int = Field(default=8, gt=0, le=4096)
    shards_per_actor: int = Field(default=1, gt=0, le=64)
    # Host processes per node (actors.slots): "auto" is the CPUs each node has to itself,
    # resolved once when the cluster starts (cluster.deploy.runtime.auto_hosts_per_node).
    # 1 by default: on the 2-core machine measured, 2 were slower for one node (notes).
    hosts_per_node: int | Literal["auto"] = 1

    @field_validator("hosts_per_node", mode="before")
    @classmethod
    def _hosts_per_node(cls, value: Any) -> int | str:
        if value == "auto" or (type(value) is int and 1 <= value <= _HOSTS_PER_NODE_MAX):
            return value  # type: ignore[no-any-return]
        raise ValueError(
            f'must be "auto" or an integer from 1 to {_HOSTS_PER_NODE_MAX}, got {value!r}'
        )


StorageMode = Literal["local", "shared", "replicated"]


class StorageConfig(_Section):
    """Where shard databases live, how many copies each has, and how they are written.

    ``mode`` unset picks by the cluster: ``replicated`` with 2 or more nodes
    (``up --nodes N``, ``up --address``), ``local`` for the one-node embedded
    default (:func:`storage_mode`). ``replicated``: every unit has a primary and
    ``replication_factor - 1`` followers on other nodes, each node in its own
    folder ``<data_dir>/nodes/<node>/``; a batch is acknowledged once it is synced
    on the primary and on every in-sync follower, and only while the in-sync set
    with the primary numbers at least ``min_in_sync`` (docs/architecture.md,
    "Replication", says why RF 2 / ``min_in_sync`` 2 loses nothing acknowledged
    when any one node dies with its disk). ``shared``: one copy in ``<data_dir>/units``
    that every node reaches (a real shared volume). ``local``: one copy on one node.
    """

    data_dir: Path = Path("data")
    mode: StorageMode | None = None
    replication_factor: int = Field(default=2, ge=2, le=5)
    min_in_sync: int = Field(default=2, ge=1, le=5)
    # A follower that has not acknowledged a batch within this is counted as failed: the
    # unit's calls are refused (retryable) until it answers or leaves the in-sync set.
    replica_ack_timeout_ms: int = Field(default=2_000, gt=0)
    # The written bound after which the coordinator drops a failing follower from the
    # in-sync set (Kafka's replica.lag.time.max.ms); a follower on a dead node goes at once.
    replica_lag_max_ms: int = Field(default=5_000, gt=0)
    # Replicated mode: every node keeps a copy of the coordinator's control state in its
    # own folder, from which a coordinator that lost its own rebuilds it.
    control_replicas: bool = True
    sync: bool = True
    read_cache_entries_max: int = Field(default=100_000, ge=0)
    takeover_fence_timeout_ms: int = Field(default=5_000, gt=0)

    @model_validator(mode="after")
    def _in_sync_fits(self) -> StorageConfig:
        if self.min_in_sync > self.replication_factor:
            raise ValueError(
                "storage.min_in_sync: must be <= storage.replication_factor "
                f"({self.replication_factor})"
            )
        return self


def storage_mode(config: ClusterConfig, *, nodes: int, address: str | None) -> str:
    """The storage mode a cluster of ``nodes`` simulated nodes (or one joined at
    ``address``) runs in: the configured one, else ``replicated`` for 2+ nodes and
    ``local`` for one. ``local`` with several nodes is refused: no node may open
    another's copy, so a dead node's units could never be taken over."""
    several = nodes >= 2 or address is not None
    mode = config.storage.mode or ("replicated" if several else "local")
    if mode == "local" and several:
        raise ConfigError(
            "storage.mode = 'local' keeps one copy on one node; a cluster of several "
            "nodes needs 'replicated' (the default) or 'shared' (a volume every node mounts)"
        )
    return mode


class GatewayConfig(_Section):
    """The gRPC gateway, one per node."""

    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    # Answer single-account queries from this node's own copies of the shards (a RocksDB
    # secondary in the gateway's process) instead of a call to their host.
    local_reads: bool = True


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


class SecurityConfig(_Section):
    """``[security]``: tokens, TLS, the roots of server-side paths, the audit log.

    Every key is optional (docs/security.md). Paths are relative to the folder of
    ``cluster.toml``: :func:`load_config` makes them absolute and checks that they
    exist. Without ``tokens_file`` the gateways take calls without a token, and
    without ``tls_cert`` they speak plaintext; ``petribill up`` refuses both on an
    address beyond loopback unless ``--insecure``.
    """

    # JSON Lines of token ids, roles and hashes (`petribill token create`).
    tokens_file: Path | None = None
    # The gateways' certificate chain and key (PEM): TLS only, no plaintext.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # CA of client certificates: with it, mutual TLS (a client without one is refused).
    client_ca: Path | None = None
    # Backup writes only below this folder (default: DATA/backups).
    backup_root: Path | None = None
    # LoadTariffs reads only below this folder (default: the conf folder).
    tariffs_root: Path | None = None
    # Where each gateway appends its audit log (default: DATA/audit).
    audit_dir: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def tokens(self) -> bool:
        return self.tokens_file is not None

    def under(self, base: Path) -> SecurityConfig:
        """These settings with every relative path taken relative to ``base``."""
        return self.model_copy(
            update={
                name: base / value
                for name in _SECURITY_PATHS
                if (value := getattr(self, name)) is not None and not value.is_absolute()
            }
        )

    def missing(self) -> list[tuple[str, str]]:
        """``(key, reason)`` for each path that is not there: files, or folders for roots."""
        found = []
        for name in _SECURITY_PATHS:
            value: Path | None = getattr(self, name)
            if value is None or name == "audit_dir":  # the audit folder is created on use
                continue
            folder = name.endswith("_root")
            if folder and not value.is_dir():
                found.append((name, f"{value}: not a folder"))
            elif not folder and not value.is_file():
                found.append((name, f"{value}: not a file"))
        return found


_SECURITY_PATHS: tuple[str, ...] = (
    "tokens_file",
    "tls_cert",
    "tls_key",
    "client_ca",
    "backup_root",
    "tariffs_root",
    "audit_dir",
)


class ChargingTable(_Section):
    """``[charging]``: the operator's charging policies (``billing.charging.config``).

    ``offline_policy``: what offline prepaid usage that the balance cannot cover
    does: ``"debt"`` (the default: charged, the rest posted to debt, the usage
    happened) or ``"reject"`` (refused ``rejected_offline`` and kept in the
    reject store, to be reprocessed after a top-up). ``block_over_limit``:
    offline usage beyond a postpaid credit limit is still charged, and with
    ``true`` also blocks the account until an operator unblocks it.
    """

    offline_policy: Literal["debt", "reject"] = "debt"
    block_over_limit: bool = False
    # The Validity-Time of granted online quota (RFC 4006). At its end the shard's owner
    # releases what the session holds; a late UPDATE is served within a second validity
    # (Tcc), not after.
    session_validity_s: int = Field(default=300, gt=0, le=86_400)

    def mapping(self) -> dict[str, Any]:
        """The policies as plain values, for the settings that cross process boundaries
        (the Validity-Time goes to the shards on its own, ``session_validity_s``)."""
        return self.model_dump(exclude={"session_validity_s"})


class DutiesConfig(_Section):
    """``[duties]``: how each account shard's owner runs its time-driven duties
    (reservation expiry, invoice ageing; ``actors.duties``)."""

    every_s: float = Field(default=1.0, gt=0, le=3600)
    accounts_per_step: int = Field(default=200, gt=0, le=100_000)
    invoices_per_step: int = Field(default=200, gt=0, le=100_000)
    steps_per_round_max: int = Field(default=1_000, gt=0)


class ClockConfig(_Section):
    """``[clock]``: what the cluster's time-driven work reads (``actors.clock``)."""

    # For tests and chaos runs only: every process adds the offset written to
    # <data_dir>/control/clock_offset_s (forward only) to the system time.
    adjustable: bool = False


# A bill run before the end of the grace period only makes drafts (billing.billrun).
_GRACE_S = BillRunConfig().grace_s


class BillRunsConfig(_Section):
    """``[bill_runs]``: the bill runs the coordinator starts by itself, one per cycle."""

    scheduled: bool = True
    # How long after a cycle's end its bill run starts; at least the grace period, since
    # a run inside it only makes drafts and the cycle would not be closed.
    after_end_s: int = Field(default=_GRACE_S, ge=_GRACE_S, le=60 * 86_400)
    check_every_s: float = Field(default=5.0, gt=0, le=3600)


class InspectionConfig(_Section):
    """``[inspection]``: the coordinator's scheduled self-check (``cluster.control.inspection``)."""

    # 0 turns the scheduled inspection off (``petribill inspect`` still runs one).
    every_s: float = Field(default=600.0, ge=0)
    # A reservation held, an invoice left open, this long past its time is a finding.
    late_s: int = Field(default=60, gt=0)
    # A session open longer than this is a finding ("over-old").
    session_age_max_s: int = Field(default=86_400, gt=0)


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
    charging: ChargingTable = ChargingTable()
    fraud: FraudTable | None = None
    security: SecurityConfig = SecurityConfig()
    clock: ClockConfig = ClockConfig()
    duties: DutiesConfig = DutiesConfig()
    bill_runs: BillRunsConfig = BillRunsConfig()
    inspection: InspectionConfig = InspectionConfig()

    @model_validator(mode="after")
    def _actors_divide_shards(self) -> ClusterConfig:
        if self.sharding.shards % self.sharding.shards_per_actor != 0:
            raise ValueError("sharding.shards_per_actor: must divide sharding.shards")
        return self

    @model_validator(mode="after")
    def _inspection_late_after_duties(self) -> ClusterConfig:
        if self.inspection.late_s < self.duties.every_s:
            raise ValueError(
                "inspection.late_s: must be >= duties.every_s (the duties run that often, "
                "so anything less is found late by design)"
            )
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

    @model_validator(mode="after")
    def _tls_complete(self) -> ClusterConfig:
        """A certificate needs its key and a key its certificate; mutual TLS needs TLS."""
        security = self.security
        if security.tls_cert is not None and security.tls_key is None:
            raise ValueError("security.tls_key: required with security.tls_cert")
        if security.tls_key is not None and security.tls_cert is None:
            raise ValueError("security.tls_cert: required with security.tls_key")
        if security.client_ca is not None and security.tls_cert is None:
            raise ValueError("security.client_ca: mutual TLS needs tls_cert and tls_key too")
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


def parse_config(
    data: dict[str, Any], *, source: str = "<config>", base: Path | None = None
) -> ClusterConfig:
    """Validate an already-parsed TOML mapping; raise :class:`ConfigError` naming ``source``.

    With ``base`` (the folder of the file), the ``[security]`` paths are taken
    relative to it and must exist.
    """
    try:
        config = ClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(source, exc)) from None
    if base is None:
        return config
    security = config.security.under(base.absolute())
    problems = [f"{source}: security.{key}: {reason}" for key, reason in security.missing()]
    if problems:
        raise ConfigError("\n".join(problems))
    return config.model_copy(update={"security": security})


def load_config(path: Path | str = DEFAULT_PATH, *, missing_ok: bool = False) -> ClusterConfig:
    """Read and validate a cluster TOML file; ``[security]`` paths are relative to its folder.

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
    return parse_config(data, source=str(path), base=path.parent)
