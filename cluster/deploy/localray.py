"""A local Ray "cluster" of N simulated nodes on this machine, for the CLI and for tests.

Each node is one ``ray start --block`` child process with its own short temp
dir (``<temp_root>/pbXXXXXX/n<i>``; Ray's unix socket paths must stay under ~107
bytes) and its own free ports, so two clusters on one machine never collide and
nothing under ``/tmp/ray`` is touched. Every node, agent and worker listens on
127.0.0.1 only (:mod:`cluster.deploy.loopback` says how). The head carries the
health-check tuning of ``conf/cluster.toml`` in ``--system-config``, so a dead
node is declared in 1-3 s instead of ~15 s.

Why ``ray start`` subprocesses rather than ``ray.cluster_utils.Cluster``: the
latter builds nodes through the private ``ray._private.node.Node`` inside the
calling process (its API moves between Ray releases, and the driver then owns
the node processes), while ``ray start`` is the operator's own, stable
interface, and ``--block`` keeps one parent per node whose children are that
node's processes. With ``--block``, when a node's raylet dies its ``ray start``
process ends the node's remaining processes within ~1 s, as a real node death
would.

Every simulated node has a custom resource ``petribill_node_<name>: 1`` so an
actor can be placed on it (``resources={"petribill_node_n2": 0.001}``).
Shutdown ends only processes this object started: the ``ray start`` children,
their descendants, and processes whose command line names this cluster's
unique temp dir (orphaned workers), each by PID; then it removes the temp dir.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cluster.config import ClusterConfig
from cluster.deploy.loopback import LOOPBACK_ENV, ray_start_command, use_loopback

__all__ = [
    "LOCAL_AUTH_ENV",
    "LocalRay",
    "LocalRayError",
    "NodeHandle",
    "node_resource",
    "pid_running",
]

_STARTED_MARK = "Ray runtime started"
_NODE_START_RETRIES = 2

# Ray 2.5x turns token authentication on for a new head whenever a token file
# exists in ~/.ray (which any plain ray.init() on the machine may create), and
# several clusters on one machine would then race on that one file. Simulated
# nodes listen on loopback only, so they run with authentication explicitly
# off; a cluster joined with --address keeps whatever its operator chose.
LOCAL_AUTH_ENV = {"RAY_AUTH_MODE": "disabled"}


def _log_retry(index: int, exc: Exception) -> None:
    import structlog

    structlog.get_logger("petribill.localray").warning(
        "node_start_retry", node=f"n{index}", error=str(exc).splitlines()[0]
    )


class LocalRayError(RuntimeError):
    """Raised when a simulated node does not start in time or exits while starting;
    the message carries the tail of its ``ray start`` log."""


def node_resource(name: str) -> str:
    """The custom resource that pins an actor to simulated node ``name`` (e.g. ``n2``)."""
    return f"petribill_node_{name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeHandle:
    """One simulated node: its Ray node id, the PIDs to hit in chaos tests, its resources."""

    index: int
    name: str
    node_id: str
    raylet_pid: int
    start_pid: int
    is_head: bool
    temp_dir: Path
    resources: dict[str, float]


# Ports handed out lately: the kernel may give a just-closed port again, and Ray
# refuses two components on one port, so no port is handed out twice in a row.
_PORTS_GIVEN: collections.deque[int] = collections.deque(maxlen=4096)


def _free_port() -> int:
    """A free loopback port not handed out lately by this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.append(port)
            return port


