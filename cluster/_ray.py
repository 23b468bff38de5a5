"""Joining a Ray cluster (`--address HOST:PORT`) or starting a local one, and failing fast when the address
is wrong: `ray.init` against a port where nothing, or something other than Ray, listens retries for minutes.
"""
from __future__ import annotations

import os
import socket
import sys
import threading

DEFAULT_DASHBOARD_PORT = 8265
DASHBOARD_ATTEMPTS = 3
PROBE_TIMEOUT_S = 5
JOIN_TIMEOUT_S = 30          # bad input must fail within 30 s
# HTTP/2 client preface + an empty SETTINGS frame: a gRPC server (Ray's GCS) answers with a SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def free_port(host: str = "127.0.0.1", preferred: int = 0) -> int:
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError(f"no free port on {host}")


def check_address(address: str) -> None:
    """One-line ValueError unless a Ray head (a gRPC server) answers at HOST:PORT. `auto` is left to Ray."""
    if address == "auto":
        return
    if address.startswith("ray://"):
        raise ValueError(f"--address {address}: Ray Client addresses are not supported; run the search on a node "
                         "of the cluster with --address HEAD_IP:6379")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address!r}: expected HOST:PORT of the Ray head (e.g. 10.0.0.5:6379)")
    try:
        conn = socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(f"--address {address}: no Ray cluster answers there ({reason}); start one with "
                         f"`ray start --head --port {port}` or fix the address") from None
    with conn:
        try:
            conn.settimeout(PROBE_TIMEOUT_S)
            conn.sendall(_H2_PREFACE)
            frame = conn.recv(9)
        except OSError:
            frame = b""
    if len(frame) < 9 or frame[3] != 0x04:
        raise ValueError(f"--address {address}: something listens there, but not a Ray head (no gRPC answer); "
                         "pass the GCS address `ray start --head` printed (HEAD_IP:6379)")


def _give_up(address: str) -> None:
    print(f"error: --address {address}: could not join the Ray cluster within {JOIN_TIMEOUT_S} s "
          "(wrong address, a firewall, or a different Ray version / auth token?)", file=sys.stderr, flush=True)
    os._exit(2)


def start_ray(address: str | None, *, worker_env: dict):
    """Join `address` or start a local cluster. Every Ray worker of the job is told which cluster is
    ours (RAY_ADDRESS / RAY_API_SERVER_ADDRESS): Ray Train's placement-group cleaner asks the State API
    whether its controller is alive, and with two clusters on one machine its auto-detection can ask
    the other one, hear "dead" and remove a live trial's GPUs. Returns the `ray` module."""
    import ray
    env = dict(worker_env)
    if address:
        check_address(address)
        env["RAY_ADDRESS"] = address
        watchdog = threading.Timer(JOIN_TIMEOUT_S, _give_up, args=(address,))
        watchdog.daemon = True
        watchdog.start()
        try:
            ctx = ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": env})
        except (ConnectionError, RuntimeError, ray.exceptions.RaySystemError) as err:
            raise ValueError(f"--address {address}: cannot join the Ray cluster ({_first_line(err)})") from None
        finally:
            watchdog.cancel()
        print(f"joined Ray cluster at {address} ({len(alive_nodes())} nodes)", flush=True)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local, loopback-only dashboard
        preferred = DEFAULT_DASHBOARD_PORT
        for attempt in range(DASHBOARD_ATTEMPTS):
            port = free_port(preferred=preferred)
            env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
            try:
                ctx = ray.init(num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
                               dashboard_port=port, log_to_driver=False, runtime_env={"env_vars": env})
                break
            except Exception as err:     # noqa: BLE001 - Ray raises a bare Exception for this one
                # another process took the free port between our check and the dashboard's bind (several
                # searches starting on one machine): start again on another port
                if "valid port for dashboard" not in str(err) or attempt == DASHBOARD_ATTEMPTS - 1:
                    raise
                ray.shutdown()
                preferred = 0
        from ._reaper import spawn
        spawn()                  # the local cluster's processes die with this driver, even a SIGKILLed one
    url = getattr(ctx, "dashboard_url", None)
    print(f"Ray dashboard: http://{url}" if url else "Ray dashboard: not available", flush=True)
    return ray


def alive_nodes() -> list[dict]:
    import ray
    return [n for n in ray.nodes() if n.get("Alive")]


def driver_node_ip() -> str:
    """The address other nodes reach this (the driver's) node at."""
    import ray
    return ray.util.get_node_ip_address()


def _first_line(err) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
