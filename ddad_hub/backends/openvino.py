"""OpenVINO backend: a pipeline's networks exported to OpenVINO IR and run by OpenVINO's CPU plugin.

Only the networks change. The pipeline keeps its own code (scheduler loop, D3AD's first estimate, feature memory,
maps): each network is replaced by a stand-in with the call signature the pipeline uses (``unet(sample, t).sample``,
``vae.encode(x).latent_dist.mean``, ``vae.decode(z).sample``, ``feature_encoder(x)`` -> list of maps) that runs a
compiled IR instead. Any pipeline class can use it through :class:`OpenVINOMixin`; which networks are exported is
decided by their type (:func:`ir_parts`), so a new network type needs an entry there and a stand-in, nothing else.

IR files sit next to the weights of a saved pipeline (``unet/openvino_model.xml``, ``vae/openvino_encoder.xml``,
``vae/openvino_decoder.xml``, ``feature_encoder/openvino_model.xml``) with ``openvino_export.json``, which records a
digest of the weights each IR was made from. A pipeline without IR is exported once into a cache folder
(``$DDAD_HUB_CACHE`` or ``~/.cache/ddad_hub``, keyed by that digest) on first use.

``openvino`` (and ``nncf``, for int8 weights) are optional: ``pip install 'ddad-hub[openvino]'``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..hardware import machine_summary
from ..hashing import file_sha256
from ..model_info import PipelineFolderError

logger = logging.getLogger(__name__)

MANIFEST = "openvino_export.json"
# Raised when an export's graphs change for the same weights. 2: the feature encoder's SAME padding follows the input
# size (format 1 froze the export example's, which broke the maps of every other size).
EXPORT_FORMAT = 2
INSTALL_HINT = "pip install 'ddad-hub[openvino]'"


def require_openvino():
    """The ``openvino`` module, or an ImportError that says how to install it."""
    try:
        import openvino
    except ImportError as err:
        raise ImportError(f"the OpenVINO backend needs the openvino package: {INSTALL_HINT}") from err
    return openvino


# ---------------------------------------------------------------------------------------------- what is exported
class _UNetGraph(torch.nn.Module):
    """``UNet2DModel`` as a graph of tensors: (sample, timestep) -> noise estimate."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep).sample


class _EncoderGraph(torch.nn.Module):
    """``AutoencoderKL``'s encoder: images -> the posterior mean (unscaled), all the pipeline takes from it."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mean


class _DecoderGraph(torch.nn.Module):
    """``AutoencoderKL``'s decoder: (unscaled) latents -> images."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample


class _GuidedDenoiserGraph(torch.nn.Module):
    """DiAD's denoiser, the SG network's residuals added into the U-Net, as one graph: (sample, timestep, image) ->
    noise estimate. The residuals enter the U-Net's blocks, so the two networks compile together."""

    def __init__(self, denoiser: torch.nn.Module):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.denoiser(sample, timestep, image).sample


@dataclass
class IRPart:
    """One IR file of a component: the module traced, an example input and the input shapes (-1: dynamic)."""

    file: str
    graph: torch.nn.Module
    example: tuple[torch.Tensor, ...]
    shapes: list[tuple[str, list[int], str]]  # (name, shape, "f32" | "i64")


