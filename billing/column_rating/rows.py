"""Rated columns seen as the scalar rater's outcomes, one row built when asked for.

Charging works on columns but still needs a :class:`~billing.rated.RatedRecord`
now and then: a record that takes its reference path, the part of a record a
bundle leaves to reprice. :class:`RatedRows` is that seam. The tiers column is
not needed: a record's tier pieces are a pure function of its rate and units
(``pricing.price(catalogue.price_keys[price_key], units).tiers``, which is how
rating made them), so they are recomputed for the rows asked for.

The columns become Python lists on the first access (about a microsecond a
row for all columns), so asking for many rows costs a list index each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

import pyarrow as pa

from billing.columns import RATED_SCHEMA, TIERS_FIELD, ColumnLayoutError, batch_to_records
from billing.rated import RatedRecord, RatingFailure, RatingOutcome, RejectReason, TierCharge
from billing.records import UsageRecord
from billing.tariffs import pricing
from billing.tariffs.model import Catalogue

__all__ = ["RatedRows"]


class RatedRows(Sequence[RatingOutcome]):
    """Row ``i`` of a usage batch and its rated columns, as the outcome ``rate`` gives for it."""

    __slots__ = ("_catalogue", "_columns", "_rated", "_records", "_usage")

    def __init__(self, usage: pa.RecordBatch, rated: pa.RecordBatch, catalogue: Catalogue) -> None:
        if rated.num_rows != usage.num_rows:
            raise ColumnLayoutError(f"{rated.num_rows} rated rows for {usage.num_rows} usage rows")
        self._usage = usage
        self._rated = rated
        self._catalogue = catalogue
        self._records: list[UsageRecord] | None = None
        self._columns: dict[str, list[Any]] | None = None

    def __len__(self) -> int:
        return int(self._usage.num_rows)

    @overload
    def __getitem__(self, index: int) -> RatingOutcome: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[RatingOutcome]: ...

    def __getitem__(self, index: int | slice) -> RatingOutcome | Sequence[RatingOutcome]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self._outcome(index % len(self))

    def _outcome(self, row: int) -> RatingOutcome:
        if self._columns is None or self._records is None:
            names = [*RATED_SCHEMA.names]
            if TIERS_FIELD.name in self._rated.schema.names:
                names.append(TIERS_FIELD.name)
            self._columns = {name: self._rated.column(name).to_pylist() for name in names}
            self._records = batch_to_records(self._usage)
        values = {name: column[row] for name, column in self._columns.items()}
        record = self._records[row]
        if values["reject_reason"] is not None:
            return RatingFailure(
                record=record,
                reason=RejectReason(values["reject_reason"]),
                detail=values["reject_detail"],
            )
        price_key = values["price_key"]
        stored = values.get(TIERS_FIELD.name)
        tiers = (
            tuple(TierCharge(rate_id=price_key, **tier) for tier in stored)
            if stored is not None
            else pricing.price(self._catalogue.price_keys[price_key], values["units"]).tiers
        )
        return RatedRecord(
            record=record,
            plan_id=values["plan_id"],
            plan_version=values["plan_version"],
            currency=values["currency"],
            amount=values["amount"],
            units=values["units"],
            billed_units=values["billed_units"],
            connect_fee=values["connect_fee"],
            tiers=tiers,
            rate_ids=(price_key,),
            rounding=values["rounding"],
            usage_class=values["usage_class"],
            price_key=price_key,
            destination=values["destination"],
            time_band=values["time_band"],
            capped=values["capped"],
            disconnect=values["disconnect"],
            content_provider=values["content_provider"],
            provider_share=values["provider_share"],
        )
