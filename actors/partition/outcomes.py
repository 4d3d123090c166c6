"""The per-record results of a bulk call, as columns: what a partition answers the bulk path.

A partition answers :meth:`~actors.partition.engine.RatingPartition.submit` with
a list of :class:`~actors.partition.results.RecordResult`; the bulk path
(:mod:`actors.partition.bulk`) answers the same values as one Arrow record
batch of :data:`RESULT_SCHEMA`, one row per item, in the order of the items.

:class:`Outcomes` builds that batch. The common row (charged, no reason, no
detail, not a replay) is written into numpy arrays for many rows at once
(:meth:`Outcomes.charged`); every other row is put one at a time from the
same :data:`~actors.partition.results.Settled` value the per-record path
makes (:meth:`Outcomes.put`), so the two paths share their per-record rules.
The strings (reason, detail, paying account) are dictionary-encoded: a batch
carries each distinct text once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from actors.partition.rejects import RejectKind
from actors.partition.results import RecordResult, RecordStatus, Settled
from billing.charging.codes import Codes
from billing.invariant import invariant

__all__ = [
    "RESULT_SCHEMA",
    "STATUSES",
    "Outcomes",
    "batch_to_results",
    "results_to_batch",
]

STATUSES: Final[tuple[RecordStatus, ...]] = tuple(RecordStatus)
"""The dictionary of the ``status`` column, in :class:`RecordStatus` declaration order."""

_TEXT: Final = pa.dictionary(pa.int32(), pa.string())
RESULT_SCHEMA: Final = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("status", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("reason", _TEXT, nullable=False),
        pa.field("detail", _TEXT, nullable=False),
        pa.field("amount", pa.int64(), nullable=False),
        pa.field("charged_account_id", _TEXT, nullable=False),
        pa.field("billed_units", pa.int64(), nullable=False),
        pa.field("bundle_units", pa.int64(), nullable=False),
        pa.field("replay", pa.bool_(), nullable=False),
    ]
)
"""One row per item: the fields of :class:`RecordResult` by name (texts ``""`` when none)."""

_STATUS_CODE: Final = {status: code for code, status in enumerate(STATUSES)}
_STATUS_NAMES: Final = pa.array([status.value for status in STATUSES], pa.string())
_CHARGED: Final = _STATUS_CODE[RecordStatus.CHARGED]
_RETRYABLE_CODES: Final = np.array(
    [_STATUS_CODE[RecordStatus.UNAVAILABLE], _STATUS_CODE[RecordStatus.RESOURCE_EXHAUSTED]]
)


class _Texts(Codes[str]):
    """Distinct strings and their codes (code 0 is ``""``)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(("",))

    def column(self, codes: NDArray[np.int32]) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(self.names, pa.string()))


