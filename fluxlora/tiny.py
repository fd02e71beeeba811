"""Write a FLUX.1-shaped checkpoint in the diffusers folder layout, with random weights.

    python -m fluxlora.tiny OUT_DIR [--size tiny|small] [--seed N]

No model hub is reachable in CI, so tests and the built-in demo load a folder laid out exactly like
black-forest-labs/FLUX.1-dev (model_index.json, scheduler/, text_encoder/, text_encoder_2/,
tokenizer/, tokenizer_2/, vae/, transformer/) through the same `from_pretrained` calls a real
checkpoint goes through. Only the sizes shrink; the block structure, guidance embedding, 16-channel
VAE with its shift/scaling factors, and the scheduler's settings are FLUX.1-dev's.

Weights come from numpy, one generator per tensor keyed by (seed, tensor name), so a seed always
gives byte-identical safetensors files whatever framework is installed. The framework model classes
are used only on the `meta` device, to list each model's tensor names and shapes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ASSETS = Path(__file__).with_name("assets")
# Bump whenever what write_checkpoint produces changes, so cached demo checkpoints are rebuilt.
BUILDER_VERSION = 2

# FLUX.1-dev's values; the sizes below are the only thing a `--size` changes.
SCHEDULER_CONFIG = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
VAE_FACTORS = {"scaling_factor": 0.3611, "shift_factor": 0.1159}

SIZES = {
    # tests: a few MB, a step in well under a second
    "tiny": {
        "transformer": dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                            axes_dims_rope=(4, 6, 6)),
        "clip": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        "t5": dict(d_model=16, d_kv=8, d_ff=32, num_heads=2, num_layers=2),
        "vae": dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4),
    },
    # the built-in demo and benchmarks: FLUX's depth pattern (double then single blocks), still CPU-sized
    "small": {
        "transformer": dict(num_layers=2, num_single_layers=4, attention_head_dim=32, num_attention_heads=4,
                            axes_dims_rope=(8, 12, 12)),
        "clip": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        "t5": dict(d_model=64, d_kv=16, d_ff=128, num_heads=4, num_layers=2),
        "vae": dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8),
    },
    # FLUX.1-dev itself (for parameter counts and full-size benchmarks; never written by tests)
    "full": {
        "transformer": dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                            axes_dims_rope=(16, 56, 56)),
        "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        "t5": dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24),
        "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
    },
}


def transformer_config(size: str) -> dict:
    s = SIZES[size]
    return dict(
        patch_size=1,
        in_channels=64,
        out_channels=None,
        joint_attention_dim=s["t5"]["d_model"],
        pooled_projection_dim=s["clip"]["hidden_size"],
        guidance_embeds=True,
        **s["transformer"],
    )


def clip_config(size: str) -> dict:
    # FLUX.1-dev's CLIP config keeps the legacy eos_token_id=2, so the pooled token is the argmax id.
    return dict(
        architectures=["CLIPTextModel"],
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=SIZES[size]["clip"]["hidden_size"],
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        torch_dtype="float32",
        **SIZES[size]["clip"],
    )


def t5_config(size: str) -> dict:
    return dict(
        architectures=["T5EncoderModel"],
        vocab_size=32128,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6,
        dropout_rate=0.1,
        tie_word_embeddings=False,
        is_encoder_decoder=True,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        num_decoder_layers=SIZES[size]["t5"]["num_layers"],
        torch_dtype="float32",
        **SIZES[size]["t5"],
    )


def vae_config(size: str) -> dict:
    blocks = len(SIZES[size]["vae"]["block_out_channels"])
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        act_fn="silu",
        sample_size=1024,
        force_upcast=True,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=True,
        **VAE_FACTORS,
        **SIZES[size]["vae"],
    )


MODEL_INDEX = {
    "_class_name": "FluxPipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


# ----------------------------------------------------------------------------- weights


def random_tensor(seed: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic per (seed, name): adding a tensor to a model never changes the others."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    noise = rng.standard_normal(shape, dtype=np.float32)
    if len(shape) == 1 and "norm" in name and name.endswith("weight"):
        return 1.0 + 0.1 * noise  # norm gains near one, but not exactly, so a missed load shows
    if len(shape) == 1:
        return 0.02 * noise
    fan_in = int(np.prod(shape[1:]))
    return noise / np.float32(np.sqrt(fan_in))  # keeps activations O(1) through depth


# Tensors that the model ties together must be written equal: T5's token embedding is stored twice.
TIED = {"encoder.embed_tokens.weight": "shared.weight"}


def write_weights(shapes: dict[str, tuple[int, ...]], seed: int, path: Path) -> None:
    tensors = {name: random_tensor(seed, TIED.get(name, name), shape) for name, shape in sorted(shapes.items())}
    save_file(tensors, str(path), metadata={"format": "pt"})


def model_shapes(component: str, config: dict) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of one component, listed from the model class on the meta device."""
    import torch

    with torch.device("meta"):
        if component == "transformer":
            from diffusers import FluxTransformer2DModel

            model = FluxTransformer2DModel(**config)
        elif component == "vae":
            from diffusers import AutoencoderKL

            model = AutoencoderKL(**config)
        elif component == "text_encoder":
            from transformers import CLIPTextConfig, CLIPTextModel

            model = CLIPTextModel(CLIPTextConfig(**config))
        elif component == "text_encoder_2":
            from transformers import T5Config, T5EncoderModel

            model = T5EncoderModel(T5Config(**config))
        else:
            raise ValueError(component)
    # state_dict() lists T5's tied `encoder.embed_tokens.weight` beside `shared.weight`; mindone's
    # T5EncoderModel needs both keys in the file, so both are written.
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


