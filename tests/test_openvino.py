"""The OpenVINO backend: export, load, the same maps as PyTorch fp32, D3AD mode, IR exported into a cache on first
use, stale IR refused. Skipped where openvino is not installed (it is the optional extra ``[openvino]``)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline

from ddad_hub import load_pipeline
from ddad_hub.backends import openvino as ov_backend
from ddad_hub.dynamic_noise import score_bin_edges
from ddad_hub.models.feature_memory import FeatureMemory
from ddad_hub.pipelines.pipeline_ddad import check_pipeline_folder
from ddad_hub.presets import load_preset

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino is not installed (pip install '.[openvino]')"
)
FP32 = {"compute_dtype": "float32"}  # the PyTorch reference is fp32; OpenVINO follows the pipeline's policy


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _with_memory(pipe):
    """Add a fitted feature memory with D3AD's score bins, so both modes run."""
    memory = FeatureMemory.fit(pipe.feature_encoder, pipe.resize_to_map(_images(4, 1) * 2 - 1), coreset_ratio=0.5,
                               image_size=64, max_patches=500)
    pipe.register_modules(feature_memory=memory)
    memory.register_to_config(score_bins=score_bin_edges(pipe.first_estimate(_images(4, 2) * 2 - 1)))
    # fused mode as the recipe configures it (statistics set by hand: only the backends' agreement is tested here)
    pipe.register_to_config(fused_base="d3ad", fused_rule="sum", fused_weight=0.7,
                            fused_stats={"ddad": [0.1, 0.05], "d3ad": [0.1, 0.05], "memory": [0.5, 0.2]})
    return pipe


@pytest.fixture(scope="module", params=["pixel", "latent"])
def exported(request, tmp_path_factory):
    """(torch pipeline, folder written by export_openvino), pixel and latent variants, exported once."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install '.[openvino]')")
    pipe = _with_memory(make_tiny_pipeline(latent=request.param == "latent", threshold=0.5))
    folder = tmp_path_factory.mktemp(f"ov_{request.param}")
    pipe.export_openvino(folder)
    return pipe, folder


def _close(ov_out, pt_out) -> None:
    """The issue's bar: maps within 1% of the map maximum of PyTorch fp32; scores likewise."""
    peak = np.abs(pt_out.anomaly_maps).max()
    assert np.abs(ov_out.anomaly_maps - pt_out.anomaly_maps).max() < 0.01 * peak
    np.testing.assert_allclose(ov_out.image_scores, pt_out.image_scores, rtol=0.01)


@needs_openvino
def test_export_writes_ir_beside_a_complete_pipeline(exported):
    pipe, folder = exported
    expected = ["unet/openvino_model", "feature_encoder/openvino_model"]
    if pipe.vae is not None:
        expected += ["vae/openvino_encoder", "vae/openvino_decoder"]
    for stem in expected:
        assert (folder / f"{stem}.xml").is_file() and (folder / f"{stem}.bin").is_file()
    assert (folder / ov_backend.MANIFEST).is_file() and not (folder / "feature_memory" / "openvino_model.xml").exists()
    check_pipeline_folder(folder)  # still a valid PyTorch pipeline folder


@needs_openvino
@pytest.mark.parametrize("mode", ["ddad", "d3ad", "fused"])
def test_openvino_maps_match_pytorch_fp32(exported, mode):
    pipe, folder = exported
    images = _images(3, 0)
    gens = [torch.Generator().manual_seed(5 + i) for i in range(3)]
    reference = pipe(images, generator=gens, output_type="np", mode=mode, autocast_dtype=torch.float32)
    ov_pipe = load_pipeline(folder, backend="openvino", **FP32)
    assert ov_pipe.backend == "openvino" and ov_pipe.openvino_folder == str(folder)  # the folder's IR, no export
    assert ov_pipe.openvino_precision == "f32"
    ov_pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(5 + i) for i in range(3)]
    out = ov_pipe(images, generator=gens, output_type="np", mode=mode)
    _close(out, reference)
    np.testing.assert_array_equal(out.start_steps, reference.start_steps)  # D3AD: the same first estimate's choice
    assert out.threshold == reference.threshold


