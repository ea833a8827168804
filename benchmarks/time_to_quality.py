"""Wall time to a validation loss on Tiny Shakespeare: the harness's loop against nanoGPT's.

The common CPU recipe (nanoGPT's README, "baby GPT" on a CPU): 4 layers x 4 heads x 128 wide,
block 64, batch 12, AdamW (lr 1e-3, betas (0.9, 0.99), weight decay 0.1), clip 1.0, dropout 0,
lr cosine from 1e-3 to 1e-4 over 2,000 steps (no warmup in either loop), 2,000 steps, the whole
training split (data.train_chars null). nanoGPT reports a val loss of about 1.88 for it.

- harness: harness.core.train.train on the config below; a Hooks.on_eval records the time of every
  evaluation (train.eval_every, train.eval_windows: the harness's evaluation settings, shown in
  the table; its evaluations use fixed windows of train and val text). No text samples.
- reference: the textbook nanoGPT loop (benchmarks/reference_gpt.py's model, random windows via
  torch.randint, estimate_loss every eval_interval=250 steps and at step 0 on eval_iters=20
  random batches of each split, as nanoGPT's CPU recipe).

Both loops run at the same time, each in its own process with one torch thread, so both see the
same machine load (this machine is shared; one after the other they would not). Evaluation is
part of each loop's wall time; reading the corpus and building the vocabulary is not. After
both clocks stop, each final model is scored on every window of the validation text (the same
estimator for both: "final val (all windows)"), which is what the goal's "final val" means.

    python benchmarks/time_to_quality.py                       # ~5 min on 2 idle cores
    python benchmarks/time_to_quality.py --eval-every 500 --eval-batches 16
    python benchmarks/time_to_quality.py --quick               # smoke run (60 steps)

Prints a table; writes benchmarks/out/time_to_quality.json.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import queue
import time
from pathlib import Path

from _common import OUT, ROOT, machine, table, write_json

TARGET = 1.88
TOLERANCE = 0.03
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
RECIPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, lr=1e-3, min_lr=1e-4,
              betas=(0.9, 0.99), weight_decay=0.1, clip=1.0, dropout=0.0)


def harness_config(args):
    from harness.core.config import build_config

    r = RECIPE
    return build_config({
        "data": {"corpus": f"file:{args.data}", "train_chars": None, "block_size": r["block_size"]},
        "model": {"n_layer": r["n_layer"], "n_head": r["n_head"], "n_embd": r["n_embd"],
                  "dropout": r["dropout"]},
        "optim": {"name": "adamw", "lr": r["lr"], "betas": list(r["betas"]),
                  "weight_decay": r["weight_decay"], "clip_norm": r["clip"]},
        "schedule": {"name": "cosine", "eta_min": r["min_lr"], "interval": "step"},
        "train": {"batch_size": r["batch_size"], "max_steps": args.steps, "epochs": 100,
                  "eval_every": args.eval_every, "eval_windows": args.eval_windows,
                  "threads": args.threads, "seed": args.seed},
        "sample": {"count": 0},
    })


def run_harness(args, start_at: float, results) -> None:
    import torch

    from harness.core.train import Hooks, build_model, prepare_data, train

    torch.set_num_threads(args.threads)
    cfg = harness_config(args)
    data = prepare_data(cfg)
    _warm_process()
    evals = []
    _wait(start_at)
    t0, c0 = time.perf_counter(), time.process_time()
    hooks = Hooks(on_eval=lambda ev: evals.append(
        {"t": time.perf_counter() - t0, "step": ev.step, "val": ev.val_loss, "train": ev.train_eval_loss}))
    result = train(cfg, hooks, dataset=data)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model = build_model(cfg, len(data.vocab))
    model.load_state_dict(result.checkpoint["model"])
    full = full_val_loss(model.eval().loss, data.val, cfg.data.block_size)
    results.put(("harness", {"wall_s": wall, "cpu_s": cpu, "evals": evals, "full_val_loss": full}))


def run_reference(args, start_at: float, results) -> None:
    import torch

    from reference_gpt import ReferenceGPT

    torch.set_num_threads(args.threads)
    r = RECIPE
    text = Path(args.data).read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    train_data, val_data = data[:n], data[n:]
    block, batch = r["block_size"], r["batch_size"]

    def get_batch(split: str):
        d = train_data if split == "train" else val_data
        ix = torch.randint(len(d) - block, (batch,))
        x = torch.stack([d[i:i + block] for i in ix])
        y = torch.stack([d[i + 1:i + 1 + block] for i in ix])
        return x, y

    @torch.no_grad()
    def estimate_loss() -> dict:
        out = {}
        model.eval()
        for split in ("train", "val"):
            losses = torch.zeros(args.eval_iters)
            for k in range(args.eval_iters):
                X, Y = get_batch(split)
                _, loss = model(X, Y)
                losses[k] = loss.item()
            out[split] = losses.mean().item()
        model.train()
        return out

    def get_lr(it: int) -> float:
        coeff = 0.5 * (1.0 + math.cos(math.pi * min(it, args.steps) / args.steps))
        return r["min_lr"] + coeff * (r["lr"] - r["min_lr"])

    torch.manual_seed(args.seed)
    model = ReferenceGPT(len(chars), block, r["n_layer"], r["n_head"], r["n_embd"], r["dropout"])
    optimizer = model.configure_optimizer(r["weight_decay"], r["lr"], r["betas"])
    _warm_process()
    evals = []
    _wait(start_at)
    t0, c0 = time.perf_counter(), time.process_time()
    for it in range(args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        if it % args.eval_interval == 0 or it == args.steps:
            losses = estimate_loss()
            evals.append({"t": time.perf_counter() - t0, "step": it, "val": losses["val"],
                          "train": losses["train"]})
        if it == args.steps:
            break
        X, Y = get_batch("train")
        _, loss = model(X, Y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r["clip"])
        optimizer.step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    full = full_val_loss(lambda x, y: model.eval()(x, y)[1], val_data, block)
    results.put(("reference", {"wall_s": wall, "cpu_s": cpu, "evals": evals, "full_val_loss": full}))


def full_val_loss(loss_fn, val, block: int) -> float:
    """Mean loss per character over every non-overlapping window of the validation text: the
    same estimator for both loops, computed after their clocks stop."""
    import torch

    from harness.core.data import windows

    total, count = 0.0, 0
    with torch.no_grad():
        for batch in windows(val, block).split(64):
            total += float(loss_fn(batch[:, :-1].contiguous(), batch[:, 1:].contiguous())) * len(batch)
            count += len(batch)
    return total / count


def _warm_process() -> None:
    """One-off process costs, paid before either clock starts: a torch optimizer's first
    construction imports torch._dynamo (seconds), and the first forward pass initialises MKL."""
    import torch

    from reference_gpt import ReferenceGPT

    model = ReferenceGPT(65, 8, 1, 1, 8)
    torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()


def _wait(start_at: float) -> None:
    while time.time() < start_at:
        time.sleep(0.01)


def first_time_at(evals: list[dict], level: float) -> float | None:
    return next((e["t"] for e in evals if e["val"] <= level), None)


def collect(results, workers, n: int) -> dict[str, dict]:
    """n results from the workers' queue; exits if a worker dies without one."""
    out: dict[str, dict] = {}
    while len(out) < n:
        try:
            name, payload = results.get(timeout=5)
            out[name] = payload
        except queue.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead:
                for w in workers:
                    w.terminate()
                raise SystemExit(f"a training process failed (exit code {dead[0].exitcode}); see above")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 steps, tiny evaluations")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Tiny Shakespeare's input.txt")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=250, help="harness: train.eval_every")
    parser.add_argument("--eval-windows", type=int, default=192, help="harness: train.eval_windows")
    parser.add_argument("--eval-interval", type=int, default=250, help="reference: eval_interval")
    parser.add_argument("--eval-iters", type=int, default=20, help="reference: eval_iters")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each loop's process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequential", action="store_true",
                        help="run the loops one after the other instead of side by side")
    parser.add_argument("--out", type=Path, default=OUT / "time_to_quality.json")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.eval_every, args.eval_interval = 60, 20, 20
        args.eval_windows, args.eval_iters = 24, 2
    if not args.data.exists():
        parser.error(f"--data {args.data}: no such file (Tiny Shakespeare's input.txt)")
    args.data = args.data.resolve()

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    out: dict[str, dict] = {}
    if args.sequential:
        for fn in (run_harness, run_reference):
            worker = ctx.Process(target=fn, args=(args, 0.0, results))
            worker.start()
            out.update(collect(results, [worker], 1))
            worker.join()
    else:
        # Both start their clocks at the same moment, after their own imports and data loading.
        start_at = time.time() + (10 if args.quick else 20)
        workers = [ctx.Process(target=fn, args=(args, start_at, results))
                   for fn in (run_harness, run_reference)]
        for worker in workers:
            worker.start()
        out.update(collect(results, workers, len(workers)))
        for worker in workers:
            worker.join()

    h, ref = out["harness"], out["reference"]
    rows, summary = [], {}
    for name, res, settings in (
            ("harness", h, f"eval_every {args.eval_every}, eval_windows {args.eval_windows} "
                           f"(windows per split)"),
            ("reference", ref, f"eval_interval {args.eval_interval}, eval_iters {args.eval_iters} "
                               f"(random batches, also at step 0)")):
        final = res["evals"][-1]
        summary[name] = {
            "wall_s": res["wall_s"], "cpu_s": res["cpu_s"], "final_val_loss": final["val"],
            "final_full_val_loss": res["full_val_loss"],
            "final_train_loss": final["train"], "evaluations": len(res["evals"]),
            "time_to_target_s": first_time_at(res["evals"], TARGET),
            "time_to_target_plus_tol_s": first_time_at(res["evals"], TARGET + TOLERANCE),
            "eval_settings": settings, "evals": res["evals"],
        }
        s = summary[name]
        rows.append([name, settings, s["evaluations"], f"{final['val']:.3f}", f"{res['full_val_loss']:.3f}",
                     s["time_to_target_plus_tol_s"], s["time_to_target_s"], res["wall_s"], res["cpu_s"]])
    wall_ratio = h["wall_s"] / ref["wall_s"]
    # Seconds to val <= 1.91 (by each loop's own evaluations); a loop that never gets there
    # counts its whole run, a lower bound.
    reach = {n: summary[n]["time_to_target_plus_tol_s"] or summary[n]["wall_s"] for n in summary}
    reach_ratio = reach["harness"] / reach["reference"]
    cpu_ratio = h["cpu_s"] / ref["cpu_s"]
    final_ok = summary["harness"]["final_full_val_loss"] <= TARGET + TOLERANCE

    info = machine(args.threads)
    mode = "one after the other" if args.sequential else "side by side, one process each"
    print(f"\n{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {args.threads} thread(s) per loop, "
          f"{mode}; load average {info['load_avg'][0]:.1f}")
    print(f"{args.steps} steps of the CPU baby-GPT recipe on {args.data.name}; target val loss {TARGET}\n")
    print(table(["loop", "evaluation", "evals", "last eval val", "final val (all windows)",
                 f"s to <= {TARGET + TOLERANCE:.2f}", f"s to <= {TARGET}", "wall s", "CPU s"], rows))
    print(f"\nharness / reference wall time: {wall_ratio:.3f} (CPU time {cpu_ratio:.3f}); goal <= 0.8 with "
          f"final val <= {TARGET + TOLERANCE:.2f}: {'met' if wall_ratio <= 0.8 and final_ok else 'not met'}")
    print(f"harness / reference time to val <= {TARGET + TOLERANCE:.2f}: {reach_ratio:.3f}"
          + ("" if summary["reference"]["time_to_target_plus_tol_s"] else
             " (the reference never got there: its whole run counted)"))
    path = write_json("time_to_quality", {
        "machine": info, "threads": args.threads, "mode": mode, "quick": args.quick, "steps": args.steps,
        "recipe": RECIPE, "target": TARGET, "tolerance": TOLERANCE,
        "harness_config": harness_config(args).flat(),
        "wall_ratio": wall_ratio, "cpu_ratio": cpu_ratio, "reach_tolerance_ratio": reach_ratio,
        "final_ok": final_ok,
        "goal_met": wall_ratio <= 0.8 and final_ok, **summary,
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
