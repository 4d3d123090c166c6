"""Arrow IPC on the wire: the bytes of the bulk path's request and answer.

The bulk path (``UsageService.SubmitUsageColumns``) carries a batch of records
as an Arrow IPC stream in a ``bytes`` field, and its results the same way.
Reading one is zero-copy (the record batches are views of the message's
bytes), so the gateway can count the rows of a request for its limits before
the backend reads the columns.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["IpcError", "ipc_bytes", "ipc_rows", "read_ipc"]


class IpcError(ValueError):
    """Raised by :func:`read_ipc` for bytes that are not one Arrow IPC stream."""


def read_ipc(data: bytes) -> pa.Table:
    """The table of an Arrow IPC stream (its batches viewed in ``data``, not copied)."""
    try:
        with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
            return reader.read_all()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as exc:
        raise IpcError(f"not an Arrow IPC stream: {exc}") from None


def ipc_rows(data: bytes) -> int:
    """How many rows the stream holds (0 for bytes that are not one)."""
    try:
        rows: int = read_ipc(data).num_rows
        return rows
    except IpcError:
        return 0


def ipc_bytes(data: pa.Table | pa.RecordBatch) -> bytes:
    """``data`` as one Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write(data)
    data_bytes: bytes = sink.getvalue().to_pybytes()
    return data_bytes
