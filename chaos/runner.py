"""One chaos run: a local multi-node cluster, the load, the planned faults, the audit.

``run`` starts its own cluster (``nodes`` simulated Ray nodes, data in a temp
folder, the chaos catalogue of ``chaos/tariffs``), creates the accounts, runs
the load for ``duration_s`` while the scenario's faults are applied one at a
time, stops the load (every batch answered) and the abandoned sessions (every
one seen released), audits through the API, bills the cycle and pays it, stops
the cluster and audits the write logs on disk. The report says what happened
and how to replay it.

The cluster runs with a short Validity-Time (:data:`SESSION_VALIDITY_S`) so that
abandoned sessions expire within the run, and without scheduled bill runs: the
auditor bills the chaos cycle itself, at a fixed time, whatever the wall clock.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import grpc
import structlog

from billing.money import Money
from chaos.auditor import Audit, Auditor, audit_epochs, audit_replicas, spurious_takeovers
from chaos.disk import TmpfsDisk, can_mount
from chaos.faults import Fault, FaultResult, Injector
from chaos.load import INITIAL_TOP_UP_MICROS, Account, Load
from chaos.reference import PLAN_POSTPAID, PLAN_PREPAID
from chaos.scenarios import SCENARIOS, plan
from chaos.sessions import AbandonedSessions, WriteStalls
from cluster.client import PetribillClient, PetribillError
from cluster.config import parse_config, storage_mode
from cluster.deploy.runtime import Runtime

__all__ = ["ChaosOptions", "Report", "run"]

log = structlog.get_logger()

ROOT: Final = Path(__file__).resolve().parent.parent
TARIFFS: Final = Path(__file__).resolve().parent / "tariffs"
DISK_UNIT: Final = "acct-00"
DISK_MB: Final = 64
DISK_NODE_MB: Final = 256
#: Validity-Time of the chaos cluster's online grants: abandoned sessions expire in the run.
SESSION_VALIDITY_S: Final = 5
#: How long past its validity a session's money may stay reserved: the duties' period,
#: a takeover of a killed or paused owner, a full disk's hold and its recovery; not
#: counting the time the cluster said it could not acknowledge writes (WriteStalls:
#: a unit down to one copy waits for a new follower, and a release is a write).
RESERVED_BOUND_S: Final = 20.0
# The faults that hit a node's processes: the only ones that explain a takeover.
NODE_FAULTS: Final = frozenset({"kill-host", "kill-node", "pause-node", "lose-disk"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosOptions:
    scenario: str
    duration_s: float
    seed: int
    nodes: int = 3
    shards: int = 8
    partitions: int = 4
    accounts: int = 24
    every_s: float = 8.0
    workers: int = 2
    conf: Path = ROOT / "conf" / "cluster.toml"
    data_dir: Path | None = None
    # Use the running cluster recorded in ``data_dir`` instead of starting one.
    attach: bool = False
    # PetribillClient's token, ca, cert and key, for a cluster with [security].
    client: dict[str, Any] = field(default_factory=dict)

    def replay_command(self) -> str:
        where = f"--data {self.data_dir}" if self.attach else f"--nodes {self.nodes}"
        return (
            f"petribill chaos --scenario {self.scenario} --duration {self.duration_s:g} "
            f"--seed {self.seed} {where} --every {self.every_s:g}"
        )


@dataclass(slots=True)
class Report:
    options: ChaosOptions
    faults: list[FaultResult] = field(default_factory=list)
    audit: Audit = field(default_factory=Audit)
    load: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    spurious: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.audit.ok and not self.errors and not self.spurious and self.faults_injected > 0

    @property
    def faults_injected(self) -> int:
        return sum(1 for f in self.faults if not f.skipped)

    def fault_every_s(self) -> float | None:
        """Mean seconds between the injected faults, as they happened."""
        times = [f.at_s for f in self.faults if not f.skipped]
        return round((times[-1] - times[0]) / (len(times) - 1), 1) if len(times) > 1 else None

    def takeovers(self) -> list[float]:
        return sorted(f.takeover_s for f in self.faults if f.takeover_s is not None)

    def summary(self) -> dict[str, Any]:
        takeovers = self.takeovers()
        audit = self.audit.summary()
        return {
            "scenario": self.options.scenario,
            "seed": self.options.seed,
            "duration_s": self.options.duration_s,
            "ok": self.ok,
            "acked": audit["acked"],
            "charged": audit["charged"],
            "rejected": audit["rejected"],
            "lost": audit["lost"],
            "duplicated": audit["duplicated"],
            "money_delta_minor": audit["money_delta_minor"],
            "faults": self.faults_injected,
            "faults_by_kind": dict(Counter(f.kind for f in self.faults if not f.skipped)),
            "faults_skipped": [f"{f.kind}: {f.detail}" for f in self.faults if f.skipped],
            "takeover_s_p50": round(statistics.median(takeovers), 3) if takeovers else None,
            "takeover_s_max": round(takeovers[-1], 3) if takeovers else None,
            "spurious_takeovers": len(self.spurious),
            "operator_calls": dict(self.load.get("operator_calls", {})),
            "fault_every_s": self.fault_every_s(),
            "violations": audit["violations"],
            "sessions": self.load.get("sessions", {}),
            "refusals": self.load.get("refusals", {}),
            "errors": self.errors,
            "notes": self.notes,
            "elapsed_s": round(self.elapsed_s, 1),
            "replay": self.options.replay_command(),
        }


def _config(options: ChaosOptions) -> Any:
    with open(options.conf, "rb") as handle:
        data = tomllib.load(handle)
    # The run's own unit counts; the rest of [sharding] (hosts_per_node) as configured.
    data["sharding"] = {
        **data.get("sharding", {}),
        "shards": options.shards,
        "partitions": options.partitions,
    }
    data["charging"] = {**data.get("charging", {}), "session_validity_s": SESSION_VALIDITY_S}
    data["bill_runs"] = {**data.get("bill_runs", {}), "scheduled": False}
    return parse_config(data, source=str(options.conf), base=options.conf.parent)


def _attach(config: Any, data_dir: Path, options: ChaosOptions) -> Runtime:
    """The given cluster, with the config its units were made with (the shard and
    partition counts come from its coordinator): faults need its nodes' processes."""
    runtime = Runtime.attach(config, data_dir)
    try:
        units = [u["unit"] for u in runtime.status()["units"]]
        shards = sum(1 for u in units if u.startswith("acct-"))
        runtime.config = _config(replace(options, shards=shards, partitions=len(units) - shards))
        runtime.tariffs_dir = TARIFFS
        if runtime.local is None or len(runtime.local.nodes) < 3:
            raise ValueError(
                f"the cluster of {data_dir} must be a local one with at least 3 nodes "
                "(petribill up --detach --nodes 3): faults hit its processes by PID"
            )
    except BaseException:
        runtime.stop()
        raise
    return runtime


