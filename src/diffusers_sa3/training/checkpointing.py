"""Output-folder and resume rules shared by the training scripts of `training_examples/`.

Nothing already written is lost by a mistake on the command line: a non-empty `--output_dir` is written into only
to resume a checkpoint that is really there, or with `--overwrite_output_dir`; a `--resume_from_checkpoint` path that
does not exist is an error, never a silent restart from step 0.
"""

import os
import re
from typing import List, Optional


_CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(output_dir: str) -> List[str]:
    """Names of the `checkpoint-N` folders in `output_dir`, oldest (smallest N) first."""
    if not os.path.isdir(output_dir):
        return []
    found = [
        name
        for name in os.listdir(output_dir)
        if _CHECKPOINT_PATTERN.match(name) and os.path.isdir(os.path.join(output_dir, name))
    ]
    return sorted(found, key=lambda name: int(_CHECKPOINT_PATTERN.match(name).group(1)))


def check_output_dir(output_dir: str, overwrite_output_dir: bool, resume_from_checkpoint: Optional[str]) -> None:
    """
    Raises a `ValueError` (naming the flag, the value and the fix) unless the run may write into `output_dir`: it is
    missing or empty, `overwrite_output_dir` is set, or `resume_from_checkpoint` names a checkpoint that exists
    (`"latest"`: one in `output_dir`).
    """
    if resume_from_checkpoint not in (None, "latest"):
        _require_checkpoint_folder(resume_from_checkpoint)
    if not os.path.isdir(output_dir) or not os.listdir(output_dir) or overwrite_output_dir:
        return
    if resume_from_checkpoint is None:
        raise ValueError(
            f"`--output_dir` {output_dir!r} exists and is not empty. Pass `--overwrite_output_dir` to write into "
            "it, or `--resume_from_checkpoint latest` to continue the run saved there."
        )
    if resume_from_checkpoint == "latest" and not checkpoint_dirs(output_dir):
        raise ValueError(
            f"`--resume_from_checkpoint latest`: `--output_dir` {output_dir!r} is not empty but holds no "
            "`checkpoint-N` folder to continue. Pass `--overwrite_output_dir` to start a new run there, or choose "
            "another `--output_dir`."
        )


def resolve_resume_checkpoint(output_dir: str, resume_from_checkpoint: Optional[str]) -> Optional[str]:
    """
    The checkpoint folder to resume from: `None` when not resuming, or for `"latest"` when `output_dir` holds no
    checkpoint yet (a new run); the newest `checkpoint-N` for `"latest"`; else the given folder, which must exist.
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        found = checkpoint_dirs(output_dir)
        return os.path.join(output_dir, found[-1]) if found else None
    _require_checkpoint_folder(resume_from_checkpoint)
    return resume_from_checkpoint


def resume_training_state(accelerator, output_dir: str, resume_from_checkpoint: Optional[str], logger) -> int:
    """
    Loads the accelerate state to resume from (see [`resolve_resume_checkpoint`]) and returns its step, or 0 for a
    new run.
    """
    path = resolve_resume_checkpoint(output_dir, resume_from_checkpoint)
    if path is None:
        if resume_from_checkpoint:
            logger.info(f"No checkpoint in {output_dir!r} yet; starting a new run.")
        return 0
    logger.info(f"Resuming from {path}")
    accelerator.load_state(path)
    return checkpoint_step(path)


def _require_checkpoint_folder(path: str) -> None:
    if not os.path.isdir(path):
        raise ValueError(
            f"`--resume_from_checkpoint` {path!r} is not a folder; pass an existing `checkpoint-N` folder, or "
            "`latest` to continue the newest checkpoint in `--output_dir`."
        )


def checkpoint_step(path: str) -> int:
    """The step N of a `checkpoint-N` folder."""
    match = _CHECKPOINT_PATTERN.match(os.path.basename(os.path.normpath(path)))
    if match is None:
        raise ValueError(f"`--resume_from_checkpoint` {path!r} is not a `checkpoint-N` folder.")
    return int(match.group(1))
