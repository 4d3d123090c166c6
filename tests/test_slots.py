"""Which host process of a node serves a unit (actors.slots), the setting that says how
many there are ([sharding] hosts_per_node) and how "auto" is resolved, and that the
router and the gateway's coalescer send a unit's calls to that process."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from actors.coalesce import Coalescer
from actors.op import Op
from actors.router import UnitRouter
from actors.routing import partition_id, shard_id
from actors.slots import host_key, node_hosts, slot_of, unit_host
from cluster.config import ConfigError, parse_config
from cluster.deploy.runtime import auto_hosts_per_node, hosts_per_node_of


def units(shards: int, partitions: int) -> list[str]:
    return [shard_id(i) for i in range(shards)] + [partition_id(i) for i in range(partitions)]


def test_one_host_per_node_is_slot_zero_named_as_the_node() -> None:
    """With k = 1 every unit is on slot 0, whose key is the node itself (today's host name)."""
    assert {slot_of(u, 1) for u in units(64, 16)} == {0}
    assert unit_host("n3", "acct-17", 1) == "n3"
    assert node_hosts("n3", 1) == ["n3"]
    assert host_key("n3", 0) == "n3" and host_key("n3", 2) == "n3-s2"


@pytest.mark.parametrize("k", [2, 3, 4, 8])
@pytest.mark.parametrize(("shards", "partitions"), [(4, 2), (16, 8), (7, 3), (64, 5)])
def test_shards_and_partitions_each_spread_evenly_over_the_slots(
    k: int, shards: int, partitions: int
) -> None:
    """Shards and partitions each differ by at most one unit between any two slots."""
    for kind in (
        [shard_id(i) for i in range(shards)],
        [partition_id(i) for i in range(partitions)],
    ):
        count = Counter(slot_of(u, k) for u in kind)
        assert set(count) <= set(range(k))
        spread = [count.get(s, 0) for s in range(k)]
        assert max(spread) - min(spread) <= 1, (kind, spread)


def test_two_partitions_never_share_a_slot_of_two() -> None:
    """The case a hash gets wrong: 2 partitions over 2 slots are one each."""
    assert sorted(slot_of(partition_id(i), 2) for i in range(2)) == [0, 1]


def test_the_slot_is_a_function_of_the_unit_and_k_only() -> None:
    """Every process computes the same slot, whatever node or call order: stable values."""
    assert [slot_of(u, 3) for u in ("acct-00", "acct-05", "acct-10", "part-4")] == [0, 2, 1, 1]
    assert unit_host("n1", "acct-05", 2) == unit_host("n1", "acct-05", 2) == "n1-s1"
    assert node_hosts("n1", 3) == ["n1", "n1-s1", "n1-s2"]


def config(value: Any) -> Any:
    return parse_config({"sharding": {"hosts_per_node": value}}, source="conf/cluster.toml")


def test_hosts_per_node_is_one_by_default_and_takes_auto_or_a_positive_integer() -> None:
    """Unset is 1; "auto" and an integer from 1 are kept as given."""
    assert parse_config({}).sharding.hosts_per_node == 1
    assert config("auto").sharding.hosts_per_node == "auto"
    assert config(1).sharding.hosts_per_node == 1
    assert config(8).sharding.hosts_per_node == 8


@pytest.mark.parametrize("value", [0, -1, "two", "Auto", 1.5, True, 10_000])
def test_a_bad_hosts_per_node_names_the_file_and_the_key(value: Any) -> None:
    """Anything but "auto" or an integer from 1 is refused, naming file and key."""
    with pytest.raises(ConfigError) as refused:
        config(value)
    assert str(refused.value).startswith("conf/cluster.toml: sharding.hosts_per_node: must be")


def ray_node(address: str, cpus: float, *, alive: bool = True) -> dict[str, Any]:
    return {"Alive": alive, "NodeManagerAddress": address, "Resources": {"CPU": cpus}}


def test_auto_is_the_cpus_a_node_has_to_itself() -> None:
    """Ray's CPUs of a node divided by the nodes on its machine, the least over the nodes."""
    four_on_one = [ray_node("127.0.0.1", 2.0) for _ in range(4)]
    assert auto_hosts_per_node(four_on_one) == 1  # this 2-core VM, 4 simulated nodes
    assert auto_hosts_per_node([ray_node("10.0.0.1", 8.0)]) == 8  # a real 8-core machine
    machines = [ray_node("10.0.0.1", 8.0), ray_node("10.0.0.2", 4.0)]
    assert auto_hosts_per_node(machines) == 4
    dead = [ray_node("10.0.0.1", 8.0), ray_node("10.0.0.2", 2.0, alive=False)]
    assert auto_hosts_per_node(dead) == 8
    assert auto_hosts_per_node([]) == 1


def test_an_integer_setting_is_not_resolved() -> None:
    """An integer hosts_per_node is the cluster's, whatever the nodes have."""
    assert hosts_per_node_of(config(3), [ray_node("10.0.0.1", 64.0)]) == 3
    assert hosts_per_node_of(config("auto"), [ray_node("10.0.0.1", 6.0)]) == 6


@dataclass(frozen=True)
class Probe(Op[str]):
    """An operation the recording transport below answers itself (never applied)."""


class Recording:
    """A router transport that answers every host call with the host key it was sent to."""

    def __init__(self, routes: dict[str, tuple[str, int]]) -> None:
        self._routes = routes
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []

    async def routes(self, timeout_s: float) -> dict[str, tuple[str, int]]:
        return dict(self._routes)

    async def host_call(self, host: str, method: str, *args: Any, timeout_s: float) -> Any:
        self.calls.append((host, method, args))
        if method == "run_many":
            return [host for _ in args[0]]
        return host

    async def coordinator_call(self, method: str, *args: Any, timeout_s: float) -> Any:
        raise AssertionError("not called")


ROUTES = {u: ("n0" if i % 3 else "n1", 1) for i, u in enumerate(units(4, 2))}


def test_the_router_and_the_coalescer_send_a_units_calls_to_its_slot() -> None:
    """Run, batches and the catalogue switch go to the host process of the unit's slot."""
    transport = Recording(ROUTES)
    router = UnitRouter(transport, shards=4, partitions=2, hosts_per_node=2)
    coalescer = Coalescer(router)

    async def calls() -> tuple[dict[str, str], dict[str, str], list[str]]:
        alone = {u: await router.run(u, Probe(), timeout_s=5) for u in ROUTES}
        together = await asyncio.gather(*(coalescer.run(u, Probe(), timeout_s=5) for u in ROUTES))
        return alone, dict(zip(ROUTES, together, strict=True)), await router.owner_hosts()

    alone, batched, owners = asyncio.run(calls())
    expected = {u: unit_host(node, u, 2) for u, (node, _) in ROUTES.items()}
    assert alone == expected
    assert batched == expected
    assert {h for h, m, _ in transport.calls if m == "run_many"} == set(expected.values())
    assert owners == sorted(set(expected.values()))
    assert len(set(expected.values())) == 4  # both slots of both nodes are addressed
