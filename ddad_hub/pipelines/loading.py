"""Load any saved ddad-hub pipeline by the class its ``model_index.json`` names."""

from __future__ import annotations

import importlib
import json
import os

from ..model_info import PipelineFolderError

# pipeline class name -> module that defines it (imported on first use)
PIPELINE_CLASSES = {
    "DDADPipeline": "ddad_hub.pipelines.pipeline_ddad",
    "DiADPipeline": "ddad_hub.pipelines.pipeline_diad",
}


def pipeline_class_name(path: str | os.PathLike) -> str:
    """The ``_class_name`` of a local pipeline folder (``DDADPipeline`` for a folder that names none)."""
    index = os.path.join(os.fspath(path), "model_index.json")
    if not os.path.isfile(index):
        inner = os.path.join(os.fspath(path), "pipeline")
        hint = (f" ({path} is a training run's folder: its pipeline is {inner})"
                if os.path.isfile(os.path.join(inner, "model_index.json")) else "")
        raise FileNotFoundError(f"{path} is not a saved pipeline: model_index.json is missing{hint}")
    try:
        with open(index) as f:
            values = json.load(f)
    except json.JSONDecodeError as err:
        raise PipelineFolderError(f"{index} is not valid JSON: {err}") from err
    if not isinstance(values, dict):
        raise PipelineFolderError(f"{index} holds no JSON object: it is not a pipeline's index")
    return values.get("_class_name", "DDADPipeline")


def pipeline_folder(pretrained_model_name_or_path: str | os.PathLike, kwargs: dict, backend: str = "pytorch") -> str:
    """A local folder as it is, or a Hub repo id's snapshot (downloaded, or from the cache when offline).

    Takes the Hub options (``revision``, ``cache_dir``, ``token``, ``local_files_only``) and ``subfolder`` (a
    pipeline saved inside a folder or repo that holds several) out of ``kwargs``. Only configs, safetensors weights
    and cards are fetched, plus OpenVINO IR for ``backend="openvino"``.
    """
    path = os.path.expanduser(os.fspath(pretrained_model_name_or_path))
    subfolder = (kwargs.pop("subfolder", None) or "").rstrip("/")
    if subfolder and (os.path.isabs(subfolder) or "\\" in subfolder
                      or any(part in ("", ".", "..") for part in subfolder.split("/"))):
        raise ValueError(f"subfolder={subfolder!r} must be a relative path inside the folder or repo, such as "
                         "'transistor' or 'line/transistor'")
    if os.path.isdir(path):
        inner = os.path.join(path, subfolder) if subfolder else path
        if not os.path.isdir(inner):
            raise FileNotFoundError(f"{path} has no subfolder {subfolder!r}")
        return inner
    if looks_like_a_path(path):
        why = (f"{path.split('/')[0]}/ is a local folder, so this is a path, not a Hub repo id" if "/" in path
               and os.path.isdir(path.split("/")[0]) else "a Hub repo id has the form 'owner/name'")
        raise FileNotFoundError(f"no pipeline folder at {path} ({why})")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.md", *(["*.xml", "*.bin"] if backend == "openvino" else [])]
    snapshot = snapshot_download(
        repo_id=path, revision=kwargs.pop("revision", None), cache_dir=kwargs.pop("cache_dir", None),
        token=kwargs.pop("token", None), local_files_only=kwargs.pop("local_files_only", False),
        allow_patterns=[f"{subfolder}/{p}" for p in patterns] if subfolder else patterns,
    )
    if subfolder and not os.path.isdir(os.path.join(snapshot, subfolder)):
        raise FileNotFoundError(f"the Hub repo {path} has no pipeline in subfolder {subfolder!r}")
    return os.path.join(snapshot, subfolder) if subfolder else snapshot


def looks_like_a_path(name: str) -> bool:
    """True for what cannot be a Hub repo id ('name' or 'owner/name') and so must be a local folder: absolute or
    relative paths, more than one '/', a backslash; and 'owner/name' where ``owner`` is a local folder (a typo in
    ``models/<name>`` is a missing folder, not a repo to download)."""
    return (os.path.isabs(name) or name.startswith(("./", "../", "~")) or name.count("/") > 1 or "\\" in name
            or os.path.exists(name) or ("/" in name and os.path.isdir(name.split("/")[0])))


def check_class(path: str | os.PathLike, cls: type) -> None:
    """Refuse a folder saved from another pipeline class: loading it as ``cls`` would drop its other components."""
    name = pipeline_class_name(path)
    if name != cls.__name__:
        raise PipelineFolderError(f"{path} holds a {name}, not a {cls.__name__}: load it with "
                                  "ddad_hub.load_pipeline(path)"
                                  + (f" or {name}.from_pretrained(path)" if name in PIPELINE_CLASSES else ""))


def load_pipeline(pretrained_model_name_or_path: str | os.PathLike, **kwargs):
    """``from_pretrained`` of whichever pipeline class the folder or Hub repo was saved from.

    Scripts and the app use this, so they take a ``DDADPipeline`` or a ``DiADPipeline`` alike. A Hub repo id is
    resolved to its (cached) snapshot first; keyword arguments go to ``from_pretrained``.
    """
    path = pipeline_folder(pretrained_model_name_or_path, kwargs, kwargs.get("backend", "pytorch"))
    name = pipeline_class_name(path)
    if name not in PIPELINE_CLASSES:
        raise PipelineFolderError(f"{path} holds a {name}, which ddad-hub cannot load (known: "
                                  f"{', '.join(PIPELINE_CLASSES)})")
    cls = getattr(importlib.import_module(PIPELINE_CLASSES[name]), name)
    return cls.from_pretrained(path, **kwargs)
