"""A fuzzer of the gateway: random, structured and mutated requests to every RPC.

Requests are built from the proto descriptors of the RPC table
(``cluster.backend.rpcs.RPCS``), so a new RPC is fuzzed without a line here:
each field gets values that matter for it (known account ids and numbers,
amounts at and past their bounds, times at the edges of the window, undefined
enum numbers, overlong strings), and a third of the requests are the bytes of
such a message mutated, or plain random bytes. Every request is sent as bytes
over real gRPC, so what the server's own parser does is fuzzed too.

What must hold (:func:`judge`): no answer is INTERNAL or UNKNOWN, and every
refusal is one of the documented statuses (``cluster.api.errors``). Paths
(Backup, LoadTariffs) are kept inside a scratch folder, so a fuzzed request
never writes outside it. Used by ``tests/test_fuzz_gateway.py`` (short) and
``bench/fuzz_gateway.py`` (long).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
import pyarrow as pa
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

from billing.limits import AMOUNT_MAX_MICROS, TIME_MAX_S, TIME_MIN_S, UNITS_MAX
from cluster.api.columns import ipc_bytes
from cluster.backend.rpcs import PACKAGE, RPCS, Rpc

__all__ = [
    "ACCOUNTS",
    "DOCUMENTED",
    "MSISDNS",
    "Tally",
    "fuzz_case",
    "judge",
    "send",
]

_S = grpc.StatusCode
#: Statuses a refusal may have (docs: cluster/api/errors.py, the .proto service comments).
DOCUMENTED: Final = frozenset(
    {
        _S.OK,
        _S.INVALID_ARGUMENT,
        _S.NOT_FOUND,
        _S.FAILED_PRECONDITION,
        _S.ALREADY_EXISTS,
        _S.RESOURCE_EXHAUSTED,
        _S.ABORTED,
    }
)
#: A server stream without an end of its own (Subscribe) ends at the client's deadline.
_STREAM_END: Final = frozenset({_S.DEADLINE_EXCEEDED, _S.CANCELLED})

#: Accounts the fuzz set-up creates (``ACCOUNTS[i]`` holds ``MSISDNS[i]``).
ACCOUNTS: Final = ("fz-pre", "fz-post", "fz-hyb")
MSISDNS: Final = ("491510009001", "491510009002", "491510009003")
_NOW: Final = int(time.time())
_INT64: Final = 2**63 - 1
_INT32: Final = 2**31 - 1
_EDGES: Final = (
    0, 1, -1, 2, 59, 60, 61, 3600, _INT32, -_INT32 - 1, 2**32, _INT64, -_INT64 - 1,
    AMOUNT_MAX_MICROS, AMOUNT_MAX_MICROS + 1, -AMOUNT_MAX_MICROS - 1, UNITS_MAX, UNITS_MAX + 1,
    10**18, TIME_MIN_S, TIME_MIN_S - 1, TIME_MAX_S, TIME_MAX_S + 1, 253_402_300_000,
)  # fmt: skip
_TIMES: Final = (
    0, _NOW, _NOW - 86_400, _NOW + 86_400, _NOW - 40 * 86_400, _NOW + 400,
    1_793_700_000, 1_796_083_200, 1_796_083_200 + 4 * 86_400, TIME_MIN_S, TIME_MAX_S,
    TIME_MAX_S + 1, -5, 253_402_300_000,
)  # fmt: skip
# Values that reach deep into the backend, by field name (the rest are random).
_KNOWN: Final[dict[str, tuple[str, ...]]] = {
    "account_id": (*ACCOUNTS, "nobody", "fz-new"),
    "account_ids": (*ACCOUNTS, "nobody"),
    "served_msisdn": (*MSISDNS, "+491510009001", "0151", "49", "not a number"),
    "msisdns": (*MSISDNS, "491510009999", "x"),
    "currency": ("EUR", "USD", "eur", "E1R"),
    "plan_id": ("smart", "business", "nope"),
    "cycle_id": ("2026-10", "2026-11", "2026-12", "2027-01", "1999-13"),
    "request_id": ("fz-1", "fz-2", "fz-3", "bad id with spaces", "fz/../x"),
    "payment_request_id": ("fz-1", "fz-2", "fz-pay"),
    "record_id": ("fz:1", "fz:2", "fz:3", "nocolon", ":x"),
    "record_ids": ("fz:1", "fz:2", "grpc:no-id"),
    "called_number": ("4930123456", "447700900123", "4919001234", "1", "+0"),
    "content_item_id": ("game-skyrunner", "news-day-pass", "nothing"),
    "session_id": ("s1", "s2"),
    "invoice_id": ("INV-2026-11-fz-post", "INV-x"),
    "node_id": ("n0", "n9"),
    "reason": ("malformed", "unknown_account", "no_destination"),
    "source_file": ("a.csv", "b.csv", "x\x00y"),
    "page_token": ("", "0", "zz", "99999999999999999999"),
}
_LONG: Final = (64, 65, 128, 129, 1025, 20_000)
_PATH_FIELDS: Final = frozenset({"path"})


def _text(name: str) -> st.SearchStrategy[str]:
    known = _KNOWN.get(name, ())
    options: list[st.SearchStrategy[str]] = [
        st.text(max_size=12),
        st.sampled_from(_LONG).map(lambda n: "x" * n),
    ]
    if known:
        options.insert(0, st.sampled_from(known))
        options.insert(0, st.sampled_from(known))
    return st.one_of(options)


def _integer(field: FieldDescriptor) -> st.SearchStrategy[int]:
    unsigned = field.cpp_type in (FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64)
    wide = field.cpp_type in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)
    low = 0 if unsigned else (-_INT64 - 1 if wide else -_INT32 - 1)
    high = (2**64 - 1 if unsigned else _INT64) if wide else (2**32 - 1 if unsigned else _INT32)
    edges = [v for v in _EDGES if low <= v <= high]
    options = [st.sampled_from(edges)] * 2 + [st.integers(low, high), st.integers(0, 10_000)]
    if field.name.endswith("_s"):
        options.insert(0, st.sampled_from([t for t in _TIMES if low <= t <= high]))
    return st.one_of(options)


_PLAUSIBLE_TIMES: Final = (0, _NOW, _NOW - 3600, _NOW - 86_400, 1_793_700_000, 1_796_083_200)
_SMALL_TEXT: Final = st.text(alphabet="abcdefxyz0123456789:-_.", min_size=1, max_size=10)


@st.composite
def _ipc_records(draw: Any) -> bytes:
    """An Arrow IPC stream of usage records (SubmitUsageColumnsRequest.records): rows of
    known values mostly, a stray column or type now and then."""
    rows = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "record_id": st.sampled_from(_KNOWN["record_id"]),
                    "service": st.sampled_from(("voice", "sms", "data", "content", "fax", "")),
                    "served_msisdn": st.sampled_from(_KNOWN["served_msisdn"]),
                    "record_opening_time_s": st.sampled_from(_TIMES),
                    "called_number": st.sampled_from((None, *_KNOWN["called_number"])),
                    "duration_s": st.sampled_from((None, 0, 60, -1, 10**9)),
                    "sms_count": st.sampled_from((None, 1, 0)),
                    "content_item_id": st.sampled_from((None, *_KNOWN["content_item_id"])),
                }
            ),
            min_size=0,
            max_size=4,
        )
    )
    table = (
        pa.Table.from_pylist(rows) if rows else pa.table({"record_id": pa.array([], pa.string())})
    )
    odd = draw(st.integers(0, 9))
    if odd == 0:
        table = table.append_column("colour", pa.array(["red"] * table.num_rows))
    elif odd == 1 and table.num_rows:
        table = table.set_column(0, "record_id", pa.array(range(table.num_rows)))
    data: bytes = ipc_bytes(table)
    return data


def _plausible(field: FieldDescriptor, scratch: str) -> st.SearchStrategy[Any]:
    """A value that passes the field's rules more often than not, to reach the backend."""
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _ipc_records()
    if field.type == FieldDescriptor.TYPE_STRING:
        if field.name in _PATH_FIELDS:
            return st.sampled_from(("", f"{scratch}/p1"))
        known = _KNOWN.get(field.name)
        return st.sampled_from(known) if known else _SMALL_TEXT
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from(sorted(n for n in field.enum_type.values_by_number if n))
    if field.name.endswith("_s"):
        return st.sampled_from(_PLAUSIBLE_TIMES)
    if field.name == "micros":
        return st.integers(1, 100_000_000)
    return st.integers(0, 3600)