def _side(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def ir_parts(module: Any) -> list[IRPart]:
    """The IR files ``module`` is exported to; ``[]`` for components that stay in PyTorch (memory, scheduler).

    Batch is dynamic everywhere; the U-Net's and autoencoder's image sizes are fixed by their configs, the feature
    encoder's are dynamic (it sees the map size and the feature memory's image size).
    """
    from diffusers import AutoencoderKL, UNet2DModel

    from ..models.feature_encoder import FeatureEncoder
    from ..models.semantic_guided import GuidedDenoiser

    if isinstance(module, GuidedDenoiser):
        c, (h, w) = module.unet.config.in_channels, _side(module.unet.config.sample_size)
        s = module.sg_network.hint_scale()
        return [IRPart("openvino_model", _GuidedDenoiserGraph(module),
                       (torch.randn(2, c, h, w), torch.tensor([10, 10]), torch.rand(2, 3, h * s, w * s) * 2 - 1),
                       [("sample", [-1, c, h, w], "f32"), ("timestep", [-1], "i64"),
                        ("image", [-1, 3, h * s, w * s], "f32")])]
    if isinstance(module, UNet2DModel):
        c, (h, w) = module.config.in_channels, _side(module.config.sample_size)
        return [IRPart("openvino_model", _UNetGraph(module), (torch.randn(2, c, h, w), torch.tensor([10, 10])),
                       [("sample", [-1, c, h, w], "f32"), ("timestep", [-1], "i64")])]
    if isinstance(module, AutoencoderKL):
        (h, w), c = _side(module.config.sample_size), module.config.latent_channels
        f = 2 ** (len(module.config.block_out_channels) - 1)
        return [IRPart("openvino_encoder", _EncoderGraph(module), (torch.rand(2, 3, h, w) * 2 - 1,),
                       [("images", [-1, 3, h, w], "f32")]),
                IRPart("openvino_decoder", _DecoderGraph(module), (torch.randn(2, c, h // f, w // f),),
                       [("latents", [-1, c, h // f, w // f], "f32")])]
    if isinstance(module, FeatureEncoder):
        return [IRPart("openvino_model", module, (torch.rand(2, 3, 64, 64) * 2 - 1,),
                       [("images", [-1, 3, -1, -1], "f32")])]
    return []


def _configs(module: torch.nn.Module) -> dict:
    """A module's config, or its children's (a :class:`GuidedDenoiser` is a U-Net and an SG network), without
    ``_`` entries (paths)."""
    if hasattr(module, "config"):
        return {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
    return {name: _configs(child) for name, child in module.named_children()}


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's config and state dict: which weights an IR was exported from."""
    config = _configs(module)
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def exportable(components: dict[str, Any]) -> dict[str, torch.nn.Module]:
    """The components that have IR parts, by name. A DiAD pipeline's SG network is exported with its U-Net as one
    guided denoiser (under ``sg_network``), the only way DiAD calls the U-Net."""
    from ..models.semantic_guided import GuidedDenoiser, SemanticGuidedNetwork

    components = dict(components)
    if isinstance(components.get("sg_network"), SemanticGuidedNetwork):  # (not yet wrapped)
        components["sg_network"] = GuidedDenoiser(components.pop("unet"), components["sg_network"])
    return {name: module for name, module in components.items() if module is not None and ir_parts(module)}


def check_int8_weights(modules: dict[str, torch.nn.Module], int8_weights: tuple[str, ...] | list[str]) -> None:
    """Refuse ``int8_weights`` that name a component not exported (``modules``, as :func:`exportable` gives)."""
    unknown = set(int8_weights) - set(modules)
    if unknown:
        hint = " (a DiAD pipeline's U-Net is exported inside sg_network)" if "sg_network" in modules else ""
        raise ValueError(f"int8_weights names {sorted(unknown)}, which are not exported (exported: "
                         f"{sorted(modules)}){hint}")


def export_components(
    components: dict[str, Any], folder: str | os.PathLike, int8_weights: tuple[str, ...] | list[str] = ()
) -> dict:
    """Write IR for every exportable component to ``folder/<name>/<file>.xml/.bin`` and ``openvino_export.json``.

    ``int8_weights`` names components whose weights NNCF compresses to int8 (activations stay floating point).
    Returns the manifest. Any pipeline class can call this with its own components.
    """
    ov = require_openvino()
    folder = Path(folder)
    modules = exportable(components)
    check_int8_weights(modules, int8_weights)
    manifest = {"openvino_version": ov.__version__, "export_format": EXPORT_FORMAT, "components": {}}
    for name, module in modules.items():
        files = []
        for part in ir_parts(module):
            shapes = [(n, ov.PartialShape(s), ov.Type.f32 if t == "f32" else ov.Type.i64) for n, s, t in part.shapes]
            with torch.no_grad(), warnings.catch_warnings():
                # diffusers' shape checks warn that the trace fixes them: the IR's shapes are the intended ones
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)  # openvino traces with torch.jit
                model = ov.convert_model(part.graph.eval(), example_input=part.example, input=shapes)
            if name in int8_weights:
                model = _compress_int8(model)
            (folder / name).mkdir(parents=True, exist_ok=True)
            # full fp32 weights: save_model's default fp16 compression would change the maps by ~1e-3
            ov.save_model(model, str(folder / name / f"{part.file}.xml"), compress_to_fp16=False)
            files.append(f"{part.file}.xml")
        ir_files = [g for f in files for g in (f, str(Path(f).with_suffix(".bin")))]
        manifest["components"][name] = {"files": files, "weights_sha256": weights_digest(module),
                                        "int8_weights": name in int8_weights,
                                        "ir_sha256": {f: file_sha256(folder / name / f) for f in ir_files}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _compress_int8(model):
    try:
        import nncf
    except ImportError as err:
        raise ImportError(f"int8 weight compression needs the nncf package: {INSTALL_HINT}") from err
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


# ---------------------------------------------------------------------------------------------- finding IR
def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where IR exported on first use goes: ``cache_dir``, else ``$DDAD_HUB_CACHE``, else ``~/.cache/ddad_hub``."""
    root = cache_dir or os.environ.get("DDAD_HUB_CACHE") or Path.home() / ".cache" / "ddad_hub"
    return Path(root) / "openvino"


def _matches(folder: Path, digests: dict[str, str], int8_weights: tuple[str, ...]) -> bool:
    """Whether ``folder`` holds IR of exactly these weights (and int8 choice); raises if it holds stale IR."""
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        return False
    damaged = (f"{manifest_file} is damaged ({{}}): export again with pipe.export_openvino(folder), or delete it "
               "to export into the cache on first use")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PipelineFolderError(damaged.format(err)) from err
    if not isinstance(manifest, dict):
        raise PipelineFolderError(damaged.format("not a JSON object"))
    found = manifest.get("export_format", 1)
    if found != EXPORT_FORMAT:
        age = "a newer ddad-hub's" if isinstance(found, int) and found > EXPORT_FORMAT else "an earlier"
        logger.warning("%s holds OpenVINO IR of %s export format (%s; this ddad-hub reads %s); not using it", folder,
                       age, found, EXPORT_FORMAT)
        return False
    manifest = manifest.get("components")
    if not isinstance(manifest, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("weights_sha256"), str) and isinstance(e.get("files"), list)
            for e in manifest.values()):
        raise PipelineFolderError(damaged.format("its components are not as an export writes them"))
    for name, digest in digests.items():
        entry = manifest.get(name)
        if entry is None or entry["weights_sha256"] != digest:
            raise PipelineFolderError(f"{folder} holds OpenVINO IR that was not exported from its current '{name}' "
                                      "weights; export it again with pipe.export_openvino(folder), or delete "
                                      f"{manifest_file} to export into the cache on first use")
        if entry.get("int8_weights", False) != (name in int8_weights):
            return False
        ir_files = [g for f in entry["files"] for g in (f, str(Path(f).with_suffix(".bin")))]
        missing = [f for f in ir_files if not (folder / name / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder / name} lacks the OpenVINO IR {missing} its {MANIFEST} lists")
        # a damaged .bin of the right size loads and computes NaN; IR exported before the digests were kept is
        # used unchecked
        for file, digest in entry.get("ir_sha256", {}).items():
            if file_sha256(folder / name / file) != digest:
                raise PipelineFolderError(f"{folder / name / file} is damaged (it is not the file exported with "
                                          f"{MANIFEST}): export it again with pipe.export_openvino(folder)")
    return True


def exported_int8_weights(folder: str | os.PathLike | None) -> tuple[str, ...]:
    """The components whose IR in ``folder`` was exported with int8 weights (none without a manifest): a plain
    load uses IR as it was shipped."""
    manifest_file = Path(folder) / MANIFEST if folder is not None else None
    if manifest_file is None or not manifest_file.is_file():
        return ()
    try:
        components = json.loads(manifest_file.read_text()).get("components", {})
        return tuple(sorted(name for name, entry in components.items() if entry.get("int8_weights")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):  # damaged: _matches names it
        return ()


def find_or_export(
    components: dict[str, Any],
    folder: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    int8_weights: tuple[str, ...] = (),
) -> Path:
    """The folder with IR for these components' weights: ``folder`` if it has them, else a cache folder (exported
    there now if this is the first use)."""
    modules = exportable(components)
    digests = {name: weights_digest(m) for name, m in modules.items()}
    if folder is not None and _matches(Path(folder), digests, tuple(int8_weights)):
        return Path(folder)
    ov = require_openvino()
    key = hashlib.sha256(json.dumps([ov.__version__, EXPORT_FORMAT, sorted(digests.items()),
                                     sorted(int8_weights)]).encode())
    target = cache_root(cache_dir) / key.hexdigest()[:24]
    if target.is_dir():  # the cache's own folder for these weights: used if complete, else made again
        try:
            if _matches(target, digests, tuple(int8_weights)):
                return target
            why = f"no usable {MANIFEST}"
        except (PipelineFolderError, FileNotFoundError) as err:
            why = str(err)
        logger.warning("the cached OpenVINO export %s is incomplete or damaged (%s); exporting again", target, why)
        shutil.rmtree(target, ignore_errors=True)
    logger.warning("exporting %s to OpenVINO IR in %s (once; pipe.export_openvino(folder) ships IR with a pipeline)",
                   ", ".join(modules), target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    except OSError as err:  # no permission, a read-only file system, a full disk
        raise type(err)(f"cannot write the OpenVINO export cache {target.parent} ({err}): set DDAD_HUB_CACHE "
                              "or pass openvino_cache_dir= to a writable folder, or ship IR with "
                              "pipe.export_openvino(folder)") from err
    try:
        export_components(modules, staging, int8_weights)
        try:
            staging.rename(target)  # atomic: a concurrent export of the same weights leaves one complete folder
        except OSError:
            if not (target.is_dir() and _matches(target, digests, tuple(int8_weights))):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------- stand-ins
class CompiledNetwork:
    """One compiled IR: torch tensors in, fp32 torch tensors out. One inference at a time (a lock), so a shared
    pipeline stays correct under concurrent requests."""

    def __init__(self, core, xml: Path, properties: dict):
        self.xml = xml
        try:
            model = core.read_model(str(xml))
        except RuntimeError as err:
            raise PipelineFolderError(f"the OpenVINO IR {xml} (with its .bin) cannot be read, it is damaged: export "
                                      f"it again with pipe.export_openvino(folder), or delete its folder's {MANIFEST} "
                                      f"({err})") from err
        try:
            self.compiled = core.compile_model(model, "CPU", properties)
        except RuntimeError as err:  # the IR is fine; this CPU or these settings are not
            raise RuntimeError(f"OpenVINO's CPU plugin could not compile {xml} with {properties}: {err}") from err
        self.request = self.compiled.create_infer_request()
        self.float_inputs = [i.get_element_type().is_real() for i in self.compiled.inputs]
        self.lock = threading.Lock()

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        arrays = []
        for x, is_float in zip(inputs, self.float_inputs):
            x = x.detach().cpu()
            x = x.float() if is_float else x.long()
            arrays.append(np.ascontiguousarray(x.numpy()))
        with self.lock:
            self.request.infer(arrays)
            outputs = [torch.from_numpy(self.request.get_output_tensor(i).data.copy())
                       for i in range(len(self.compiled.outputs))]
        if arrays and arrays[0].size and any(out.numel() == 0 for out in outputs):
            # seen with int8 weights under a oneDNN instruction-set cap: no error, an empty batch back
            raise RuntimeError(f"OpenVINO returned an empty output for {self.xml} on this CPU ({machine_summary()}); "
                               "if its weights are int8, load the pipeline with openvino_int8_weights=() instead")
        return outputs


def _int8_mismatch(network: CompiledNetwork, example: tuple, expected: list[torch.Tensor],
                   tolerance: float) -> str | None:
    """What is wrong with ``network``'s outputs on ``example`` against PyTorch's ``expected`` (``None``: nothing)."""
    try:
        got = network(*example)
    except RuntimeError as err:
        return str(err)
    for out, ref in zip(got, expected):
        if out.shape != ref.shape:
            return f"output shape {tuple(out.shape)} instead of {tuple(ref.shape)}"
        error = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        if error > tolerance:
            return f"outputs off by {error:.0%} of their largest value"
    return None


def check_int8_networks(components: dict[str, Any], stand_ins: dict[str, OVModel], int8_weights: tuple[str, ...],
                        tolerance: float = 0.1) -> None:
    """Run each int8-weight network once on its export example and compare it with the PyTorch module: refuse
    (before the pipeline switches backends) networks this CPU cannot run correctly. Int8 weights move the outputs
    by well under 1% of their largest value; an unsupported kernel gives an empty or unrelated output."""
    modules = exportable(components)
    for name in int8_weights:
        stand_in = stand_ins[name]
        # every compiled network of the stand-in (an autoencoder: encoder, decoder; a feature encoder's fp32 twin for
        # the memory), each checked against the IR part it was compiled from, known by its file's name
        compiled = [v for v in vars(stand_in).values() if isinstance(v, CompiledNetwork)]
        twin = getattr(stand_in, "full_precision", None)
        if twin is not None:
            compiled.append(twin.network)
        for part in ir_parts(modules[name]):
            networks = [n for n in compiled if Path(n.xml).stem == part.file]
            if not networks:
                raise RuntimeError(f"no compiled network of '{name}' was read from its IR part {part.file}.xml")
            with torch.no_grad():
                expected = part.graph(*part.example)
            expected = list(expected) if isinstance(expected, list | tuple) else [expected]  # every encoder stage
            for network in networks:
                why = _int8_mismatch(network, part.example, expected, tolerance)
                if why:
                    break
            if why:
                raise RuntimeError(f"OpenVINO cannot run '{name}' with int8 weights correctly on this CPU "
                                   f"({machine_summary()}): {why}. Load it with openvino_int8_weights=() (fp32 "
                                   "weights); the pipeline is unchanged")


class OVModel:
    """What a stand-in shares with the torch module it replaces: its ``config``, ``device``, ``dtype``."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, config):
        self.config = config

    def eval(self) -> OVModel:
        return self

    def to(self, *args, **kwargs) -> OVModel:
        """A no-op: compiled models run on OpenVINO's CPU plugin in the precision chosen at load."""
        return self


class OVGuidedDenoiser(OVModel):
    """Stand-in for DiAD's SG network: the whole guided denoiser, ``sg_network(sample, timestep, image)`` -> the
    noise estimate (what ``DiADPipeline.predict_noise`` computes from the SG network and the U-Net in PyTorch)."""

    def __init__(self, config, network: CompiledNetwork, hint_scale: int):
        super().__init__(config)
        self.network, self._hint_scale = network, hint_scale

    def hint_scale(self) -> int:
        return self._hint_scale

    def __call__(self, sample: torch.Tensor, timestep, image: torch.Tensor) -> torch.Tensor:
        timestep = torch.as_tensor(timestep).reshape(-1).expand(sample.shape[0])
        return self.network(sample, timestep, image)[0]


class OVUNet2DModel(OVModel):
    """Stand-in for ``UNet2DModel``: ``unet(sample, timestep).sample``."""

    def __init__(self, config, network: CompiledNetwork):
        super().__init__(config)
        self.network = network

    def __call__(self, sample: torch.Tensor, timestep, return_dict: bool = True):
        from diffusers.models.unets.unet_2d import UNet2DOutput

        timestep = torch.as_tensor(timestep).reshape(-1).expand(sample.shape[0])
        out = self.network(sample, timestep)[0]
        return UNet2DOutput(sample=out) if return_dict else (out,)


@dataclass
class _Posterior:
    """The part of diffusers' ``DiagonalGaussianDistribution`` the pipeline uses: its mean."""

    mean: torch.Tensor

    def mode(self) -> torch.Tensor:
        return self.mean


class OVAutoencoderKL(OVModel):
    """Stand-in for ``AutoencoderKL``: ``encode(x).latent_dist.mean`` and ``decode(z).sample``."""

    def __init__(self, config, encoder: CompiledNetwork, decoder: CompiledNetwork):
        super().__init__(config)
        self.encoder, self.decoder = encoder, decoder

    def encode(self, images: torch.Tensor, return_dict: bool = True):
        from diffusers.models.modeling_outputs import AutoencoderKLOutput

        posterior = _Posterior(self.encoder(images)[0])
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, latents: torch.Tensor, return_dict: bool = True):
        from diffusers.models.autoencoders.vae import DecoderOutput

        out = self.decoder(latents)[0]
        return DecoderOutput(sample=out) if return_dict else (out,)


class OVFeatureEncoder(OVModel):
    """Stand-in for :class:`~ddad_hub.models.feature_encoder.FeatureEncoder`: ``encoder(x)`` -> list of maps."""

    def __init__(self, config, network: CompiledNetwork, channels: list[int],
                 full_precision: OVFeatureEncoder | None = None):
        super().__init__(config)
        self.network, self.channels = network, channels
        # the same IR compiled in fp32, for the feature memory, whose bank, score bins and statistics were made in
        # fp32 (PyTorch runs the memory's pass outside autocast too); None when this one is fp32 already
        self.full_precision = full_precision

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        feats = self.network(images)
        # every stage of the PyTorch encoder gives ceil(size / stride); an IR that does not was exported wrongly
        h, w = images.shape[-2:]
        for feat, stride in zip(feats, self.config.feature_strides):
            if tuple(feat.shape[-2:]) != (-(-h // stride), -(-w // stride)):
                raise RuntimeError(f"the OpenVINO feature encoder gave {tuple(feat.shape[-2:])} features at stride "
                                   f"{stride} for a {h}x{w} input; its IR does not match the PyTorch encoder: "
                                   "delete it (or the ddad_hub cache) to export it again")
        return feats


@functools.lru_cache(maxsize=1)
def _core():
    """One OpenVINO ``Core`` for the process, as OpenVINO advises: every pipeline's compiled models share it."""
    return require_openvino().Core()


def load_stand_ins(
    components: dict[str, Any], ir_folder: str | os.PathLike, precision: str = "f32", threads: int | None = None,
    properties: dict | None = None,
) -> dict[str, OVModel]:
    """Compiled stand-ins for the exportable ``components`` from the IR in ``ir_folder``.

    ``precision`` is OpenVINO's inference precision ("f32" or "bf16"); ``threads`` defaults to torch's thread
    count, so ``torch.set_num_threads`` governs both backends. ``properties`` adds or overrides CPU plugin settings.
    """
    core = _core()  # one Core for the process: with one per pipeline, destroying two of them left the process
    # crashing (SIGSEGV) at its next Python signal handler (OpenVINO 2026, this CPU)
    props = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
             "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), **(properties or {})}
    folder = Path(ir_folder)
    stand_ins = {}
    for name, module in exportable(components).items():
        nets = [CompiledNetwork(core, folder / name / f"{part.file}.xml", props) for part in ir_parts(module)]
        if hasattr(module, "sg_network"):  # a GuidedDenoiser: DiAD's SG network and U-Net in one graph
            stand_ins[name] = OVGuidedDenoiser(module.sg_network.config, nets[0], module.sg_network.hint_scale())
        elif len(nets) == 2:
            stand_ins[name] = OVAutoencoderKL(module.config, *nets)
        elif hasattr(module, "channels"):
            fp32 = None
            if precision != "f32":
                xml = folder / name / f"{ir_parts(module)[0].file}.xml"
                fp32 = OVFeatureEncoder(module.config, CompiledNetwork(core, xml, {**props, "INFERENCE_PRECISION_HINT":
                                                                                   "f32"}), list(module.channels))
            stand_ins[name] = OVFeatureEncoder(module.config, nets[0], list(module.channels), full_precision=fp32)
        else:
            stand_ins[name] = OVUNet2DModel(module.config, nets[0])
    if "sg_network" in stand_ins and components.get("unet") is not None:  # DiAD: the U-Net runs inside that graph;
        stand_ins["unet"] = OVModel(components["unet"].config)  # its config stays (sizes), its weights need not
    return stand_ins


# ---------------------------------------------------------------------------------------------- pipelines
def copy_records(source: str | os.PathLike | None, folder: str | os.PathLike, test_results: bool = True) -> list[str]:
    """Copy a pipeline folder's card, licence terms and training record (and, with ``test_results``, its test
    results) into the folder it was exported to, over what an earlier model left there, so the export is a complete
    pipeline folder that names its data's terms. Returns the names copied."""
    from ..model_card import LICENSE_FILE, TEST_RESULT_FILES, discard_test_results, write_card

    if not source or not Path(source).is_dir() or Path(source).resolve() == Path(folder).resolve():
        return []
    if not test_results:  # measured on other networks than the exported ones: neither the source's nor older ones
        discard_test_results(folder)
    names = ("README.md", LICENSE_FILE, "training_info.json") + (TEST_RESULT_FILES if test_results else ())
    copied = [name for name in names if (Path(source) / name).is_file()]
    for name in copied:
        shutil.copy2(Path(source) / name, Path(folder) / name)
    if not test_results and "training_info.json" in copied:  # the card, rendered again, no longer shows them
        write_card(folder)
    return copied


class OpenVINOMixin:
    """``export_openvino`` and ``to_openvino`` for a ``DiffusionPipeline`` subclass; its networks are found by type.

    The pipeline class must define ``default_autocast_dtype()`` (its precision policy, which OpenVINO follows).
    """

    backend: str = "pytorch"

    def export_openvino(self, folder: str | os.PathLike, int8_weights: tuple[str, ...] | list[str] = ()) -> None:
        """Save the pipeline (``save_pretrained``) and OpenVINO IR of its networks into ``folder``.

        ``from_pretrained(folder, backend="openvino")`` then loads the IR without exporting. ``int8_weights``
        (e.g. ``("unet",)``) compresses those networks' weights to int8 with NNCF.
        """
        if self.backend != "pytorch":
            raise ValueError("export_openvino needs the PyTorch pipeline; load it with backend='pytorch'")
        require_openvino()
        # before anything is written: a folder without its IR would be left behind
        check_int8_weights(exportable(self.components), int8_weights)
        self.save_pretrained(folder)
        export_components(self.components, folder, tuple(int8_weights))
        # int8 weights score a little differently: the source's test results are not this export's
        copy_records(getattr(self, "name_or_path", None), folder, test_results=not int8_weights)

    def to_openvino(
        self,
        folder: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        int8_weights: tuple[str, ...] | list[str] | None = None,
        properties: dict | None = None,
    ):
        """Replace the networks by compiled OpenVINO models, in place; returns the pipeline.

        IR comes from ``folder`` (the folder the pipeline was loaded from) if it holds IR of these weights, else
        from the cache, exported there on first use. ``int8_weights`` ``None`` takes the folder's IR as it was
        exported (int8 where ``export_openvino`` compressed it); ``()`` asks for fp32 weights throughout.
        Precision follows ``default_autocast_dtype()``: bf16 where the
        CPU has native bf16 and ``compute_dtype`` is "auto", fp32 otherwise; it is fixed at this point, so a call's
        ``autocast_dtype`` no longer changes it.
        """
        if self.backend != "pytorch":
            return self
        require_openvino()
        components = self.components
        int8_weights = exported_int8_weights(folder) if int8_weights is None else tuple(int8_weights)
        ir = find_or_export(components, folder, cache_dir, int8_weights)
        precision = "bf16" if self.default_autocast_dtype() == torch.bfloat16 else "f32"
        stand_ins = load_stand_ins(components, ir, precision, properties=properties)
        check_int8_networks(components, stand_ins, int8_weights)
        for name, stand_in in stand_ins.items():
            # object.__setattr__: diffusers' __setattr__ would rewrite model_index.json's entry to the stand-in
            object.__setattr__(self, name, stand_in)
        logger.info("OpenVINO runs %s in %s (%s; IR from %s)", ", ".join(exportable(components)), precision,
                    machine_summary(), ir)
        self.backend = "openvino"
        self.openvino_precision = precision
        self.openvino_folder = str(ir)
        return self

    def save_pretrained(self, *args, **kwargs):
        if self.backend != "pytorch":
            raise ValueError("this pipeline runs OpenVINO models; save the PyTorch pipeline it was loaded from")
        return super().save_pretrained(*args, **kwargs)
