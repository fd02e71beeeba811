"""The trained LoRA as `pytorch_lora_weights.safetensors` in diffusers' FLUX format.

Keys are `transformer.<module>.lora_A.weight` / `lora_B.weight` (and `text_encoder.` for CLIP), the
adapter name dropped, and the LoRA settings go into the `lora_adapter_metadata` header that
`FluxPipeline.load_lora_weights` reads back. Either trainer's tensors go through this one writer,
so the two files are interchangeable.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"


def adapter_key(parameter_name: str, adapter: str = "default") -> str:
    """`blocks.0.attn.to_q.lora_A.default.weight` -> `blocks.0.attn.to_q.lora_A.weight`."""
    return parameter_name.replace(f".{adapter}.", ".")


def lora_metadata(rank: int, alpha: float, targets: list[str], init: str = "gaussian", dropout: float = 0.0) -> dict:
    return {"r": rank, "lora_alpha": alpha, "target_modules": sorted(targets), "init_lora_weights": init,
            "lora_dropout": dropout, "bias": "none", "use_dora": False, "use_rslora": False, "peft_type": "LORA",
            "rank_pattern": {}, "alpha_pattern": {}}


def save_lora_file(output_dir: str | Path, parts: dict[str, tuple[dict[str, np.ndarray], dict]],
                   dtype=np.float32) -> Path:
    """parts: prefix ('transformer' / 'text_encoder') -> (parameter name -> array, lora_metadata)."""
    tensors, metadata = {}, {}
    for prefix, (weights, meta) in parts.items():
        for name, value in weights.items():
            tensors[f"{prefix}.{adapter_key(name)}"] = np.ascontiguousarray(value.astype(dtype))
        metadata.update({f"{prefix}.{k}": v for k, v in meta.items()})
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / LORA_WEIGHT_NAME
    handle, staging = tempfile.mkstemp(prefix=".lora.", suffix=".safetensors", dir=output_dir)
    os.close(handle)
    try:
        save_file(dict(sorted(tensors.items())), staging,
                  metadata={"format": "pt", METADATA_KEY: json.dumps(metadata, indent=2, sort_keys=True)})
        os.replace(staging, final)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return final


def load_lora_file(path: str | Path) -> dict[str, np.ndarray]:
    return load_file(str(path))