@needs_openvino
def test_the_memory_reads_in_fp32_when_openvino_runs_in_bf16(exported):
    """The bank, D3AD's score bins and fused mode's statistics were made with fp32 features; PyTorch keeps the
    memory's pass out of bf16 autocast, and OpenVINO in bf16 compiles the encoder once more in fp32 for it."""
    pipe, folder = exported
    x = _images(3, 0) * 2 - 1
    reference_maps, reference_scores = pipe.memory_maps(x)
    ov_pipe = load_pipeline(folder, backend="openvino", compute_dtype="bfloat16")
    assert ov_pipe.openvino_precision == "bf16"
    maps, scores = ov_pipe.memory_maps(x)
    torch.testing.assert_close(maps, reference_maps, rtol=1e-4, atol=1e-4 * float(reference_maps.abs().max()))
    torch.testing.assert_close(scores, reference_scores, rtol=1e-4, atol=0)


@needs_openvino
@pytest.mark.parametrize("size", [64, 96, 75, 128])
def test_exported_feature_encoder_pads_every_input_size_as_pytorch_does(exported, size):
    """The IR is traced on 64 px; real pipelines feed it 256 px maps and their memory's own size. Its SAME padding
    must follow the input (it once froze the example's, and 256 px features came out at the wrong size)."""
    pipe, folder = exported
    assert pipe.feature_encoder.config.padding == "same"
    ov_pipe = load_pipeline(folder, backend="openvino", **FP32)
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    with torch.no_grad():
        reference = pipe.feature_encoder(images)
    for ours, ref in zip(ov_pipe.feature_encoder(images), reference):
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max() < 1e-4 * ref.abs().max()


@needs_openvino
def test_a_feature_encoder_ir_answering_at_the_wrong_size_is_refused(exported):
    _, folder = exported
    encoder = load_pipeline(folder, backend="openvino", **FP32).feature_encoder
    network = encoder.network
    encoder.network = lambda x: network(x[..., ::2, ::2])  # what an IR frozen at another input size answers
    with pytest.raises(RuntimeError, match="export it again"):
        encoder(torch.rand(1, 3, 64, 64) * 2 - 1)


@needs_openvino
def test_ir_of_an_earlier_export_format_is_not_used(exported, tmp_path):
    _, folder = exported
    shutil.copytree(folder, tmp_path / "old")
    manifest = json.loads((tmp_path / "old" / ov_backend.MANIFEST).read_text())
    del manifest["export_format"]  # as written before the format was recorded
    (tmp_path / "old" / ov_backend.MANIFEST).write_text(json.dumps(manifest))
    ov_pipe = load_pipeline(tmp_path / "old", backend="openvino", openvino_cache_dir=tmp_path / "cache", **FP32)
    assert ov_pipe.openvino_folder.startswith(str(tmp_path / "cache"))  # exported afresh, the old IR left alone


@needs_openvino
def test_folder_without_ir_is_exported_into_the_cache_once(tmp_path, monkeypatch):
    pipe = make_tiny_pipeline(threshold=0.5)
    pipe.save_pretrained(tmp_path / "plain")
    cache = tmp_path / "cache"
    first = load_pipeline(tmp_path / "plain", backend="openvino", openvino_cache_dir=cache, **FP32)
    assert first.openvino_folder.startswith(str(cache)) and not (tmp_path / "plain" / ov_backend.MANIFEST).exists()

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds IR of these weights")

    monkeypatch.setattr(ov_backend, "export_components", no_export)
    again = load_pipeline(tmp_path / "plain", backend="openvino", openvino_cache_dir=cache, **FP32)
    assert again.openvino_folder == first.openvino_folder
    images = _images(2, 3)
    _close(again(images, output_type="np"), pipe(images, output_type="np", autocast_dtype=torch.float32))
    # the cache's copy damaged (same size): it is exported again, not refused
    monkeypatch.undo()
    weights = Path(first.openvino_folder) / "unet" / "openvino_model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    weights.write_bytes(bytes(data))
    renewed = load_pipeline(tmp_path / "plain", backend="openvino", openvino_cache_dir=cache, **FP32)
    _close(renewed(images, output_type="np"), pipe(images, output_type="np", autocast_dtype=torch.float32))
    # the cache's copy without its manifest (an export cut short, or the manifest deleted as an error once advised)
    # and with damaged weights: made again, not used unchecked, and the next load finds it complete
    (Path(renewed.openvino_folder) / ov_backend.MANIFEST).unlink()
    weights.write_bytes(bytes(data))
    rebuilt = load_pipeline(tmp_path / "plain", backend="openvino", openvino_cache_dir=cache, **FP32)
    assert rebuilt.openvino_folder == first.openvino_folder
    assert (Path(rebuilt.openvino_folder) / ov_backend.MANIFEST).is_file()
    _close(rebuilt(images, output_type="np"), pipe(images, output_type="np", autocast_dtype=torch.float32))


