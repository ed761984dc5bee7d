"""How the scripts in ``training/`` end on a user's mistake: one line that names it, not a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from .data import DatasetLayoutError
from .image_utils import ImageLoadError
from .model_info import PipelineFolderError
from .presets import PresetError

# Mistakes in what a user passed (a folder's layout, an image, a preset, a path); other errors keep their traceback.
USER_ERRORS = (DatasetLayoutError, ImageLoadError, PresetError, PipelineFolderError, FileNotFoundError, FileExistsError,
               NotADirectoryError, IsADirectoryError, PermissionError)


def run(main: Callable[[], object]) -> None:
    """Call a script's ``main``; a :data:`USER_ERRORS` error, or a refusal the script ends with
    ``SystemExit("<message>")``, ends it with ``<script>: error: <message>`` and exit code 2, as argparse ends on a
    wrong flag. ``DDAD_HUB_TRACEBACK=1`` shows the traceback of those errors instead (a refusal has none to show).
    Exits with a number (an interrupted run's 130 or 143) pass as they are."""
    try:
        main()
    except USER_ERRORS as err:
        if os.environ.get("DDAD_HUB_TRACEBACK"):
            raise
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except SystemExit as stop:
        if not isinstance(stop.code, str):
            raise
        print(f"{Path(sys.argv[0]).name}: error: {stop.code}", file=sys.stderr)
        raise SystemExit(2) from None


def check_modes(pipe, modes: list[str], flag: str) -> None:
    """Refuse, before any work or output, a mode ``pipe`` cannot run: ``SystemExit`` naming the flag, the reason and
    the modes the model offers (:func:`run` prints it as one line, exit code 2)."""
    for mode in modes:
        try:
            pipe.check_mode(mode)
        except ValueError as err:
            offered = ", ".join(pipe.available_modes())
            raise SystemExit(f"{flag} {mode}: {err} (this model offers {offered})") from None


def add_pipeline_arguments(parser, help: str, required: bool = True) -> None:
    """``--pipeline`` (a folder or Hub repo id) and ``--subfolder`` (the pipeline inside it, for a folder or repo
    that holds several), as ``from_pretrained(..., subfolder=)`` takes them."""
    parser.add_argument("--pipeline", required=required, default=None, help=help)
    parser.add_argument("--subfolder", default=None,
                        help="the pipeline's folder inside --pipeline, for a folder or Hub repo holding several "
                             "(e.g. transistor, or line/transistor)")


def pipeline_source(args) -> str | None:
    """``args.pipeline`` (with ``args.subfolder``) as a local folder: a Hub repo id's cached snapshot, downloaded
    if need be. ``None`` without ``--pipeline``; ``--subfolder`` alone is refused."""
    from .pipelines.loading import pipeline_folder

    if not args.pipeline:
        if getattr(args, "subfolder", None):
            raise SystemExit("--subfolder names a pipeline inside --pipeline; give --pipeline too")
        return None
    try:
        return pipeline_folder(args.pipeline, {"subfolder": getattr(args, "subfolder", None)})
    except ValueError as err:  # a subfolder outside the folder or repo
        raise SystemExit(f"--subfolder: {err}") from None


def pipeline_label(args) -> str:
    """How results name the pipeline: ``--pipeline``, with ``/--subfolder`` when one was given."""
    return args.pipeline + (f"/{args.subfolder.strip('/')}" if getattr(args, "subfolder", None) else "")

