"""Uploading a pipeline to the Hugging Face Hub with its own model card, training record and test results.

diffusers' ``push_to_hub`` uploads what ``save_pretrained`` writes with a generic card (``library_name:
diffusers`` and nothing else): the licence of the training data (MVTec AD is non-commercial), the test metrics and
how to load the pipeline would be lost. This module uploads the same weights with the card ``ddad_hub.model_card``
renders from the folder the pipeline came from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path, PureWindowsPath

from ..model_card import TEST_RESULT_FILES

# what a trained pipeline folder holds besides the weights, and an upload carries along
RECORDS = ("training_info.json", *TEST_RESULT_FILES)


def strip_local_paths(folder: str | os.PathLike) -> None:
    """Remove the ``_name_or_path`` entries diffusers writes into configs: the loading machine's own paths."""
    for config in Path(folder).rglob("*.json"):
        if config.name in RECORDS:
            continue
        values = json.loads(config.read_text())
        if isinstance(values, dict) and values.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


# how a path of the machine that trained or evaluated the model starts (absolute, home, ./ ../ relative, a drive)
_PATH_START = r"(?:/|~|\.{1,2}[/\\]|[A-Za-z]:[/\\])"
_PATH = re.compile(f"^{_PATH_START}")
_NEXT_PATH = re.compile(f", (?={_PATH_START})")  # where a multi-class record joins its paths


def without_local_paths(value):
    """A training record or test results with every path of the machine that wrote them cut to its last part
    (``/home/me/data/transistor`` -> ``transistor``): the folder names the record's readers need, no one's disk."""
    if isinstance(value, dict):
        return {key: without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_local_paths(item) for item in value]
    if isinstance(value, str) and "\n" not in value and _PATH.match(value):
        return ", ".join(PureWindowsPath(part.rstrip("/\\")).name for part in _NEXT_PATH.split(value))
    return value


def push_pipeline(
    pipe,
    repo_id: str,
    card_folder: str | os.PathLike | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    create_pr: bool = False,
) -> str:
    """Upload ``pipe`` to ``repo_id`` (created if needed) and return the commit's URL.

    The upload is what ``save_pretrained`` writes, without local paths, plus the training record and test results
    of ``card_folder`` (default: the folder the pipeline was loaded from; their paths cut to folder names) and the
    model card rendered from them for ``repo_id`` (with ``LICENSE.md`` when the data's terms have no Hub licence
    id). Without a training record the upload has no card, and a warning says so. The pipeline is saved
    before anything reaches the Hub, so an OpenVINO pipeline (which cannot be saved) leaves no empty repository.
    """
    from huggingface_hub import create_repo, upload_folder

    from ..model_card import write_card

    source = card_folder or getattr(pipe, "name_or_path", None)  # None: built in memory, no folder to read
    source = Path(source) if source else None
    with tempfile.TemporaryDirectory(prefix="ddad-upload-") as tmp:
        folder = Path(tmp)
        pipe.save_pretrained(folder)
        strip_local_paths(folder)
        if source is not None and (source / "training_info.json").is_file():
            for name in RECORDS:
                if name.endswith(".json") and (source / name).is_file():
                    record = without_local_paths(json.loads((source / name).read_text()))
                    (folder / name).write_text(json.dumps(record, indent=2) + "\n")
                elif (source / name).is_file():
                    shutil.copy2(source / name, folder / name)
            write_card(folder, repo_id=repo_id)
        else:
            where = f"{source} has no training_info.json" if source is not None else "the pipeline has no folder"
            warnings.warn(f"{where}, so the upload has no model card: the data it was trained on and their licence "
                          "are not stated (pass card_folder=<its trained folder>)", stacklevel=3)
        repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        commit = upload_folder(repo_id=repo_id, folder_path=folder, token=token, create_pr=create_pr,
                               commit_message=commit_message or "Upload ddad-hub pipeline with its model card")
    return str(commit)
