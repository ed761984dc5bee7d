"""ddad-hub demo: upload a picture of a part and see where the defect is.

    python app.py                              # the embedded latent transistor model, http://127.0.0.1:7860
    python app.py --model path/or/hub-repo-id  # another DDADPipeline (also: DDAD_MODEL=...)

Runs as a Hugging Face Space too (see the README's front matter). Bad uploads get a message; the app keeps serving.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from ddad_hub import DDADPipeline, ImageLoadError, open_image
from ddad_hub.visualize import outline, overlay

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "models" / "ddad-transistor-cpu-latent"
EXAMPLES = sorted((HERE / "examples").glob("*.png"))
MAX_UPLOAD = "25mb"


class Inspector:
    """Holds one pipeline and turns an uploaded file into the pictures and numbers the page shows."""

    def __init__(self, pipe: DDADPipeline):
        self.pipe = pipe
        self.pipe.set_progress_bar_config(disable=True)
        self.has_memory = pipe.feature_memory is not None
        self.modes = pipe.available_modes()

    def analyze(self, file, w: float, start_step: float, skip: float, mode: str = "ddad"):
        """Score one image. Returns input, reconstruction, heat-map overlay, defect outline, summary, details."""
        if file is None:
            raise gr.Error("Upload an image first (PNG, JPEG, BMP or TIFF).")
        path = file if isinstance(file, str) else getattr(file, "name", None) or file["path"]
        try:
            image = open_image(path)
        except ImageLoadError as err:
            raise gr.Error(f"Could not read that file: {err}") from err
        if mode not in self.modes:
            raise gr.Error(f"This model has no {mode.upper()} mode; it offers {', '.join(self.modes)}.")
        start_step, skip = int(start_step), int(skip)
        if not 0 < skip <= start_step:
            raise gr.Error(f"skip ({skip}) must be between 1 and the start step ({start_step}).")
        began = time.perf_counter()
        out = self.pipe(image, w=float(w), start_step=start_step, skip=skip, mode=mode, output_type="pil")
        seconds = time.perf_counter() - began
        threshold = out.threshold  # the one calibrated for this mode

        score = float(out.image_scores[0])
        amap = out.anomaly_maps[0]
        view = image.resize(amap.shape[::-1])
        scale = {"vmin": 0.0, "vmax": 2 * threshold} if threshold else {}
        heat = overlay(view, amap, alpha=0.5, **scale)
        if threshold is None:
            verdict, mask_view = "not calibrated (this model has no threshold)", view
        else:
            defective = score > threshold
            verdict = "DEFECTIVE" if defective else "good"
            mask_view = outline(view, amap > threshold, colour=(255, 0, 0))
        start_used = int(out.start_steps[0])
        shown_threshold = "none" if threshold is None else f"{threshold:.4f}"
        summary = (
            f"### {verdict}\n"
            f"anomaly score **{score:.4f}** (threshold {shown_threshold})"
            f"  \nmode {mode.upper()}, start step {start_used}, analysed in {seconds:.2f} s"
        )
        details = {"score": score, "threshold": threshold, "verdict": verdict, "seconds": round(seconds, 3),
                   "mode": mode, "start_step": start_used, "image_size": list(image.size)}
        return image, out.reconstructions[0].resize(view.size), heat, mask_view, summary, details


def build_demo(inspector: Inspector) -> gr.Blocks:
    sched = inspector.pipe.scheduler.config
    with gr.Blocks(title="ddad-hub: find the defect") as demo:
        gr.Markdown(
            "# ddad-hub: find the defect\n"
            "Upload a picture of a part. A diffusion model trained only on good parts rebuilds it as a good part "
            "would look; where the picture and the rebuild differ is the defect (DDAD)."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image", file_types=["image"], type="filepath")
                with gr.Accordion("Advanced settings", open=False):
                    mode = gr.Radio(inspector.modes, value=inspector.pipe.config.mode, label="mode",
                                    info="D3AD picks the noise level per image; fused adds the nearest-neighbour "
                                    "memory's map" if inspector.has_memory else "D3AD needs a feature memory")
                    w = gr.Slider(0, 12, value=float(sched.w), step=0.5, label="conditioning weight w")
                    start = gr.Slider(10, 900, value=int(sched.start_step), step=10, label="start step")
                    skip = gr.Slider(1, 100, value=int(sched.skip), step=1, label="skip")
                button = gr.Button("Find defects", variant="primary")
                summary = gr.Markdown(elem_id="summary")
                details = gr.JSON(label="details", visible=False)
            with gr.Column(scale=2):
                with gr.Row():
                    shown = gr.Image(label="input", type="pil", interactive=False, height=280)
                    recon = gr.Image(label="reconstruction", type="pil", interactive=False, height=280)
                with gr.Row():
                    heat = gr.Image(label="anomaly map", type="pil", interactive=False, elem_id="heatmap", height=280)
                    mask = gr.Image(label="predicted defect", type="pil", interactive=False, height=280)
        outputs = [shown, recon, heat, mask, summary, details]
        inputs = [upload, w, start, skip, mode]
        button.click(inspector.analyze, inputs, outputs, api_name="analyze")
        if EXAMPLES:
            gr.Examples([[str(p)] for p in EXAMPLES], inputs=[upload], label="Examples (MVTec AD transistor test "
                        "images, CC BY-NC-SA 4.0)")
        gr.Markdown(
            "The threshold was calibrated on good training images only. Example images: MVTec AD (Bergmann et al., "
            "CVPR 2019), CC BY-NC-SA 4.0, non-commercial research use."
        )
    return demo


def load_pipeline(model: str | os.PathLike) -> DDADPipeline:
    model = str(model)
    if model == str(DEFAULT_MODEL) and not DEFAULT_MODEL.is_dir():
        raise SystemExit(f"the embedded model is missing ({DEFAULT_MODEL}); pass --model <folder or Hub repo id>")
    return DDADPipeline.from_pretrained(model)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("DDAD_MODEL", str(DEFAULT_MODEL)),
                   help="a DDADPipeline folder or Hub repo id (default: the embedded latent transistor model; "
                   "models/ddad-transistor-cpu is the smaller pixel-space one)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--threads", type=int, default=int(os.environ.get("DDAD_THREADS", "1")),
                   help="torch threads (default 1, so the server does not fight other work)")
    p.add_argument("--concurrency", type=int, default=int(os.environ.get("DDAD_CONCURRENCY", "1")),
                   help="requests processed at once; others wait in the queue")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    demo = build_demo(Inspector(load_pipeline(args.model)))
    demo.queue(default_concurrency_limit=args.concurrency, max_size=32)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, show_error=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
