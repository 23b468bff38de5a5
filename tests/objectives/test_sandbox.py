"""Hostile model-written programs are contained: each fails, and the files, the project tree and the
machine (no stray process, no open connection) are intact afterwards."""
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from objectives import _sandbox
from objectives._sandbox import SandboxUnavailable, run_program, run_programs

REPO = Path(__file__).resolve().parents[2]
isolated = pytest.mark.skipif(_sandbox.problem() is not None, reason=f"no sandbox here: {_sandbox.problem()}")


def _survivors(marker: str) -> list[int]:
    """Processes whose command line carries `marker` (the test planted it in every child it spawns)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _child(marker: str, body: str) -> str:
    """Source that starts `python -c body` in a new session; `marker` ends up in its command line."""
    return (f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {body + '  # ' + marker!r}], "
            "start_new_session=True)\n")


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary.txt"
    path.write_text("precious")
    return path


def _project_snapshot():
    return sorted((p.name, p.stat().st_mtime_ns) for p in REPO.iterdir())


@isolated
def test_a_normal_program_passes_and_a_failing_one_fails():
    assert run_programs(["assert sum([1, 2]) == 3\n", "assert 1 == 2\n"], timeout=5.0) == [True, False]
    assert not run_program("import os\nos._exit(3)\n")


@isolated
@pytest.mark.parametrize("case", ["read_canary", "delete_canary", "write_project", "read_etc", "connect",
                                  "memory", "print_100mb", "fill_tmp",
                                  "100_processes"])
def test_hostile_program_is_contained(case, canary, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    programs = {   # each exits 0 only if its attack worked
        "read_canary": f"assert open({str(canary)!r}).read() == 'precious'",
        "delete_canary": f"import os\nos.remove({str(canary)!r})",
        "write_project": f"open({str(REPO / 'HACKED')!r}, 'w').write('x')",
        "read_etc": "assert 'root' in open('/etc/passwd').read()",
        "connect": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')",
        "memory": "x = bytearray(10 * 1024**3)\nx[-1] = 1",
        "print_100mb": "import sys\nsys.stdout.write('x' * 100_000_000)\nsys.stdout.flush()",
        "fill_tmp": "for i in range(200):\n    open(f'/tmp/f{i}', 'wb').write(b'x' * 1_000_000)",
        "100_processes": "import os, time\nfor _ in range(100):\n    if os.fork() == 0:\n        time.sleep(3)\n"
                         "        os._exit(0)",
    }
    before = _project_snapshot()
    start = time.perf_counter()
    assert not run_program(programs[case], timeout=5.0)
    assert time.perf_counter() - start < 4.5          # failed on its own, not by the timeout
    assert canary.read_text() == "precious"
    assert not (REPO / "HACKED").exists() and _project_snapshot() == before
    with pytest.raises(socket.timeout):
        listener.accept()
    listener.close()


@isolated
def test_fork_bomb_is_capped_and_leaves_nothing_behind():
    marker = f"forkbomb-{uuid.uuid4().hex}"
    bomb = f"import os\\nwhile True: os.fork()  # {marker}"
    program = f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', '{bomb}'])"
    start = time.perf_counter()
    assert not run_program(program, timeout=2.0)
    assert time.perf_counter() - start < 10
    assert _survivors(marker) == []
    assert run_program("pass")                         # the machine still runs programs


@isolated
def test_setsid_and_sleep_past_the_timeout_kills_the_whole_tree():
    marker = f"daemon-{uuid.uuid4().hex}"
    program = _child(marker, "import os, time; time.sleep(60)") + "import os, time\nos.setsid()\ntime.sleep(60)\n"
    start = time.perf_counter()
    assert not run_program(program, timeout=1.0)
    assert time.perf_counter() - start < 5
    assert _survivors(marker) == []
    # a program that passes but leaves a daemon behind: the daemon dies with the sandbox
    marker = f"daemon-{uuid.uuid4().hex}"
    assert run_program(_child(marker, "import time; time.sleep(60)") + "import time; time.sleep(0.3)\n")
    assert _survivors(marker) == []


def test_without_a_sandbox_humaneval_is_refused_unless_unsafe(monkeypatch, capsys):
    monkeypatch.setattr(_sandbox, "problem", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(SandboxUnavailable, match="--unsafe-exec"):
        run_programs(["pass"])
    assert run_programs(["pass", "assert False"], unsafe=True) == [True, False]
    assert "WITHOUT isolation" in capsys.readouterr().err
    from search._cli import main
    assert main(["evaluate", "--tasks", "humaneval", "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: HumanEval runs model-written code") and "--unsafe-exec" in err[0]


def test_no_preexec_fn_anywhere():
    """preexec_fn is unsafe in a threaded program (programs run from a thread pool)."""
    offenders = subprocess.run(["grep", "-rln", "preexec_fn=", "--include=*.py", "objectives", "search", "compress",
                                "cluster"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert offenders == []
