"""How gateways are found: one named, detached Ray actor per Ray node."""

from __future__ import annotations

import contextlib
from typing import Any

import ray

from actors.remote import NAMESPACE

__all__ = ["GATEWAY_PREFIX", "gateway_handles", "gateway_name"]

GATEWAY_PREFIX = "petribill-gateway-"


def gateway_name(ray_node_id: str) -> str:
    return f"{GATEWAY_PREFIX}{ray_node_id[:12]}"


def gateway_handles() -> dict[str, Any]:
    """The named gateway actors by the (short) Ray node id they serve (blocking GCS lookups)."""
    handles = {}
    for found in ray.util.list_named_actors(all_namespaces=True):
        name = found["name"]
        if found["namespace"] == NAMESPACE and name.startswith(GATEWAY_PREFIX):
            with contextlib.suppress(ValueError):  # gone since it was listed
                handles[name[len(GATEWAY_PREFIX) :]] = ray.get_actor(name, namespace=NAMESPACE)
    return handles
