"""Tutorial 2's model in a workbench kernel against the same code as a bare script, on one GPU.

    python3 bench/gpu_train.py [--rounds 2] [--epochs 6] [--train-samples 120000] [--out DIR]
    .venv/bin/python bench/gpu_train.py --record DIR/gpu_train.json   # into docs/benchmarks.md

Both sides run notebooks/02-train-on-a-gpu.ipynb at its full size (ShapeNet width 32,
batch 512, bf16 autocast, torch.compile, a DataLoader with worker processes), with the
same injected parameters, each in a fresh process and a folder of its own:

- kernel: nbclient executes the notebook in a new ipykernel, as a workbench session runs
  it when its user runs all cells: outputs travel over ZeroMQ to the client (the progress
  bar, the live loss plot redrawn every 2 s, the epoch lines);
- bare: the notebook's code cells joined into one script and run with the same python3
  (IPython's `display()` just prints there, so no plot is ever drawn).

The numbers are the notebook's own: images per second over the epochs after the first
(the training loop only, the GPU synchronised at each epoch's ends; compiling happens
before, in the notebook's warm-up cell), and model FLOP utilisation = images/s x training
FLOPs per image (PyTorch's FlopCounterMode, forward + backward) / the GPU's dense bf16 peak
(989 TFLOP/s for an H200). Rounds alternate which side goes first; the table gives the
median of the rounds. Results go to DIR (default $OUT, else bench-results/) as
gpu_train.json and gpu_train.md; --record writes the markdown into docs/benchmarks.md,
section "## Tutorial model on the H200 (bench/gpu_train.py)", leaving the others alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.notebooks.local import as_script, in_kernel, prepare  # noqa: E402

from report import write_section  # noqa: E402  (bench/ is on sys.path)

NOTEBOOK = "02-train-on-a-gpu.ipynb"
SECTION = "## Tutorial model on the H200 (bench/gpu_train.py)"
GOAL = 0.97


def run_once(side: str, params: dict, base: Path) -> dict:
    folder = prepare(base / f"{side}-{time.monotonic_ns()}")
    t0 = time.perf_counter()
    if side == "kernel":
        in_kernel(NOTEBOOK, folder, **params)
    else:
        as_script(NOTEBOOK, folder, **params)
    metrics = json.loads((folder / "runs" / params["run_name"] / "metrics.json").read_text())
    metrics["wall_s"] = time.perf_counter() - t0
    metrics.pop("history", None)
    print(f"  {side:>6}: {metrics['samples_per_s']:,.0f} img/s, "
          f"MFU {metrics['mfu'] or 0:.2%}, compiled {metrics['compiled']}, "
          f"{metrics['wall_s']:.0f} s in all", flush=True)  # fmt: skip
    return metrics


def environment() -> dict:
    import torch

    env = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        env["driver"] = out.stdout.strip() or "?"
    return env


def median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def markdown(result: dict) -> str:
    env, rounds = result["environment"], result["rounds"]
    kernel = [r["kernel"] for r in rounds]
    bare = [r["bare"] for r in rounds]
    k_ips, b_ips = median(kernel, "samples_per_s"), median(bare, "samples_per_s")
    k_mfu, b_mfu = median(kernel, "mfu"), median(bare, "mfu")
    ratio = k_ips / b_ips
    first = kernel[0]

    def pct(v):
        return f"{v:.2%}" if v is not None else "n/a"

    lines = [
        SECTION,
        "",
        f"Goal: the workbench kernel at {GOAL}x of the bare script or better (ratio >= {GOAL}).",
        "",
        "notebooks/02-train-on-a-gpu.ipynb at full size (ShapeNet width "
        f"{first['width']}, {first['train_samples']:,} images, batch {first['batch_size']}, "
        f"{first['epochs']} epochs, bf16 autocast, torch.compile {first['compiled']}, "
        f"{first['workers']} DataLoader workers), run by nbclient in a fresh ipykernel (kernel) "
        "and as its code cells joined into one python3 script (bare), each in a new process; "
        f"{len(rounds)} rounds, alternating which goes first; medians. Images/s over epochs "
        "2 onwards, training loop only; MFU = images/s x "
        f"{first['train_flops_per_sample'] / 1e6:.0f} MFLOP per training image "
        f"(FlopCounterMode) / {first['peak_bf16_tflops']} TFLOP/s (dense bf16 peak).",
        "",
        f"Measured {env['date']} on {env.get('gpu', 'no GPU')} (driver {env.get('driver', '-')}), "
        f"torch {env['torch']}, Python {env['python']}, {env['cpus']} CPUs.",
        "",
        "| | bare script | workbench kernel | ratio (kernel/bare) |",
        "|---|---:|---:|---:|",
        f"| images/s | {b_ips:,.0f} | {k_ips:,.0f} | {ratio:.3f} |",
        f"| model TFLOP/s | {median(bare, 'model_tflops_per_s'):.1f} | "
        f"{median(kernel, 'model_tflops_per_s'):.1f} | |",
        f"| MFU | {pct(b_mfu)} | {pct(k_mfu)} | |",
        f"| validation accuracy | {median(bare, 'val_accuracy'):.1%} | "
        f"{median(kernel, 'val_accuracy'):.1%} | |",
        f"| whole run, s (data, compile, training) | {median(bare, 'wall_s'):.0f} | "
        f"{median(kernel, 'wall_s'):.0f} | |",
        "",
        "Per round (bare / kernel, images/s): "
        + "; ".join(
            f"{r['bare']['samples_per_s']:,.0f} / {r['kernel']['samples_per_s']:,.0f}"
            for r in rounds
        )
        + ".",
        "",
        f"Goal {'met' if ratio >= GOAL else 'missed'}: {ratio:.3f}.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train-samples", type=int, default=120_000)
    ap.add_argument("--size", default="full", help="the notebook's size parameter")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench-results"))
    ap.add_argument("--record", type=Path, metavar="JSON",
                    help="write a saved result into docs/benchmarks.md and stop")  # fmt: skip
    args = ap.parse_args()
    if args.record:
        md = markdown(json.loads(args.record.read_text()))
        write_section(SECTION, md)
        print(md)
        return 0

    params = {"size": args.size, "epochs": args.epochs, "train_samples": args.train_samples,
              "run_name": "bench", "resume": False}  # fmt: skip
    result = {"parameters": params, "environment": environment(), "rounds": []}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-train-") as tmp:
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}", flush=True)
            order = ("bare", "kernel") if i % 2 == 0 else ("kernel", "bare")
            result["rounds"].append({side: run_once(side, params, Path(tmp)) for side in order})
            (args.out / "gpu_train.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (args.out / "gpu_train.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
