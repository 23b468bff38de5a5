"""A private multi-node Ray cluster on one machine, started with the real CLI (`ray start`), one node per
process group, so it can be stopped, or lose one node, without touching any other Ray cluster of the user.

`ray stop` would stop every Ray cluster of the user (other searches, other people's clusters on a shared
machine); this stops only the process groups it started. Used by the multi-node tests and bench/faults.py,
and handy to try `launch --address` on a laptop:

    with LocalNodes("/tmp/nodes") as nodes:
        address = nodes.start_head()
        nodes.add_worker(); nodes.add_worker()
        subprocess.run([... "launch", "--address", address], env={**os.environ, **nodes.env})
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ._ray import free_port

START_TIMEOUT_S = 180          # `ray start` on a busy 2-core machine takes 10-60 s
STOP_GRACE_S = 5


@dataclass
class Node:
    name: str
    temp_dir: Path
    proc: subprocess.Popen
    log: Path

    @property
    def pgid(self) -> int:
        return self.proc.pid            # started with start_new_session: the group is the `ray start` pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def node_id(self) -> str | None:
        """Ray's id of this node (its session folder names files after it)."""
        found = sorted((self.temp_dir / "session_latest").glob("metrics_agent_port_*"))
        return found[0].name.rsplit("_", 1)[-1] if found else None

    def processes(self, prefix: str = "ray::") -> list[tuple[int, str]]:
        """(pid, title) of this node's Ray workers whose process title starts with `prefix` (actors and tasks
        rename themselves `ray::ClassName.method`)."""
        import psutil
        found = []
        for pid in self.pids():
            try:
                title = " ".join(psutil.Process(pid).cmdline()).strip()
            except psutil.Error:
                continue
            if title.startswith(prefix):
                found.append((pid, title))
        return found

    def pids(self) -> list[int]:
        """Every live process of this node: the `ray start` process and its descendants (Ray workers get
        process groups of their own), plus anything re-parented to init that still names the node's temp
        dir on its command line (Ray's agents outlive a killed raylet)."""
        import psutil
        found = set()
        try:
            root = psutil.Process(self.proc.pid)
            found = {root.pid, *(c.pid for c in root.children(recursive=True))}
        except psutil.NoSuchProcess:
            pass
        return sorted(found | set(pids_mentioning(self.temp_dir)))


class LocalNodes:
    def __init__(self, base_dir, *, python: str | None = None):
        self.base = Path(base_dir)
        self.base.mkdir(parents=True, exist_ok=True)
        token = self.base / "auth_token"
        if not token.exists():
            token.write_text(secrets.token_hex(32))
        # Token auth on every node and on every driver that joins (pass `env` to it): Ray 2.60's default.
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        self.ray = str(Path(python or sys.executable).parent / "ray")
        self.nodes: list[Node] = []
        self.address: str | None = None

    def start_head(self, *, num_cpus: int = 1, extra_env: dict | None = None) -> str:
        port = free_port("")
        args = ["--head", "--port", str(port), "--dashboard-port", str(free_port("")),
                "--ray-client-server-port", str(free_port("")), "--include-dashboard", "false"]
        node = self._wait(self._spawn("head", args, num_cpus, extra_env))
        self.address = f"{_node_ip(node.log)}:{port}"
        return self.address

    def add_worker(self, *, num_cpus: int = 1, extra_env: dict | None = None) -> Node:
        return self.add_workers(1, num_cpus=num_cpus, extra_env=extra_env)[0]

    def add_workers(self, count: int, *, num_cpus: int = 1, extra_env: dict | None = None) -> list[Node]:
        """Start `count` worker nodes at once and wait until each has joined."""
        if not self.address:
            raise RuntimeError("start the head first")
        spawned = [self._spawn(f"worker{len(self.nodes)}", ["--address", self.address], num_cpus, extra_env)
                   for _ in range(count)]
        return [self._wait(node) for node in spawned]

    def _spawn(self, name: str, args: list, num_cpus: int, extra_env: dict | None) -> Node:
        temp_dir = self.base / name
        log = self.base / f"{name}.log"
        ports = ["--dashboard-agent-listen-port", str(free_port("")), "--dashboard-agent-grpc-port",
                 str(free_port("")), "--runtime-env-agent-port", str(free_port("")),
                 "--metrics-export-port", str(free_port(""))]
        cmd = [self.ray, "start", *args, *ports, "--num-cpus", str(num_cpus), "--temp-dir", str(temp_dir),
               "--disable-usage-stats", "--block"]
        env = {**os.environ, **self.env, **(extra_env or {})}
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        node = Node(name, temp_dir, proc, log)
        self.nodes.append(node)
        return node

    def _wait(self, node: Node) -> Node:
        deadline = time.time() + START_TIMEOUT_S
        while "Ray runtime started" not in node.log.read_text(errors="replace"):
            if node.proc.poll() is not None or time.time() > deadline:
                self.stop_node(node)
                tail = node.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"`ray start` for {node.name} failed (see {node.log}):\n{tail}")
            time.sleep(0.5)
        return node

    def stop_node(self, node: Node, *, sig=signal.SIGTERM) -> None:
        """Stop one node: `sig` to its process group, SIGKILL to what is left after a grace period."""
        _signal_all(node.pids(), sig)
        deadline = time.time() + (STOP_GRACE_S if sig != signal.SIGKILL else 0)
        while time.time() < deadline and node.alive():
            time.sleep(0.2)
        _signal_all(node.pids(), signal.SIGKILL)
        try:
            node.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        for node in reversed(self.nodes):   # workers before the head
            self.stop_node(node)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def pids_mentioning(folder) -> list[int]:
    """Processes whose command line names a path inside `folder` (a private Ray temp dir: every Ray
    process of that node or local cluster, and nobody else's)."""
    import psutil
    marker = str(folder).rstrip(os.sep) + os.sep
    return [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if any(marker in arg for arg in p.info["cmdline"] or ())]


def kill_mentioning(folder) -> int:
    """SIGKILL every process `pids_mentioning(folder)`; returns how many. Cleans up after a local Ray cluster
    whose driver was killed (started with RAY_TMPDIR=folder) without `ray stop`, which would stop every
    Ray cluster of the user."""
    pids = [p for p in pids_mentioning(folder) if p != os.getpid()]
    _signal_all(pids, signal.SIGKILL)
    return len(pids)


def _signal_all(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _node_ip(log: Path) -> str:
    import re
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))     # colour codes
    match = re.search(r"Local node IP: (\d+\.\d+\.\d+\.\d+)", text)
    return match.group(1) if match else "127.0.0.1"
