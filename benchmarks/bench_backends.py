"""PyTorch fp32, PyTorch bf16 (where native), OpenVINO fp32 / bf16 / int8 U-Net weights, side by side in one run.

    python benchmarks/bench_inference.py --backends --model models/ddad-transistor-cpu-latent \\
        --auroc-data ../shared/data/mvtec_ad_256/transistor --output benchmarks/results/backends

For each backend and mode, on the example images (PIL in, PIL out, as the demo calls it): latency of one image,
images/s at batch 1 and 8 of the whole pipeline call, the largest map and score difference to PyTorch fp32 on the
same 8 images, and which share of the call the networks take (the rest is blur, feature distance, the feature
memory's search, resizing, scheduler arithmetic). Each backend runs in its own process; rounds alternate the
backends so that a shared machine's load spreads over all of them; medians are over every repeat of every round.
CPU seconds (all threads of the process) are reported beside wall time: on a shared machine wall time grows with
the load, CPU time much less (at one thread it is the idle machine's latency; at more, spin-waits add to it).
With ``--auroc-data``: image and pixel AUROC of the pipeline's default mode on that category's test set, per backend.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from results_io import write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {
    "pytorch-fp32": {"backend": "pytorch", "compute_dtype": "float32"},
    "pytorch-bf16": {"backend": "pytorch", "compute_dtype": "bfloat16"},
    "openvino-fp32": {"backend": "openvino", "compute_dtype": "float32"},
    "openvino-bf16": {"backend": "openvino", "compute_dtype": "bfloat16"},
    "openvino-int8": {"backend": "openvino", "compute_dtype": "float32", "openvino_int8_weights": ["unet"]},
}
BF16 = ("pytorch-bf16", "openvino-bf16")
NETWORKS = ("unet", "vae", "feature_encoder")


def default_configs() -> list[str]:
    from ddad_hub.hardware import has_native_bf16

    return [c for c in CONFIGS if has_native_bf16() or c not in BF16]


def load(config: str, args):
    from ddad_hub import load_pipeline

    kwargs = dict(CONFIGS[config])
    if kwargs["backend"] == "openvino" and args.cache_dir:
        kwargs["openvino_cache_dir"] = args.cache_dir
    if _is_diad(args.model) and "openvino_int8_weights" in kwargs:  # DiAD's U-Net is compiled inside sg_network
        kwargs["openvino_int8_weights"] = ["sg_network"]
    pipe = load_pipeline(args.model, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _is_diad(model: str) -> bool:
    """Whether a local pipeline folder holds a DiAD pipeline (a Hub id is checked when it loads)."""
    index = Path(model) / "model_index.json"
    return index.is_file() and "sg_network" in json.loads(index.read_text())


# ---------------------------------------------------------------------------------------------- time per network
class _Timed:
    """Stands in for a network and adds the seconds its calls (and ``encode`` / ``decode``) take to a clock."""

    def __init__(self, target, clock: dict, name: str):
        self._target, self._clock, self._name = target, clock, name

    def _wrap(self, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self._clock[self._name] += time.perf_counter() - start
            return out

        return run

    def __call__(self, *args, **kwargs):
        return self._wrap(self._target)(*args, **kwargs)

    def __getattr__(self, name: str):
        attr = getattr(self._target, name)
        if name == "full_precision" and attr is not None:  # OpenVINO bf16's fp32 encoder for the memory: same clock
            return _Timed(attr, self._clock, self._name)
        return self._wrap(attr) if name in ("encode", "decode") else attr


def network_seconds(pipe, call) -> dict:
    """Seconds of one ``call()``: in total and in each network. DiAD's denoiser (its SG network and the U-Net it
    feeds, one graph under OpenVINO) is timed as a whole, under "unet", through ``predict_noise``."""
    clock = dict.fromkeys(NETWORKS, 0.0)
    guided = getattr(pipe, "sg_network", None) is not None
    timed = [n for n in NETWORKS if not (guided and n == "unet")]
    originals = {n: getattr(pipe, n) for n in timed if getattr(pipe, n, None) is not None}
    for name, module in originals.items():
        object.__setattr__(pipe, name, _Timed(module, clock, name))  # past diffusers' config bookkeeping
    if guided:
        object.__setattr__(pipe, "predict_noise", _Timed(pipe.predict_noise, clock, "unet"))  # shadows the method
    try:
        start = time.perf_counter()
        call()
        total = time.perf_counter() - start
    finally:
        for name, module in originals.items():
            object.__setattr__(pipe, name, module)
        pipe.__dict__.pop("predict_noise", None)
    return {"total": total, **clock}


# ---------------------------------------------------------------------------------------------- workers
def examples(n: int) -> list:
    from ddad_hub import open_image

    files = sorted((REPO / "examples").glob("*.png"))
    return [open_image(files[i % len(files)]) for i in range(n)]


def speed_worker(config: str, args) -> dict:
    """One backend: load time, latency and batch samples per mode; maps and scores dumped for comparison."""
    from bench_inference import peak_rss_mb, timed

    def measure(row: dict, key: str, fn, repeats: int) -> None:
        t = timed(fn, repeats)
        row[key], row[f"{key}_cpu"] = t["samples"], t["cpu_samples"]

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pipe = load(config, args)
    result = {"config": config, "load_seconds": time.perf_counter() - start, "modes": {}}
    batch = examples(args.batch)
    one = [batch[0]]
    modes = [m for m in (args.modes or pipe.available_modes()) if m in pipe.available_modes()]
    for mode in modes:
        row = {}
        measure(row, "latency", lambda m=mode: pipe(one, mode=m), args.repeats)
        measure(row, "batch", lambda m=mode: pipe(batch, batch_size=args.batch, mode=m), max(2, args.repeats // 2))
        if args.dump:
            outputs = []
            row["split"] = network_seconds(pipe, lambda m=mode, o=outputs: o.append(
                pipe(batch, batch_size=args.batch, mode=m, output_type="np")))
            np.savez(Path(args.dump) / f"{config}_{mode}.npz", maps=outputs[0].anomaly_maps,
                     scores=outputs[0].image_scores)
            if args.profile:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    pipe(batch, batch_size=args.batch, mode=mode)
                row["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
        result["modes"][mode] = row
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def auroc_worker(config: str, args) -> dict:
    """Image and pixel AUROC of the pipeline's default mode on a category's test set (or its first N images)."""
    from ddad_hub.data import list_test_items, load_images, load_mask, to_unit_range
    from ddad_hub.metrics import summarize

    torch.set_num_threads(args.threads)
    pipe = load(config, args)
    items = list_test_items(args.auroc_data)
    if args.auroc_limit:
        step = max(1, len(items) // args.auroc_limit)  # spread over the defect types, not the first folder only
        items = items[::step][: args.auroc_limit]
    # read at map size when it is larger, as training/evaluate.py does: the memory reads images at map size
    images = load_images([it.image for it in items], max(pipe.sample_size[0], pipe.map_hw[0]))
    masks = np.stack([load_mask(it.mask, pipe.map_hw) for it in items])
    maps, scores = [], []
    start = time.perf_counter()
    for s in range(0, len(items), args.batch):
        out = pipe(to_unit_range(images[s : s + args.batch]), batch_size=args.batch, output_type="np")
        maps.append(out.anomaly_maps)
        scores.append(out.image_scores)
    seconds = (time.perf_counter() - start) / len(items)
    summary = summarize(np.concatenate(scores), np.concatenate(maps), masks, [it.defect_type for it in items])["all"]
    return {"config": config, "mode": pipe.config.mode, "n_images": len(items), "seconds_per_image": seconds,
            "image_auroc": summary["image_auroc"], "pixel_auroc": summary["pixel_auroc"]}


# ---------------------------------------------------------------------------------------------- parent
def run_worker(kind: str, config: str, args, dump: str | None = None, profile: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--config", config, "--model", args.model,
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--batch", str(args.batch)]
    if args.modes:
        cmd += ["--modes", *args.modes]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    if dump:
        cmd += ["--dump", dump] + (["--profile"] if profile else [])
    if kind == "auroc":
        cmd += ["--auroc-data", args.auroc_data, "--auroc-limit", str(args.auroc_limit)]
    out = subprocess.run(cmd, capture_output=True, text=True)  # in the caller's folder, as its paths are
    if out.returncode != 0:
        raise SystemExit(f"{kind} {config} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize_speed(rounds: dict[str, list[dict]], dump: Path) -> list[dict]:
    """Per (config, mode): medians over all rounds' repeats, the split of one call, the differences to fp32."""
    rows = []
    for config, runs in rounds.items():
        for mode in runs[0]["modes"]:
            latency = [t for r in runs for t in r["modes"][mode]["latency"]]
            batch = [t for r in runs for t in r["modes"][mode]["batch"]]
            cpu = {k: statistics.median([t for r in runs for t in r["modes"][mode].get(f"{k}_cpu", [np.nan])])
                   for k in ("latency", "batch")}
            row = {"config": config, "mode": mode, "latency": statistics.median(latency), "cpu": cpu,
                   "latency_range": [min(latency), max(latency)], "batch_seconds": statistics.median(batch),
                   "n": [len(latency), len(batch)], "split": runs[0]["modes"][mode].get("split"),
                   "profile": runs[0]["modes"][mode].get("profile"), "load_seconds": runs[-1]["load_seconds"],
                   "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
            ref_file, own_file = dump / f"pytorch-fp32_{mode}.npz", dump / f"{config}_{mode}.npz"
            if ref_file.is_file() and own_file.is_file():
                ref, own = np.load(ref_file), np.load(own_file)
                row["map_diff"] = float(np.abs(own["maps"] - ref["maps"]).max() / np.abs(ref["maps"]).max())
                row["score_diff"] = float((np.abs(own["scores"] - ref["scores"]) / np.abs(ref["scores"])).max())
            rows.append(row)
    return rows


def report(rows: list[dict], aurocs: list[dict], args, summary: str) -> str:
    from ddad_hub.metrics import format_metric

    base = {r["mode"]: r for r in rows if r["config"] == "pytorch-fp32"}
    lines = [f"Machine: {summary}. Model: `{args.model}`, {args.threads} thread(s), {args.rounds} round(s) of "
             f"{args.repeats} single-image and {max(2, args.repeats // 2)} batch calls per backend and mode "
             f"(medians; batch {args.batch}; the example images, PIL in and out).", "",
             f"| backend | mode | latency, 1 image (s) | images/s, batch 1 | images/s, batch {args.batch} | vs PyTorch "
             f"fp32, batch 1 / {args.batch} | CPU s per image, batch 1 / {args.batch} (vs PyTorch fp32) | "
             "networks' share of a batch call | max map diff (rel. to map max) | max score diff (rel.) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = base.get(r["mode"])
        speedup = (f"{ref['latency'] / r['latency']:.2f}x / {ref['batch_seconds'] / r['batch_seconds']:.2f}x"
                   if ref else "-")
        split = r["split"]
        share = f"{sum(split[n] for n in NETWORKS) / split['total']:.0%}" if split else "-"
        diffs = (f"{r['map_diff']:.1e}", f"{r['score_diff']:.1e}") if "map_diff" in r else ("-", "-")
        cpu_1, cpu_n = r["cpu"]["latency"], r["cpu"]["batch"] / args.batch
        cpu = f"{cpu_1:.3f} / {cpu_n:.3f}" + (
            f" ({ref['cpu']['latency'] / cpu_1:.2f}x / {ref['cpu']['batch'] / args.batch / cpu_n:.2f}x)" if ref else "")
        lines.append(f"| {r['config']} | {r['mode']} | {r['latency']:.3f} ({r['latency_range'][0]:.3f}-"
                     f"{r['latency_range'][1]:.3f}) | {1 / r['latency']:.2f} | {args.batch / r['batch_seconds']:.2f} "
                     f"| {speedup} | {cpu} | {share} | {diffs[0]} | {diffs[1]} |")
    denoiser = "denoiser (SG network + U-Net)" if _is_diad(args.model) else "U-Net"
    lines += ["", "Seconds of one batch call by part (first round): "]
    for r in rows:
        if r["split"]:
            s = r["split"]
            rest = s["total"] - sum(s[n] for n in NETWORKS)
            lines.append(f"- {r['config']} {r['mode']}: total {s['total']:.2f}, {denoiser} {s['unet']:.2f}, "
                         f"autoencoder {s['vae']:.2f}, feature encoder {s['feature_encoder']:.2f}, "
                         f"everything else {rest:.2f}")
    lines += ["", "Load time (last round, IR already exported) and peak memory: " + "; ".join(
        f"{r['config']} {r['load_seconds']:.1f} s, {r['peak_rss_mb']:.0f} MB" for r in rows
        if r["mode"] == rows[0]["mode"])]
    if not rows:  # --auroc-only
        lines = [f"Machine: {summary}. Model: `{args.model}`, {args.threads} thread(s)."]
    if aurocs:
        lines += ["", f"AUROC on `{args.auroc_data}` test set ({aurocs[0]['n_images']} images, mode "
                  f"{aurocs[0]['mode']}, batch {args.batch}):", "",
                  "| backend | image AUROC | pixel AUROC | seconds per image |", "|---|---|---|---|"]
        lines += [f"| {a['config']} | {format_metric(a['image_auroc'], 4)} | {format_metric(a['pixel_auroc'], 4)} | "
                  f"{a['seconds_per_image']:.3f} |"
                  for a in aurocs]
    for r in rows:
        if r["profile"]:
            lines += ["", f"PyTorch operators of one {r['config']} {r['mode']} batch call (OpenVINO's own work does "
                      "not appear: this is the non-network part):", "", "```", r["profile"].strip(), "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "models" / "ddad-transistor-cpu-latent"))
    p.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS),
                   help="default: all, the bf16 ones only where bf16 is native")
    p.add_argument("--modes", nargs="+", default=None, choices=["ddad", "d3ad", "fused", "diad"],
                   help="default: every mode the pipeline has (available_modes())")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--auroc-data", default=None, help="an MVTec-layout category for the AUROC table")
    p.add_argument("--auroc-configs", nargs="+", default=["openvino-fp32", "openvino-int8"], choices=list(CONFIGS))
    p.add_argument("--auroc-only", action="store_true", help="skip the speed table")
    p.add_argument("--auroc-limit", type=int, default=0, help="evaluate N test images only (0: all)")
    p.add_argument("--cache-dir", default=None, help="OpenVINO IR cache (default: ddad_hub's)")
    p.add_argument("--output", default=None, help="path stem for .json and .md results")
    p.add_argument("--quick", action="store_true", help="one round, two repeats, batch 2: checks the script runs")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dump", default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker = speed_worker if args.worker == "speed" else auroc_worker
        print(json.dumps(worker(args.config, args)))
        return
    if args.quick:
        args.rounds, args.repeats, args.batch = 1, 2, 2
    from ddad_hub.hardware import machine_summary

    configs = args.configs or default_configs()
    if "pytorch-fp32" not in configs:
        configs = ["pytorch-fp32", *configs]  # the reference of every comparison
    with tempfile.TemporaryDirectory() as dump:
        rounds: dict[str, list[dict]] = {c: [] for c in configs}
        for index in range(0 if args.auroc_only else args.rounds):
            for config in configs:
                print(f"round {index + 1}: {config}", file=sys.stderr, flush=True)
                first = index == 0
                rounds[config].append(run_worker("speed", config, args, dump if first else None,
                                                 profile=first and config == "openvino-fp32"))
                if args.output:  # each backend's samples as they come, should a long run be stopped
                    with Path(args.output).with_suffix(".partial.jsonl").open("a") as log:
                        log.write(json.dumps(rounds[config][-1]) + "\n")
        rows = summarize_speed(rounds, Path(dump)) if not args.auroc_only else []
    aurocs = []
    if args.auroc_data:
        for config in args.auroc_configs:
            print(f"AUROC: {config}", file=sys.stderr, flush=True)
            aurocs.append(run_worker("auroc", config, args))
    summary = machine_summary(args.threads)
    text = report(rows, aurocs, args, summary)
    print(text)
    if args.output:
        write_results(args.output, {"machine": summary, "rows": rows, "auroc": aurocs, "args": vars(args)}, text)
        Path(args.output).with_suffix(".partial.jsonl").unlink(missing_ok=True)  # the complete results replace it


if __name__ == "__main__":
    main()