def _prepare_given(client: PetribillClient, accounts: list[Account], seed: int) -> None:
    """A given cluster must rate with the chaos catalogue (the reference prices are
    written for it; its time zone cannot be loaded over another) and must not have run
    this seed (its accounts would exist, and the audit could not tell this run's records
    from the last one's)."""
    summary = client.get_tariffs()
    if summary.default_plan != PLAN_PREPAID:
        raise ValueError(
            "the given cluster does not rate with the chaos catalogue; start it with "
            "`petribill up --detach --nodes 3 --conf chaos --data DIR`"
        )
    try:
        client.get_account(accounts[0].account_id)
    except PetribillError as exc:
        if exc.code is not grpc.StatusCode.NOT_FOUND:
            raise
    else:
        raise ValueError(
            f"this cluster already ran chaos seed {seed} ({accounts[0].account_id} exists); "
            "use another seed or a fresh cluster"
        )


def _accounts(count: int, seed: int) -> list[Account]:
    return [
        Account(
            account_id=f"chaos{seed}-{i:03d}",
            msisdn=f"4915990{seed % 100:02d}{i:04d}",
            prepaid=i % 2 == 0,
        )
        for i in range(count)
    ]


def _create_accounts(client: PetribillClient, accounts: list[Account], seed: int) -> None:
    for account in accounts:
        client.create_account(
            account.account_id,
            payment_mode="prepaid" if account.prepaid else "postpaid",
            plan_id=PLAN_PREPAID if account.prepaid else PLAN_POSTPAID,
            msisdns=[account.msisdn],
            credit_limit=None if account.prepaid else Money(10**12, "EUR"),
            request_id=f"chaos{seed}-create-{account.account_id}",
        )
        if account.prepaid:
            client.top_up(
                account.account_id,
                Money(INITIAL_TOP_UP_MICROS, "EUR"),
                request_id=f"chaos{seed}-initial-{account.account_id}",
            )


