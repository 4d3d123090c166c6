"""AdminService and TariffService handlers.

Status comes from the coordinator; reconciliation sums every partition's
counters and every shard's audit; rejects are listed and reprocessed across
the partitions. Drain fires the control net's transition; Rebalance reports
the spread. Backup has every host checkpoint its units (``actors.store.backup``);
RestoreUnits has the coordinator bring lost units back from such a backup.
LoadTariffs validates a catalogue, persists it under the data dir as the one
in force (``actors.store.tariffs``) and switches the running units to it. The
folders a client names for both stay below their configured roots
(``cluster.security.paths``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

import grpc
import structlog
from petribill.v1 import admin_pb2, tariffs_pb2

from actors.partition.engine import RecordResult, RecordStatus
from actors.partition.ops import (
    Counters,
    CountRejects,
    DirectoryHolders,
    ListRejects,
    Reprocess,
)
from actors.router import HostUnreachable, deadline_after
from actors.router import time_left as _left
from actors.routing import unit_kind
from actors.shard import ops
from actors.shard.usage import refused_key
from actors.store.backup import (
    BackupExists,
    BackupFailed,
    BackupRefused,
    UnitBackup,
    read_backup,
)
from actors.store.tariffs import NAME as TARIFFS_NAME
from actors.store.tariffs import TariffsExist, persist_tariffs, set_current
from billing.outcome import CHARGED_RESULTS, Result
from billing.preprocess import Reconciliation
from billing.rating import Catalogue, TariffError, load_catalogue
from cluster.api.errors import BackendError
from cluster.backend.context import Cluster
from cluster.backend.convert import SPONSOR_REFUSED, refused_forward_to_proto, reject_to_proto
from cluster.backend.steps import audit_in_steps, each_unit
from cluster.security.paths import PathRefused, resolve_under
from cluster.wire import money

__all__ = [
    "backup",
    "cluster_status",
    "drain",
    "get_tariffs",
    "list_rejects",
    "load_tariffs",
    "rebalance",
    "reconcile",
    "reprocess_rejects",
    "restore_units",
]

log = structlog.get_logger("petribill.backend")

_REJECTS_LIMIT_DEFAULT: Final = 100
_REJECTS_LIMIT_MAX: Final = 10_000
_PROBLEMS_SHOWN: Final = 5
_REPROCESS_STEP_RECORDS: Final = 100
_BACKUP_NAME: Final = TARIFFS_NAME  # a folder name, as for catalogues
_CHARGED: Final = frozenset(
    {
        RecordStatus.CHARGED,
        RecordStatus.CHARGED_AS_DEBT,
        RecordStatus.CHARGED_OVER_LIMIT,
        RecordStatus.DUPLICATE,
    }
)
# A refused sponsor charge retried: charged now, or found charged already.
_SPONSOR_SETTLED: Final = CHARGED_RESULTS | {Result.DUPLICATE}


async def cluster_status(
    cluster: Cluster, request: admin_pb2.ClusterStatusRequest, timeout_s: float
) -> admin_pb2.ClusterStatusResponse:
    deadline = deadline_after(timeout_s)
    status: dict[str, Any] = await cluster.coordinator("status", timeout_s=_left(deadline))
    answer = admin_pb2.ClusterStatusResponse(
        nodes=[
            admin_pb2.NodeStatus(
                node_id=n["node"],
                state=n["status"],
                address=n.get("ray_node_id", ""),
                shards=n["units"],
                metrics_url=n.get("metrics_url", ""),
                hosts=n.get("hosts", 1),
            )
            for n in status["nodes"]
        ],
        shards=[
            admin_pb2.ShardStatus(
                shard_id=u["unit"],
                kind=unit_kind(u["unit"]),
                owner_node=u["node"],
                epoch=u["epoch"],
                state=u["state"],
                followers=[
                    admin_pb2.FollowerStatus(
                        node_id=node,
                        state=state,
                        lag=u.get("lag", {}).get(node) or 0,
                        lag_known=u.get("lag", {}).get(node) is not None,
                    )
                    for node, state in sorted(u.get("followers", {}).items())
                ],
                in_sync=u.get("isr", []),
                slot=u.get("slot", 0),
            )
            for u in status["units"]
        ],
        writable=bool(status.get("writable", True)),
        fully_replicated=bool(status.get("fully_replicated", True)),
        replication_factor=int(status.get("replication_factor", 1)),
        schedule=_schedule_status(status.get("schedule")),
        marking_json=status.get("marking") or "",
        gateways=sorted({g["address"] for g in status.get("gateways", ()) if g.get("address")}),
        gateway_status=[
            admin_pb2.GatewayStatus(node_id=g["node"], address=g["address"], state=g["state"])
            for g in sorted(status.get("gateways", ()), key=lambda g: (g["node"], g["address"]))
        ],
    )
    states = [u["state"] for u in status["units"]]
    locks = status.get("locks_held") or []
    answer.marking_summary = (
        f"{'healthy' if status.get('healthy') else 'unhealthy'}: "
        f"{len(status['nodes'])} nodes, {states.count('owned')} units owned, "
        f"{states.count('recovering')} recovering, {states.count('free')} free, "
        f"{len(locks)} locks held"
    )
    return answer


def _schedule_status(schedule: dict[str, Any] | None) -> admin_pb2.ScheduleStatus:
    """The coordinator's schedule (``cluster.control.duties``) as its proto message."""
    answer = admin_pb2.ScheduleStatus()
    if not schedule:
        return answer
    runs = schedule["bill_runs"]
    answer.bill_runs_scheduled = bool(runs["scheduled"])
    answer.next_cycle = runs["next"]["cycle"]
    answer.next_at_s = int(runs["next"]["at_s"])
    if runs.get("running"):
        answer.running_cycle = runs["running"]["cycle"]
    last = runs.get("last")
    if last:
        answer.last_cycle = last["cycle"]
        answer.last_finished_s = int(last["finished_s"])
        answer.last_accounts = int(last.get("accounts", 0))
        answer.last_invoices = int(last.get("invoices", 0))
    inspection = schedule.get("inspection")
    if inspection is not None:
        answer.inspected = True
        answer.inspection_at_s = int(inspection["at_s"])
        answer.inspection_ok = bool(inspection["ok"])
        answer.inspection_failing.extend(inspection["failing"])
    return answer


