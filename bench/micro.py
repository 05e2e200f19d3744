"""The small measurements behind the README's notes on what made handydl faster.

    python -m bench.micro

1. a select (np.where) on a random sign pattern vs the branch-free max(x, a x);
2. float32 normal CDF: SciPy's erf vs handydl's fit of erfc;
   (1 and 2 with handydl.tune_malloc(), as in the benchmark)
3. silu forward + backward (NumPy path) with glibc's default allocator vs handydl.tune_malloc()
   (each in a fresh process: the setting is process-wide and cannot be undone);
4. an optimizer update y += a x of 10 and of 784 x 256 float32: the compiled
   pass (handydl._fast.fused.axpy) vs two NumPy passes, and Adam's step on the
   deep MLP's parameters: one compiled pass vs NumPy's eleven (needs numba);
5. forward + backward of each activation with a fused kernel, and of softmax
   cross-entropy on 4096 x 1000 logits and on the MLP's batches of 10 classes:
   the NumPy path vs the fused kernel,
   and the benchmark's MLP epoch with the kernels on and off (needs numba);
6. the optimizer's step where the training loop calls it and again at once,
   on one BLAS thread and on all (optimizer_in_step_vs_again), and a NumPy
   loop on one core alone and beside a core kept spinning (loop_beside_a_spinning_core).

What each piece buys in training is measured by ``python -m bench`` itself
(its "machinery" rows: the same workload with one piece switched off).
"""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from bench.worker import activation_data, timed

N = 1_000_000


def median_ms(fn, repeats=15):
    return float(np.median(timed(fn, repeats)[0])) * 1e3


def data():
    return activation_data(N)


def silu_step_ms(tuned):
    """silu's NumPy path, whose temporaries the allocator setting is about."""
    import handydl
    from handydl import ops
    from handydl._fast import fused
    if tuned:
        handydl.tune_malloc()
    x, g = data()

    def step():
        y, saved = ops.silu.forward(x)
        ops.silu.backward(saved, g)
    with fused.disabled():
        return median_ms(step)


def main():
    import handydl
    from scipy.special import erf

    from handydl.ops.activations import normal_cdf
    handydl.tune_malloc()                      # as the benchmark does (3. shows why)
    x, _ = data()
    mask = x > 0
    print(f"select np.where(x > 0, x, 0.01 x):  {median_ms(lambda: np.where(mask, x, x * 0.01)):6.2f} ms per 1M float32")
    print(f"branch-free np.maximum(x, 0.01 x):  {median_ms(lambda: np.maximum(x, x * 0.01)):6.2f} ms")
    print(f"normal CDF, SciPy erf:              {median_ms(lambda: 0.5 * (1 + erf(x * 0.7071067811865476))):6.2f} ms")
    print(f"normal CDF, handydl float32:        {median_ms(lambda: normal_cdf(x)):6.2f} ms")
    for tuned in (False, True):
        code = f"from bench.micro import silu_step_ms; print(silu_step_ms({tuned}))"
        ms = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        print(f"silu fwd+bwd, {'tune_malloc()' if tuned else 'default malloc'}:" + " " * (14 - 2 * tuned)
              + f"{ms:6.2f} ms")
    axpy_fused_vs_numpy()
    adam_fused_vs_numpy()
    fused_vs_numpy()
    optimizer_in_step_vs_again()
    loop_beside_a_spinning_core()


def axpy_fused_vs_numpy(calls=2000, sizes=(10, 784 * 256)):
    """The optimizers' y += a x per call: the compiled pass vs two NumPy passes."""
    from handydl._fast import fused
    from handydl.optim import optimizer
    if not fused.enabled():
        print("axpy: numba is not installed (pip install 'handydl[fast]')")
        return
    for n in sizes:
        x, y = np.ones(n, np.float32), np.zeros(n, np.float32)
        buf = np.empty_like(y)

        def update(x=x, y=y, buf=buf):
            for _ in range(calls):
                optimizer.axpy(-0.01, x, y, buf)
        update()                                   # compiles
        fast = median_ms(update, repeats=7) * 1e3 / calls
        with fused.disabled():
            plain = median_ms(update, repeats=7) * 1e3 / calls
        print(f"axpy of {n:>6} float32: compiled {fast:6.2f} us, NumPy {plain:6.2f} us")


