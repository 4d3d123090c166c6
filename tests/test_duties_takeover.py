"""Duties belong to a unit's owner at its epoch: across a takeover a reservation is released
once, by whoever owns the unit when its validity ends, and never by a fenced zombie.

Hosts and duty runners on real RocksDB (``test_host.TwoHosts``: two hosts wired by the real
router, no coordinator), then a whole in-process cluster whose coordinator takes a dead
node's units over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from duty_support import T_NOV, wait_for
from test_gateway_support import TARIFFS
from test_host import SHARDS, TwoHosts

from actors.clock import ManualClock
from actors.duties import DutyRunner
from actors.host import StaleRoute
from actors.routing import shard_of
from actors.shard import ops
from actors.shard.codec import decode_ledger_row
from actors.shard.keys import ledger_prefix
from actors.store.codec import encode_u64
from actors.store.fencing import EPOCH_FILE, write_atomic
from billing.accounts import Account, PaymentMode, Result
from billing.ledger import Entry
from billing.ocs.session import Quote
from cluster.deploy.inprocess import InProcessCluster

pytestmark = pytest.mark.timeout(120)

EUR = 1_000_000
VALIDITY_S = 60
QUOTE = Quote(
    service="voice", usage_class="voice.international_z1", price_key="V_INT_Z1",
    plan_id="smart", plan_version="2026",
)  # fmt: skip


def _open(hosts: TwoHosts, account_id: str, session_id: str, now_s: int) -> int:
    """A session of ``account_id`` reserving money; the money it holds."""
    unit = shard_of(account_id, SHARDS)
    grant = hosts.on(
        unit,
        ops.SessionInitial(
            request_id=f"{session_id}:i", account_id=account_id, session_id=session_id,
            quote=QUOTE, requested_units=120, validity_s=VALIDITY_S, at_s=T_NOV, now_s=now_s,
        ),
    )  # fmt: skip
    assert grant.result is Result.GRANTED and grant.receipt.money_held > 0
    return int(grant.receipt.money_held)


def _expire_entries(hosts: TwoHosts, account_id: str) -> list[str]:
    """The refs of the account's ledger entries that released an expired reservation."""
    unit = shard_of(account_id, SHARDS)
    node, _epoch = hosts.routes[unit]
    store = hosts.hosts[node]._units[unit].engine.store
    refs = []
    for _key, raw in store.scan_prefix(ledger_prefix(account_id)):
        row = decode_ledger_row(raw)
        if isinstance(row, Entry) and row.ref.startswith("expire:"):
            refs.append(row.ref)
    return refs


def test_a_reservation_expiring_during_a_takeover_is_released_once(tmp_path: Path) -> None:
    """The old owner releases what expired while it owned the unit; once fenced it cannot
    release anything (its commit is refused and it stops serving the unit); the new owner
    releases the rest, once, and releases nothing the old owner already had."""
    hosts = TwoHosts(tmp_path)
    try:
        clock = ManualClock(T_NOV)
        hosts.create("acc-x", PaymentMode.PREPAID, None, "smart")
        unit = shard_of("acc-x", SHARDS)
        hosts.on(unit, ops.TopUp(request_id="t", account_id="acc-x", amount=EUR, currency="EUR",
                                 at_s=T_NOV))  # fmt: skip
        early = _open(hosts, "acc-x", "early", now_s=T_NOV)
        late = _open(hosts, "acc-x", "late", now_s=T_NOV + 30)
        old_node, epoch = hosts.routes[unit]
        new_node = "n2" if old_node == "n1" else "n1"
        old = DutyRunner(hosts.hosts[old_node], clock=clock)
        new = DutyRunner(hosts.hosts[new_node], clock=clock)

        clock.set(T_NOV + VALIDITY_S)  # "early" is due, "late" not yet
        assert old.run_round().expired == {unit: 1}
        state = hosts.on(unit, ops.GetAccount(account_id="acc-x"))
        assert (state.prepaid, state.reserved) == (EUR - late, late)

        # The takeover begins: the new owner raises the unit's fence (the first thing
        # ShardStore.open does), while the old host still believes it owns the unit.
        write_atomic(tmp_path / "units" / unit / EPOCH_FILE, encode_u64(epoch + 1))
        clock.set(T_NOV + 30 + VALIDITY_S)  # now "late" is due too
        zombie = old.run_round()
        assert zombie.expired == {} and zombie.skipped == [unit]
        assert unit not in hosts.hosts[old_node].units()
        with pytest.raises(StaleRoute):
            hosts.hosts[old_node].run(unit, epoch, ops.RunDuties(now_s=int(clock())))

        hosts.hosts[new_node].open_unit(unit, epoch + 2)
        hosts.routes[unit] = (new_node, epoch + 2)
        assert new.run_round().expired == {unit: 1}
        assert new.run_round().expired == {}
        state = hosts.on(unit, ops.GetAccount(account_id="acc-x"))
        assert (state.prepaid, state.reserved) == (EUR, 0)
        assert sorted(_expire_entries(hosts, "acc-x")) == [
            f"expire:early:{T_NOV + VALIDITY_S}",
            f"expire:late:{T_NOV + 30 + VALIDITY_S}",
        ]
        assert early + late < EUR and hosts.on(unit, ops.Audit()).ok
    finally:
        hosts.close()


def test_the_duties_move_with_a_unit_taken_over_from_a_dead_node(tmp_path: Path) -> None:
    """When a node dies holding a session, the coordinator's takeover gives the unit to the
    other node, whose duty runner releases the reservation when its validity ends."""
    clock = ManualClock(T_NOV)
    cluster = InProcessCluster(
        tmp_path / "data", TARIFFS, nodes=("n0", "n1"), clock=clock,
        settings={"session_validity_s": VALIDITY_S, "duties": {"every_s": 0.02},
                  "bill_runs": {"scheduled": False}},
    ).start()  # fmt: skip
    try:
        router = cluster.router()
        account = "acc-y"
        unit = router.shard(account)

        def on_unit(op: ops.ShardOp[Any]) -> Any:
            return router.run_blocking(unit, op, timeout_s=20)

        on_unit(ops.CreateAccount(request_id="c", account=Account(
            account_id=account, currency="EUR", payment_mode=PaymentMode.PREPAID)))  # fmt: skip
        on_unit(ops.TopUp(request_id="t", account_id=account, amount=EUR, currency="EUR",
                          at_s=T_NOV))  # fmt: skip
        grant = on_unit(ops.SessionInitial(
            request_id="s:i", account_id=account, session_id="s", quote=QUOTE,
            requested_units=600, at_s=T_NOV, now_s=int(clock())))  # fmt: skip
        assert grant.result is Result.GRANTED
        coordinator = cluster.coordinator
        assert coordinator is not None
        dead, _epoch = coordinator.routes()[unit]
        survivor = "n1" if dead == "n0" else "n0"
        # The node dies: its runner and host are gone (the process is).
        cluster.duty_runners.pop(dead).stop()
        cluster.hosts.pop(dead).close_all()
        for runner in cluster.duty_runners.values():
            runner.start()
        wait_for(
            lambda: coordinator.routes().get(unit, ("", 0))[0] == survivor,
            what="the unit taken over",
        )
        clock.advance(VALIDITY_S)

        def released() -> bool:
            state = on_unit(ops.GetAccount(account_id=account))
            return (state.prepaid, state.reserved) == (EUR, 0)

        wait_for(released, what="the reservation released by the new owner")
    finally:
        cluster.close()
