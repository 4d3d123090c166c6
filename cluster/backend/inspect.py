"""AdminService.Inspect: the automatic inspection, run now by the coordinator.

The coordinator runs the inspection on its schedule and on request alike
(``cluster.control.inspection``, ``cluster.control.duties``), with its own
configuration and its own view of the units; this handler asks it for one and
turns the report into the answer. A failing check is data (``ok`` false), not a
failed call.
"""

from __future__ import annotations

from typing import Any, Final

from petribill.v1 import admin_pb2

from cluster.backend.context import Cluster

__all__ = ["inspect"]

#: Kept back from the call's time so the coordinator's answer arrives in it.
_MARGIN_S: Final = 1.0


async def inspect(
    cluster: Cluster, request: admin_pb2.InspectRequest, timeout_s: float
) -> admin_pb2.InspectResponse:
    inner_s = max(timeout_s - _MARGIN_S, timeout_s / 2)
    report: dict[str, Any] = await cluster.coordinator("inspect", inner_s, timeout_s=timeout_s)
    return admin_pb2.InspectResponse(
        at_s=int(report["at_s"]),
        ok=bool(report["ok"]),
        findings=[
            admin_pb2.InspectionFinding(
                check=f["check"], count=int(f["count"]), detail=f["detail"], skipped=f["skipped"]
            )
            for f in report["findings"]
        ],
    )
