"""A local Ray on 127.0.0.1 only: its nodes, their agents, and the drivers that connect to it.

Ray takes ``127.0.0.1`` for a mistake: ``ray start --node-ip-address=127.0.0.1``
and ``ray.init(address="127.0.0.1:…")`` both replace it by the machine's
routable address (``ray._private.services.resolve_ip_for_localhost``), so the
embedded default's GCS, raylets and agents used to listen on every interface
(``*:<port>``, ``0.0.0.0``) and advertise e.g. ``192.0.2.2``. Ray keeps
127.0.0.1 only when its switch ``ENABLE_RAY_CLUSTER`` is off, as on macOS
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``): a node's address is then 127.0.0.1,
its C++ servers (GCS, raylet, object manager) listen on 127.0.0.1 only, and its
agents and client server bind that address (``tests/test_ray_ports.py`` reads
``/proc/net/tcp*`` to check every listener of a cluster).

The switch is read in three places, each handled here:

- Processes a node starts (raylet, agents, workers) inherit :data:`LOOPBACK_ENV`
  from the node's ``ray start``.
- ``ray start`` for a worker node refuses to run with the switch off ("Multi-node
  Ray clusters are not supported on Windows and OSX", a guard for those
  systems): :func:`ray_start_command` runs Ray's own command line with that
  guard seeing the switch on and everything else seeing it off.
- A driver (this process, the CLI) reads the switch when it connects, from
  Ray's constant, fixed when ``ray`` was first imported: :func:`use_loopback`
  sets it before ``ray.init`` and restores Ray's default for a cluster joined
  with ``--address``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Final

__all__ = ["LOOPBACK_ENV", "ray_start_command", "use_loopback"]

_SWITCH: Final = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: The environment of every process of a local cluster: Ray's switch off.
LOOPBACK_ENV: Final = {_SWITCH: "0"}

# `ray start` with the multi-node guard of ray/scripts/scripts.py reading the switch
# as on (its module's own view of the constants) while services.py, which resolves
# addresses, reads it off from the environment.
_WORKER_START: Final = "; ".join(
    (
        "import sys, types",
        "import ray._private.ray_constants as constants",
        "from ray.scripts import scripts",
        "scripts.ray_constants = types.SimpleNamespace("
        "**{**vars(constants), 'ENABLE_RAY_CLUSTER': True})",
        "sys.argv[0] = 'ray'",
        "sys.exit(scripts.main())",
    )
)


def ray_start_command(*, head: bool) -> list[str]:
    """The command that starts a node of a local cluster (add ``start`` and its options);
    run it with :data:`LOOPBACK_ENV` in its environment."""
    if head:
        return [str(Path(sys.executable).with_name("ray"))]
    return [sys.executable, "-c", _WORKER_START]


def use_loopback(on: bool) -> None:
    """Make this process connect to a local cluster on 127.0.0.1 (``on``), or to a cluster
    of other machines (off: Ray's own default). Call it before ``ray.init``."""
    from ray._private import ray_constants

    if on:
        os.environ.update(LOOPBACK_ENV)
        ray_constants.ENABLE_RAY_CLUSTER = False
    else:
        os.environ.pop(_SWITCH, None)
        ray_constants.ENABLE_RAY_CLUSTER = not ray_constants.IS_WINDOWS_OR_OSX
