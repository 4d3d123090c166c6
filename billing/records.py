"""Usage records (CDRs): one event of use, before rating.

Field names follow 3GPP TS 32.298 where one exists, in snake_case with the
unit last: ``servedMSISDN`` is :attr:`UsageRecord.served_msisdn`,
``recordOpeningTime`` is :attr:`UsageRecord.record_opening_time_s` (Unix
epoch seconds, UTC), ``duration`` is :attr:`UsageRecord.duration_s`,
``ratingGroup`` is :attr:`UsageRecord.rating_group`,
``datavolumeFBCUplink/Downlink`` are :attr:`UsageRecord.uplink_bytes` and
:attr:`UsageRecord.downlink_bytes`.

``record_id`` is mandatory and globally unique (by convention
``"<source>:<id>"``): it is the idempotency key of the record everywhere.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = ["CONTENT_FIELDS", "Service", "UsageRecord"]

# What a record says happened, in the order of UsageRecord.content_key(): every field
# but the id and the provenance (file, line). The readers' columns derive from it;
# content_key() spells it out (tests/test_preprocess.py holds the two equal), because
# charging takes the key of every record and operator.attrgetter takes three times as long.
CONTENT_FIELDS: Final = (
    "service",
    "served_msisdn",
    "record_opening_time_s",
    "called_number",
    "duration_s",
    "sms_count",
    "uplink_bytes",
    "downlink_bytes",
    "rating_group",
    "content_item_id",
    "roaming",
)


class Service(enum.StrEnum):
    """The kinds of usage petribill rates; each has its own unit."""

    VOICE = "voice"  # unit: seconds (duration_s)
    SMS = "sms"  # unit: messages (sms_count)
    DATA = "data"  # unit: bytes (uplink_bytes + downlink_bytes)
    CONTENT = "content"  # unit: one purchase of content_item_id


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """One normalised usage event. Readers validate; this type trusts its fields.

    Numbers are E.164 digits without ``+`` (``"4915112345678"``). Only the
    fields of the record's service are meaningful; the others keep defaults.
    """

    record_id: str
    service: Service
    served_msisdn: str
    record_opening_time_s: int
    called_number: str | None = None
    duration_s: int = 0
    sms_count: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    rating_group: int | None = None
    content_item_id: str | None = None
    roaming: bool = False
    source_file: str | None = None
    source_line: int | None = None

    @property
    def units(self) -> int:
        """Usage in the service's unit: seconds, messages, bytes or items."""
        if self.service is Service.VOICE:
            return self.duration_s
        if self.service is Service.SMS:
            return self.sms_count
        if self.service is Service.DATA:
            return self.uplink_bytes + self.downlink_bytes
        return 1

    def content_key(self) -> tuple[object, ...]:
        """Everything that defines the record's content, for duplicate detection.

        A record id seen again with a different content key is not a duplicate
        but a conflict (``exists_with_different_content``). Provenance fields
        (file, line) are not content. The values of :data:`CONTENT_FIELDS`.
        """
        return (
            self.service,
            self.served_msisdn,
            self.record_opening_time_s,
            self.called_number,
            self.duration_s,
            self.sms_count,
            self.uplink_bytes,
            self.downlink_bytes,
            self.rating_group,
            self.content_item_id,
            self.roaming,
        )
