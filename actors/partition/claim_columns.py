"""Record-id claims of a bulk batch, as columns (``actors.partition.claims`` for many ids at once).

The rules are :class:`~actors.partition.claims.ClaimStore`'s, and so is the
stored row (``i/<record_id>``: the JSON ``[[content values], account_id]``), so
an id claimed by the bulk path is recognised by the per-record path and the
other way round. What changes is the cost per batch:

- the claim rows of the whole batch are read with one multi-key read;
- the JSON of the new rows is built by Arrow string kernels over the columns
  (a row whose strings would need JSON escapes is written by ``json.dumps``);
- only the ids found already (a retry, a conflict: the rare case) are decoded
  and compared in Python.

A claim batch (:data:`CLAIM_SCHEMA`) is the record id, the account the
claiming partition is about to charge, and the content columns of
``billing.columns.USAGE_SCHEMA``; the answer (:data:`ANSWER_SCHEMA`) is, per
row, the :class:`~actors.partition.claims.ClaimOutcome`, the account that holds
the id and the first content field that differs (for a conflict).
"""

from __future__ import annotations

import json
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from actors.partition.claims import CLAIM_PREFIX, ClaimOutcome
from actors.store.codec import CodecError
from actors.store.storage import Batch, ShardStore
from billing.columns import USAGE_SCHEMA
from billing.invariant import invariant
from billing.records import CONTENT_FIELDS

__all__ = ["ANSWER_SCHEMA", "CLAIM_SCHEMA", "OUTCOMES", "claim_batch", "claim_rows"]

OUTCOMES: Final[tuple[ClaimOutcome, ...]] = tuple(ClaimOutcome)
NEW, SAME, OTHER_ACCOUNT, CONFLICT = (OUTCOMES.index(o) for o in ClaimOutcome)

CLAIM_SCHEMA: Final = pa.schema(
    [
        USAGE_SCHEMA.field("record_id"),
        pa.field("account_id", pa.string(), nullable=False),
        *(USAGE_SCHEMA.field(name) for name in CONTENT_FIELDS),
    ]
)
ANSWER_SCHEMA: Final = pa.schema(
    [
        pa.field("outcome", pa.int8(), nullable=False),
        pa.field("holder", pa.string(), nullable=False),
        pa.field("field", pa.string(), nullable=False),
    ]
)
SMALL_ROWS: Final = 48
"""Up to this many rows a claim batch is encoded row by row (fewer calls than kernels)."""
_NEEDS_ESCAPE: Final = r'["\\\x00-\x1f]'
_STRINGS: Final = ("service", "served_msisdn", "called_number", "content_item_id", "account_id")


def claim_batch(usage: pa.RecordBatch, accounts: pa.Array) -> pa.RecordBatch:
    """The claims of every row of ``usage`` (:data:`USAGE_SCHEMA`) for ``accounts``."""
    columns = [usage.column("record_id"), accounts]
    columns += [usage.column(name) for name in CONTENT_FIELDS]
    return pa.RecordBatch.from_arrays(columns, schema=CLAIM_SCHEMA)


def _text(column: pa.Array) -> pa.Array:
    return pc.cast(column, pa.string()) if pa.types.is_dictionary(column.type) else column


