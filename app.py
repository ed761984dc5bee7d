"""ddad-hub demo: upload a picture of a part (or many) and see where the defect is.

    python app.py                              # the embedded models, http://127.0.0.1:7860
    python app.py --model path/or/hub-repo-id  # add a pipeline to the drop-down, chosen first (also: DDAD_MODEL=...)
    python app.py --model a --model b          # several; --backend openvino runs them through OpenVINO

Runs as a Hugging Face Space too (see the README's front matter). Bad uploads get a message; the app keeps serving.
"""

from __future__ import annotations

import argparse
import inspect
import os
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import torch

import ddad_hub
from ddad_hub import ImageLoadError, open_image
from ddad_hub.data import IMAGE_SUFFIXES
from ddad_hub.image_utils import count_pages
from ddad_hub.inspection import (
    BATCH_SIZE,
    MAX_PAGES,
    UNKNOWN_VERDICT,
    InspectionRow,
    anomaly_picture,
    extract_zip,
    inspect_files,
    product_labels,
    product_tally,
    skipped_members,
    tally_text,
    write_csv,
)
from ddad_hub.model_info import describe, find_pipelines
from ddad_hub.pipelines.pipeline_ddad import MODES
from ddad_hub.visualize import outline, overlay

HERE = Path(__file__).resolve().parent
MODELS_DIR = HERE / "models"
DEFAULT_MODEL = MODELS_DIR / "ddad-transistor-cpu-latent"
EXAMPLES = sorted((HERE / "examples").glob("*.png"))
MULTICLASS_EXAMPLES = sorted((HERE / "examples" / "multiclass").glob("*.png"))  # one per product of the line
MAX_UPLOAD = "100mb"  # per file; a zip of a folder counts as one
MAX_BATCH_FILES = 1000  # images one batch request may hold (zips counted by their contents)
GALLERY_SIDE = 768  # the flagged pictures' longer side at most, in pixels (full size: 27 MB each at 3000 px)
TABLE_COLUMNS = ["file", "score", "verdict", "start step", "error", "threshold", "product"]


def load_pipeline(model: str | os.PathLike, backend: str = "pytorch"):
    """``ddad_hub.load_pipeline`` with a clear exit when the embedded default model is missing."""
    model = str(model)
    if model == str(DEFAULT_MODEL) and not DEFAULT_MODEL.is_dir():
        raise SystemExit(f"the embedded model is missing ({DEFAULT_MODEL}); pass --model <folder or Hub repo id>")
    return ddad_hub.load_pipeline(model, **({} if backend == "pytorch" else {"backend": backend}))


def _upload_path(upload) -> str | bytes:
    """The file behind an input value: a path, gradio's file payload (a dict), or a base64 data URL's bytes."""
    if isinstance(upload, str | os.PathLike):
        return os.fspath(upload)
    url = upload.get("url") or ""
    if not upload.get("path") and url.startswith("data:"):
        import base64

        return base64.b64decode(url.split(",", 1)[-1])
    return upload["path"]


