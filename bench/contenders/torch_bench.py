#!/usr/bin/env python3
"""PyTorch contender for the kd-kernels benchmark (optional; CUDA machines with torch).

What a Python KD trainer runs today: the same losses written with torch ops, forward +
backward (autograd), eager and under torch.compile, and the top-k extraction of an
offline teacher store (torch.topk + logsumexp, eager, forward only), at the shapes and
dtypes the benchmark runs. bench/run.ts calls this on CUDA runs when python3 has CUDA-enabled torch, and on CPU
runs with `--device cpu --no-compile --threads <kd threads>` for forward KL and JSD at
f32 (the "default call vs PyTorch CPU" figure) and for topk and its input orderings
(topk-ascending, topk-descending, topk-zipf, topk-equal) when a python3 with torch is
found; it can also be run alone:

    python3 bench/contenders/torch_bench.py --ops forward-kl,jsd --shapes 512x32000 --dtypes f32,bf16

Data: drawn on the device from the same distribution as bench/harness.ts
randomLogitPair (teacher 2·N(0,1) with 1-3 peaks raised by 8-14 per row; student =
teacher + N(0,1) with its peaks off by ±30%), so the losses are of the same size; not the
same bits (Node and torch do not share a generator).

Semantics as the library's defaults: temperature 1, reduction 'batchmean' (sum / N),
the gradient w.r.t. the student logits. bf16 inputs are upcast inside log_softmax
(dtype=torch.float32), as a careful PyTorch user does; the gradient comes back in bf16.

What a Liger-Kernel user runs is Liger's Triton kernels on top of torch's log_softmax
(LigerKLDIVLoss, LigerJSD take log-probs); the eager losses above are the torch
references Liger's own tests compare them with. When liger_kernel is importable (it is
not in the GPU image: carry its wheel, see scripts/gpu_check.sh) the "liger" contender
times log_softmax + LigerKLDIVLoss / LigerJSD, forward + backward.

KD_TORCH_DEADLINE_S (environment): stop starting new measurements after that many
seconds (a note says what was left out), so a caller with a time budget gets results.

Output: one JSON line per measurement, e.g.
  {"contender": "torch-eager", "op": "forward-kl", "N": 512, "V": 32000, "dtype": "f32", "ms": [..]}
and the device's own bandwidth on the same bytes ("torch-triad": c = a + b), plus
{"note": ...} lines for anything skipped. Times are CUDA-event times of one
forward+backward step, after warm-up (torch.compile's compilation is excluded); on the
CPU, wall-clock (perf_counter) times of the same step.
"""
import argparse
import json
import math
import sys
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", default="forward-kl,reverse-kl,jsd")
    ap.add_argument("--shapes", default="512x32000")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="CPU: torch.set_num_threads (0: torch's default)")
    args = ap.parse_args()

    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # noqa: BLE001
        emit({"note": f"torch not importable: {e}"})
        return 3
    dev = torch.device(args.device)
    if dev.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    if dev.type == "cuda" and not torch.cuda.is_available():
        emit({"note": "torch has no CUDA device"})
        return 3

    BETA = 0.5

    def fkl(s, t):
        lq = F.log_softmax(s, dim=-1, dtype=torch.float32)
        lp = F.log_softmax(t, dim=-1, dtype=torch.float32)
        return F.kl_div(lq, lp, reduction="batchmean", log_target=True)

    def rkl(s, t):
        lq = F.log_softmax(s, dim=-1, dtype=torch.float32)
        lp = F.log_softmax(t, dim=-1, dtype=torch.float32)
        return F.kl_div(lp, lq, reduction="batchmean", log_target=True)

    def jsd(s, t):
        # TRL generalized_jsd_loss, beta = 0.5
        lq = F.log_softmax(s, dim=-1, dtype=torch.float32)
        lp = F.log_softmax(t, dim=-1, dtype=torch.float32)
        lm = torch.logsumexp(torch.stack([lq + math.log(1 - BETA), lp + math.log(BETA)]), dim=0)
        kl_t = F.kl_div(lm, lp, reduction="none", log_target=True)
        kl_s = F.kl_div(lm, lq, reduction="none", log_target=True)
        return (BETA * kl_t + (1 - BETA) * kl_s).sum() / s.shape[0]

    losses = {"forward-kl": fkl, "reverse-kl": rkl, "jsd": jsd}

    # Liger-Kernel (optional): its kernels take log-probs; the softmax stays torch's.
    liger = {}
    try:
        from liger_kernel.transformers import LigerJSD, LigerKLDIVLoss  # type: ignore

        liger_kl = LigerKLDIVLoss(reduction="batchmean", log_target=True)
        liger_jsd = LigerJSD(beta=BETA)

        def liger_fkl(s, t):
            lq = F.log_softmax(s, dim=-1, dtype=torch.float32)
            lp = F.log_softmax(t, dim=-1, dtype=torch.float32)
            return liger_kl(lq, lp)

        def liger_rkl(s, t):
            lq = F.log_softmax(s, dim=-1, dtype=torch.float32)
            lp = F.log_softmax(t, dim=-1, dtype=torch.float32)
            return liger_kl(lp, lq)

        def liger_jsd_loss(s, t):
            # LigerJSD(log_q = student, log_p = teacher): beta weights the teacher side, as TRL
            lq = F.log_softmax(s, dim=-1, dtype=torch.float32)
            lp = F.log_softmax(t, dim=-1, dtype=torch.float32)
            return liger_jsd(lq, lp)

        liger = {"forward-kl": liger_fkl, "reverse-kl": liger_rkl, "jsd": liger_jsd_loss}
    except Exception as e:  # noqa: BLE001
        emit({"note": f"liger: not measured (liger_kernel not importable: {str(e).splitlines()[0] if str(e) else type(e).__name__})"})

    import os

    deadline = float(os.environ.get("KD_TORCH_DEADLINE_S", "0") or 0)
    t_start = time.monotonic()

    def out_of_time(what):
        if deadline > 0 and time.monotonic() - t_start > deadline:
            emit({"note": f"{what}: skipped, KD_TORCH_DEADLINE_S={deadline:g} s spent"})
            return True
        return False

    TOPK_K = 64  # bench/topk.bench.ts TOPK_K

    def topk(t):
        # What a Python pipeline runs to store a teacher's top-k: log-probs of the top k
        # (torch.topk, sorted) and the log of the mass outside them (no log(1 - x)
        # cancellation: expm1). Forward only, as the library's topk.
        x = t.float()
        lse = torch.logsumexp(x, dim=-1, keepdim=True)
        v, i = torch.topk(x, min(TOPK_K, x.shape[-1]), dim=-1, largest=True, sorted=True)
        lv = v - lse
        tail = torch.log(-torch.expm1(torch.logsumexp(lv, dim=-1)))
        return lv, i, tail
    def ordered(op, t):
        """topk's input for an ordering case (bench/topk.bench.ts orderedLogits): 'topk' is
        the i.i.d. teacher itself; ascending / descending sort its values along the
        vocabulary; zipf is -1.1 log(rank) + N(0, 0.5^2); equal is all 0.75."""
        kind = op[len("topk-"):] if op.startswith("topk-") else "iid"
        if kind == "iid":
            return t
        x = t.float()
        if kind in ("ascending", "descending"):
            x = torch.sort(x, dim=-1, descending=kind == "descending").values
        elif kind == "zipf":
            rank = torch.arange(1, x.shape[-1] + 1, device=dev, dtype=torch.float32)
            x = -1.1 * torch.log(rank) + 0.5 * torch.randn(x.shape, device=dev, generator=gen)
        elif kind == "equal":
            x = torch.full_like(x, 0.75)
        else:
            raise ValueError(f"unknown topk ordering {kind}")
        return x.to(t.dtype)

    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16}
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)

    def data(N, V, dt):
        t = 2 * torch.randn(N, V, device=dev, generator=gen)
        s = t + torch.randn(N, V, device=dev, generator=gen)
        ids = torch.randint(0, V, (N, 3), device=dev, generator=gen)
        count = torch.randint(1, 4, (N, 1), device=dev, generator=gen)
        live = (torch.arange(3, device=dev).unsqueeze(0) < count).float()
        h = (8 + 6 * torch.rand(N, 3, device=dev, generator=gen)) * live
        t.scatter_add_(1, ids, h)
        s.scatter_add_(1, ids, h * (0.7 + 0.6 * torch.rand(N, 3, device=dev, generator=gen)))
        return s.to(dt), t.to(dt)

    budget_s = 0.25 if args.quick else 0.6
    min_iters = 5 if args.quick else 10

    def timed(step):
        """CUDA-event ms of step() after warm-up; until the budget and min_iters are met."""
        cuda = dev.type == "cuda"
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
        out, spent = [], 0.0
        while len(out) < min_iters or spent < budget_s * 1000:
            if cuda:
                a = torch.cuda.Event(enable_timing=True)
                b = torch.cuda.Event(enable_timing=True)
                a.record()
                step()
                b.record()
                b.synchronize()
                ms = a.elapsed_time(b)
            else:
                t0 = time.perf_counter()
                step()
                ms = (time.perf_counter() - t0) * 1000
            out.append(ms)
            spent += ms
            if len(out) >= 1000:
                break
        return out

    for shape in args.shapes.split(","):
        N, V = (int(x) for x in shape.lower().split("x"))
        for dname in args.dtypes.split(","):
            dt = dtypes[dname]
            try:
                s0, t = data(N, V, dt)
            except RuntimeError as e:  # out of memory
                emit({"note": f"{shape} {dname}: skipped: {str(e).splitlines()[0]}"})
                continue
            # The device's own bandwidth on the same bytes: c = a + b over N·V elements.
            c = torch.empty_like(s0)
            emit({"contender": "torch-triad", "op": "triad", "N": N, "V": V, "dtype": dname,
                  "ms": timed(lambda: torch.add(s0, t, out=c))})
            del c
            for op in args.ops.split(","):
                if out_of_time(f"{op} {shape} {dname}"):
                    continue
                if op == "topk" or op.startswith("topk-"):
                    try:
                        x = ordered(op, t)
                        ms = timed(lambda: topk(x))
                        with torch.no_grad():
                            value = float(topk(x)[2].sum())
                        emit({"contender": "torch-eager", "op": op, "N": N, "V": V, "dtype": dname, "ms": ms, "loss": value})
                        # torch.topk alone (values and ids, no log-probs, no tail log-mass): the
                        # stricter contender, a timing only (its output is not the library's).
                        alone = timed(lambda: torch.topk(x, min(TOPK_K, V), dim=-1, largest=True, sorted=True))
                        emit({"contender": "torch-topk", "op": op, "N": N, "V": V, "dtype": dname, "ms": alone})
                        del x
                    except Exception as e:  # noqa: BLE001
                        emit({"note": f"torch-eager {op} {shape} {dname}: failed: {str(e).splitlines()[0]}"})
                    continue
                fn = losses.get(op)
                if fn is None:
                    emit({"note": f"{op}: no torch contender"})
                    continue
                variants = [("torch-eager", fn)]
                if op in liger:
                    variants.append(("liger", liger[op]))
                if not args.no_compile:
                    try:
                        variants.append(("torch-compile", torch.compile(fn)))
                    except Exception as e:  # noqa: BLE001
                        emit({"note": f"torch.compile unavailable: {e}"})
                for name, f in variants:
                    s = s0.clone().requires_grad_(True)

                    def step(f=f, s=s):
                        s.grad = None
                        loss = f(s, t)
                        loss.backward()

                    try:
                        ms = timed(step)
                        with torch.no_grad():
                            value = float(f(s, t))
                        emit({"contender": name, "op": op, "N": N, "V": V, "dtype": dname, "ms": ms, "loss": value})
                    except Exception as e:  # noqa: BLE001
                        emit({"note": f"{name} {op} {shape} {dname}: failed: {str(e).splitlines()[0]}"})
                    del s
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
            del s0, t
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
