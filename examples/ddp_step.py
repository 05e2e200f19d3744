"""From handydl to PyTorch's DistributedDataParallel: one data-parallel training step
of a handydl-trained model, on the CPU, in two processes, with the same result as
one process.

    python examples/ddp_step.py            # needs torch; prints the three losses and exits 0 when they agree

1. An MLP is trained for a few epochs in handydl on the embedded digits and saved
   as a safetensors checkpoint.
2. One SGD step on a batch of 64, three ways, from that checkpoint:
   - handydl itself (its hand-written backward, handydl.optim.SGD);
   - PyTorch in one process (handydl.interop.to_torch, autograd, torch.optim.SGD);
   - PyTorch DistributedDataParallel in two processes (gloo backend, localhost,
     torch.multiprocessing.spawn), each rank on its half of the batch: DDP averages
     the two ranks' gradients, which, for a mean loss over equal halves, is the
     gradient of the whole batch.
3. The losses (the ranks' losses averaged) and the updated weights are compared.

The model has no BatchNorm and no Dropout: batch statistics over half a batch, and
random masks, would differ between one process and two by design (torch's
SyncBatchNorm is the distributed answer to the first).
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from a checkout

LR, BATCH, WORLD = 0.1, 64, 2


def trained_checkpoint(path):
    """A handydl MLP trained for 3 epochs on the digits, saved at ``path`` (safetensors)."""
    from handydl import checkpoint, data, nn, optim, train
    d = data.digits()
    model = nn.Sequential(nn.Standardize.fit(d.X_train), nn.MLP([d.n_features, 64, d.n_outputs], rng=0))
    train.fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=3e-3),
              data.DataLoader(d.X_train, d.y_train, 32, shuffle=True, seed=0), 3, log=None)
    checkpoint.save(model, path)
    return d.X_test[:BATCH].astype(np.float32), d.y_test[:BATCH].astype(np.int64)


def handydl_step(path, x, y):
    """The step in handydl: loss, and the updated state (torch's names and layouts)."""
    from handydl import checkpoint, nn, optim
    from handydl.interop import to_torch
    model = checkpoint.load(path).train()
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=LR)
    model.zero_grad()
    loss = float(loss_fn(model(x), y))
    model.backward(loss_fn.backward(), input_grad=False)
    opt.step()
    return loss, {k: v.detach().numpy().copy() for k, v in to_torch(model).state_dict().items()}


def torch_step(path, x, y):
    """The step in PyTorch, one process."""
    import torch
    from handydl import checkpoint
    from handydl.interop import to_torch
    model = to_torch(checkpoint.load(path).train())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    opt.step()
    return float(loss.detach()), {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _rank(rank, port, path, x, y, out):
    """One DDP process: its half of the batch; rank 0 writes the averaged loss and the weights."""
    import torch
    import torch.distributed as dist
    from handydl import checkpoint
    from handydl.interop import to_torch
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = torch.nn.parallel.DistributedDataParallel(to_torch(checkpoint.load(path).train()))
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        half = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[half])), torch.from_numpy(y[half]))
        loss.backward()                         # DDP all-reduces (averages) the gradients here
        opt.step()
        total = loss.detach().clone()
        dist.all_reduce(total)                  # the whole batch's mean loss: the mean of the halves'
        if rank == 0:
            state = {k: v.detach().numpy() for k, v in model.module.state_dict().items()}
            np.savez(out, loss=total.numpy() / WORLD, **{f"state/{k}": v for k, v in state.items()})
    finally:
        dist.destroy_process_group()


def ddp_step(path, x, y):
    """The step under DistributedDataParallel, two processes on localhost."""
    import torch.multiprocessing as mp
    out = Path(path).with_name("ddp.npz")
    mp.spawn(_rank, args=(free_port(), str(path), x, y, str(out)), nprocs=WORLD, join=True)
    with np.load(out, allow_pickle=False) as z:
        return float(z["loss"]), {k[len("state/"):]: z[k] for k in z.files if k.startswith("state/")}


def free_port():
    """A free TCP port on localhost (OSError where the sandbox allows no sockets)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        x, y = trained_checkpoint(path)
        results = {"handydl": handydl_step(path, x, y), "torch, 1 process": torch_step(path, x, y),
                   f"torch DDP, {WORLD} processes": ddp_step(path, x, y)}
    ref_loss, ref_state = results["handydl"]
    worst = 0.0
    for name, (loss, state) in results.items():
        diff = max(float(np.max(np.abs(state[k] - v))) for k, v in ref_state.items())
        worst = max(worst, diff, abs(loss - ref_loss))
        print(f"{name:>22}: loss {loss:.7f}, updated weights within {diff:.1e} of handydl's")
    ok = worst < 1e-5
    print("the same step" if ok else f"MISMATCH: {worst:.2e}")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
