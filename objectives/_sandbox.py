"""Run untrusted programs (model-written HumanEval completions) isolated with bubblewrap.

A program under test is code a model under search wrote: it must not reach the network, the user's
files, the project tree or the rest of the machine. Each program runs inside `bwrap` (bubblewrap, the
distribution's sandbox tool) with:

- new network, pid, ipc and uts namespaces: no network at all (even 127.0.0.1 is a fresh loopback);
  the pid namespace's init dies at the timeout and the kernel kills every process the program made,
  `setsid` / double forks included;
- a filesystem of read-only /usr and the Python installation, a fresh /proc and /dev, and a private
  size-capped tmpfs /tmp (the working directory, the only writable place);
- rlimits set inside the sandbox before the program is read (no `preexec_fn`, which is unsafe with
  the thread pool that runs programs): address space, CPU seconds, file size (stdout/stderr go to a
  size-capped file, so printing 100 MB kills the program) and a process count. As root the program
  drops to `nobody` (root ignores the process limit); as a user it runs in its own user namespace.

Where bubblewrap is missing or cannot create namespaces, programs are refused (`SandboxUnavailable`,
one line) unless the caller passes `unsafe=True` (the CLI's `--unsafe-exec`): then they run in a plain
subprocess with the same rlimits, in their own session, killed by process group at the timeout.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROGRAM_TIMEOUT = 3.0           # seconds per HumanEval program, as OpenCompass's evaluator
PROGRAM_MEMORY = 1 << 30        # address-space limit (bytes)
PROGRAM_PROCESSES = 16          # process-count limit (the interpreter included)
PROGRAM_OUTPUT = 1 << 20        # largest file the program may write, its stdout/stderr included (bytes)
SCRATCH_BYTES = 64 << 20        # size of the private /tmp
PROGRAM_WORKERS = 2
NOBODY = 65534                  # uid/gid a program runs as when we are root
INSTALL_HINT = "install bubblewrap (apt-get install bubblewrap)"

# Runs inside the sandbox: limits first, then drop root, then read and run the program from stdin.
_BOOT = """\
import os, resource, sys
for name, value in {limits!r}:
    resource.setrlimit(getattr(resource, name), (value, value))
drop = {drop!r}
if drop is not None:
    os.setgroups([]); os.setgid(drop); os.setuid(drop)
source = sys.stdin.buffer.read()
sys.stdin.close()
exec(compile(source, "<program>", "exec"), {{"__name__": "__main__", "__builtins__": __builtins__}})
"""


class SandboxUnavailable(ValueError):
    """Model-written code cannot be isolated here and the user did not accept running it unisolated."""


def _interpreter() -> str:
    """The base interpreter (not a venv's): with -I -S it needs only the standard library."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _limits(timeout: float, memory: int, processes: int | None) -> list:
    limits = [("RLIMIT_AS", memory), ("RLIMIT_CPU", int(timeout) + 1), ("RLIMIT_FSIZE", PROGRAM_OUTPUT),
              ("RLIMIT_CORE", 0)]
    return limits + [("RLIMIT_NPROC", processes)] if processes else limits


def _system_mounts() -> list[str]:
    """/usr read-only; /bin, /lib, ... as the same symlinks or read-only binds as on the host."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        path = Path(name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            args += ["--ro-bind", name, name]
    return args


def _python_mounts(python: str) -> list[str]:
    """The interpreter's installation when it lives outside /usr (pyenv, conda), read-only. Parent
    folders are created world-traversable: bwrap would copy /root's 0700 and lock `nobody` out."""
    prefix = Path(sys.base_prefix).resolve()
    args = []
    for root in {prefix, Path(python).parent.resolve()}:
        if root == Path("/usr") or Path("/usr") in root.parents:
            continue
        for parent in reversed(root.parents[:-1]):      # /root, /root/.pyenv, ... (not "/")
            args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", str(root), str(root)]
    return args


@functools.lru_cache(maxsize=1)
def _bwrap_options() -> frozenset:
    """Options this bwrap knows (--size and --disable-userns are 0.8+; Ubuntu 22.04 ships 0.6)."""
    try:
        text = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(word for word in text.split() if word.startswith("--"))


def _bwrap_command(python: str, boot: str) -> list[str]:
    root, known = os.geteuid() == 0, _bwrap_options()
    # As root bwrap runs privileged (no user namespace) and keeps only what the boot code needs to
    # drop to nobody; as a user it needs an unprivileged user namespace.
    namespaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    identity = ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if root else \
        ["--unshare-user"] + (["--disable-userns"] if "--disable-userns" in known else [])
    scratch = (["--size", str(SCRATCH_BYTES)] if "--size" in known else []) + ["--tmpfs", "/tmp"]
    return ["bwrap", *namespaces, *identity, "--die-with-parent", "--new-session", *_system_mounts(),
            *_python_mounts(python), "--proc", "/proc", "--dev", "/dev", "--perms", "1777", *scratch,
            "--chdir", "/tmp", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            "--hostname", "sandbox", python, "-I", "-S", "-c", boot]


def _run(program: str, *, timeout: float, memory: int, isolated: bool) -> tuple[int | None, bytes]:
    """(exit status or None at the timeout, the first bytes of stdout+stderr)."""
    python = _interpreter()
    drop = NOBODY if isolated and os.geteuid() == 0 else None
    boot = _BOOT.format(limits=_limits(timeout, memory, PROGRAM_PROCESSES if isolated else None), drop=drop)
    info_r = info_w = None
    with tempfile.TemporaryDirectory(prefix="edgeprune-program-") as scratch, \
            tempfile.TemporaryFile(dir=scratch) as output:
        if isolated:
            info_r, info_w = os.pipe()
            command = _bwrap_command(python, boot)
            command[1:1] = ["--info-fd", str(info_w)]
            kwargs = {"pass_fds": (info_w,), "cwd": "/"}
        else:
            command = [python, "-I", "-S", "-c", boot]
            kwargs = {"cwd": scratch, "env": {"PATH": os.environ.get("PATH", ""), "HOME": scratch}}
        try:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=output, stderr=output,
                                    start_new_session=True, **kwargs)
        finally:
            if info_w is not None:
                os.close(info_w)
        init = _sandbox_init(info_r) if info_r is not None else None
        try:
            proc.communicate(program.encode("utf-8"), timeout=timeout)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            status = None
        finally:
            _end(proc, init)
            with contextlib.suppress(OSError):
                proc.stdin.close()
        output.seek(0)
        return status, output.read(4096)