class Inspector:
    """Holds one pipeline and turns uploads into the pictures, tables and numbers the page shows."""

    def __init__(self, pipe):
        self.pipe = pipe
        if hasattr(pipe, "set_progress_bar_config"):  # diffusers pipelines; a backend's wrapper may have none
            pipe.set_progress_bar_config(disable=True)
        self.has_memory = getattr(pipe, "feature_memory", None) is not None
        available = getattr(pipe, "available_modes", None)
        self.modes = list(available()) if callable(available) else ["ddad"] + (["d3ad"] if self.has_memory else [])
        self._accepts = set(inspect.signature(pipe.__call__).parameters)
        memory = getattr(pipe, "feature_memory", None)
        # a multi-class model's products: the inspector may state which one the images show
        self.products = list(memory.config.group_names) if getattr(memory, "has_groups", False) else []

    @property
    def default_mode(self) -> str:
        mode = getattr(self.pipe.config, "mode", None)
        return mode if mode in self.modes else self.modes[0]

    def settings(self) -> dict[str, float]:
        """The scheduler's w, start step and skip (the advanced settings' starting values)."""
        sched = getattr(getattr(self.pipe, "scheduler", None), "config", None)
        return {"w": float(getattr(sched, "w", 0.0) or 0.0), "start_step": int(getattr(sched, "start_step", 250)),
                "skip": int(getattr(sched, "skip", 25))}

    def _check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise gr.Error(f"{str(mode).upper()} mode is not available with this model; it offers "
                           f"{', '.join(m.upper() for m in self.modes)}.")

    def _check_product(self, product: str | None) -> dict:
        """The call's ``category`` for a stated product (none for ``None``, "" or :data:`RECOGNISE`)."""
        if not product or product == RECOGNISE:
            return {}
        if not self.products:
            raise gr.Error(f"this model was trained on one product; it cannot be told the images show {product!r} "
                           f"(leave the product empty)")
        if product not in self.products:
            raise gr.Error(f"this model knows no product {product!r}; it knows {', '.join(self.products)}")
        return {"category": product}

    def analyze(self, upload, w: float | None, start_step: float | None, skip: float | None, mode: str = "ddad",
                product: str | None = None):
        """Score one image. Returns input, reconstruction, heat-map overlay, defect outline, summary, details.

        ``w``, ``start_step`` and ``skip`` left ``None`` (the page's empty boxes, an API call that omits them) are
        this model's own calibrated settings. ``product`` (a multi-class model's) states which product the image
        shows; ``None`` lets the model recognise it."""
        if upload is None:
            raise gr.Error("Upload an image first (PNG, JPEG, BMP, TIFF, WebP or GIF).")
        try:
            image = open_image(_upload_path(upload))
        except ImageLoadError as err:
            raise gr.Error(f"Could not read that file: {err}") from err
        self._check_mode(mode)
        stated = self._check_product(product)
        own = self.settings()
        w = own["w"] if w is None else w
        start_step = int(own["start_step"] if start_step is None else start_step)
        skip = int(own["skip"] if skip is None else skip)
        if not 0 < start_step < 1000 or w < 0:
            raise gr.Error(f"the start step ({start_step}) must be between 1 and 999 and w ({w}) at least 0.")
        if not 0 < skip <= start_step:
            raise gr.Error(f"skip ({skip}) must be between 1 and the start step ({start_step}).")
        settings = {k: v for k, v in {"w": float(w), "start_step": start_step, "skip": skip}.items()
                    if k in self._accepts}
        began = time.perf_counter()
        out = self.pipe(image, mode=mode, output_type="pil", **settings, **stated)
        seconds = time.perf_counter() - began
        # the one calibrated for this mode; a multi-class model's for the product it recognised
        threshold = None if out.image_thresholds is None else float(out.image_thresholds[0])
        product = (product_labels(out, stated=bool(stated)) or [None])[0]
        unknown = out.unknown_category is not None and bool(out.unknown_category[0])

        score = float(out.image_scores[0])
        amap = out.anomaly_maps_input_size[0]  # at the upload's own size and aspect, as the batch tab shows it
        scale = {"vmin": 0.0, "vmax": 2 * threshold} if threshold else {}
        heat = overlay(image, amap, alpha=0.5, **scale)
        if threshold is None:
            verdict, mask_view = "not calibrated (this model has no threshold)", image
        else:
            verdict = "DEFECTIVE" if out.is_anomalous[0] else "good"  # the pipeline's verdict (a NaN score fails)
            if unknown and stated:  # judged as the stated product, which the image does not look like
                verdict = f"NOT A {out.categories[0].upper()}? (as one: {verdict})"
            elif unknown:  # judged as the nearest product only: no verdict on a product the model does not know
                verdict = f"UNKNOWN PRODUCT (as a {out.categories[0]}: {verdict})"
            mask_view = outline(image, amap > threshold, colour=(255, 0, 0))
        start_used = int(out.start_steps[0])
        shown_threshold = "none" if threshold is None else f"{threshold:.4f}"
        summary = (
            f"### {verdict}\n"
            f"anomaly score **{score:.4f}** (threshold {shown_threshold}"
            + (f", {'stated' if stated else 'recognised as'} **{out.categories[0]}**)" if product else ")")
            + f"  \nmode {mode.upper()}, start step {start_used}, analysed in {seconds:.2f} s"
            + (f"  \n**This image does not look like a {out.categories[0]}** ("
               f"{float(out.category_distances[0]):.1f} times as far from its good parts as the farthest held-out "
               "good image): check the product chosen." if unknown and stated else "")
            + (f"  \n**This image looks like none of the products this model was trained on** ("
               f"{float(out.category_distances[0]):.1f} times as far from {out.categories[0]} as its farthest "
               f"held-out good image): it was judged as a {out.categories[0]}, which says nothing of a part of "
               "another product." if unknown and not stated else "")
        )
        details = {"score": score, "threshold": threshold, "verdict": verdict, "seconds": round(seconds, 3),
                   "mode": mode, "start_step": start_used, "image_size": list(image.size),
                   **({"product": product, "product_stated": bool(stated)} if product else {}),
                   **({"product_distance": round(float(out.category_distances[0]), 3)}
                      if out.category_distances is not None else {})}
        return image, out.reconstructions[0].resize(image.size), heat, mask_view, summary, details

    def analyze_batch(self, uploads: list | None, mode: str, progress=None, product: str | None = None):
        """Score many images (or zips of them). Returns the table, the flagged images, a CSV and a summary.
        ``product`` (a multi-class model's) states which product every image shows; ``None``: each recognised."""
        if not uploads:
            raise gr.Error("Upload one or more images, or a zip of a folder of images.")
        self._check_mode(mode)
        stated = self._check_product(product)
        with tempfile.TemporaryDirectory(prefix="ddad-batch-") as scratch:
            files, names, problems, skipped = _expand_uploads(uploads, Path(scratch))
            images = sum(min(count_pages(f), MAX_PAGES) for f in files)  # a multi-page TIFF counts its pages
            if images > MAX_BATCH_FILES:
                raise gr.Error(f"{images} images is more than the {MAX_BATCH_FILES} one batch takes; split it.")
            if not files and not problems:
                raise gr.Error("No images found in the upload (PNG, JPEG, BMP, TIFF, WebP or GIF, or a zip of them).")
            report = (lambda done, total: progress((done, total), desc="scoring", unit="images")) if progress else None
            began = time.perf_counter()
            rows, flagged, thresholds = [], [], set()
            scored_files = inspect_files(self.pipe, files, BATCH_SIZE, names=names, progress=report, mode=mode,
                                         **stated)
            for item in scored_files:
                rows += problems.pop(item.file_index, [])  # rows stay in upload order: a failed upload where sent
                rows.append(item.row)
                if item.image is not None and item.threshold is not None:
                    thresholds.add(item.threshold)
                if item.row.verdict in ("defective", UNKNOWN_VERDICT):  # neither passed as good
                    picture = anomaly_picture(item.image, item.anomaly_map, item.threshold, colour=(255, 0, 0))
                    picture.thumbnail((GALLERY_SIDE, GALLERY_SIDE))  # a batch of large flagged photos fits in memory
                    product = f" ({item.row.product})" if item.row.product else ""
                    flagged.append((picture, f"{item.row.file}{product}: {item.row.score:.3f}"))
            rows += [row for key in sorted(problems) for row in problems[key]]  # those after the last image
            seconds = time.perf_counter() - began
        table = [[r.file, None if r.score is None else round(r.score, 4), r.verdict, r.start_step, r.error,
                  None if r.threshold is None else round(r.threshold, 4), r.product] for r in rows]
        csv_path = write_csv(rows, Path(tempfile.mkdtemp(prefix="ddad-csv-")) / "scores.csv")
        scored = sum(r.score is not None for r in rows)
        unread = len(rows) - scored - skipped
        strangers = sum(r.verdict == UNKNOWN_VERDICT for r in rows)
        defective = sum(r.verdict == "defective" for r in rows)
        if len(thresholds) > 1:
            judged = "each by the threshold of the product it was recognised as: see the table"
        else:
            judged = f"threshold {next(iter(thresholds)):.4f}" if thresholds else ""
        summary = (f"**{scored} image(s) scored** in {seconds:.1f} s, mode {mode.upper()}"
                   + (f", all stated to be {stated['category']}" if stated else "") + "; "
                   + (f"**{defective} flagged defective** ({judged})" if thresholds
                      else "no verdicts" + (": this model has no calibrated threshold" if scored else ""))
                   + (f"; **{strangers} image(s) do not look like a {stated['category']}** (verdict \"unknown "
                      "product\", in the gallery too): check the product chosen" if strangers and stated else "")
                   + (f"; **{strangers} image(s) look like none of the trained products** (verdict \"unknown "
                      "product\", in the gallery too)" if strangers and not stated else "")
                   + (f"; {unread} file(s) could not be read (see the table's error column)" if unread else "")
                   + (f"; {skipped} file(s) in zips skipped (not images)" if skipped else "")
                   + (f"  \nper product (flagged: not passed as good): {tally_text(rows)}"
                      if len(product_tally(rows)) > 1 else ""))
        return table, flagged, str(csv_path), summary


