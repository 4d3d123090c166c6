"""A small local cluster over the sample tariffs, for the tests that need a real one.

Each call makes its own: LocalRay gives it a temp dir and free ports, and
``running`` stops it (every process, by PID) however the test ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cluster.config import parse_config
from cluster.deploy.runtime import Runtime, RuntimeInfo

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_TARIFFS = ROOT / "conf" / "tariffs"


def small_runtime(
    data_dir: Path,
    *,
    shards: int = 4,
    partitions: int = 2,
    security: dict[str, str] | None = None,
    tables: dict[str, dict[str, Any]] | None = None,
    **options: Any,
) -> Runtime:
    """A Runtime of ``shards`` account shards and ``partitions`` rating partitions (not
    started), with ``security`` as its [security] table (absolute paths) and ``tables``
    as further cluster.toml tables; ``options`` go to :class:`Runtime` (``nodes``,
    ``port``, ``gateways``)."""
    table: dict[str, Any] = {"sharding": {"shards": shards, "partitions": partitions}}
    table.update(tables or {})
    if security is not None:
        table["security"] = security
    config = parse_config(table, source="test")
    return Runtime(config, data_dir=data_dir, tariffs_dir=SAMPLE_TARIFFS, **options)


@contextlib.contextmanager
def running(runtime: Runtime, timeout_s: float = 180) -> Iterator[RuntimeInfo]:
    """Start ``runtime``; stop it on the way out."""
    try:
        yield runtime.start(timeout_s=timeout_s)
    finally:
        runtime.stop()