@contextlib.contextmanager
def _data_dir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        yield given
        return
    folder = Path(tempfile.mkdtemp(prefix="pbchaos"))
    try:
        yield folder / "data"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(options: ChaosOptions, *, echo: Callable[[str], None] = print) -> Report:
    """Run one chaos scenario end to end; the report (``report.ok`` False on any violation)."""
    if options.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {options.scenario!r} (one of: {', '.join(SCENARIOS)})")
    faults = plan(
        options.scenario, seed=options.seed, duration_s=options.duration_s, every_s=options.every_s
    )
    report = Report(options)
    started = time.monotonic()
    config = _config(options)
    with contextlib.ExitStack() as stack:
        data_dir = stack.enter_context(_data_dir(options.data_dir))
        disk = None
        replicated = storage_mode(config, nodes=options.nodes, address=None) == "replicated"
        if any(f.kind == "disk-full" for f in faults):
            why_not = (
                "a given cluster's data folder is not on a chaos tmpfs"
                if options.attach
                else can_mount()
            )
            if why_not is None:
                # Replicated: the head node's whole folder (primaries and followers of
                # several units; the head is never killed, so the tmpfs stays its disk).
                place, size_mb = (
                    (data_dir / "nodes" / "n0", DISK_NODE_MB)
                    if replicated
                    else (data_dir / "units" / DISK_UNIT, DISK_MB)
                )
                disk = stack.enter_context(TmpfsDisk(place, size_mb))
            else:
                echo(f"disk-full faults skipped: {why_not}")
        if options.attach:
            runtime = _attach(config, data_dir, options)
            echo(f"using the cluster of {data_dir}; plan: {len(faults)} faults")
        else:
            runtime = Runtime(
                config, data_dir=data_dir, tariffs_dir=TARIFFS, nodes=options.nodes, port=0
            )
            echo(f"starting {options.nodes} nodes; plan: {len(faults)} faults")
            runtime.start(timeout_s=180)
        assert runtime.info is not None
        info = runtime.info
        stopped = False
        try:
            client = PetribillClient(info.gateways, timeout_s=30, retries=30, **options.client)
            accounts = _accounts(options.accounts, options.seed)
            if options.attach:
                _prepare_given(client, accounts, options.seed)
            _create_accounts(client, accounts, options.seed)
            # The sessions' balance polls give up quickly, so a fault cannot stall them.
            checker = PetribillClient(info.gateways, timeout_s=2, retries=2, **options.client)
            stack.callback(checker.close)

            def on_gateway(address: str) -> None:
                client.add_address(address)
                checker.add_address(address)

            injector = Injector(
                runtime, disk=disk, on_gateway=on_gateway, client_options=options.client
            )
            load = Load(client, accounts, seed=options.seed, workers=options.workers).start()
            # A given cluster keeps its own Validity-Time: its sessions could outlast the run.
            # Time with some unit unable to acknowledge writes (a release is a write).
            stalls = WriteStalls(lambda: checker.cluster_status().writable).start()
            stack.callback(stalls.stop)
            sessions = AbandonedSessions(
                client,
                [] if options.attach else [a for a in accounts if a.prepaid],
                seed=options.seed,
                bound_s=RESERVED_BOUND_S,
                checker=checker,
                stalled=stalls.seconds,
            ).start()
            load_started = time.monotonic()
            load_started_wall = time.time()  # the journal's clock, for spurious takeovers
            try:
                for fault in faults:
                    _apply(injector, fault, load_started, report, echo)
                time.sleep(max(0.0, options.duration_s - (time.monotonic() - load_started)))
            except Exception as exc:  # the harness failed, not the cluster: still audit
                report.errors.append(f"fault injection stopped: {type(exc).__name__}: {exc}")
                log.exception("fault_injection_failed")
            finally:
                injector.finish()
                try:
                    load.stop()
                    online = sessions.stop(timeout_s=SESSION_VALIDITY_S + RESERVED_BOUND_S + 60)
                finally:
                    report.load = {
                        "acked": load.records_acked,
                        "batches": load.figures.batches,
                        "duplicate_batches": load.figures.duplicate_batches,
                        "duplicate_answers_wrong": load.figures.duplicate_answers_wrong,
                        "hijacked_batches": load.figures.hijacked_batches,
                        "hijack_answers_wrong": load.figures.hijack_answers_wrong,
                        "refusals": dict(load.figures.refusals),
                        "topups": len(load.topups),
                        "sessions": {
                            **sessions.figures.summary(),
                            "write_stall_s": round(stalls.seconds(), 1),
                        },
                        "operator_calls": dict(load.figures.operator_calls),
                    }
            for check, texts in online.violations.items():
                for text in texts:
                    report.audit.violate(check, text)
            report.notes.extend(
                f"a replacement node did not start: {e}" for e in injector.replacement_errors
            )
            if load.figures.duplicate_answers_wrong:
                report.audit.violate(
                    "duplicated",
                    f"{load.figures.duplicate_answers_wrong} resent records not answered "
                    "their first status as a replay",
                )
            if load.figures.hijack_answers_wrong:
                report.audit.violate(
                    "duplicated",
                    f"{load.figures.hijack_answers_wrong} record ids sent again with another "
                    "subscriber's number not refused",
                )
            injector.wait_healthy()
            echo(f"load stopped: {load.records_acked} records acknowledged; auditing")
            Auditor(
                client,
                accounts,
                load.acked,
                load.topups,
                initial_topup_micros=INITIAL_TOP_UP_MICROS,
                audit=report.audit,
                online=online.charged,
                reserved_wait_s=RESERVED_BOUND_S,
            ).run(options.seed)
            runtime.stop()
            stopped = True
            units = audit_epochs(data_dir, report.audit)
            echo(f"write logs of {units} unit copies checked")
            hits = [
                (f.target, load_started_wall + f.at_s)
                for f in report.faults
                if f.kind in NODE_FAULTS and not f.skipped
            ]
            report.spurious = spurious_takeovers(data_dir, hits)
            if replicated:
                copies = audit_replicas(data_dir, report.audit)
                echo(f"{copies} in-sync copies compared with their primaries, key for key")
        except Exception as exc:
            report.errors.append(f"{type(exc).__name__}: {exc}")
            log.exception("chaos_run_failed")
        finally:
            if not stopped:
                runtime.stop()
    report.elapsed_s = time.monotonic() - started
    return report


def _apply(
    injector: Injector,
    fault: Fault,
    load_started: float,
    report: Report,
    echo: Callable[[str], None],
) -> None:
    wait = fault.at_s - (time.monotonic() - load_started)
    if wait > 0:
        time.sleep(wait)
    at = time.monotonic() - load_started
    result = injector.apply(fault, at)
    report.faults.append(result)
    took = "" if result.takeover_s is None else f", taken over in {result.takeover_s:.2f} s"
    state = "skipped" if result.skipped else "applied"
    echo(f"{at:6.1f} s  {fault.kind:<16} {result.target:<8} {state}{took} ({result.detail})")
