"""Seconds per answer of the demo's analysis (what one upload costs), on one image.

    python benchmarks/bench_app.py --model models/ddad-transistor-cpu
    python benchmarks/bench_app.py --backend openvino --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app  # noqa: E402
from ddad_hub import load_pipeline  # noqa: E402
from ddad_hub.hardware import machine_summary  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(app.DEFAULT_MODEL))
    p.add_argument("--image", default=str(REPO / "examples" / "misplaced.png"))
    p.add_argument("--threads", type=int, default=1, help="the app's own default is 1")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--backend", default="pytorch", choices=["pytorch", "openvino"])
    p.add_argument("--compute-dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    inspector = app.Inspector(load_pipeline(args.model, backend=args.backend, compute_dtype=args.compute_dtype))
    sched = inspector.pipe.scheduler.config
    repeats = 2 if args.quick else args.repeats
    rows = []
    for mode in inspector.modes:  # every mode the model offers (ddad; d3ad and fused with a fitted memory)
        def call(m: str = mode):
            return inspector.analyze(args.image, sched.w, sched.start_step, sched.skip, m)

        call()  # warm-up
        times, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        rows.append((mode, statistics.median(times), min(times), max(times), statistics.median(cpu)))
    print(f"Machine: {machine_summary(args.threads)}; backend {args.backend}, compute_dtype {args.compute_dtype}\n")
    print(f"| mode | seconds per answer (median, {args.threads} thread(s)) | min-max | CPU seconds per answer "
          "(all threads; on a shared machine less affected than wall time) |\n|---|---|---|---|")
    for mode, med, lo, hi, cpu_s in rows:
        print(f"| {mode} | {med:.3f} | {lo:.3f}-{hi:.3f} | {cpu_s:.3f} |")


if __name__ == "__main__":
    main()