def pid_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (killed, waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class _Adopted:
    """The ``Popen`` face of a ``ray start`` process this object did not start
    (a re-attached cluster): what :class:`LocalRay` asks of its node processes."""

    def __init__(self, pid: int | None) -> None:
        self.pid = -1 if pid is None else pid
        self.returncode: int | None = None if pid is not None else 0

    def poll(self) -> int | None:
        if self.returncode is None and not pid_running(self.pid):
            self.returncode = 0
        return self.returncode

    def terminate(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(0.05)
        return 0


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """``pid -> (ppid, comm, cmdline)`` of every running (non-zombie) process we can read."""
    table: dict[int, tuple[int, str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid_text = stat[stat.rindex(")") + 2 :].split()[:2]
        if state == "Z":
            continue
        ppid = int(ppid_text)
        table[int(entry)] = (ppid, comm, cmdline.decode(errors="replace"))
    return table


def _descendants(root: int, table: dict[int, tuple[int, str, str]]) -> set[int]:
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class LocalRay:
    """Start, inspect, break and stop a local multi-node Ray cluster (a context manager)."""

    def __init__(
        self,
        nodes: int = 1,
        *,
        temp_root: Path | str | None = None,
        config: ClusterConfig | None = None,
        num_cpus: int | None = None,
    ) -> None:
        self.config = config or ClusterConfig()
        self._nodes_wanted = nodes
        root = Path(temp_root or self.config.ray.temp_root)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="pb", dir=root))
        self._num_cpus = self.config.ray.num_cpus_per_node if num_cpus is None else num_cpus
        self._procs: list[subprocess.Popen[bytes]] = []
        self.nodes: list[NodeHandle] = []
        self.address = ""
        self._connected = False
        self._adding = threading.Lock()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> LocalRay:
        """Start the head, then the other nodes in parallel; returns when all are up."""
        try:
            head_port = _free_port()
            self.address = f"127.0.0.1:{head_port}"
            self._wait_started([self._spawn(0, head_port=head_port)])
            if self._nodes_wanted > 1:
                self._wait_started([self._spawn(i) for i in range(1, self._nodes_wanted)])
        except BaseException:
            self.shutdown()
            raise
        return self

    @classmethod
    def reattach(
        cls, *, temp_dir: Path, address: str, config: ClusterConfig | None = None
    ) -> LocalRay:
        """A handle on a cluster started by another process (``petribill up --detach``).

        Its processes are found by the temp dir in their command lines, so
        :meth:`shutdown` ends exactly them, by PID, and nothing else.
        """
        self = cls.__new__(cls)
        self.config = config or ClusterConfig()
        self._nodes_wanted = 0
        self.temp_dir = Path(temp_dir)
        self._num_cpus = self.config.ray.num_cpus_per_node
        self._procs = []
        self.nodes = []
        self.address = address
        self._connected = False
        self._adding = threading.Lock()
        self._adopt()
        return self

    def _adopt(self) -> None:
        """Find the ``ray start`` process of each node folder ``n<K>`` of the temp dir, so
        that the nodes of a re-attached cluster have their handles (for chaos faults) and
        a new node takes the next index."""
        table = _proc_table()
        folders = sorted(
            (int(p.name[1:]), p) for p in self.temp_dir.glob("n*") if p.name[1:].isdigit()
        )
        for index, folder in folders:
            marker = f"--temp-dir={folder} "
            pid = next(
                (
                    pid
                    for pid, (_, _, cmd) in table.items()
                    if " start " in cmd and marker in cmd + " " and "raylet" not in cmd
                ),
                None,
            )
            while len(self._procs) <= index:
                self._procs.append(_Adopted(None))  # type: ignore[arg-type]
            self._procs[index] = _Adopted(pid)  # type: ignore[call-overload]
            if pid is not None:
                handle = self._probe(index, table)
                if handle is not None:
                    self.nodes.append(handle)

    def add_node(self) -> NodeHandle:
        """Start one more node and return its handle (one caller at a time)."""
        with self._adding:
            index = self._spawn(len(self._procs))
            self._wait_started([index])
            return self.node(index)

    def node(self, index: int) -> NodeHandle:
        """The handle of node ``index`` (``nodes`` has gaps where a node failed to start)."""
        for handle in self.nodes:
            if handle.index == index:
                return handle
        raise KeyError(f"no node n{index} in this cluster")

    def connect(self, namespace: str = "petribill") -> None:
        """Connect this process as a driver (to the head's raylet); undone by shutdown."""
        import ray

        os.environ.update(LOCAL_AUTH_ENV)
        use_loopback(True)
        ray.init(address=self.address, namespace=namespace, log_to_driver=False)
        self._connected = True

    def shutdown(self, grace_s: float = 10.0) -> None:
        """End every process of this cluster (by PID) and remove its temp dir. Idempotent."""
        if self._connected:
            import ray

            ray.shutdown()
            self._connected = False
        ours = self.pids()
        for pid in ours:  # a paused process cannot act on SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for proc in reversed(self._procs):  # workers first, head last
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        ours |= self.pids()
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self._procs:
            proc.wait()
        # SIGKILL is asynchronous: wait until each process is gone (or a zombie).
        deadline = time.monotonic() + grace_s
        while any(pid_running(pid) for pid in ours) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRay:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    # -- chaos and inspection ---------------------------------------------------

    def kill_node(self, index: int, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to node ``index``'s raylet (SIGKILL: node death; SIGSTOP: a hang).

        Returns the PID signalled. The head (index 0) hosts GCS and the driver;
        killing it ends the cluster, so it is refused.
        """
        node = self.node(index)
        if node.is_head and sig in (signal.SIGKILL, signal.SIGTERM):
            raise ValueError("killing the head node ends the whole cluster; kill a worker node")
        os.kill(node.raylet_pid, sig)
        return node.raylet_pid

    def node_pids(
        self, index: int, table: dict[int, tuple[int, str, str]] | None = None
    ) -> set[int]:
        """The live processes of node ``index``: its ``ray start`` process, the raylet
        and every process below it (the node's Ray workers, hence its actors)."""
        table = _proc_table() if table is None else table
        root = self._procs[index].pid
        return ({root} & table.keys()) | _descendants(root, table)

    def pause_node(self, index: int) -> set[int]:
        """SIGSTOP every process of worker node ``index`` (a hung machine); returns them.

        Pausing the raylet alone is not a hung node: its workers keep answering
        calls made to them directly. :meth:`resume_node` sends SIGCONT.
        """
        if self.node(index).is_head:
            raise ValueError("pausing the head node stops the whole cluster; pause a worker node")
        paused = self.node_pids(index)
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return paused

    def resume_node(self, index: int) -> None:
        """SIGCONT every process of node ``index`` (also any that appeared meanwhile)."""
        for pid in self.node_pids(index):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def worker_pid(self, index: int, actor_class: str) -> int | None:
        """The PID of the Ray worker on node ``index`` running an actor of ``actor_class``.

        Ray titles an actor's worker ``ray::<Class>``, or ``ray::<Class>.<method>()``
        while a call runs.
        """
        table = _proc_table()
        title = f"ray::{actor_class}"
        for pid in sorted(self.node_pids(index, table)):
            cmd = table[pid][2].strip()
            if cmd == title or cmd.startswith(title + "."):
                return pid
        return None

    def pids(self) -> set[int]:
        """Every live PID of this cluster: ``ray start`` children, their descendants,
        and any process whose command line names this cluster's temp dir."""
        table = _proc_table()
        marker = str(self.temp_dir)
        found = {pid for pid, (_, _, cmd) in table.items() if marker in cmd}
        for proc in self._procs:
            if proc.pid in table:
                found |= {proc.pid} | _descendants(proc.pid, table)
        found.discard(os.getpid())
        return found

    def rss_bytes(self) -> int:
        """Resident memory of all of this cluster's processes together."""
        return sum(_rss_bytes(pid) for pid in self.pids())

    # -- internals ---------------------------------------------------------------

    def _respawn(self, index: int) -> None:
        """Start worker node ``index`` again after a failed start, keeping its old log."""
        node_dir = self.temp_dir / f"n{index}"
        attempt = 1
        while node_dir.with_name(f"n{index}.failed{attempt}").exists():
            attempt += 1
        node_dir.rename(node_dir.with_name(f"n{index}.failed{attempt}"))
        self._spawn(index)

    def _spawn(self, index: int, *, head_port: int | None = None) -> int:
        name = f"n{index}"
        node_dir = self.temp_dir / name
        node_dir.mkdir()
        resources = {node_resource(name): 1.0}
        ray_cfg = self.config.ray
        args = [
            *ray_start_command(head=head_port is not None),
            "start",
            "--block",
            f"--temp-dir={node_dir}",
            f"--num-cpus={self._num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps(resources)}",
            f"--object-store-memory={ray_cfg.object_store_bytes_per_node}",
            "--node-ip-address=127.0.0.1",
            "--node-manager-port=0",
            "--object-manager-port=0",
            "--min-worker-port=0",
            "--max-worker-port=0",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            "--disable-usage-stats",
        ]
        if head_port is not None:
            args += [
                "--head",
                f"--port={head_port}",
                f"--ray-client-server-port={_free_port()}",
                f"--include-dashboard={str(ray_cfg.include_dashboard).lower()}",
                f"--dashboard-port={_free_port()}",
                f"--system-config={json.dumps(self._system_config())}",
            ]
        else:
            args += [f"--address={self.address}", "--include-log-monitor=false"]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **LOCAL_AUTH_ENV, **LOOPBACK_ENV}
        env.pop("RAY_ADDRESS", None)
        log = open(node_dir / "ray-start.log", "wb")  # noqa: SIM115 - the child keeps it
        # Its own session: a Ctrl-C meant for the CLI must not kill nodes
        # half-way; shutdown ends them explicitly, by PID.
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        if index < len(self._procs):
            self._procs[index] = proc
        else:
            self._procs.append(proc)
        return index

    def _system_config(self) -> dict[str, int]:
        """The head's ``_system_config``: the health checks of conf/, and metrics published
        every 2 s (Ray's default is 10 s) so ``petribill metrics`` shows recent figures."""
        return {**self.config.health.ray_system_config(), "metrics_report_interval_ms": 2000}

    def _wait_started(self, indices: list[int]) -> None:
        deadline = time.monotonic() + self.config.ray.start_timeout_s
        pending = set(indices)
        retries = {index: _NODE_START_RETRIES for index in indices if index > 0}
        while pending:
            table = _proc_table()
            for index in sorted(pending):
                try:
                    handle = self._probe(index, table)
                except LocalRayError as exc:
                    # On a loaded machine a worker node can give up reaching the
                    # head's GCS while starting; a new attempt usually succeeds.
                    if retries.get(index, 0) <= 0:
                        raise
                    retries[index] -= 1
                    _log_retry(index, exc)
                    self._respawn(index)
                    # A new attempt gets the full time again.
                    deadline = time.monotonic() + self.config.ray.start_timeout_s
                    continue
                if handle is not None:
                    self.nodes.append(handle)
                    pending.discard(index)
            if pending and time.monotonic() > deadline:
                raise LocalRayError(self._log_tail(min(pending), "did not start in time"))
            time.sleep(0.1)
        self.nodes.sort(key=lambda n: n.index)

    def _probe(self, index: int, table: dict[int, tuple[int, str, str]]) -> NodeHandle | None:
        proc, name = self._procs[index], f"n{index}"
        if proc.poll() is not None:
            raise LocalRayError(self._log_tail(index, f"exited with {proc.returncode}"))
        log = (self.temp_dir / name / "ray-start.log").read_text(errors="replace")
        if _STARTED_MARK not in log:
            return None
        raylets = [
            pid
            for pid in _descendants(proc.pid, table)
            if table[pid][1] == "raylet" and table[pid][0] == proc.pid
        ]
        if not raylets:
            return None
        raylet = raylets[0]
        node_id = next(
            (a.split("=", 1)[1] for a in table[raylet][2].split() if a.startswith("--node_id=")),
            "",
        )
        return NodeHandle(
            index=index,
            name=name,
            node_id=node_id,
            raylet_pid=raylet,
            start_pid=proc.pid,
            is_head=index == 0,
            temp_dir=self.temp_dir / name,
            resources={node_resource(name): 1.0, "CPU": float(self._num_cpus)},
        )

    def _log_tail(self, index: int, what: str) -> str:
        path = self.temp_dir / f"n{index}" / "ray-start.log"
        tail = path.read_text(errors="replace")[-2000:] if path.exists() else ""
        return f"node n{index} {what}; {path}:\n{tail}"
