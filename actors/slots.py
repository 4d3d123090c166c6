"""Which host process of its node serves a unit (``hosts_per_node``, issue #13 item 5).

A node (a machine with its disk, the Petri net's failure domain) runs
``hosts_per_node`` host processes, its *slots* ``0..k-1``, all over the node's one
folder. A unit lives on exactly one slot of whichever node owns it, and every process
that addresses "the host of (node, unit)" — routers, the gateway's coalescer,
replication peers, the coordinator — computes that slot here, from the unit id and k
alone, so they all agree without asking anyone.

The slot is the unit's index modulo k (``acct-05`` -> 5 % k), not a hash: with few
units a hash can put both of 2 partitions on one slot, the index spreads shards and
partitions each evenly. A host's *key* names one host process: the node's name for
slot 0 (so k = 1 is exactly one host per node, named as before), ``<node>-s<slot>``
otherwise.
"""

from __future__ import annotations

__all__ = ["host_key", "node_hosts", "slot_of", "unit_host"]


def slot_of(unit_id: str, hosts_per_node: int) -> int:
    """The slot (0..hosts_per_node-1) that serves ``unit_id`` on any node."""
    if hosts_per_node <= 1:
        return 0
    return int(unit_id.rsplit("-", 1)[1]) % hosts_per_node


def host_key(node: str, slot: int) -> str:
    """The key of ``node``'s host process ``slot``: the node itself for slot 0."""
    return node if slot == 0 else f"{node}-s{slot}"


def unit_host(node: str, unit_id: str, hosts_per_node: int) -> str:
    """The key of the host process that serves ``unit_id`` on ``node``."""
    return host_key(node, slot_of(unit_id, hosts_per_node))


def node_hosts(node: str, hosts_per_node: int) -> list[str]:
    """The keys of every host process of ``node``, slot 0 first."""
    return [host_key(node, slot) for slot in range(max(hosts_per_node, 1))]