def adam_fused_vs_numpy(sizes=(784, 1024, 1024, 10), steps=20):
    """Adam's step on the deep MLP's parameters (1.86M floats): one compiled pass
    per parameter vs NumPy's eleven."""
    from handydl import nn, optim
    from handydl._fast import fused
    if not fused.enabled():
        print("adam: numba is not installed (pip install 'handydl[fast]')")
        return
    layers = [nn.Linear(a, b, rng=k) for k, (a, b) in enumerate(zip(sizes, sizes[1:]))]
    params = [p for layer in layers for p in layer.parameters()]
    rng = np.random.default_rng(0)
    for p in params:
        p.grad = rng.standard_normal(p.data.shape).astype(np.float32)
    opt = optim.Adam(params, lr=1e-3)

    def run():
        for _ in range(steps):
            opt.step()
    run()                                          # compiles
    fast = median_ms(run, repeats=7) / steps
    with fused.disabled():
        plain = median_ms(run, repeats=7) / steps
    print(f"Adam step, {sum(p.data.size for p in params):,} float32 parameters: compiled {fast:5.2f} ms, "
          f"NumPy {plain:5.2f} ms")


def fused_vs_numpy():
    from handydl import ops
    from handydl._fast import fused
    if not fused.enabled():
        print("fused kernels: numba is not installed (pip install 'handydl[fast]')")
        return
    x, g = data()
    print("fwd+bwd per 1M float32     NumPy path    fused")
    compile_s = []
    for op in ops.REGISTRY.values():
        if not op._kernels:
            continue

        def step(op=op):
            y, saved = op.forward(x)
            op.backward(saved, g)
        start = time.perf_counter()
        step()                                   # the first fused call compiles the kernel
        compile_s.append(time.perf_counter() - start)
        with fused.disabled():
            plain = median_ms(step)
        print(f"  {op.name:<24}{plain:8.2f} ms {median_ms(step):8.2f} ms")
    from bench.worker import ce_data
    z, y = ce_data(4096, 1000)

    def ce_step():
        loss, saved = ops.cross_entropy.forward(z, y)
        ops.cross_entropy.backward(saved, 1.0)
    with fused.disabled():
        plain = median_ms(ce_step)
    print(f"  {'cross_entropy 4096x1000':<24}{plain:8.2f} ms {median_ms(ce_step):8.2f} ms")
    print("the MLP's loss step (CrossEntropyLoss forward + backward), 10 classes:")
    from handydl import nn
    for rows in (32, 128, 512):
        z, y = ce_data(rows, 10)
        loss_fn = nn.CrossEntropyLoss()

        def loss_step(z=z, y=y, loss_fn=loss_fn, calls=100):
            for _ in range(calls):
                loss_fn(z, y)
                loss_fn.backward()
        with fused.disabled():
            plain = median_ms(loss_step) * 10           # us per call
        print(f"  batch {rows:<18}{plain:8.1f} us {median_ms(loss_step) * 10:8.1f} us")
    print(f"first fused call of each activation (compiling): {min(compile_s):.2f} to {max(compile_s):.2f} s")
    mlp_fused_on_off()
    mlp_input_grad_on_off()


def mlp_fused_on_off(n=30000, batch=128, rounds=6):
    """The benchmark's MLP epoch (784-256-10 ReLU, SGD) with the kernels on and off,
    alternating in one process: whether the fused path changes the training step."""
    from bench.worker import handydl_training, mlp_data
    from handydl._fast import fused
    X, y = mlp_data(n)
    p = dict(sizes=[784, 256, 10], activation="relu", optimizer="sgd", batch=batch)
    *_, epoch = handydl_training(p, X, y)
    times = {True: [], False: []}
    for _ in range(rounds):
        for on in (True, False):
            if on:
                times[on] += timed(epoch, 1)[0]
            else:
                with fused.disabled():
                    times[on] += timed(epoch, 1)[0]
    print(f"MLP epoch, {n} samples, batch {batch}: kernels on {np.median(times[True]) * 1e3:6.1f} ms, "
          f"off {np.median(times[False]) * 1e3:6.1f} ms")