def _scalar(field: FieldDescriptor, scratch: str) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        if field.name in _PATH_FIELDS:
            return st.sampled_from(("", "relative/dir", f"{scratch}/p1", f"{scratch}/p2", "/"))
        return _text(field.name)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        numbers = sorted(field.enum_type.values_by_number)
        return st.sampled_from([*numbers, numbers[-1] + 1, 99, -1])
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=32)
    return _integer(field)


@st.composite
def _message(
    draw: Any, descriptor: Descriptor, scratch: str, plausible: bool, depth: int = 0
) -> dict[str, Any]:
    """The fields of a message of ``descriptor`` as a dict (absent fields left out).

    ``plausible``: each value mostly one that passes its rules (a wild one now and
    then), so requests reach the backend; else every value is drawn wild."""
    values: dict[str, Any] = {}
    for item in descriptor.fields:
        if draw(st.integers(0, 11 if plausible else 4)) == 0:
            continue  # absent: proto3's default, or unset
        if item.type == FieldDescriptor.TYPE_MESSAGE:
            if item.message_type.GetOptions().map_entry or depth > 2:
                continue
            inner = _message(item.message_type, scratch, plausible, depth + 1)
            if item.is_repeated:
                values[item.name] = draw(st.lists(inner, min_size=plausible, max_size=4))
            else:
                values[item.name] = draw(inner)
            continue
        # Numbers meet their edges more often than strings do: that is where
        # arithmetic, codecs and clocks break.
        numeric = item.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_ENUM)
        tame = plausible and draw(st.integers(0, 2 if numeric else 24)) > 0
        value = _plausible(item, scratch) if tame else _scalar(item, scratch)
        if item.is_repeated:
            values[item.name] = draw(st.lists(value, max_size=4))
        else:
            values[item.name] = draw(value)
    return values


