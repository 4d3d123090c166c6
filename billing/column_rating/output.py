"""The rated batch: numpy arrays per output field, then Arrow columns of ``RATED_SCHEMA``.

Labels travel as codes of the catalogue's label registries until the very
end, where each becomes a dictionary column over the registry's list. Reject
details are the scalar rater's texts, built for the rejected rows only: each
is a head chosen per distinct cause (``plan 'x': unknown plan at``, ``no
prefix matches``, a selection's detail) joined to a per-row tail (the opening
time, the number). A few are joined in Python; many with Arrow string
kernels, so a batch that is all rejects (a partition whose directory names a
plan the catalogue lacks) costs no Python loop per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from billing.column_rating.arithmetic import PricedColumns
from billing.column_rating.inputs import PlanColumn, UsageColumns
from billing.column_rating.keys import KeyedChoices
from billing.column_rating.prefixes import NO_NUMBER
from billing.column_rating.tables import ColumnCatalogue
from billing.columns import (
    RATED_SCHEMA,
    REJECT_REASONS,
    SERVICES,
    TIER_TYPE,
    TIERS_FIELD,
    ColumnOverflowError,
)
from billing.rated import RatedRecord, RejectReason

__all__ = ["RatedArrays", "assemble"]

I64 = NDArray[np.int64]
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_LABEL_FIELDS = (
    "plan_id", "plan_version", "currency", "rounding", "usage_class", "price_key",
    "destination", "time_band", "content_provider",
)  # fmt: skip
_LABELS_MAYBE_NULL = frozenset({"destination", "time_band", "content_provider"})
_NO_DESTINATION = REJECT_REASONS.index(RejectReason.NO_DESTINATION)
_DETAILS_IN_PYTHON_MAX = 64
_REASONS = pa.array([reason.value for reason in REJECT_REASONS], pa.string())


@dataclass(slots=True, kw_only=True, eq=False)
class RatedArrays:
    """Every output field as an array, writable so the scalar-rated rows can be put in."""

    reason: NDArray[np.int8]
    codes: dict[str, NDArray[np.int32]]
    amount: I64
    units: I64
    billed_units: I64
    connect_fee: I64
    capped: NDArray[np.bool_]
    disconnect: NDArray[np.bool_]
    provider_share: I64
    priced: PricedColumns
    scalar_details: dict[int, str] = field(default_factory=dict)

    @classmethod
    def gather(
        cls,
        choices: KeyedChoices,
        reason: NDArray[np.int8],
        units: I64,
        priced: PricedColumns,
    ) -> RatedArrays:
        """The rows' labels from their keys' decisions.

        A row that is not rated points at a decision without labels (a reject,
        or 'no key'), except the rows the scalar rater then overwrites.
        """
        return cls(
            reason=reason,
            codes={name: choices.field(name, np.int32) for name in _LABEL_FIELDS},
            amount=priced.amount,
            units=units,
            billed_units=priced.billed_units,
            connect_fee=priced.connect_fee,
            capped=priced.capped,
            disconnect=priced.disconnect,
            provider_share=choices.field("provider_share"),
            priced=priced,
        )

    def reject(self, row: int, reason: int, detail: str) -> None:
        """Row ``row`` is a reject with the scalar rater's reason and detail."""
        self.reason[row] = reason
        self.scalar_details[row] = detail
        for codes in self.codes.values():
            codes[row] = -1
        for array in (self.amount, self.units, self.billed_units, self.connect_fee):
            array[row] = 0
        self.provider_share[row] = 0
        self.capped[row] = self.disconnect[row] = False
        self.priced.tier_count[row] = 0

    def put(self, row: int, outcome: RatedRecord, codes: dict[str, int]) -> None:
        """Row ``row`` is the scalar rater's ``outcome``; ``codes`` are its label codes."""
        numbers = [outcome.amount, outcome.units, outcome.billed_units, outcome.provider_share]
        for tier in outcome.tiers:
            numbers += (tier.start_units, tier.units, tier.billed_units, tier.amount)
        if not all(_I64_MIN <= number <= _I64_MAX for number in numbers):
            raise ColumnOverflowError(
                f"{outcome.record.record_id}: a rated value beyond int64 ({max(numbers)})"
            )
        self.reason[row] = -1
        for name, code in codes.items():
            self.codes[name][row] = code
        self.amount[row] = outcome.amount
        self.units[row] = outcome.units
        self.billed_units[row] = outcome.billed_units
        self.connect_fee[row] = outcome.connect_fee
        self.capped[row] = outcome.capped
        self.disconnect[row] = outcome.disconnect
        self.provider_share[row] = outcome.provider_share
        priced = self.priced
        priced.tier_count[row] = len(outcome.tiers)
        if len(priced.tier_start):
            for k, tier in enumerate(outcome.tiers):
                priced.tier_start[k, row] = tier.start_units
                priced.tier_units[k, row] = tier.units
                priced.tier_billed[k, row] = tier.billed_units
                priced.tier_amount[k, row] = tier.amount


