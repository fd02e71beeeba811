"""Training-state checkpoints as numpy + safetensors + json, shared by both trainers.

A checkpoint folder `checkpoint-<step>/` holds the trainable LoRA weights (`lora.safetensors`), the
optimizer moments (`optimizer.safetensors`) and `state.json` (step, seed, optimizer step count). The
data order and every random draw are functions of (seed, step), so that is all an exact resume needs.
Folders appear atomically (written under a temporary name, then renamed), so a crash mid-save never
leaves a checkpoint that looks complete, and `--checkpoints_total_limit` only removes old folders
after the new one exists.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .args import UsageError

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def save_checkpoint(output_dir: str | Path, step: int, lora: dict[str, np.ndarray],
                    optimizer: dict[str, np.ndarray], state: dict, total_limit: int | None = None) -> Path:
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    staging = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.", dir=output_dir))
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in lora.items()}, str(staging / "lora.safetensors"))
        save_file({k: np.ascontiguousarray(v) for k, v in optimizer.items()}, str(staging / "optimizer.safetensors"))
        (staging / "state.json").write_text(json.dumps({"step": step, **state}, indent=2, sort_keys=True))
        if final.exists():  # re-saving the same step (a resumed run passing it again): replace whole
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if total_limit is not None:
        for old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old)
    return final


def resolve_checkpoint(resume: str | None, output_dir: str | Path) -> Path | None:
    """The folder --resume_from_checkpoint names; None for 'latest' when there is none yet."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    for candidate in (Path(resume), Path(output_dir) / resume):
        if candidate.is_dir():
            if not (candidate / "state.json").is_file():
                raise UsageError(f"--resume_from_checkpoint {resume}: {candidate} is not a checkpoint "
                                 "(no state.json); pass a checkpoint-N folder written by this trainer")
            return candidate
    raise UsageError(f"--resume_from_checkpoint {resume!r}: no such checkpoint folder; pass a checkpoint-N "
                     "folder or 'latest'")


def load_checkpoint(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    state = json.loads((folder / "state.json").read_text())
    return load_file(str(folder / "lora.safetensors")), load_file(str(folder / "optimizer.safetensors")), state


def checkpoint_step(folder: Path | None) -> int:
    """The step a resume from `folder` starts at; 0 for a new run (no folder)."""
    if folder is None:
        return 0
    return int(json.loads((folder / "state.json").read_text())["step"])


def check_matches(lora: dict[str, np.ndarray], shapes: dict[str, tuple]) -> None:
    """A checkpoint resumes only the run that wrote it: same LoRA tensors, same shapes (rank)."""
    missing = sorted(set(shapes) - set(lora))
    if missing:
        raise UsageError(f"--resume_from_checkpoint: the checkpoint lacks {len(missing)} LoRA tensors (e.g. "
                         f"{missing[0]}); it was written with other --lora_layers/--train_text_encoder settings. "
                         "Resume with the flags of the original run")
    mismatched = [n for n, shape in shapes.items() if tuple(lora[n].shape) != shape]
    if mismatched:
        name = mismatched[0]
        raise UsageError(f"--resume_from_checkpoint: {name} has shape {lora[name].shape} in the checkpoint but "
                         f"{shapes[name]} here: a different --rank. Resume with the flags of the original run")