# ----------------------------------------------------------------------------- tokenizers


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (the BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_clip_tokenizer(out: Path) -> None:
    """CLIP's real BPE (49,408 tokens) in the vocab.json + merges.txt form of FLUX.1-dev/tokenizer."""
    lines = gzip.decompress((ASSETS / "clip_bpe_simple_vocab_16e6.txt.gz").read_bytes()).decode().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    write_json(out / "special_tokens_map.json", special)
    write_json(out / "tokenizer_config.json",
               {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special})


def write_t5_tokenizer(out: Path) -> None:
    out.mkdir(parents=True)
    shutil.copyfile(ASSETS / "t5_spiece.model", out / "spiece.model")
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
               "additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)]}
    write_json(out / "special_tokens_map.json", special)
    # FLUX.1-dev ships the converted fast tokenizer (tokenizer.json) beside spiece.model; loading it
    # skips a slow conversion. The conversion needs add_prefix_space, or "a" tokenizes differently
    # from the slow sentencepiece tokenizer; tokenizer.json then carries that setting itself.
    config = {"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "extra_ids": 100, "legacy": True,
              **special}
    write_json(out / "tokenizer_config.json", {**config, "add_prefix_space": True})
    from transformers import T5TokenizerFast

    T5TokenizerFast.from_pretrained(str(out)).backend_tokenizer.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", config)


# ----------------------------------------------------------------------------- folder


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def diffusers_config(class_name: str, config: dict) -> dict:
    return {"_class_name": class_name, **{k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}


def write_checkpoint(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write the checkpoint atomically: a half-written folder never appears under `out_dir`."""
    if size not in ("tiny", "small"):
        raise ValueError(f"--size must be tiny or small, not {size!r} (full FLUX.1-dev is never written)")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; choose a new folder or delete it first")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write_json(staging / "model_index.json", MODEL_INDEX)
        (staging / "scheduler").mkdir()
        write_json(staging / "scheduler" / "scheduler_config.json",
                   diffusers_config("FlowMatchEulerDiscreteScheduler", SCHEDULER_CONFIG))
        components = {
            "transformer": (transformer_config(size), "diffusion_pytorch_model.safetensors"),
            "vae": (vae_config(size), "diffusion_pytorch_model.safetensors"),
            "text_encoder": (clip_config(size), "model.safetensors"),
            "text_encoder_2": (t5_config(size), "model.safetensors"),
        }
        for component, (config, weights_name) in components.items():
            folder = staging / component
            folder.mkdir()
            if component in ("transformer", "vae"):
                class_name = "FluxTransformer2DModel" if component == "transformer" else "AutoencoderKL"
                write_json(folder / "config.json", diffusers_config(class_name, config))
            else:
                write_json(folder / "config.json", config)
            write_weights(model_shapes(component, config), seed, folder / weights_name)
        write_clip_tokenizer(staging / "tokenizer")
        write_t5_tokenizer(staging / "tokenizer_2")
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def cached_checkpoint(size: str = "small", seed: int = 0) -> Path:
    """The built-in demo's checkpoint, written once under $FLUXLORA_CACHE (default ~/.cache/fluxlora)."""
    import os

    root = Path(os.environ.get("FLUXLORA_CACHE", Path.home() / ".cache" / "fluxlora"))
    folder = root / f"flux-{size}-seed{seed}-v{BUILDER_VERSION}"
    if not folder.exists():
        try:
            write_checkpoint(folder, size, seed)
        except FileExistsError:
            pass  # another process finished first; its folder is complete (written atomically)
        except OSError:
            if not folder.exists():
                raise
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fluxlora.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path = write_checkpoint(args.out_dir, args.size, args.seed)
    except (FileExistsError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {args.size} FLUX.1-shaped checkpoint (seed {args.seed}) to {path}")


if __name__ == "__main__":
    main()