def _details(
    tables: ColumnCatalogue,
    usage: UsageColumns,
    plan: PlanColumn,
    version: NDArray[np.int32],
    found: NDArray[np.int32],
    arrays: RatedArrays,
    choices: KeyedChoices,
) -> pa.Array:
    """The reject detail of every rejected row (null elsewhere), word for word the scalar's."""
    rows = len(version)
    rejected = arrays.reason >= 0
    at = np.flatnonzero(rejected)
    if len(at) == 0:
        return pa.nulls(rows, pa.string())
    plans = len(plan.names)
    heads = [
        f"plan {name!r}: "
        f"{'unknown plan' if name not in tables.plan_index else 'no version active'} at "
        for name in plan.names
    ]
    heads += [f"{SERVICES[s].value} record without called number" for s in (0, 1)]
    heads.append("no prefix matches ")
    keyed = len(heads)
    decisions, position = np.unique(choices.code[at], return_inverse=True)
    heads += [choices.detail(int(code)) or "" for code in decisions]
    reason = arrays.reason[at]
    head = keyed + position
    no_destination = reason == _NO_DESTINATION
    head = np.where(no_destination & (found[at] == -1), plans + 2, head)
    head = np.where(no_destination & (found[at] == NO_NUMBER), plans + usage.service[at], head)
    head = np.where(version[at] < 0, plan.code[at], head)
    if arrays.scalar_details:
        scalar_rows = np.array(sorted(arrays.scalar_details), np.int64)
        head[np.searchsorted(at, scalar_rows)] = len(heads) + np.arange(len(scalar_rows))
        heads += [arrays.scalar_details[row] for row in scalar_rows.tolist()]
    with_time = head < plans
    with_number = head == plans + 2
    if len(at) <= _DETAILS_IN_PYTHON_MAX:
        # A few rejects: formatting them here beats starting a dozen Arrow kernels.
        times = usage.t_s[at].tolist()
        called = usage.called_number.take(pa.array(at)).to_pylist()
        texts = pa.array(
            [
                heads[h] + (str(times[i]) if with_time[i] else called[i] if with_number[i] else "")
                for i, h in enumerate(head.tolist())
            ],
            pa.string(),
        )
    else:
        texts = _joined(heads, head, with_time, with_number, usage, at)
    if len(at) == rows:
        return texts
    position = (np.cumsum(rejected) - 1).astype(np.int32)
    return texts.take(pa.array(position, mask=~rejected))


def _joined(
    heads: list[str],
    head: NDArray[np.int64],
    with_time: NDArray[np.bool_],
    with_number: NDArray[np.bool_],
    usage: UsageColumns,
    at: NDArray[np.intp],
) -> pa.Array:
    """Each rejected row's head joined to its tail (time, number or nothing), in Arrow."""
    tails = pc.if_else(
        pa.array(with_time),
        pc.cast(pa.array(usage.t_s[at]), pa.string()),
        pc.if_else(
            pa.array(with_number),
            pc.fill_null(usage.called_number.take(pa.array(at)), ""),
            "",
        ),
    )
    return pc.binary_join_element_wise(pa.array(heads, pa.string()).take(pa.array(head)), tails, "")