@needs_openvino
def test_a_damaged_manifest_a_newer_format_and_an_unwritable_cache_are_named(exported, tmp_path, monkeypatch,
                                                                           caplog):
    _, folder = exported
    for case, manifest in (("list", []), ("no components", {"export_format": ov_backend.EXPORT_FORMAT}),
                           ("no digest", {"export_format": ov_backend.EXPORT_FORMAT,
                                          "components": {"unet": {"files": ["openvino_model.xml"]}}})):
        copy = shutil.copytree(folder, tmp_path / case)
        (copy / ov_backend.MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match="is damaged"):
            load_pipeline(copy, backend="openvino", openvino_cache_dir=tmp_path / "cache")
    newer = shutil.copytree(folder, tmp_path / "newer")
    manifest = json.loads((newer / ov_backend.MANIFEST).read_text())
    manifest["export_format"] = ov_backend.EXPORT_FORMAT + 1
    (newer / ov_backend.MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger=ov_backend.__name__):
        ov_pipe = load_pipeline(newer, backend="openvino", openvino_cache_dir=tmp_path / "cache", **FP32)
    assert "a newer ddad-hub's export format" in caplog.text
    assert ov_pipe.openvino_folder.startswith(str(tmp_path / "cache"))

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ov_backend.tempfile, "mkdtemp", refused)
    with pytest.raises(PermissionError, match="DDAD_HUB_CACHE"):
        load_pipeline(newer, backend="openvino", openvino_cache_dir=tmp_path / "other_cache", **FP32)


@needs_openvino
def test_settings_openvino_cannot_compile_are_not_called_damaged_ir(exported):
    _, folder = exported
    with pytest.raises(RuntimeError, match="could not compile") as caught:
        load_pipeline(folder, backend="openvino", openvino_properties={"PERFORMANCE_HINT": "FAST"})
    assert "damaged" not in str(caught.value) and "delete" not in str(caught.value)


@needs_openvino
def test_an_export_is_a_complete_folder_with_the_card_licence_and_records(tmp_path):
    source = tmp_path / "trained"
    make_tiny_pipeline(threshold=0.5).save_pretrained(source)
    records = {"README.md": "# my model\n", "LICENSE.md": "Non-commercial research use only.\n",
               "training_info.json": "{}\n", "results.json": "{}\n"}
    for name, text in records.items():
        (source / name).write_text(text)
    shipped = tmp_path / "shipped"  # a folder that held another model: its card and records do not stay
    make_tiny_pipeline().save_pretrained(shipped)
    for name in records:
        (shipped / name).write_text("another model's\n")
    load_pipeline(source).export_openvino(shipped)
    for name, text in records.items():
        assert (shipped / name).read_text() == text, name
    # int8 weights were never tested: the source's test results stay behind, and the card does not show them
    info = {"preset": load_preset("cpu"), "category": "transistor", "data": "/data/transistor",
            "training": {"steps": 1, "minutes": 0.1}}
    (source / "training_info.json").write_text(json.dumps(info))
    (source / "results.json").write_text(json.dumps({"ddad": {"all": {"image_auroc": 0.123456}}}))
    int8 = tmp_path / "int8"
    int8.mkdir()
    (int8 / "results.json").write_text("{}")  # an older export's
    load_pipeline(source).export_openvino(int8, int8_weights=("unet",))
    assert (int8 / "training_info.json").is_file() and not (int8 / "results.json").exists()
    assert "0.123" not in (int8 / "README.md").read_text() and "Not evaluated yet" in (int8 / "README.md").read_text()