async def reconcile(
    cluster: Cluster, request: admin_pb2.ReconcileRequest, timeout_s: float
) -> admin_pb2.ReconcileResponse:
    """The partitions' counters (lock-free reads) and every shard's audit, each shard in
    bounded steps, a few shards at a time (``cluster.backend.steps``): a reconcile over
    millions of rows never holds a unit or a host for long."""
    deadline = deadline_after(timeout_s)
    counters, audits = await asyncio.gather(
        cluster.run_each(cluster.router.all_partitions(), Counters(), timeout_s=_left(deadline)),
        each_unit(
            cluster.router.all_shards(), lambda unit: audit_in_steps(cluster, unit, deadline)
        ),
    )
    total = sum(counters.values(), Reconciliation())
    ledger = sum(a.postings_total for a in audits.values())
    problems = [f"{u}: {p}" for u, a in sorted(audits.items()) for p in a.problems]
    problems += await _accounts_missing(cluster, deadline)
    pending = sum(a.forwards_pending for a in audits.values())
    notes = []
    if not total.is_balanced():
        notes.append(f"{total.pending} records received but not settled")
    if ledger:
        notes.append(f"ledger postings sum to {ledger}, not 0")
    notes.extend(problems[:_PROBLEMS_SHOWN])
    if len(problems) > _PROBLEMS_SHOWN:
        notes.append(f"... {len(problems) - _PROBLEMS_SHOWN} more problems")
    if pending:
        notes.append(f"{pending} sponsor forwards pending delivery")
    return admin_pb2.ReconcileResponse(
        received=total.received,
        rated=total.rated,
        rejected=total.rejected,
        duplicates=total.duplicates,
        ledger_total=money(ledger, cluster.catalogue.currency),
        balanced=total.is_balanced() and ledger == 0 and not problems,
        detail="; ".join(notes) or "balanced",
    )