def _tiers(arrays: RatedArrays) -> pa.Array:
    """``list<struct>`` of each row's tier pieces, flattened from the ``[tier, row]`` arrays."""
    priced = arrays.priced
    count = priced.tier_count
    offsets = np.zeros(len(count) + 1, np.int32)
    np.cumsum(count, out=offsets[1:])
    pieces = [np.empty(int(offsets[-1]), np.int64) for _ in range(4)]
    for k in range(len(priced.tier_start)):
        rows = np.flatnonzero(count > k)
        if len(rows) == 0:
            break
        where = offsets[rows] + k
        for piece, source in zip(
            pieces,
            (priced.tier_start, priced.tier_units, priced.tier_billed, priced.tier_amount),
            strict=True,
        ):
            piece[where] = source[k, rows]
    values = pa.StructArray.from_arrays(
        [pa.array(piece) for piece in pieces], fields=list(TIER_TYPE)
    )
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=TIERS_FIELD.type)


Validity = tuple[pa.Buffer | None, int]


def _validity(null: NDArray[np.bool_]) -> Validity:
    """An Arrow validity bitmap for ``~null`` and the null count (no bitmap when none is null)."""
    nulls = int(np.count_nonzero(null))
    if nulls == 0:
        return None, 0
    return pa.py_buffer(np.packbits(~null, bitorder="little")), nulls


def _label(codes: NDArray[Any], dictionary: pa.Array, validity: Validity) -> pa.Array:
    """A dictionary column over ``codes`` (a contiguous int8 or int32 array), no copy."""
    bitmap, nulls = validity
    index_type = pa.int8() if codes.dtype == np.int8 else pa.int32()
    indices = pa.Array.from_buffers(
        index_type, len(codes), [bitmap, pa.py_buffer(np.ascontiguousarray(codes))], nulls
    )
    return pa.DictionaryArray.from_arrays(indices, dictionary)


def assemble(
    tables: ColumnCatalogue,
    usage: UsageColumns,
    plan: PlanColumn,
    version: NDArray[np.int32],
    found: NDArray[np.int32],
    arrays: RatedArrays,
    choices: KeyedChoices,
    *,
    tiers: bool,
) -> pa.RecordBatch:
    """The rated batch, :data:`RATED_SCHEMA` (and the tiers column when ``tiers``)."""
    labels = tables.labels
    rejected = arrays.reason >= 0
    # A rated row has all of these labels, a rejected one none: one bitmap serves them all.
    rated_validity = _validity(rejected)
    validity = {
        name: _validity(arrays.codes[name] < 0) if name in _LABELS_MAYBE_NULL else rated_validity
        for name in _LABEL_FIELDS
    }
    columns = {
        "reject_reason": _label(arrays.reason, _REASONS, _validity(~rejected)),
        "reject_detail": _details(tables, usage, plan, version, found, arrays, choices),
        **{
            name: _label(arrays.codes[name], labels[name].array(), validity[name])
            for name in _LABEL_FIELDS
        },
        "amount": pa.array(arrays.amount),
        "units": pa.array(arrays.units),
        "billed_units": pa.array(arrays.billed_units),
        "connect_fee": pa.array(arrays.connect_fee),
        "capped": pa.array(arrays.capped),
        "disconnect": pa.array(arrays.disconnect),
        "provider_share": pa.array(arrays.provider_share),
    }
    schema = RATED_SCHEMA
    ordered = [columns[name] for name in schema.names]
    if tiers:
        schema = schema.append(TIERS_FIELD)
        ordered.append(_tiers(arrays))
    return pa.RecordBatch.from_arrays(ordered, schema=schema)