def _build(message_type: type[Message], values: dict[str, Any]) -> Message:
    message = message_type()
    for name, value in values.items():
        item = message.DESCRIPTOR.fields_by_name[name]
        if item.type == FieldDescriptor.TYPE_MESSAGE:
            inner_type = type(getattr(message, name)) if not item.is_repeated else None
            if item.is_repeated:
                for entry in value:
                    _fill(getattr(message, name).add(), entry)
            else:
                assert inner_type is not None
                _fill(getattr(message, name), value)
                getattr(message, name).SetInParent()
        elif item.is_repeated:
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


def _fill(target: Message, values: dict[str, Any]) -> None:
    target.MergeFrom(_build(type(target), values))


@st.composite
def _mutated(draw: Any, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, inserted, deleted or cut."""
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(("flip", "insert", "delete", "cut", "varint")))
        where = draw(st.integers(0, max(len(buffer), 1) - 1)) if buffer else 0
        if action == "flip" and buffer:
            buffer[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            buffer[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and buffer:
            del buffer[where]
        elif action == "cut":
            del buffer[where:]
        else:  # an overlong varint, a classic of parser bugs
            buffer[where:where] = b"\xff" * draw(st.integers(1, 11))
    return bytes(buffer)


# How a case's bytes are made, in these proportions.
_HOW: Final = ("plausible",) * 4 + ("wild",) * 3 + ("mutated",) * 2 + ("random",)


@dataclass(frozen=True, slots=True)
class Case:
    """One fuzzed request: the RPC, the bytes sent and how they were made."""

    rpc: Rpc
    data: bytes
    how: str


def fuzz_case(scratch: str, rpcs: tuple[Rpc, ...] = RPCS) -> st.SearchStrategy[Case]:
    """A strategy of :class:`Case`: an RPC of ``rpcs`` and the bytes of a request to it."""

    @st.composite
    def case(draw: Any) -> Case:
        rpc = draw(st.sampled_from(rpcs))
        how = draw(st.sampled_from(_HOW))
        if how == "random":
            return Case(rpc, draw(st.binary(max_size=64)), how)
        descriptor = rpc.request_type.DESCRIPTOR
        values = draw(_message(descriptor, scratch, plausible=how != "wild"))
        data = _build(rpc.request_type, values).SerializeToString()
        if how == "mutated":
            data = draw(_mutated(data))
        return Case(rpc, data, how)

    return case()


def safe_paths(case: Case, scratch: str) -> bool:
    """Whether ``case`` names no server path outside ``scratch`` (mutations may make one)."""
    try:
        request = case.rpc.request_type.FromString(case.data)
    except DecodeError:
        return True
    path = getattr(request, "path", "")
    return not path or not path.startswith("/") or path.startswith(scratch + "/")


def send(channel: grpc.Channel, case: Case, timeout_s: float = 10.0) -> tuple[grpc.StatusCode, str]:
    """Send ``case``'s bytes; the status and message of the answer (streams read to the end)."""
    path = f"/{PACKAGE}.{case.rpc.service}/{case.rpc.method}"
    raw: Callable[[bytes], bytes] = bytes
    try:
        if case.rpc.client_streaming:
            call = channel.stream_stream(path, request_serializer=raw, response_deserializer=raw)
            for _ in call(iter([case.data]), timeout=timeout_s):
                pass
        elif case.rpc.server_streaming:
            call = channel.unary_stream(path, request_serializer=raw, response_deserializer=raw)
            # Subscribe never ends by itself: a short deadline ends it.
            stream_timeout_s = 0.3 if case.rpc.stream == "subscriptions" else timeout_s
            for _ in call(case.data, timeout=stream_timeout_s):
                pass
        else:
            channel.unary_unary(path, request_serializer=raw, response_deserializer=raw)(
                case.data, timeout=timeout_s
            )
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return _S.OK, ""


def judge(case: Case, code: grpc.StatusCode, message: str) -> str | None:
    """What is wrong with answering ``case`` with ``code``, or ``None`` when it is fine."""
    if code in DOCUMENTED:
        return None
    if code in _STREAM_END and case.rpc.stream == "subscriptions":
        return None
    return f"{case.rpc.name} ({case.how}) answered {code.name}: {message[:300]}"


@dataclass(slots=True)
class Tally:
    """Requests tried and the statuses seen, per RPC; and what was wrong."""

    tried: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    by_rpc: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, case: Case, code: grpc.StatusCode, message: str) -> str | None:
        self.tried += 1
        self.statuses[code.name] += 1
        self.by_rpc[case.rpc.name] += 1
        problem = judge(case, code, message)
        if problem is not None:
            self.problems.append(problem)
        return problem

    def lines(self) -> Iterator[str]:
        yield f"requests tried: {self.tried}"
        for name, count in self.statuses.most_common():
            yield f"  {name:<20} {count}"
        for problem in self.problems[:20]:
            yield f"PROBLEM {problem}"