@needs_openvino
def test_stale_ir_is_refused_and_an_openvino_pipeline_cannot_be_saved(exported, tmp_path):
    pipe, folder = exported
    ov_pipe = load_pipeline(folder, backend="openvino")
    with pytest.raises(ValueError, match="PyTorch pipeline"):
        ov_pipe.save_pretrained(tmp_path / "copy")
    with pytest.raises(ValueError, match="backend='pytorch'"):
        ov_pipe.export_openvino(tmp_path / "copy")
    import huggingface_hub

    def no_repo(*args, **kwargs):
        raise AssertionError("a repository was created for a pipeline that cannot be uploaded")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub, "create_repo", no_repo)
        with pytest.raises(ValueError, match="PyTorch pipeline"):  # refused before anything reaches the Hub
            ov_pipe.push_to_hub("me/ov")
    shutil.copytree(folder, tmp_path / "stale")
    retrained = make_tiny_pipeline(latent=pipe.vae is not None)
    with torch.no_grad():
        retrained.unet.conv_in.weight.add_(0.1)
    retrained.save_pretrained(tmp_path / "stale")  # new weights saved over the folder: its IR is now stale
    with pytest.raises(ValueError, match="export_openvino"):
        load_pipeline(tmp_path / "stale", backend="openvino")
    # damaged IR is named, not left to OpenVINO's own error: a missing weights file, a truncated one
    missing = shutil.copytree(folder, tmp_path / "missing_bin")
    (missing / "unet" / "openvino_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="openvino_model.bin"):
        load_pipeline(missing, backend="openvino")
    truncated = shutil.copytree(folder, tmp_path / "truncated_bin")
    weights = truncated / "unet" / "openvino_model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="damaged"):
        load_pipeline(truncated, backend="openvino")
    # the same size with bytes overwritten inside loads in OpenVINO and computes NaN: the export's digest finds it
    overwritten = shutil.copytree(folder, tmp_path / "overwritten_bin")
    weights = overwritten / "unet" / "openvino_model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\xff" * 4096
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="openvino_model.bin is damaged"):
        load_pipeline(overwritten, backend="openvino")


