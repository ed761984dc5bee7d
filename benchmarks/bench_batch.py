"""Seconds for the demo's batch tab to score N images, as a user waits for it: served on localhost and called
through gradio_client (upload, scoring, table, flagged gallery and CSV included).

    python benchmarks/bench_batch.py --model models/ddad-transistor-cpu-latent --images 20 --threads 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app  # noqa: E402
from ddad_hub.hardware import machine_summary  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(app.DEFAULT_MODEL))
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=app.BATCH_SIZE)
    p.add_argument("--mode", default=None, help="default: the model's own mode")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    from gradio_client import Client, handle_file

    torch.set_num_threads(args.threads)
    app.BATCH_SIZE = args.batch_size
    shelf = app.ModelShelf({Path(args.model).name: args.model})
    mode = args.mode or shelf.get(None).default_mode
    demo = app.build_demo(shelf)
    demo.queue(default_concurrency_limit=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    examples = sorted((REPO / "examples").glob("*.png"))
    times, cpu = [], []
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(args.images):
            files.append(Path(tmp) / f"{i:03d}_{examples[i % len(examples)].name}")
            shutil.copy(examples[i % len(examples)], files[-1])
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for _ in range(1 if args.quick else args.repeats):
            began, cpu_began = time.perf_counter(), time.process_time()
            table, *_ = client.predict([handle_file(str(f)) for f in files], mode, shelf.default,
                                       api_name="/analyze_batch")
            times.append(time.perf_counter() - began)
            cpu.append(time.process_time() - cpu_began)
            assert len(table["data"]) == args.images
    demo.close()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    # CPU seconds of this process (server and client, all threads): what the work costs whatever else runs
    print(f"Machine: {machine_summary()}\n")
    print(f"| model | mode | images | batch size | threads | seconds (median of {len(times)}) | min-max | "
          f"CPU seconds (median) | load average |\n|---|---|---|---|---|---|---|---|---|")
    print(f"| {Path(args.model).name} | {mode} | {args.images} | {args.batch_size} | {args.threads} | "
          f"{statistics.median(times):.2f} | {min(times):.2f}-{max(times):.2f} | {statistics.median(cpu):.2f} | "
          f"{load:.1f} |")


if __name__ == "__main__":
    main()
