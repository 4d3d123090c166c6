"""BillingService.GetSettlement: what each content provider is owed for a cycle.

Each account shard reports the content sold in the cycle from its own ledger
rows (``actors.shard.queries``: the ``content_share`` accruals to
``op/provider/<provider>`` and the charges of the same purchases); the reports
are merged here (``billing.settlement.merge``), so the share owed is the sum
of the accruals of every shard, to the micro-unit. The rounding each
purchase's share left to the operator is added from the item's share rate in
the catalogue in force (``billing.settlement.with_rounding``).
"""

from __future__ import annotations

import re
from typing import Final

import grpc
from petribill.v1 import billing_pb2

from actors.shard import ops
from billing.settlement import merge, with_rounding
from cluster.api.errors import BackendError
from cluster.backend.context import Cluster
from cluster.backend.convert import settlement_to_proto

__all__ = ["get_settlement"]

_CYCLE_ID: Final = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


async def get_settlement(
    cluster: Cluster, request: billing_pb2.SettlementRequest, timeout_s: float
) -> billing_pb2.SettlementReport:
    cycle_id = request.cycle_id
    if not _CYCLE_ID.match(cycle_id):
        raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, f"cycle_id: not YYYY-MM: {cycle_id!r}")
    found = await cluster.run_each(
        cluster.router.all_shards(), ops.SettlementReport(cycle_id=cycle_id), timeout_s=timeout_s
    )
    catalogue = cluster.catalogue

    def share_ppm(item_id: str) -> int | None:
        item = catalogue.items.get(item_id)
        return None if item is None else item.share_ppm

    report = with_rounding(merge(found.values()), share_ppm)
    wanted = request.provider_id
    return billing_pb2.SettlementReport(
        cycle_id=cycle_id,
        providers=[
            settlement_to_proto(line, catalogue)
            for line in report
            if not wanted or line.provider == wanted
        ],
    )
