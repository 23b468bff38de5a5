"""The experiment's MLflow tracking server: SQLite backend and artifact store in the run directory (the
experiment record names them), served over HTTP so trials on any node log to it (artifacts are proxied:
no node needs the driver's disk).

The driver starts a small supervisor process (`python -m search._mlflow_server`) in a session of its own;
the supervisor runs `mlflow server` in another session and
  - restarts it on the same port when it dies (trials buffer what they log meanwhile, search/_tracking.py),
  - stops it when asked (SIGTERM) or when the driver is gone (a SIGKILLed driver leaves no server behind:
    `resume` starts a fresh one on the same store).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

READY_TIMEOUT_S = 180       # `mlflow server` imports for 10-20 s on a busy 2-core machine
STOP_GRACE_S = 10
POLL_S = 0.5


def health(uri: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


class TrackingServer:
    """Handle on a supervised `mlflow server` (the driver's side)."""

    def __init__(self, *, backend_db: Path, artifacts: Path, host: str, port: int, log: Path):
        self.backend_db, self.artifacts, self.host, self.port, self.log = backend_db, artifacts, host, port, log
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def spawn(cls, *, backend_db: Path, artifacts: Path, log: Path, host: str) -> "TrackingServer":
        """Start it and return at once (its start-up overlaps the driver's); `wait_ready` before use."""
        from cluster import free_port
        server = cls(backend_db=backend_db, artifacts=artifacts, host=host, port=free_port(host), log=log)
        cmd = [sys.executable, "-m", "search._mlflow_server", "--parent", str(os.getpid()),
               "--", *server.command()]
        with open(server.log, "a") as out:
            server.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                           env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        return server

    def command(self) -> list[str]:
        hosts = sorted({self.host, "127.0.0.1", "localhost"})
        allowed = ",".join(h for host in hosts for h in (host, f"{host}:{self.port}"))
        return [str(Path(sys.executable).parent / "mlflow"), "server",
                "--backend-store-uri", f"sqlite:///{self.backend_db.resolve()}",
                "--artifacts-destination", self.artifacts.resolve().as_uri(), "--serve-artifacts",
                "--host", self.host, "--port", str(self.port), "--workers", "1", "--allowed-hosts", allowed]

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        deadline = time.time() + timeout
        while not health(self.uri):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] if self.log.is_file() else []
                raise RuntimeError(f"the MLflow server did not start (see {self.log}): {' '.join(tail)}")
            time.sleep(POLL_S)
        return self.uri

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_GRACE_S + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- the supervisor process -------------------------------------------------------------------------
def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def supervise(command: list[str], parent: int) -> int:
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))

    def start():
        return subprocess.Popen(command, start_new_session=True)
    proc = start()
    while True:
        time.sleep(POLL_S)
        if stopping or os.getppid() != parent:        # asked to stop, or the driver is gone
            _stop_group(proc)
            return 0
        if proc.poll() is not None:
            print(f"[supervisor] mlflow server exited ({proc.returncode}); restarting it", flush=True)
            _stop_group(proc)                          # what the dead server left in its group
            time.sleep(1)
            proc = start()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search._mlflow_server")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return supervise(command, args.parent)


if __name__ == "__main__":
    sys.exit(main())