def test_unknown_backend_and_missing_openvino_say_what_to_do(tiny_pipeline_dir, monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        load_pipeline(tiny_pipeline_dir, backend="tensorrt")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(ImportError, match=r"ddad-hub\[openvino\]"):
        load_pipeline(tiny_pipeline_dir, backend="openvino")


@needs_openvino
def test_int8_unet_weights_are_smaller_and_close(tmp_path):
    pytest.importorskip("nncf", reason="nncf is not installed (pip install '.[openvino]')")
    pipe = make_tiny_pipeline()
    manifest = ov_backend.export_components({"unet": pipe.unet}, tmp_path, int8_weights=("unet",))
    assert manifest["components"]["unet"]["int8_weights"]
    fp32_bytes = 4 * sum(p.numel() for p in pipe.unet.parameters())
    assert (tmp_path / "unet" / "openvino_model.bin").stat().st_size < 0.4 * fp32_bytes
    unet = ov_backend.load_stand_ins({"unet": pipe.unet}, tmp_path)["unet"]
    sample, t = torch.randn(2, 3, 32, 32), torch.tensor([50, 50])
    with torch.no_grad():
        reference = pipe.unet(sample, t).sample
    assert (unet(sample, t).sample - reference).abs().max() < 0.05 * reference.abs().max()
    # a folder shipped with int8 IR loads that IR as it is, without options and without exporting again
    pipe.export_openvino(tmp_path / "shipped", int8_weights=("unet",))
    shipped = load_pipeline(tmp_path / "shipped", backend="openvino", openvino_cache_dir=tmp_path / "cache")
    assert shipped.openvino_folder == str(tmp_path / "shipped") and not (tmp_path / "cache").exists()



@needs_openvino
def test_int8_networks_this_cpu_cannot_run_are_refused_at_load_and_empty_outputs_at_call(tmp_path, monkeypatch):
    """Under a oneDNN instruction-set cap (ONEDNN_MAX_CPU_ISA=AVX2) OpenVINO's int8 U-Net returned an empty batch
    without an error, or raised at the first inference; both must be named at load, leaving the pipeline as it was."""
    import threading
    from types import SimpleNamespace

    pytest.importorskip("nncf", reason="nncf is not installed (pip install '.[openvino]')")
    pipe = make_tiny_pipeline(threshold=0.5)
    pipe.set_progress_bar_config(disable=True)
    before = pipe(_images(1, 3), output_type="np").image_scores
    real_call = ov_backend.CompiledNetwork.__call__
    for broken, said in ((lambda self, *x: [torch.zeros(0, *x[0].shape[1:])], r"output shape \(0, 3, 32, 32\)"),
                         (lambda self, *x: [real_call(self, *x)[0] + 5.0], "outputs off by")):
        monkeypatch.setattr(ov_backend.CompiledNetwork, "__call__", broken)
        with pytest.raises(RuntimeError, match=f"cannot run 'unet' with int8 weights correctly.*{said}.*"
                                               r"openvino_int8_weights=\(\)"):
            pipe.to_openvino(cache_dir=tmp_path / "cache", int8_weights=("unet",))
        assert pipe.backend == "pytorch" and isinstance(pipe.unet, torch.nn.Module)
    monkeypatch.undo()
    assert np.array_equal(pipe(_images(1, 3), output_type="np").image_scores, before)
    pipe.to_openvino(cache_dir=tmp_path / "cache", int8_weights=("unet",))  # the same IR, run correctly
    assert pipe.backend == "openvino"
    # every part is checked: an autoencoder's encoder and decoder, each stage of the feature encoder (and, in bf16,
    # its fp32 twin for the memory)
    latent = make_tiny_pipeline(latent=True, threshold=0.5)
    latent.to_openvino(cache_dir=tmp_path / "cache", int8_weights=("vae", "feature_encoder"))
    assert latent.backend == "openvino" and np.isfinite(latent(_images(1, 3), output_type="np").image_scores).all()
    # each compiled network is checked against the IR part it was read from, whatever order a stand-in holds them in
    twin = make_tiny_pipeline(latent=True)  # the same seed: the same weights as the exported autoencoder
    swapped = SimpleNamespace(decoder=latent.vae.decoder, encoder=latent.vae.encoder)
    ov_backend.check_int8_networks(twin.components, {"vae": swapped}, ("vae",))
    with pytest.raises(RuntimeError, match="no compiled network of 'vae' was read from its IR part openvino_decoder"):
        ov_backend.check_int8_networks(twin.components, {"vae": SimpleNamespace(encoder=latent.vae.encoder)}, ("vae",))

    # a network answering an empty batch at call time is an error, not an empty result passed on
    empty = SimpleNamespace(data=np.zeros((0, 4), dtype=np.float32))
    network = object.__new__(ov_backend.CompiledNetwork)
    network.xml, network.float_inputs, network.lock = Path("unet/openvino_model.xml"), [True], threading.Lock()
    network.compiled = SimpleNamespace(outputs=[None])
    network.request = SimpleNamespace(infer=lambda arrays: None, get_output_tensor=lambda i: empty)
    with pytest.raises(RuntimeError, match="returned an empty output for unet/openvino_model.xml"):
        network(torch.zeros(2, 4))


REPO = Path(__file__).resolve().parents[1]


@needs_openvino
def test_the_embedded_latent_model_scores_alike_on_both_backends(tmp_path):
    """The shipped model at its real sizes (128 px autoencoder, 256 px maps and memory), which a 64 px tiny pipeline
    cannot show: a graph frozen at its export example once broke every map here. Fused mode, its default, on two
    example images: OpenVINO fp32 against PyTorch fp32."""
    from PIL import Image

    model = REPO / "models" / "ddad-transistor-cpu-latent"
    images = [Image.open(REPO / "examples" / name).convert("RGB") for name in ("misplaced.png", "good_1.png")]
    reference = load_pipeline(model, **FP32)(images, mode="fused", output_type="np")
    ov_pipe = load_pipeline(model, backend="openvino", openvino_cache_dir=tmp_path, **FP32)
    _close(ov_pipe(images, mode="fused", output_type="np"), reference)


@needs_openvino
def test_a_diad_pipeline_exports_its_sg_network_and_unet_as_one_graph_and_matches_pytorch(tmp_path):
    from ddad_hub import DDADScheduler
    from ddad_hub.models.semantic_guided import SemanticGuidedNetwork
    from ddad_hub.pipelines.pipeline_diad import DiADPipeline

    base = make_tiny_pipeline(latent=True)
    sg = SemanticGuidedNetwork.from_unet(base.unet, hint_channels=(4, 8), hint_strides=(1, 2))
    torch.manual_seed(1)
    for conv in [*sg.zero_convs, sg.mid_zero_conv]:  # trained residuals: zero convs left at zero would add nothing
        torch.nn.init.normal_(conv.weight, std=0.05)
    pipe = DiADPipeline(base.unet, sg, DDADScheduler(start_step=999, skip=250, eta=0.0, w=0.0), base.feature_encoder,
                        vae=base.vae, map_size=64, threshold=0.5, compute_dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    pipe.export_openvino(tmp_path / "ir")
    assert (tmp_path / "ir" / "sg_network" / "openvino_model.xml").is_file()
    assert not (tmp_path / "ir" / "unet" / "openvino_model.xml").exists()  # DiAD calls the U-Net only with its SG net
    ov_pipe = load_pipeline(tmp_path / "ir", backend="openvino")
    assert isinstance(ov_pipe, DiADPipeline) and ov_pipe.openvino_precision == "f32"
    assert not isinstance(ov_pipe.unet, torch.nn.Module)  # runs inside the graph: its config kept, not its weights
    with pytest.raises(ValueError, match="U-Net is exported inside sg_network"):  # before anything is written
        pipe.export_openvino(tmp_path / "int8", int8_weights=("unet",))
    assert not (tmp_path / "int8").exists()
    # the digest covers both networks' configs: an SG network of other strides does not reuse this IR
    import copy

    from ddad_hub.models.semantic_guided import GuidedDenoiser

    other = copy.deepcopy(sg)
    other.register_to_config(hint_strides=(2, 1))
    assert ov_backend.weights_digest(GuidedDenoiser(base.unet, sg)) != ov_backend.weights_digest(
        GuidedDenoiser(base.unet, other))
    ov_pipe.set_progress_bar_config(disable=True)
    images = _images(2, 0)
    reference = pipe(images, generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="np")
    out = ov_pipe(images, generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="np")
    _close(out, reference)
    pipe.save_pretrained(tmp_path / "plain")  # a folder without IR: exported into the cache on first use
    cached = load_pipeline(tmp_path / "plain", backend="openvino", openvino_cache_dir=tmp_path / "cache")
    assert Path(cached.openvino_folder).is_relative_to(tmp_path / "cache")
    _close(cached(images, generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="np"),
           reference)
    with torch.no_grad():  # one noise estimate: the compiled graph's equals PyTorch's, residuals included
        x, t, guide = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.rand(1, 3, 32, 32) * 2 - 1
        guided, reference_noise = ov_pipe.sg_network(x, t, guide), pipe.predict_noise(x, t, guide)
        assert (guided - reference_noise).abs().max() < 0.01 * reference_noise.abs().max()
        assert (guided - pipe.unet(x, t).sample).abs().max() > 0.05 * reference_noise.abs().max()


@needs_openvino
def test_signals_still_work_after_openvino_pipelines_are_dropped(tmp_path):
    """With an OpenVINO Core per pipeline, dropping two pipelines left the process crashing (SIGSEGV) at its next
    Python signal handler: a server stopped with Ctrl-C, a training run's SIGTERM. One Core serves them all."""
    import subprocess

    make_tiny_pipeline().export_openvino(tmp_path / "ir")
    script = f"""
import os, signal, torch
from ddad_hub import load_pipeline
pipes = [load_pipeline({str(tmp_path / 'ir')!r}, backend="openvino") for _ in range(2)]
for pipe in pipes:
    pipe.set_progress_bar_config(disable=True)
    pipe(torch.rand(1, 3, 32, 32), output_type="np")
del pipes, pipe
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
os.kill(os.getpid(), signal.SIGTERM)
print("handled", got)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "handled [15]" in done.stdout, (done.returncode, done.stderr[-2000:])