async def _accounts_missing(cluster: Cluster, deadline: float) -> list[str]:
    """Every account a partition's directory routes usage to must exist on its shard: one
    that does not means the shard lost data (a unit reopened empty, or restored from an
    older copy), whose money a count of postings alone (0 over nothing) cannot show."""
    holders = await cluster.run_each(
        cluster.router.all_partitions(), DirectoryHolders(), timeout_s=_left(deadline)
    )
    by_shard: dict[str, list[str]] = {}
    for account_id in sorted(set().union(*holders.values())):
        by_shard.setdefault(cluster.router.shard(account_id), []).append(account_id)
    shards = sorted(by_shard)
    missing = await asyncio.gather(
        *(
            cluster.run(s, ops.MissingAccounts(account_ids=tuple(by_shard[s])),
                        timeout_s=_left(deadline))
            for s in shards
        )
    )  # fmt: skip
    return [
        f"{shard}: {len(gone)} accounts in the directory have no account on their shard "
        f"(lost or emptied unit?), e.g. {', '.join(gone[:3])}"
        for shard, gone in zip(shards, missing, strict=True)
        if gone
    ]


async def list_rejects(
    cluster: Cluster, request: admin_pb2.ListRejectsRequest, timeout_s: float
) -> admin_pb2.ListRejectsResponse:
    """One page of rejects in store order: each partition's, then the sponsor charges the
    shards refused. The page token is the unit and row key where the page ended, so a
    page follows its predecessor exactly, whatever was added meanwhile."""
    limit = min(request.limit or _REJECTS_LIMIT_DEFAULT, _REJECTS_LIMIT_MAX)
    deadline = deadline_after(timeout_s)
    reason = request.reason or None
    units = list(cluster.router.all_partitions())
    if reason in (None, SPONSOR_REFUSED):
        units += cluster.router.all_shards()
    start, after = _page_start(request.page_token, units)
    total = await _count_rejects(cluster, units, reason, deadline)
    rejects: list[admin_pb2.Reject] = []
    last: tuple[str, bytes] | None = None
    for unit in units[start:]:
        want = limit - len(rejects)
        if unit_kind(unit) == "partition":
            entries = await cluster.run(
                unit, ListRejects(limit=want, reason=reason, after=after), timeout_s=_left(deadline)
            )
            rejects += [reject_to_proto(e) for e in entries]
            if entries:
                last = (unit, entries[-1].store_key())
        else:
            refused = await cluster.run(
                unit, ops.RefusedForwards(limit=want, after=after), timeout_s=_left(deadline)
            )
            rejects += [refused_forward_to_proto(usage, result) for usage, result in refused]
            if refused:
                last = (unit, refused_key(refused[-1][0]))
        after = None
        if len(rejects) >= limit:
            break
    full = len(rejects) >= limit and last is not None
    return admin_pb2.ListRejectsResponse(
        rejects=rejects,
        next_page_token=f"{last[0]}/{last[1].hex()}" if full and last is not None else "",
        total=total,
    )


def _page_start(token: str, units: list[str]) -> tuple[int, bytes | None]:
    """Where a page begins: the index of its unit and the row key to continue after."""
    if not token:
        return 0, None
    unit, _, key = token.partition("/")
    try:
        return units.index(unit), bytes.fromhex(key)
    except ValueError:
        raise BackendError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token: not a next_page_token of this listing (same reason, same cluster)",
        ) from None


async def _count_rejects(
    cluster: Cluster, units: list[str], reason: str | None, deadline: float
) -> int:
    partitions = [u for u in units if unit_kind(u) == "partition"]
    shards = [u for u in units if unit_kind(u) != "partition"]
    counted = await cluster.run_each(
        partitions, CountRejects(reason=reason), timeout_s=_left(deadline)
    )
    total = sum(counted.values())
    if shards:
        refused = await cluster.run_each(
            shards, ops.CountRefusedForwards(), timeout_s=_left(deadline)
        )
        total += sum(refused.values())
    return total