def _end(proc: subprocess.Popen, init: int | None) -> None:
    """Return only once the program and everything it started are gone. In the sandbox that is when
    the pid namespace's init (a pidfd, `init`) has exited: the kernel kills and reaps every process
    of the namespace first. bwrap itself may exit before that, as soon as the program's status is
    known, so waiting for bwrap is not enough. At the timeout the init is killed."""
    import select
    try:
        if init is not None:
            if proc.poll() is None:
                signal.pidfd_send_signal(init, signal.SIGKILL)
            select.select([init], [], [], 30.0)          # readable once the init has exited
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if init is not None:
            os.close(init)


def _sandbox_init(info_r: int) -> int | None:
    """A pidfd of the sandbox's pid-namespace init (host pid from bwrap's --info-fd, written before the
    program starts), checked to be a namespace init; None if bwrap wrote none (it failed to start)."""
    import json
    import select
    data = b""
    try:
        while select.select([info_r], [], [], 30.0)[0]:
            chunk = os.read(info_r, 4096)
            if not chunk:
                break
            data += chunk
            if data.rstrip().endswith(b"}"):
                break
        pid = int(json.loads(data)["child-pid"])
        init = os.pidfd_open(pid)
    except (ValueError, KeyError, OSError):
        return None
    finally:
        os.close(info_r)
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
    except (OSError, StopIteration):
        nspid = []
    if nspid[-1:] != ["1"]:                               # not (or no longer) the namespace's init
        os.close(init)
        return None
    return init


@functools.lru_cache(maxsize=1)
def problem() -> str | None:
    """Why programs cannot be isolated here (None when they can). Probed once per process."""
    if shutil.which("bwrap") is None:
        return f"bubblewrap (bwrap) is not installed; {INSTALL_HINT}"
    status, output = _run("import sys; sys.exit(7)", timeout=30.0, memory=PROGRAM_MEMORY, isolated=True)
    if status != 7:
        detail = output.decode("utf-8", "replace").strip().splitlines()
        return f"bwrap cannot create its sandbox here ({detail[0] if detail else f'exit status {status}'})"
    return None


def require_isolation(unsafe: bool = False) -> bool:
    """True when programs will run isolated. Without isolation: raise unless `unsafe` (then warn once)."""
    reason = problem()
    if reason is None:
        return True
    if not unsafe:
        raise SandboxUnavailable(f"HumanEval runs model-written code and needs a sandbox: {reason}; or pass "
                                 "--unsafe-exec to run it without isolation, or leave humaneval out of the tasks")
    _warn_unsafe(reason)
    return False


@functools.lru_cache(maxsize=1)
def _warn_unsafe(reason: str) -> None:
    print(f"warning: HumanEval programs run WITHOUT isolation (--unsafe-exec): {reason}", file=sys.stderr)


def run_program(program: str, *, timeout: float = PROGRAM_TIMEOUT, memory: int = PROGRAM_MEMORY,
                unsafe: bool = False) -> bool:
    """True when `program` exits 0 within `timeout` seconds, run isolated (see the module docstring)."""
    isolated = require_isolation(unsafe)
    status, _ = _run(program, timeout=timeout, memory=memory, isolated=isolated)
    return status == 0


def run_programs(programs: list[str], *, timeout: float = PROGRAM_TIMEOUT, workers: int = PROGRAM_WORKERS,
                 unsafe: bool = False) -> list[bool]:
    if not programs:
        return []
    require_isolation(unsafe)                   # refuse (or warn) once, before any program starts
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: run_program(p, timeout=timeout, unsafe=unsafe), programs))
