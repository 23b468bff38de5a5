"""A writer SIGKILLed mid-write leaves the old artefact, or none: never a half-written one."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The child slows its writer down right after the first bytes of the artefact are on disk, then waits
# to be killed. Both writers are the real ones (checkpoint save, GGUF export).
CHILD = r'''
import sys, time
flag, kind, out = sys.argv[1:4]

def stall():
    open(flag, "w").close()
    time.sleep(120)

if kind == "checkpoint":
    import compress, compress._io as io
    write = io._write_shard
    io._write_shard = lambda path, tensors: (write(path, tensors), stall())[0]
    model, tokenizer = compress.load_model("stories260k")
    compress.save_pruned(model, tokenizer, out, force=True)
else:
    import gguf, compress
    write = gguf.GGUFWriter.write_tensor_data
    gguf.GGUFWriter.write_tensor_data = lambda self, *a, **k: (write(self, *a, **k), stall())[0]
    compress.export_gguf("stories260k", out, force=True)
'''


def _kill_mid_write(kind: str, out: Path, tmp_path: Path) -> None:
    flag = tmp_path / "writing"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(flag), kind, str(out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the writer never started"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()


@pytest.mark.parametrize("kind, old", [("checkpoint", True), ("gguf", False)])
def test_kill_mid_write_leaves_old_artefact_or_none(kind, old, tmp_path):
    out = tmp_path / ("ckpt" if kind == "checkpoint" else "model.gguf")
    if old:
        out.mkdir()
        (out / "config.json").write_text('{"old": true}')
    _kill_mid_write(kind, out, tmp_path)
    if old:
        assert [p.name for p in out.iterdir()] == ["config.json"] and "old" in (out / "config.json").read_text()
    else:
        assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers, "the kill landed before the artefact was being written"   # the half-written temporary
    if kind == "checkpoint":                       # the next write of the same folder clears it
        import compress
        model, tokenizer = compress.load_model("stories260k")
        compress.save_pruned(model, tokenizer, out, force=True)
        assert (out / "model.safetensors").is_file()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]
