"""examples/ddp_step.py: a handydl model converted with to_torch runs one
DistributedDataParallel step on the CPU in two processes (gloo, localhost) and
gets the loss and the updated weights of one process, and of handydl's own step."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _sockets_refused():
    """Why gloo cannot rendezvous here (no localhost TCP), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            with socket.create_connection(s.getsockname(), timeout=5):
                pass
    except OSError as e:
        return f"this sandbox refuses localhost TCP sockets ({e}), which gloo needs to rendezvous"
    return None


def test_two_process_ddp_step_equals_one_process():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no distributed gloo backend")
    reason = _sockets_refused()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "ddp_step.py")], capture_output=True,
                       text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    losses = dict(re.findall(r"^\s*(.+?): loss ([0-9.]+)", r.stdout, re.M))
    assert set(losses) == {"handydl", "torch, 1 process", "torch DDP, 2 processes"}, r.stdout
    assert len(set(losses.values())) == 1, r.stdout                  # equal to 7 digits
    diffs = [float(d) for d in re.findall(r"within ([0-9.e+-]+) of handydl's", r.stdout)]
    assert len(diffs) == 3 and max(diffs) < 1e-6, r.stdout
    assert r.stdout.strip().endswith("the same step")
