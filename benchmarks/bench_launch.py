"""Steps per minute of the real training scripts, launched as the README says, against fp32 on every core.

    python benchmarks/bench_launch.py --data ../shared/data/mvtec_ad_256/transistor --output benchmarks/results/launch
    python benchmarks/bench_launch.py --data ... --as-cpu-without-bf16   # decide as a CPU without native bf16 would

For the ``cpu_latent`` preset it runs ``accelerate launch training/train_vae.py`` and ``train_unet.py`` for
``--steps`` steps in two settings, alternating for ``--rounds`` rounds: the defaults (``--mixed-precision auto``,
threads from the machine) and ``--mixed-precision no --threads <all cores>``, the reference a CPU without native
bf16 should match. The ratio of the two is what issue #12 asks to stay above 0.8. Training time is the scripts'
own clock (checkpoint I/O and data loading excluded).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_io import write_results  # noqa: E402

from ddad_hub.hardware import default_threads, machine_summary  # noqa: E402


def run(script: str, args: list[str], env: dict) -> dict:
    """Run one training script under ``accelerate launch``; steps, minutes and the machine line it printed."""
    accelerate = Path(sys.executable).with_name("accelerate")  # the README's command, with no launcher flags
    cmd = [str(accelerate), "launch", str(REPO / "training" / script), *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)  # relative paths as the caller gave them
    if out.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    text = out.stdout + out.stderr
    steps, minutes = re.search(r"trained (\d+) steps in ([\d.]+) min", text).groups()
    machine = re.search(r"machine: (.*)", text).group(1)
    return {"steps": int(steps), "minutes": float(minutes), "steps_per_minute": int(steps) / float(minutes),
            "machine_line": machine.strip()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of the two settings; the best counts")
    p.add_argument("--as-cpu-without-bf16", action="store_true",
                   help="DDAD_NATIVE_BF16=0: 'auto' decides as on a CPU without native bf16")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if args.as_cpu_without_bf16:
        env["DDAD_NATIVE_BF16"] = "0"
    cores = default_threads(1)
    runs: dict[str, list[dict]] = {}
    common = ["--data", args.data, "--preset", "cpu_latent", "--max-steps", str(args.steps)]
    settings = (("default", []), ("fp32, all cores", ["--mixed-precision", "no", "--threads", str(cores)]))
    for _ in range(args.rounds):  # the two settings alternate, so a passing disturbance hits both alike
        for name, extra in settings:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                runs.setdefault(f"autoencoder, {name}", []).append(
                    run("train_vae.py", [*common, "--output-dir", str(out), *extra], env))
                runs.setdefault(f"U-Net, {name}", []).append(
                    run("train_unet.py", [*common, "--output-dir", str(out), "--vae", str(out / "vae"),
                                          "--no-finalize", *extra], env))
    # the best round of each: the first steps' kernel set-up counts in a short run, and load only slows
    rows = {name: {**max(rs, key=lambda r: r["steps_per_minute"]),
                   "all_rounds": [round(r["steps_per_minute"], 1) for r in rs]} for name, rs in runs.items()}
    lines = [f"Training scripts under `accelerate launch`, `cpu_latent` preset, {args.steps} steps each, best of "
             f"{args.rounds} alternating rounds.", "",
             f"Machine: {machine_summary(cores)}"
             + ("; decisions as on a CPU without native bf16 (DDAD_NATIVE_BF16=0)" if args.as_cpu_without_bf16
                else "") + ".", "",
             "| script, settings | steps/min (best) | every round | what the script chose |", "|---|---|---|---|"]
    for name, r in rows.items():
        threads = re.search(r"(\d+) torch thread", r["machine_line"]).group(1)
        chosen = "mixed precision " + r["machine_line"].split("; mixed precision ", 1)[-1] + f"; {threads} thread(s)"
        lines.append(f"| {name} | {r['steps_per_minute']:.1f} | {r['all_rounds']} | {chosen} |")
    for part in ("autoencoder", "U-Net"):
        ratio = rows[f"{part}, default"]["steps_per_minute"] / rows[f"{part}, fp32, all cores"]["steps_per_minute"]
        lines.append(f"\n{part}: default / fp32-all-cores = {ratio:.2f}")
    text = "\n".join(lines)
    print(text)
    if args.output:
        write_results(args.output, rows, text)


if __name__ == "__main__":
    main()
