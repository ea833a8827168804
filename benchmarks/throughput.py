"""Tokens/s of one training step: the harness's model against a textbook reference GPT.

One step = forward, loss, backward, gradient clipping, optimizer step. The harness side is
harness.core.model.GPT + harness.core.train.make_optimizer, stepped exactly as harness/core/train.py steps it
(loss read back, clip_grad_norm_ with foreach and the norm read back); the reference side is
benchmarks/reference_gpt.py with a plain torch.optim.AdamW. Same shapes, same batch, same
optimizer settings (lr 1e-3, betas (0.9, 0.99), weight decay 0.1, clip 1.0).

For each shape, the four variants (harness / reference x dropout 0 / 0.2) run round-robin in
one process; each figure is a median over rounds, each ratio a median of per-round ratios.
Also measured: the machine's fp32 and bf16 matmul peak, and each configuration's model FLOPs
utilisation (MFU: (6N + 12 L C T) FLOPs per token, nanoGPT's estimate, against the fp32 peak;
against the bf16 peak with --device cuda and for the +bf16 rows).

    python benchmarks/throughput.py                  # CPU, 1 thread, both shapes (~4 min)
    python benchmarks/throughput.py --threads 2
    python benchmarks/throughput.py --extra foreach-adamw,compile   # other harness settings
    python benchmarks/throughput.py --extra bf16     # bf16 autocast on a CPU (AVX-512 BF16 / AMX)
    python benchmarks/throughput.py --device cuda    # bf16 autocast on a GPU, three shapes
    python benchmarks/throughput.py --quick          # smoke run (seconds)

Prints a table; writes benchmarks/out/throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from pathlib import Path

import torch

from _common import OUT, interleaved, machine, median, paired_ratio, table, write_json
from reference_gpt import ReferenceGPT

from harness.core.config import build_config
from harness.core.model import GPT, decay_groups
from harness.core.train import make_optimizer

VOCAB = 65  # Tiny Shakespeare's character set
SHAPES = {
    # name: (n_layer, n_head, n_embd, block_size, batch_size)
    "baby-4x128": (4, 4, 128, 64, 12),  # the common "CPU baby GPT" recipe
    "6x192": (6, 6, 192, 128, 32),
    "gpu-6x384": (6, 6, 384, 256, 64),  # nanoGPT's shakespeare-char GPU recipe; default on cuda only
}
CPU_SHAPES = ("baby-4x128", "6x192")
DROPOUTS = (0.0, 0.2)
EXTRAS = ("foreach-adamw", "compile", "bf16")


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float) -> float:
    """Best GFLOP/s of a square matmul over a few sizes (the machine's practical peak)."""
    best = 0.0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sizes = (1024, 2048, 4096, 8192) if device.type == "cuda" else (256, 512, 1024)
    for i, n in enumerate(sizes):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        start = time.perf_counter()
        a @ b  # also the warm-up (library initialisation on the first call)
        sync()
        if i > 0 and time.perf_counter() - start > seconds / len(sizes):
            break  # an emulated dtype (bf16 without hardware support) would take minutes
        reps, start = 0, time.perf_counter()
        while True:
            a @ b
            reps += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed > seconds / len(sizes):
                break
        best = max(best, 2 * n ** 3 * reps / elapsed / 1e9)
    return best


def flops_per_token(model: torch.nn.Module, n_layer: int, n_embd: int, block: int) -> float:
    """nanoGPT's estimate: 6N (N without the position table) + 12 * L * C * T for attention."""
    n = sum(p.numel() for p in model.parameters())
    pos = model.pos_emb.weight.numel() if hasattr(model, "pos_emb") else model.wpe.weight.numel()
    return 6 * (n - pos) + 12 * n_layer * n_embd * block


def harness_step(shape: tuple, dropout: float, device: torch.device, autocast, extra: str | None = None):
    n_layer, n_head, n_embd, block, batch = shape
    cfg = build_config({}, {"model.n_layer": n_layer, "model.n_head": n_head, "model.n_embd": n_embd,
                            "model.dropout": dropout, "data.block_size": block,
                            "train.batch_size": batch, "optim.lr": 1e-3, "optim.weight_decay": 0.1,
                            "optim.clip_norm": 1.0})
    model = GPT(cfg.model, VOCAB, block).to(device).train()
    if extra == "bf16":  # train.precision: bf16 on a CPU (on CUDA every variant is bf16 already)
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    if extra == "foreach-adamw":  # make_optimizer's form before it became fused
        o = cfg.optim
        optimizer = torch.optim.AdamW(decay_groups(model, o.weight_decay), lr=o.lr, betas=o.betas,
                                      eps=o.eps, foreach=True)
    else:
        optimizer = make_optimizer(model, cfg)
    loss_fn = torch.compile(model.loss) if extra == "compile" else model.loss  # as train.compile
    params = [p for p in model.parameters() if p.requires_grad]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:  # as harness/core/train.py's inner loop
        with autocast():
            loss = loss_fn(x, y)
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError("non-finite loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_norm, foreach=True))
        optimizer.step()

    return model, step


def reference_step(shape: tuple, dropout: float, device: torch.device, autocast):
    n_layer, n_head, n_embd, block, _ = shape
    model = ReferenceGPT(VOCAB, block, n_layer, n_head, n_embd, dropout).to(device).train()
    optimizer = model.configure_optimizer(weight_decay=0.1, lr=1e-3, betas=(0.9, 0.99))

    def step(x: torch.Tensor, y: torch.Tensor) -> None:  # the textbook loop
        with autocast():
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()

    return model, step


def bench_shape(name: str, shape: tuple, args, device, autocast, sync) -> list[dict]:
    n_layer, n_head, n_embd, block, batch = shape
    torch.manual_seed(0)
    x = torch.randint(VOCAB, (batch, block), device=device)
    y = torch.randint(VOCAB, (batch, block), device=device)
    steps, fpt, setup_s = {}, {}, {}
    for dropout in DROPOUTS:
        variants = [("harness", None), ("reference", None)] + [(f"harness+{e}", e) for e in args.extra]
        for label, extra in variants:
            key = (label, dropout)
            start = time.perf_counter()
            if label == "reference":
                model, fn = reference_step(shape, dropout, device, autocast)
            else:
                model, fn = harness_step(shape, dropout, device, autocast, extra)
            for _ in range(args.warmup):
                fn(x, y)
            sync()
            setup_s[key] = time.perf_counter() - start  # includes compile time for +compile
            steps[key] = (lambda f=fn: f(x, y))
            fpt[key] = flops_per_token(model, n_layer, n_embd, block)
    times = interleaved(steps, args.rounds, args.steps, sync)
    tokens = batch * block
    rows = []
    for (label, dropout), t in times.items():
        wall = median(t["wall"])
        own0 = times[(label, 0.0)]
        ref = times[("reference", dropout)]
        rows.append({
            "shape": name, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd,
            "block_size": block, "batch_size": batch, "dropout": dropout, "model": label,
            "step_ms": wall * 1e3, "best_step_ms": min(t["wall"]) * 1e3, "cpu_ms": median(t["cpu"]) * 1e3,
            "tokens_per_s": tokens / wall,
            "vs_reference": paired_ratio(ref["wall"], t["wall"]),
            "vs_reference_cpu": paired_ratio(ref["cpu"], t["cpu"]),
            "vs_own_dropout0": paired_ratio(own0["wall"], t["wall"]),
            "flops_per_token": fpt[(label, dropout)],
            "setup_s": setup_s[(label, dropout)],
            "step_wall_s_per_round": t["wall"],
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 step, first shape")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: bf16 autocast, MFU against the bf16 peak")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads on CPU (default 1: stable on a shared machine)")
    parser.add_argument("--shapes", help=f"any of {','.join(SHAPES)} (default: {','.join(CPU_SHAPES)} "
                                         "on cpu, all on cuda; --quick: the first)")
    parser.add_argument("--rounds", type=int, help="round-robin rounds (default 7; 5 for 6x192)")
    parser.add_argument("--steps", type=int, help="timed steps per variant per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--extra", default="", help=f"also time harness variants: {','.join(EXTRAS)}")
    parser.add_argument("--out", type=Path, default=OUT / "throughput.json")
    args = parser.parse_args()
    args.extra = [e for e in args.extra.split(",") if e]
    if unknown := set(args.extra) - set(EXTRAS):
        parser.error(f"--extra {','.join(unknown)}: allowed: {','.join(EXTRAS)}")
    if args.device == "cuda" and "bf16" in args.extra:
        parser.error("--extra bf16 is for --device cpu: on cuda every variant runs in bf16 autocast")

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device here")
        sync = torch.cuda.synchronize
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        torch.set_num_threads(args.threads)
        sync = lambda: None  # noqa: E731
        autocast = contextlib.nullcontext

    # The peak is measured before and after the steps and the best kept, so a burst of load
    # from the machine's neighbours during one measurement does not inflate the MFU.
    peak_s = 1.0 if args.quick else 3.0
    peak_fp32 = matmul_peak(torch.float32, device, peak_s)
    peak_bf16 = matmul_peak(torch.bfloat16, device, peak_s)
    peak = peak_bf16 if device.type == "cuda" else peak_fp32

    default_shapes = list(SHAPES) if device.type == "cuda" else list(CPU_SHAPES)
    shapes = args.shapes.split(",") if args.shapes else default_shapes[:1] if args.quick else default_shapes
    if unknown := set(shapes) - set(SHAPES):
        parser.error(f"--shapes {','.join(unknown)}: allowed: {','.join(SHAPES)}")
    rows = []
    for name in shapes:
        shape = SHAPES[name]
        # A GPU step takes milliseconds: more of them per round than a CPU step of seconds.
        big = shape[4] * shape[3] > 2048 and device.type == "cpu"
        if args.quick:
            a = argparse.Namespace(**{**vars(args), "rounds": 1, "steps": 1, "warmup": 1})
        else:
            a = argparse.Namespace(**{**vars(args), "rounds": args.rounds or (5 if big else 7),
                                      "steps": args.steps or (2 if big else 8 if device.type == "cpu" else 25)})
        print(f"{name}: {a.rounds} rounds x {a.steps} steps per variant ...", flush=True)
        rows += bench_shape(name, shape, a, device, autocast, sync)
    peak_fp32 = max(peak_fp32, matmul_peak(torch.float32, device, peak_s))
    if device.type == "cuda":
        peak_bf16 = max(peak_bf16, matmul_peak(torch.bfloat16, device, peak_s))
    peak = peak_bf16 if device.type == "cuda" else peak_fp32
    for r in rows:
        row_peak = peak_bf16 if r["model"].endswith("+bf16") else peak
        r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / (row_peak * 1e9)

    info = machine(args.threads if device.type == "cpu" else None)
    print(f"\n{info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
          f"{'threads ' + str(args.threads) if device.type == 'cpu' else info['cuda'] + ', bf16 autocast'}; "
          f"load average {info['load_avg'][0]:.1f}")
    print(f"matmul peak: fp32 {peak_fp32:,.1f} GFLOP/s, bf16 {peak_bf16:,.1f} GFLOP/s "
          f"(AVX-512 BF16: {'yes' if info['avx512_bf16'] else 'no'})\n")
    print(table(["shape", "dropout", "model", "ms/step", "best ms", "tokens/s", "x reference",
                 "x ref (CPU time)", "x own dropout 0", "MFU %"],
                [[r["shape"], r["dropout"], r["model"], r["step_ms"], r["best_step_ms"], r["tokens_per_s"],
                  r["vs_reference"], r["vs_reference_cpu"], r["vs_own_dropout0"], 100 * r["mfu"]]
                 for r in rows]))
    for r in rows:
        if "compile" in r["model"]:
            print(f"compile + warm-up, {r['shape']} dropout {r['dropout']}: {r['setup_s']:.1f} s")
    path = write_json("throughput", {
        "machine": info, "device": args.device, "threads": args.threads if device.type == "cpu" else None,
        "autocast": "bf16" if device.type == "cuda" else None, "quick": args.quick,
        "peak_gflops": {"fp32": peak_fp32, "bf16": peak_bf16}, "mfu_against": "bf16" if device.type == "cuda" else "fp32",
        "results": rows,
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