class Outcomes:
    """The outcome of each of ``n`` items while a bulk call settles them.

    ``kind`` is what an item counts as (``results.RATED``, ``REJECTED``,
    ``DUPLICATES``; 0 while unsettled or for a retryable result, which is not
    counted); ``reject`` the reject-store kind and code of the items to store.
    """

    __slots__ = (
        "account",
        "accounts",
        "amount",
        "billed_units",
        "bundle_units",
        "detail",
        "details",
        "kind",
        "reason",
        "reasons",
        "reject",
        "replay",
        "status",
    )

    def __init__(self, n: int) -> None:
        self.status = np.full(n, -1, np.int8)
        self.kind = np.zeros(n, np.int8)
        self.amount = np.zeros(n, np.int64)
        self.billed_units = np.zeros(n, np.int64)
        self.bundle_units = np.zeros(n, np.int64)
        self.replay = np.zeros(n, np.bool_)
        self.accounts, self.reasons, self.details = _Texts(), _Texts(), _Texts()
        self.account = np.zeros(n, np.int32)
        self.reason = np.zeros(n, np.int32)
        self.detail = np.zeros(n, np.int32)
        self.reject: dict[int, tuple[RejectKind, str | None]] = {}

    def __len__(self) -> int:
        return len(self.status)

    def put(self, i: int, settled: Settled) -> None:
        """Item ``i``'s outcome, as the per-record path settles it."""
        result, kind, reject_kind, code = settled
        self.status[i] = _STATUS_CODE[result.status]
        self.kind[i] = kind or 0
        self.reason[i] = self.reasons.code(result.reason)
        self.detail[i] = self.details.code(result.detail)
        self.amount[i] = result.amount
        self.account[i] = self.accounts.code(result.charged_account_id)
        self.billed_units[i] = result.billed_units
        self.bundle_units[i] = result.bundle_units
        self.replay[i] = result.replay
        if reject_kind is None:
            self.reject.pop(i, None)
        else:
            self.reject[i] = (reject_kind, code)

    def charged(
        self,
        items: NDArray[np.intp],
        amount: NDArray[np.int64],
        account: NDArray[np.int32],
        billed_units: NDArray[np.int64],
        bundle_units: NDArray[np.int64],
    ) -> None:
        """Items ``items`` were charged plainly (no reason, detail or replay); ``account``
        holds codes of :attr:`accounts` (:meth:`account_codes`)."""
        self.status[items] = _CHARGED
        self.kind[items] = 1  # results.RATED
        self.amount[items] = amount
        self.account[items] = account
        self.billed_units[items] = billed_units
        self.bundle_units[items] = bundle_units

    def account_codes(self, names: Sequence[str]) -> NDArray[np.int32]:
        """The codes of ``names`` among the paying accounts, one per name."""
        code = self.accounts.code
        return np.array([code(name) for name in names], np.int32)

    def result(self, i: int, record_id: str) -> RecordResult:
        """Item ``i``'s result as the per-record path's value."""
        invariant(self.status[i] >= 0, f"item {i} has no outcome")
        return RecordResult(
            record_id,
            STATUSES[self.status[i]],
            self.reasons.names[self.reason[i]],
            self.details.names[self.detail[i]],
            int(self.amount[i]),
            self.accounts.names[self.account[i]],
            int(self.billed_units[i]),
            int(self.bundle_units[i]),
            bool(self.replay[i]),
        )

    def settled(self, i: int, record_id: str) -> Settled:
        """Item ``i``'s outcome as the per-record path's value."""
        kind = int(self.kind[i]) or None
        reject_kind, code = self.reject.get(i, (None, None))
        return self.result(i, record_id), kind, reject_kind, code

    def retryable(self) -> NDArray[np.bool_]:
        """Per item: is its result retryable (not counted, the call is resent)."""
        mask: NDArray[np.bool_] = np.isin(self.status, _RETRYABLE_CODES)
        return mask

    def batch(self, record_ids: pa.Array) -> pa.RecordBatch:
        """The results of every item as :data:`RESULT_SCHEMA`."""
        invariant(bool((self.status >= 0).all()), "every item settled")
        columns = [
            record_ids,
            pa.DictionaryArray.from_arrays(pa.array(self.status), _STATUS_NAMES),
            self.reasons.column(self.reason),
            self.details.column(self.detail),
            pa.array(self.amount),
            self.accounts.column(self.account),
            pa.array(self.billed_units),
            pa.array(self.bundle_units),
            pa.array(self.replay),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=RESULT_SCHEMA)


def results_to_batch(results: Sequence[RecordResult]) -> pa.RecordBatch:
    """The per-record path's results as :data:`RESULT_SCHEMA` (tests compare the two paths)."""
    out = Outcomes(len(results))
    for i, result in enumerate(results):
        out.put(i, (result, None, None, None))
    return out.batch(pa.array([r.record_id for r in results], pa.string()))


def batch_to_results(batch: pa.RecordBatch) -> list[RecordResult]:
    """The rows of a :data:`RESULT_SCHEMA` batch as :class:`RecordResult` values."""
    columns = [batch.column(name).to_pylist() for name in RESULT_SCHEMA.names]
    return [
        RecordResult(rid, RecordStatus(status), *rest)
        for rid, status, *rest in zip(*columns, strict=True)
    ]