def _expand_uploads(uploads: list, scratch: Path):
    """Uploaded files -> (image files, their shown names, rows for uploads that failed or were skipped, how many
    zip members were skipped as not images); zips are extracted. A failed row is keyed by the number of image files
    before it, so the table keeps upload order. Names are unique: a second upload called ``000.png`` is shown as
    ``000.png (2)``, a second ``lot.zip``'s members as ``lot.zip (2)/...``."""
    files, names, problems, skipped = [], [], {}, 0
    taken: set[str] = set()
    for k, upload in enumerate(uploads):
        path = Path(_upload_path(upload))
        shown, n = path.name, 1
        while shown in taken:  # a file really called "000.png (2)" is taken too
            n += 1
            shown = f"{path.name} ({n})"
        taken.add(shown)
        here = problems.setdefault(len(files), [])
        if path.suffix.lower() == ".zip":
            target = scratch / f"{k}"
            try:
                found = extract_zip(path, target)
            except (ValueError, OSError) as err:
                here.append(InspectionRow(shown, error=str(err)))
                continue
            files += found
            names += [f"{shown}/{f.relative_to(target)}" for f in found]
            left_out = skipped_members(path)
            skipped += len(left_out)
            problems.setdefault(len(files), []).extend(
                InspectionRow(f"{shown}/{member}", error="skipped: not an image file (" + ", ".join(IMAGE_SUFFIXES)
                              + ")") for member in left_out)
        else:
            files.append(path)
            names.append(shown)
    return files, names, {k: rows for k, rows in problems.items() if rows}, skipped