def mlp_input_grad_on_off(n=30000, rounds=6):
    """The benchmark's MLP epoch with and without the data's dL/dx (the first layer's
    gy W^T, a third of its products), alternating in one process, at three batch sizes."""
    from bench.worker import handydl_training, mlp_data
    X, y = mlp_data(n)
    for batch in (32, 128, 512):
        p = dict(sizes=[784, 256, 10], activation="relu", optimizer="sgd", batch=batch)
        epochs = {g: handydl_training(p, X, y, input_grad=g)[-1] for g in (True, False)}
        times = {True: [], False: []}
        for _ in range(rounds):
            for g in (True, False):
                times[g] += timed(epochs[g], 1)[0]
        with_dx, without = (np.median(times[g]) * 1e3 for g in (True, False))
        print(f"MLP epoch, {n} samples, batch {batch}: with dL/dx {with_dx:6.1f} ms, "
              f"without (input_grad=False) {without:6.1f} ms ({1 - without / with_dx:.0%} saved)")


def optimizer_in_step_vs_again(n=60000, batches=(32, 128, 512), epochs=3):
    """Why the optimizer's step takes longer in the training step than alone: in
    the benchmark's MLP epoch (784-256-10, SGD), each ``opt.step()`` timed where the
    loop calls it, right after the backward's products, and then a second
    ``opt.step()`` on the same arrays at once (their data now in this core's
    cache), with NumPy's BLAS on one thread and on all of them.  The second step
    changes the weights too; only the times are read."""
    import os

    from threadpoolctl import threadpool_limits

    import handydl
    from bench.worker import handydl_training, mlp_data
    handydl.tune_malloc()
    X, y = mlp_data(n)
    pc = time.perf_counter
    for batch in batches:
        p = dict(sizes=[784, 256, 10], activation="relu", optimizer="sgd", batch=batch)
        model, loss_fn, opt, loader, epoch = handydl_training(p, X, y)
        for threads in sorted({1, os.cpu_count() or 1}):
            with threadpool_limits(threads, user_api="blas"):
                epoch()                                   # compiled, warm
                first = again = 0.0
                for _ in range(epochs):
                    for xb, yb in loader:
                        loss_fn(model(xb), yb)
                        opt.zero_grad()
                        model.backward(loss_fn.backward(), input_grad=False)
                        t0 = pc()
                        opt.step()
                        t1 = pc()
                        opt.step()
                        again += pc() - t1
                        first += t1 - t0
            print(f"MLP batch {batch}, BLAS on {threads} thread(s): opt.step() in the step "
                  f"{first / epochs * 1e3:6.1f} ms an epoch, again at once {again / epochs * 1e3:6.1f} ms "
                  f"({first / again:.2f}x)")


def loop_beside_a_spinning_core(rounds=5, size=200_000, passes=2000):
    """Whether a thread spinning on the other core slows a one-thread NumPy loop
    on this one (it would if the two cores shared one physical core): the loop
    pinned to the first CPU, alone and while a second process spins on the
    second CPU, alternating; Linux with two CPUs or more."""
    import os
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("one CPU: nothing to measure")
        return None
    x, y = np.ones(size, np.float32), np.ones(size, np.float32)

    def loop():
        for _ in range(passes):
            np.add(y, x, out=y)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    times = {False: [], True: []}
    try:
        for _ in range(rounds):
            for spinning in (False, True):
                spinner = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpus[1]}}})\n"
                                            "while True: pass"]) if spinning else None
                try:
                    if spinner:
                        time.sleep(0.3)                 # started and spinning
                    times[spinning] += timed(loop, 1)[0]
                finally:
                    if spinner:
                        spinner.kill()
                        spinner.wait()
    finally:
        os.sched_setaffinity(0, before)
    alone, beside = (float(np.median(times[k])) * 1e3 for k in (False, True))
    print(f"{passes} passes y += x over {size} float32 on CPU {cpus[0]}: alone {alone:6.1f} ms, "
          f"with CPU {cpus[1]} spinning {beside:6.1f} ms ({beside / alone:.2f}x)")
    return alone, beside


def on_off(fn, rounds, switch):
    """Median ms of fn with switch(True) and switch(False), alternating in blocks."""
    times = {True: [], False: []}
    for _ in range(rounds):
        for on in (True, False):
            switch(on)
            times[on] += timed(fn, 5)[0]
    switch(True)
    return {on: float(np.median(t)) * 1e3 for on, t in times.items()}


if __name__ == "__main__":
    main()