def seed_accounts(channel: grpc.Channel) -> None:
    """Create :data:`ACCOUNTS` (prepaid, postpaid, hybrid), top them up and charge some
    usage, so fuzzed requests meet accounts with money, usage and invoices."""
    from petribill.v1 import (
        accounts_pb2,
        accounts_pb2_grpc,
        common_pb2,
        usage_pb2,
        usage_pb2_grpc,
    )

    stub = accounts_pb2_grpc.AccountServiceStub(channel)
    modes = (
        common_pb2.PAYMENT_MODE_PREPAID,
        common_pb2.PAYMENT_MODE_POSTPAID,
        common_pb2.PAYMENT_MODE_HYBRID,
    )
    for account_id, msisdn, mode in zip(ACCOUNTS, MSISDNS, modes, strict=True):
        stub.CreateAccount(
            accounts_pb2.CreateAccountRequest(
                request_id=f"seed-create-{account_id}",
                account_id=account_id,
                payment_mode=mode,
                currency="EUR",
                msisdns=[msisdn],
                start_s=1_793_000_000,
            ),
            timeout=10,
        )
        stub.TopUp(
            accounts_pb2.TopUpRequest(
                request_id=f"seed-topup-{account_id}",
                account_id=account_id,
                amount=common_pb2.Money(micros=20_000_000, currency="EUR"),
            ),
            timeout=10,
        )
    records = [
        common_pb2.UsageRecord(
            record_id=f"seed:{index}",
            service=common_pb2.SERVICE_VOICE,
            served_msisdn=MSISDNS[index % len(MSISDNS)],
            record_opening_time_s=1_793_700_000 + index * 60,
            called_number="4930123456",
            duration_s=90,
        )
        for index in range(12)
    ]
    usage_pb2_grpc.UsageServiceStub(channel).SubmitUsage(
        usage_pb2.SubmitUsageRequest(records=records), timeout=30
    )