def _shelf_name(model: str, taken: dict[str, str]) -> str:
    """The drop-down's name for ``--model``: a folder's name, with as many parent folders as make it unique
    (``runs/tire/pipeline`` and ``runs/bottle/pipeline`` are ``tire/pipeline`` and ``bottle/pipeline``); a Hub id
    as it is. The same model given twice keeps its one name."""
    if not os.path.isdir(model):
        return model
    parts = Path(os.path.abspath(model)).parts
    for depth in range(1, len(parts) + 1):
        name = "/".join(parts[-depth:])
        same = name in taken and os.path.abspath(taken[name]) == os.path.abspath(model)
        if (name not in taken or same) and (depth > 1 or name != "pipeline"):
            return name
    return os.path.abspath(model)


class ModelShelf:
    """The drop-down's models by name: each loaded on first use and kept."""

    def __init__(self, sources: dict[str, str], default: str | None = None, backend: str = "pytorch"):
        if not sources:
            raise SystemExit("no models: models/ holds no pipeline folder and no --model was given")
        self.sources = dict(sources)
        self.default = default if default in self.sources else next(iter(self.sources))
        self.backend = backend
        self._loaded: dict[str, Inspector] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_args(cls, extra: list[str] | None, backend: str = "pytorch") -> ModelShelf:
        """The embedded models under ``models/`` plus each ``--model``; the first ``--model`` is the default."""
        sources = {p.name: str(p) for p in find_pipelines(MODELS_DIR)}
        chosen = []
        for model in extra or []:
            name = _shelf_name(model, sources)
            sources[name] = model
            chosen.append(name)
        default = chosen[0] if chosen else (DEFAULT_MODEL.name if DEFAULT_MODEL.is_dir() else None)
        return cls(sources, default, backend)

    def get(self, name: str | None) -> Inspector:
        name = name or self.default
        if name not in self.sources:
            raise gr.Error(f"unknown model {name!r}; choose one of {', '.join(self.sources)}")
        with self._lock:
            if name not in self._loaded:
                try:
                    self._loaded[name] = Inspector(load_pipeline(self.sources[name], self.backend))
                except (OSError, ValueError, RuntimeError) as err:  # RuntimeError: OpenVINO cannot run it here
                    raise gr.Error(f"could not load {name}: {err}") from err
            return self._loaded[name]

    def describe(self, name: str | None) -> str:
        name = name or self.default
        source = self.sources.get(name, "")
        where = source if os.path.isdir(source) else None
        if where is None and name in self._loaded:  # a Hub id: its downloaded snapshot
            folder = getattr(self._loaded[name].pipe, "name_or_path", None)
            where = folder if folder and os.path.isdir(folder) else None
        return describe(where) if where else f"`{source}` (Hub repository: its card is shown once it is loaded)"


