"""Inference speed, memory and FLOP rate of DDADPipeline on this machine, against a plain reference loop, and the
backends (PyTorch fp32 / bf16, OpenVINO fp32 / bf16 / int8 U-Net weights) side by side.

    python benchmarks/bench_inference.py --model models/ddad-transistor-cpu --output benchmarks/results/inference
    python benchmarks/bench_inference.py --quick          # a fast check of the script itself
    python benchmarks/bench_inference.py --backends --model models/ddad-transistor-cpu-latent \
        --auroc-data ../shared/data/mvtec_ad_256/transistor --output benchmarks/results/backends

With ``--backends`` (``benchmarks/bench_backends.py``): each backend runs in its own process (so thread pools
and peak memory are its own), in rounds that alternate the backends (the machine may be shared; the medians over
rounds are reported), on the example images; maps and scores are compared with PyTorch fp32 on the same inputs.

In one run: the machine's matrix-product peak (fp32 and bf16), then for the ``cpu`` preset (the given model, or
random weights of its size) and the ``paper`` preset (256 px, 30M U-Net, WideResNet-50-2, random weights): latency
per image (batch 1) and per image in a batch, fp32 or bf16 autocast, channels-last off or on, median and
inter-quartile range; peak resident memory; FLOPs per image (torch's FlopCounterMode) and the U-Net phase's FLOP
rate as a fraction of the measured peak; and the speed-up over a straightforward reference of the same algorithm
(fp32, one image at a time, the loop exactly as method.md writes it) with the maps compared.
Each preset runs in its own subprocess so that peak memory is its own.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from results_io import write_results

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- measurement helpers
def timed(fn, repeats: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)  # CPU seconds of all threads: robust to a shared machine
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median": statistics.median(times), "q1": q[0], "q3": q[2], "n": len(times), "samples": times,
            "cpu_samples": cpu}


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a large square matrix product, the machine's practical peak for this dtype."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    t = timed(lambda: a @ b, repeats)
    return 2 * size**3 / t["median"] / 1e9


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------- the reference
@torch.no_grad()
def reference_maps(pipe, images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """method.md's algorithm written plainly: fp32, one image at a time, every quantity recomputed in the loop."""
    sched = pipe.scheduler.config
    T, skip, w, eta = sched.start_step, sched.skip, sched.w, sched.eta
    betas = torch.linspace(sched.beta_start, sched.beta_end, sched.num_train_timesteps, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)

    def a(t: int) -> float:
        return 1.0 if t < 0 else float(abar[t])

    maps = []
    for x in images:
        x = x[None].float()
        g = torch.Generator().manual_seed(seed)
        n = torch.randn(x.shape, generator=g)
        x_t = a(T) ** 0.5 * x + (1 - a(T)) ** 0.5 * n
        ts = list(range(T - skip, -1, -skip))
        if ts[-1] != 0:
            ts.append(0)
        x0_hat = x_t
        for t in ts:
            t_prev = t - skip if t - skip >= 0 else -1
            e = pipe.unet(x_t, torch.tensor([t])).sample
            y_t = a(t) ** 0.5 * x + (1 - a(t)) ** 0.5 * e
            e_hat = e - w * (1 - a(t)) ** 0.5 * (y_t - x_t)
            x0_hat = (x_t - (1 - a(t)) ** 0.5 * e_hat) / a(t) ** 0.5
            c1 = eta * ((1 - a(t) / a(t_prev)) * (1 - a(t_prev)) / (1 - a(t))) ** 0.5
            c2 = (1 - a(t_prev) - c1**2) ** 0.5
            noise = torch.randn(x.shape, generator=g) if eta > 0 else torch.zeros_like(x)
            x_t = a(t_prev) ** 0.5 * x0_hat + c1 * noise + c2 * e_hat
        r = x0_hat.clamp(-1, 1)
        size = pipe.map_hw
        xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        rs = F.interpolate(r, size=size, mode="bilinear", align_corners=False)
        d_f = torch.zeros(1, *size)
        for fx, fr in zip(pipe.feature_encoder(xs), pipe.feature_encoder(rs)):
            fx = F.avg_pool2d(fx, 3, 1, 1, count_include_pad=False)
            fr = F.avg_pool2d(fr, 3, 1, 1, count_include_pad=False)
            d = 1 - F.cosine_similarity(fx, fr, dim=1)
            d_f += F.interpolate(d[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        d_p = (xs - rs).abs().mean(1)
        ratio = pipe.config.pixel_weight if pipe.config.pixel_weight is not None else d_f.max() / d_p.max()
        combined = d_f + pipe.config.v * ratio * d_p
        sigma = pipe.config.blur_sigma
        radius = min(int(4 * sigma + 0.5), size[0] - 1)
        c = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k1 = torch.exp(-(c**2) / (2 * sigma**2))
        k2 = torch.outer(k1, k1) / k1.sum() ** 2  # the full 2-D kernel, no separable trick
        padded = F.pad(combined[:, None], (radius,) * 4, mode="reflect")
        maps.append(F.conv2d(padded, k2[None, None])[:, 0])
    maps = torch.cat(maps)
    return maps, maps.flatten(1).amax(1)


# ---------------------------------------------------------------------------------------------- one preset
def build(preset_name: str, model: str | None):
    from ddad_hub import DDADPipeline, DDADScheduler, FeatureEncoder
    from ddad_hub.models.unet import build_unet
    from ddad_hub.presets import load_preset

    if model:
        return DDADPipeline.from_pretrained(model)
    preset = load_preset(preset_name)
    torch.manual_seed(0)
    unet = build_unet(preset)
    encoder = FeatureEncoder(backbone=preset["feature_backbone"], feature_strides=tuple(preset["feature_strides"]),
                             padding="same")
    scheduler = DDADScheduler(start_step=preset["start_step"], skip=preset["skip"], eta=preset["eta"],
                              w=preset.get("w") or 2.0)
    return DDADPipeline(unet=unet, scheduler=scheduler, feature_encoder=encoder, map_size=preset["map_size"])


def worker(args) -> dict:
    torch.set_num_threads(args.threads)
    pipe = build(args.worker, args.model if args.worker == "cpu" else None)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.sample_size[0]
    batch = 2 if args.quick else args.batch
    images = torch.rand(batch, 3, size, size) * 2 - 1
    one = images[:1]
    rows = []
    # DDAD mode whatever the model's default, as the reference loop below is DDAD's (an embedded model's default
    # D3AD mode would start lower and take fewer U-Net steps)
    ddad = functools.partial(pipe, output_type="pt", mode="ddad")
    result = {"preset": args.worker, "resolution": size, "map_size": pipe.map_hw[0],
              "unet_params_m": sum(p.numel() for p in pipe.unet.parameters()) / 1e6,
              "steps": pipe.scheduler.num_inference_steps}

    # FLOPs per image, by phase
    result["unet_gflop"] = count_flops(lambda: pipe.reconstruct(one, show_progress=False)) / 1e9
    recon = pipe.reconstruct(one, show_progress=False)
    result["encoder_gflop"] = count_flops(lambda: pipe.compute_distances(one, recon)) / 1e9

    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for channels_last in (False, True):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            pipe.unet.to(memory_format=fmt)
            pipe.feature_encoder.to(memory_format=fmt)
            row = {"dtype": dtype_name, "channels_last": channels_last}
            row["latency"] = timed(lambda d=dtype: ddad(one, autocast_dtype=d), args.repeats)
            per_batch = timed(lambda d=dtype: ddad(images, batch_size=batch, autocast_dtype=d),
                              max(2, args.repeats // 2))
            row["batch_per_image"] = {k: (v / batch if k not in ("n", "samples", "cpu_samples") else v)
                                      for k, v in per_batch.items()}
            unet_t = timed(lambda d=dtype: pipe.reconstruct(images, show_progress=False, autocast_dtype=d),
                           max(2, args.repeats // 2))
            row["unet_gflops"] = result["unet_gflop"] * batch / unet_t["median"]
            rows.append(row)
    pipe.unet.to(memory_format=torch.contiguous_format)
    pipe.feature_encoder.to(memory_format=torch.contiguous_format)
    result["rows"] = rows

    # the straightforward reference, same weights and noise, against the library's default call
    ref_images = images[: min(batch, 4)]
    ref_t = timed(lambda: reference_maps(pipe, ref_images, pipe.config.seed), 1, warmup=0)
    ref_maps, ref_scores = reference_maps(pipe, ref_images, pipe.config.seed)
    lib = ddad(ref_images, batch_size=batch, autocast_dtype=torch.float32)
    result["reference_seconds_per_image"] = ref_t["median"] / len(ref_images)
    result["default_dtype"] = str(pipe.default_autocast_dtype() or torch.float32).replace("torch.", "")
    default_t = timed(lambda: ddad(images, batch_size=batch), max(2, args.repeats // 2))
    result["default_batch_seconds_per_image"] = default_t["median"] / batch
    result["fp32_max_abs_map_diff_rel"] = float((lib.anomaly_maps - ref_maps).abs().max() / ref_maps.abs().max())
    result["fp32_max_score_diff_rel"] = float(((lib.image_scores - ref_scores).abs() / ref_scores.abs()).max())
    bf = ddad(ref_images, batch_size=batch, autocast_dtype=torch.bfloat16)
    result["bf16_max_abs_map_diff_rel"] = float((bf.anomaly_maps - ref_maps).abs().max() / ref_maps.abs().max())
    result["bf16_max_score_diff_rel"] = float(((bf.image_scores - ref_scores).abs() / ref_scores.abs()).max())
    result["peak_rss_mb"] = peak_rss_mb()

    # where the U-Net phase's time goes (bf16, channels-last inputs, the batch): the ops that dominate
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        pipe.reconstruct(images, show_progress=False, autocast_dtype=torch.bfloat16)
    result["unet_profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return result


# ---------------------------------------------------------------------------------------------- report
def report(peaks: dict, results: list[dict], threads: int) -> str:
    lines = ["Default call (compute_dtype auto, channels-last inputs, batched) against the reference: " + ", ".join(
        f"{r['preset']} {r['reference_seconds_per_image'] / r['default_batch_seconds_per_image']:.1f}x faster "
        f"({r['default_dtype']})" for r in results) + ".", ""]
    lines += [f"Machine peak ({threads} thread(s), 2048x2048 matrix product): fp32 {peaks['fp32']:.1f} GFLOP/s, "
             f"bf16 {peaks['bf16']:.1f} GFLOP/s.", ""]
    lines += ["| preset | dtype | channels-last weights | latency, 1 image (s) | per image in a batch (s) | images/s | "
              "U-Net GFLOP/s | % of peak | vs reference |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            lat, bat = row["latency"], row["batch_per_image"]
            peak = peaks["bf16" if row["dtype"] == "bf16" else "fp32"]
            lines.append(
                f"| {r['preset']} | {row['dtype']} | {'yes' if row['channels_last'] else 'no'} | "
                f"{lat['median']:.3f} ({lat['q1']:.3f}-{lat['q3']:.3f}) | {bat['median']:.3f} | "
                f"{1 / bat['median']:.1f} | {row['unet_gflops']:.1f} | {100 * row['unet_gflops'] / peak:.0f}% | "
                f"{r['reference_seconds_per_image'] / bat['median']:.1f}x |")
    lines += ["", "| preset | U-Net params | steps | GFLOP/image (U-Net + encoder) | peak RSS (MB) | reference s/image "
              "| map diff fp32 / bf16 (rel. to max) | score diff fp32 / bf16 (rel.) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['preset']} | {r['unet_params_m']:.1f}M | {r['steps']} | {r['unet_gflop']:.1f} + "
            f"{r['encoder_gflop']:.1f} | {r['peak_rss_mb']:.0f} | {r['reference_seconds_per_image']:.3f} | "
            f"{r['fp32_max_abs_map_diff_rel']:.1e} / {r['bf16_max_abs_map_diff_rel']:.1e} | "
            f"{r['fp32_max_score_diff_rel']:.1e} / {r['bf16_max_score_diff_rel']:.1e} |")
    for r in results:
        lines += ["", f"Profile of the {r['preset']} U-Net phase (bf16, batch), top operators by own CPU time:", "",
                  "```", r["unet_profile"].strip(), "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--backends" in argv:  # the backend comparison has options of its own
        from bench_backends import main as backends_main

        backends_main([a for a in argv if a != "--backends"])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a pipeline folder for the cpu preset (default: random weights)")
    p.add_argument("--presets", nargs="+", default=["cpu", "paper"], choices=["cpu", "paper"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--paper-batch", type=int, default=2, help="batch of the (much slower) paper preset")
    p.add_argument("--paper-repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="few repeats, small batch: checks the script runs")
    p.add_argument("--output", default=None, help="path stem for .json and .md results")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--backends", action="store_true",
                   help="compare the backends instead: bench_backends.py, whose options follow")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = args.paper_repeats = 2
    if args.worker:
        print(json.dumps(worker(args)))
        return
    torch.set_num_threads(args.threads)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    results = []
    for preset in args.presets:
        paper = preset == "paper"
        cmd = [sys.executable, __file__, "--worker", preset, "--threads", str(args.threads),
               "--repeats", str(args.paper_repeats if paper else args.repeats),
               "--batch", str(args.paper_batch if paper else args.batch)] + (["--quick"] if args.quick else [])
        if args.model:
            cmd += ["--model", args.model]
        out = subprocess.run(cmd, capture_output=True, text=True)  # in the caller's folder, as its paths are
        if out.returncode != 0:
            raise SystemExit(f"{preset} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    from ddad_hub.hardware import machine_summary

    text = f"Machine: {machine_summary(args.threads)}\n\n" + report(peaks, results, args.threads)
    print(text)
    if args.output:
        write_results(args.output, {"peaks": peaks, "results": results}, text)


if __name__ == "__main__":
    main()