async def reprocess_rejects(
    cluster: Cluster, request: admin_pb2.ReprocessRejectsRequest, timeout_s: float
) -> admin_pb2.ReprocessRejectsResponse:
    """Reprocess the named records (each partition answers for the ones it holds), or,
    with no ids, up to a bounded number of every partition's reprocessable rejects."""
    deadline = deadline_after(timeout_s)
    units = cluster.router.all_partitions()
    if request.record_ids:
        ids = {unit: list(dict.fromkeys(request.record_ids)) for unit in units}
    else:
        listed = await cluster.run_each(
            units, ListRejects(limit=_REJECTS_LIMIT_DEFAULT), timeout_s=_left(deadline)
        )
        ids = {
            unit: [e.record_id for e in entries if e.record is not None and e.record_id]
            for unit, entries in listed.items()
        }

    async def reprocess(unit: str) -> list[RecordResult]:
        # In steps of a bounded number of records: a step holds the partition's lock
        # while it charges them, as a usage batch does.
        found = []
        for start in range(0, len(ids[unit]), _REPROCESS_STEP_RECORDS):
            chunk = ids[unit][start : start + _REPROCESS_STEP_RECORDS]
            op = Reprocess(record_ids=chunk, at_s=cluster.now_s())
            found += await cluster.run(unit, op, timeout_s=_left(deadline))
        return found

    answers = (await each_unit([u for u in units if ids[u]], reprocess)).values()
    results = [r for answer in answers for r in answer if r.status is not RecordStatus.NOT_FOUND]
    if any(r.retryable for r in results):
        raise BackendError(
            grpc.StatusCode.UNAVAILABLE, "some records could not be charged now; retry"
        )
    charged = sum(1 for r in results if r.status in _CHARGED)
    # Sponsor charges a sponsor's shard refused (say, the sponsor did not exist yet).
    retried = await cluster.run_each(
        cluster.router.all_shards(),
        ops.RetryRefusedForwards(record_ids=list(request.record_ids) or None, at_s=cluster.now_s()),
        timeout_s=_left(deadline),
    )
    sponsor_results = [result for found in retried.values() for _, result in found]
    sponsor_charged = sum(1 for r in sponsor_results if r in _SPONSOR_SETTLED)
    total = len(results) + len(sponsor_results)
    # Why the rest are still rejected, so an operator knows what to fix first.
    reasons: Counter[str] = Counter(
        r.reason or r.status.value for r in results if r.status not in _CHARGED
    )
    reasons.update(f"sponsor_{r.value}" for r in sponsor_results if r not in _SPONSOR_SETTLED)
    return admin_pb2.ReprocessRejectsResponse(
        reprocessed=total,
        charged=charged + sponsor_charged,
        still_rejected=total - charged - sponsor_charged,
        still_rejected_by_reason=dict(reasons),
    )


async def drain(
    cluster: Cluster, request: admin_pb2.DrainRequest, timeout_s: float
) -> admin_pb2.OperationAnswer:
    """Fire ``drain`` on the control net; the coordinator then migrates the node's
    units one by one under the migration lock (clients see at most UNAVAILABLE)."""
    accepted = await cluster.coordinator("drain", request.node_id, timeout_s=timeout_s)
    if not accepted:
        raise BackendError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"the control net refused to drain {request.node_id!r} "
            "(unknown, dead or already draining, or no other alive node to take its units)",
        )
    return admin_pb2.OperationAnswer(
        request_id=request.request_id,
        done=False,
        detail=f"{request.node_id} is draining; its units move off in the background",
    )


async def rebalance(
    cluster: Cluster, request: admin_pb2.RebalanceRequest, timeout_s: float
) -> admin_pb2.OperationAnswer:
    """Rebalancing is continuous (every reconcile round evens out alive nodes under
    the migration lock); this reports the current spread."""
    status: dict[str, Any] = await cluster.coordinator("status", timeout_s=timeout_s)
    loads = {n["node"]: n["units"] for n in status["nodes"] if n["status"] == "alive"}
    even = not loads or max(loads.values()) - min(loads.values()) <= 1
    return admin_pb2.OperationAnswer(
        request_id=request.request_id,
        done=even,
        detail="units per alive node: "
        + ", ".join(f"{node}={count}" for node, count in sorted(loads.items())),
    )