def _stored_rows(batch: pa.RecordBatch) -> list[bytes]:
    """The stored value of each claim, ``[[content values], account_id]`` as JSON."""
    if batch.num_rows <= SMALL_ROWS:
        # A few rows: a kernel call costs more than json.dumps of each row.
        columns = [batch.column(name).to_pylist() for name in (*CONTENT_FIELDS, "account_id")]
        dumps = json.dumps
        return [
            dumps([list(values), account], separators=(",", ":")).encode()
            for *values, account in zip(*columns, strict=True)
        ]
    parts: list[Any] = ["[["]
    for n, name in enumerate(CONTENT_FIELDS):
        column = batch.column(name)
        if n:
            parts.append(",")
        if name in _STRINGS:
            quoted = pc.binary_join_element_wise('"', _text(column), '"', "")
            parts.append(pc.fill_null(quoted, "null"))
        elif pa.types.is_boolean(column.type):
            parts.append(pc.if_else(column, "true", "false"))
        else:
            parts.append(pc.fill_null(pc.cast(column, pa.string()), "null"))
    parts += ['],"', batch.column("account_id"), '"]']
    joined = pc.binary_join_element_wise(*parts, "")
    values: list[bytes] = pc.cast(joined, pa.binary()).to_pylist()
    escape = None
    for name in _STRINGS:
        column = batch.column(name)
        hit = pc.fill_null(pc.match_substring_regex(_text(column), _NEEDS_ESCAPE), False)
        escape = hit if escape is None else pc.or_(escape, hit)
    if escape is not None and pc.any(escape).as_py():
        for row in np.flatnonzero(escape.to_numpy(zero_copy_only=False)).tolist():
            values[row] = json.dumps(_row(batch, row), separators=(",", ":")).encode()
    return values


def _row(batch: pa.RecordBatch, row: int) -> list[Any]:
    """``[[content values], account_id]`` of one claim, as Python values."""
    content = [batch.column(name)[row].as_py() for name in CONTENT_FIELDS]
    return [content, batch.column("account_id")[row].as_py()]


def _keys(ids: pa.Array) -> list[bytes]:
    """``i/<record_id>`` of every id (``claims.claim_key``, for a column)."""
    if len(ids) <= SMALL_ROWS:
        texts: list[str] = ids.to_pylist()
        if any(not t or "\x00" in t for t in texts):
            raise CodecError("record id must be non-empty and contain no NUL")
        return [CLAIM_PREFIX + t.encode() for t in texts]
    if (
        pc.any(pc.equal(pc.binary_length(ids), 0)).as_py()
        or pc.any(pc.match_substring(ids, "\x00")).as_py()
    ):
        raise CodecError("record id must be non-empty and contain no NUL")
    prefixed = pc.binary_join_element_wise(CLAIM_PREFIX.decode(), ids, "")
    keys: list[bytes] = pc.cast(prefixed, pa.binary()).to_pylist()
    return keys


def claim_rows(store: ShardStore, batch: pa.RecordBatch) -> pa.RecordBatch:
    """Claim every id of ``batch`` (distinct ids) in ``store``: one multi-key read, one
    synced commit for the new ones; the caller holds the claim store's lock."""
    n = batch.num_rows
    invariant(pc.count_distinct(batch.column("record_id")).as_py() == n, "claim batch ids distinct")
    keys = _keys(batch.column("record_id"))
    found = store.get_many(keys)
    outcome = np.full(n, NEW, np.int8)
    holder: list[str] | None = None
    fields: dict[int, str] = {}
    seen = [i for i, raw in enumerate(found) if raw is not None]
    if seen:
        holder = batch.column("account_id").to_pylist()
        for i in seen:
            raw = found[i]
            assert raw is not None
            first, held_by = json.loads(raw)
            content, account_id = _row(batch, i)
            if first != content:
                differing = [
                    f for f, a, b in zip(CONTENT_FIELDS, first, content, strict=True) if a != b
                ]
                outcome[i] = CONFLICT
                fields[i] = differing[0] if differing else "content"
            elif held_by != account_id:
                outcome[i] = OTHER_ACCOUNT
            else:
                outcome[i] = SAME
            holder[i] = held_by
    new: NDArray[np.intp] = np.flatnonzero(outcome == NEW)
    if len(new):
        rows = batch if len(new) == n else batch.take(pa.array(new))
        put = (writes := Batch()).put_data
        for key, value in zip(
            keys if len(new) == n else [keys[i] for i in new.tolist()],
            _stored_rows(rows),
            strict=True,
        ):
            put(key, value)
        store.commit(writes)
    if fields:
        texts = [""] * n
        for i, field in fields.items():
            texts[i] = field
        differ = pa.array(texts, pa.string())
    else:
        differ = pa.repeat(pa.scalar("", pa.string()), n)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(outcome),
            batch.column("account_id") if holder is None else pa.array(holder, pa.string()),
            differ,
        ],
        schema=ANSWER_SCHEMA,
    )