# every mode any pipeline offers: the mode choice accepts them all, so an API call (which keeps the page's first
# state) can ask any model for its modes; the page shows the chosen model's, and a model asked for a mode it lacks
# answers with the modes it has
ALL_MODES = [*MODES, "diad"]
RECOGNISE = "recognise it"  # the product choice that lets a multi-class model's memory tell the product


def _product_choice(inspector: Inspector):
    """The product drop-down for a model: its products after "recognise it", shown for multi-class models only."""
    return gr.Dropdown(choices=[RECOGNISE, *inspector.products], value=None, visible=bool(inspector.products))


def _own(value: float) -> str:
    """An advanced setting's placeholder: the model's own value, used while the box is empty."""
    return f"model's own: {value:g}"


def _own_settings_boxes(settings: dict[str, float]) -> tuple:
    """The advanced settings' boxes, emptied, with the chosen model's own values as placeholders."""
    return tuple(gr.Number(value=None, placeholder=_own(settings[key])) for key in ("w", "start_step", "skip"))


def build_demo(shelf: ModelShelf) -> gr.Blocks:
    first = shelf.get(shelf.default)
    settings = first.settings()
    with gr.Blocks(title="ddad-hub: find the defect") as demo:
        gr.Markdown(
            "# ddad-hub: find the defect\n"
            "Upload a picture of a part. A diffusion model trained only on good parts rebuilds it as a good part "
            "would look; where the picture and the rebuild differ is the defect (DDAD)."
        )
        with gr.Row():
            model = gr.Dropdown(list(shelf.sources), value=shelf.default, label="model", scale=1,
                                info="loaded on first use")
            # no value here: an API call that leaves the mode out gets the chosen model's own (the page's load
            # event selects the first model's)
            mode = gr.Radio(ALL_MODES, value=None, label="mode", scale=1,
                            info="D3AD picks the noise level per image from the feature memory")
            # any name is accepted (an API call keeps the page's first model's choices); the model checks it
            product = gr.Dropdown([RECOGNISE, *first.products], value=None, label="product", scale=1,
                                  allow_custom_value=True, visible=bool(first.products), elem_id="product",
                                  info="which product the images show (a multi-class model); empty: recognise it")
            model_info = gr.Markdown(shelf.describe(shelf.default), elem_id="model-info")
        with gr.Tab("One image"):
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.Image(label="Image (drop, paste or take a picture)", type="filepath",
                                      sources=["upload", "clipboard", "webcam"], height=280, elem_id="image-input")
                    with gr.Accordion("Advanced settings (DDAD mode; empty: the model's own)", open=False):
                        w = gr.Number(None, minimum=0, maximum=12, step=0.5, label="conditioning weight w",
                                      placeholder=_own(settings["w"]))
                        start = gr.Number(None, minimum=1, maximum=999, step=10, precision=0, label="start step",
                                          placeholder=_own(settings["start_step"]))
                        skip = gr.Number(None, minimum=1, maximum=100, step=1, precision=0, label="skip",
                                         placeholder=_own(settings["skip"]))
                    button = gr.Button("Find defects", variant="primary")
                    summary = gr.Markdown(elem_id="summary")
                    details = gr.JSON(label="details", visible=False)
                with gr.Column(scale=2):
                    with gr.Row():
                        shown = gr.Image(label="input as analysed", type="pil", interactive=False, height=280)
                        recon = gr.Image(label="reconstruction", type="pil", interactive=False, height=280)
                    with gr.Row():
                        heat = gr.Image(label="anomaly map", type="pil", interactive=False, elem_id="heatmap",
                                        height=280)
                        mask = gr.Image(label="predicted defect", type="pil", interactive=False, height=280)
            if EXAMPLES:
                gr.Examples([[str(p)] for p in EXAMPLES], inputs=[upload], label="Examples (MVTec AD transistor "
                            "test images, CC BY-NC-SA 4.0)")
            if MULTICLASS_EXAMPLES:
                gr.Examples([[str(p)] for p in MULTICLASS_EXAMPLES], inputs=[upload],
                            label="Examples for the multi-class model, one per product (choose it under Model; "
                                  "credits in examples/README.md)")
        with gr.Tab("Many images"):
            batch_files = gr.File(label="Images, or a zip of a folder of images", file_count="multiple",
                                  file_types=None, type="filepath", elem_id="batch-input", height=240)
            batch_button = gr.Button("Score all", variant="primary")
            batch_summary = gr.Markdown(elem_id="batch-summary")
            table = gr.Dataframe(headers=TABLE_COLUMNS,
                                 datatype=["str", "number", "str", "number", "str", "number", "str"],
                                 interactive=False, label="scores (click a column to sort)", elem_id="batch-table")
            with gr.Row():
                gallery = gr.Gallery(label="flagged defective", columns=5, height=320, scale=3, elem_id="batch-gallery")
                csv_file = gr.File(label="CSV", scale=1, elem_id="batch-csv")

        # w, start and skip default to None (the chosen model's own) for API callers, who may leave them out
        def analyze(upload, w=None, start=None, skip=None, mode=None, model=None, product=None):
            inspector = shelf.get(model or shelf.default)
            return inspector.analyze(upload, w, start, skip, mode or inspector.default_mode, product)

        def analyze_batch(files, mode=None, model=None, product=None, progress=gr.Progress()):  # noqa: B008
            inspector = shelf.get(model or shelf.default)
            return inspector.analyze_batch(files, mode or inspector.default_mode, progress, product)

        def choose_model(model):
            chosen = shelf.get(model)
            return (gr.Radio(choices=chosen.modes, value=chosen.default_mode), _product_choice(chosen),
                    shelf.describe(model), *_own_settings_boxes(chosen.settings()))

        def page_opened():  # the browser's mode choice shows the first model's modes only
            return gr.Radio(choices=first.modes, value=first.default_mode)

        # preprocess=False: the upload reaches analyze() as gradio's file payload, so files PIL cannot open get
        # this app's own message instead of a failure inside gr.Image's decoding.
        button.click(analyze, [upload, w, start, skip, mode, model, product],
                     [shown, recon, heat, mask, summary, details], api_name="analyze", preprocess=False)
        batch_button.click(analyze_batch, [batch_files, mode, model, product],
                           [table, gallery, csv_file, batch_summary], api_name="analyze_batch")
        model.change(choose_model, [model], [mode, product, model_info, w, start, skip], api_name=False)
        demo.load(page_opened, None, [mode], api_name=False)
        gr.Markdown(
            "The threshold was calibrated on good training images only. Example images: MVTec AD (Bergmann et al., "
            "CVPR 2019), CC BY-NC-SA 4.0, non-commercial research use."
        )
    return demo


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env_model = os.environ.get("DDAD_MODEL")
    p.add_argument("--model", action="append", default=None,
                   help="a pipeline folder or Hub repo id to offer besides the embedded models in models/; "
                   "repeat for several; the first is selected at start (default: ddad-transistor-cpu-latent)")
    p.add_argument("--backend", choices=["pytorch", "openvino"], default=os.environ.get("DDAD_BACKEND", "pytorch"),
                   help="run the models with PyTorch (default) or OpenVINO")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--threads", type=int, default=int(os.environ.get("DDAD_THREADS", "1")),
                   help="torch threads (default 1, so the server does not fight other work; 0: torch's choice)")
    p.add_argument("--concurrency", type=int, default=int(os.environ.get("DDAD_CONCURRENCY", "1")),
                   help="requests processed at once; others wait in the queue")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.model or ([env_model] if env_model else None)
    if not models and not DEFAULT_MODEL.is_dir():
        load_pipeline(DEFAULT_MODEL)  # explains that the embedded model is missing
    demo = build_demo(ModelShelf.from_args(models, args.backend))
    demo.queue(default_concurrency_limit=args.concurrency, max_size=32)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, show_error=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