async def backup(
    cluster: Cluster, request: admin_pb2.BackupRequest, timeout_s: float
) -> admin_pb2.OperationAnswer:
    """A RocksDB checkpoint of every shard and partition, each taken by its host under
    the unit's lock (a batch boundary), into ``request.path`` or, when it is empty,
    ``<request_id or UTC time>``: a folder below the backup root (``[security]
    backup_root``; a relative path is taken from the root, an absolute one must lie
    below it). Any other path is INVALID_ARGUMENT before anything is written, with the
    same message whether it exists or not. See ``actors.store.backup``. Idempotent by
    ``request_id``; a folder holding another backup is ALREADY_EXISTS.
    A few units at a time (``cluster.backend.steps``): a checkpoint is one native call
    that holds its host's interpreter while it runs, kept short by flushing first."""
    deadline = deadline_after(timeout_s)
    if cluster.backup_root is None:
        raise BackendError(
            grpc.StatusCode.FAILED_PRECONDITION, "this backend has no backup root to write to"
        )
    name = request.request_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(cluster.now_s()))
    if not request.path and not _BACKUP_NAME.fullmatch(name):
        raise BackendError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request_id: names the backup folder, so only [A-Za-z0-9._-] please: {name!r}",
        )
    folder = await asyncio.to_thread(_backup_folder, cluster.backup_root, request.path or name)
    units = cluster.router.all_shards() + cluster.router.all_partitions()

    async def checkpoint(unit: str) -> UnitBackup:
        info: UnitBackup = await cluster.on_host(
            unit, "backup_unit", folder, request.request_id, timeout_s=_left(deadline)
        )
        return info

    try:
        taken = list((await each_unit(units, checkpoint)).values())
    except BackupExists as exc:  # raised on a host (Ray re-raises it as its own class)
        raise BackendError(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
    except BackupRefused as exc:  # the host's own check, on its node's filesystem
        raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    except BackupFailed as exc:  # a unit's disk full, say: retryable once it is freed
        raise BackendError(
            grpc.StatusCode.UNAVAILABLE, f"{exc}; retry with the same request_id"
        ) from None
    roots = sorted({str(Path(info.path).parent.parent) for info in taken})
    return admin_pb2.OperationAnswer(
        request_id=request.request_id,
        done=True,
        detail=f"checkpoints of {len(taken)} units in {', '.join(roots)}",
    )


def _backup_folder(root: Path, path: str, what: str = "backup destination") -> str:
    """``path`` as a folder relative to the backup root; INVALID_ARGUMENT if it is not one."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        resolved = resolve_under(root, path, what=what)
    except PathRefused as exc:
        raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    relative = resolved.relative_to(root.resolve())
    if relative == Path():
        raise BackendError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{what}: name a folder below the backup root, not the root itself",
        )
    return str(relative)


async def restore_units(
    cluster: Cluster, request: admin_pb2.RestoreUnitsRequest, timeout_s: float
) -> admin_pb2.RestoreUnitsResponse:
    """Bring lost units back from the backup in ``request.path`` (below the backup root,
    by the same rules as Backup's destination): ``request.units``, or every lost unit.

    What is wrong with the request is refused before anything moves: a path outside
    the root, a folder that is missing or is not a backup, a unit the backup lacks
    (INVALID_ARGUMENT, naming it); a unit that is not lost (FAILED_PRECONDITION,
    naming it: a live unit is never overwritten). Then the coordinator has a host on
    an alive node stage each unit's checkpoint in its own node folder and fires the
    net's ``restore`` (``CoordinatorService.restore_units``); the answer gives each
    unit's node and new epoch and what its backup held. Idempotent by ``request_id``.
    """
    if cluster.backup_root is None:
        raise BackendError(
            grpc.StatusCode.FAILED_PRECONDITION, "this backend has no backup root to read from"
        )
    folder = await asyncio.to_thread(_backup_folder, cluster.backup_root, request.path, "backup")
    held = await asyncio.to_thread(_backup_units, cluster.backup_root / folder, request.path)
    absent = [unit for unit in request.units if unit not in held]
    if absent:
        raise BackendError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"backup {request.path!r} holds no copy of {', '.join(absent)}",
        )
    answer: dict[str, Any] = await cluster.coordinator(
        "restore_units",
        folder,
        list(request.units),
        request.request_id,
        sorted(held),
        timeout_s=timeout_s,
    )
    if "refused" in answer:
        code, message = answer["refused"]
        raise BackendError(getattr(grpc.StatusCode, code), message)
    return admin_pb2.RestoreUnitsResponse(
        request_id=request.request_id,
        units=[
            admin_pb2.RestoredUnit(unit=unit, **record)
            for unit, record in sorted(answer["restored"].items())
        ],
    )


def _backup_units(folder: Path, given: str) -> set[str]:
    """The units the backup in ``folder`` holds; INVALID_ARGUMENT when there is no such
    folder or it holds no backup."""
    if not folder.is_dir():
        raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, f"backup {given!r}: no such folder")
    try:
        held = set(read_backup(folder))
    except (ValueError, TypeError, OSError):  # a description that is not one
        held = set()
    if not held:
        raise BackendError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"backup {given!r}: not a backup (no units/<unit>.json written by petribill backup)",
        )
    return held


async def get_tariffs(
    cluster: Cluster, request: tariffs_pb2.GetTariffsRequest, timeout_s: float
) -> tariffs_pb2.TariffSummary:
    catalogue = cluster.catalogue
    return tariffs_pb2.TariffSummary(
        catalogue_version=f"{catalogue.name} ({catalogue.source})",
        plans=[
            tariffs_pb2.PlanSummary(
                plan_id=plan.plan_id,
                version=v.version,
                currency=v.currency,
                valid_from_s=v.valid_from_s,
                valid_until_s=v.valid_until_s or 0,
            )
            for plan in catalogue.plans.values()
            for v in plan.versions
        ],
        prefixes=len(catalogue.prefixes.table),
        content_items=len(catalogue.items),
        default_plan=catalogue.default_plan,
    )


async def load_tariffs(
    cluster: Cluster, request: tariffs_pb2.LoadTariffsRequest, timeout_s: float
) -> tariffs_pb2.TariffSummary:
    """Validate the catalogue folder ``request.path`` (below the tariffs root, ``[security]
    tariffs_root``: relative to it, or absolute inside it; any other path is
    INVALID_ARGUMENT before anything is read), persist a copy under the data dir
    and make it the one in force (``actors.store.tariffs``), then switch every running
    unit to it: account shards first, then partitions, each between two of its calls.

    A catalogue the loader refuses is INVALID_ARGUMENT with the loader's message (it
    names the file and key) and changes nothing. Once the copy is in force, units
    opened later (takeover, new node, restart) use it; if a host cannot be reached to
    switch its running units, the answer is UNAVAILABLE and a retry with the same
    ``request_id`` finishes the switch.
    """
    deadline = deadline_after(timeout_s)
    if cluster.data_dir is None:
        raise BackendError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "this backend has no data dir to keep a loaded catalogue in",
        )
    name = request.request_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(cluster.now_s()))
    if not TARIFFS_NAME.fullmatch(name):
        raise BackendError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request_id: names the catalogue's folder, so only [A-Za-z0-9._-]: {name!r}",
        )
    try:
        folder = str(resolve_under(cluster.tariffs_root, request.path, what="tariffs folder"))
    except PathRefused as exc:
        raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    catalogue = await _validated(folder, _left(deadline))
    current = cluster.catalogue
    if (catalogue.timezone, catalogue.currency) != (current.timezone, current.currency):
        raise BackendError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"path {request.path!r}: time zone and currency must stay "
            f"{current.timezone}/{current.currency} (billing cycles and balances are in "
            f"them), got {catalogue.timezone}/{catalogue.currency}",
        )
    try:
        persisted = await asyncio.to_thread(persist_tariffs, folder, cluster.data_dir, name)
    except TariffsExist as exc:
        raise BackendError(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
    # What the hosts load is the persisted copy: validate exactly that.
    catalogue = await _validated(str(persisted), _left(deadline))
    await asyncio.to_thread(set_current, cluster.data_dir, name)
    cluster.use_catalogue(catalogue, str(persisted))
    log.info("tariffs_loaded", path=request.path, persisted=str(persisted))
    for kind in ("account", "partition"):
        await _switch_units(cluster, str(persisted), kind, _left(deadline))
    return await get_tariffs(cluster, tariffs_pb2.GetTariffsRequest(), _left(deadline))


async def _validated(path: str, timeout_s: float) -> Catalogue:
    try:
        return await asyncio.wait_for(asyncio.to_thread(load_catalogue, path), timeout_s)
    except TariffError as exc:
        raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    except OSError as exc:
        raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, f"path {path!r}: {exc}") from None
    except TimeoutError:
        raise BackendError(
            grpc.StatusCode.UNAVAILABLE, f"path {path!r}: not loaded in time"
        ) from None


async def _switch_units(cluster: Cluster, tariffs_dir: str, kind: str, timeout_s: float) -> None:
    """Every host that owns units switches its units of ``kind`` to the catalogue."""
    transport = cluster.router.transport
    try:
        hosts = await asyncio.wait_for(cluster.router.owner_hosts(), timeout_s)
        await asyncio.gather(
            *(
                transport.host_call(host, "load_catalogue", tariffs_dir, kind, timeout_s=timeout_s)
                for host in hosts
            )
        )
    except (TimeoutError, HostUnreachable) as exc:
        raise BackendError(
            grpc.StatusCode.UNAVAILABLE,
            f"the catalogue is in force for new units, but running {kind} units were not "
            f"all switched ({type(exc).__name__}); retry with the same request_id",
        ) from None
