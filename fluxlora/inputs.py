"""Model inputs that need no framework: tokenizers, token ids, position ids, text-encoder classes.

Tokenizers come from `transformers` (they are framework-free), so both trainers feed their text
encoders the very same ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLIP_MAX_LENGTH = 77
SUPPORTED_TEXT_ENCODERS = ("CLIPTextModel", "T5EncoderModel")


@dataclass
class Tokenizers:
    clip: object  # CLIPTokenizer
    t5: object  # T5TokenizerFast


def load_tokenizers(location: str, revision: str | None = None) -> Tokenizers:
    from transformers import CLIPTokenizer, T5TokenizerFast

    return Tokenizers(
        CLIPTokenizer.from_pretrained(location, subfolder="tokenizer", revision=revision),
        T5TokenizerFast.from_pretrained(location, subfolder="tokenizer_2", revision=revision),
    )


def tokenize(tokenizers: Tokenizers, prompts: list[str], max_sequence_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(CLIP ids (B, 77), T5 ids (B, max_sequence_length)), padded to full length as FLUX expects."""
    clip = tokenizers.clip(prompts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True,
                           return_tensors="np").input_ids
    t5 = tokenizers.t5(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                       return_tensors="np").input_ids
    return clip.astype(np.int64), t5.astype(np.int64)


def text_encoder_architecture(location: str, subfolder: str, revision: str | None = None) -> str:
    """The class named in the text encoder's config `architectures`, checked against what FLUX uses."""
    from transformers import PretrainedConfig

    config = PretrainedConfig.from_pretrained(location, subfolder=subfolder, revision=revision)
    name = (config.architectures or ["<none>"])[0]
    if name not in SUPPORTED_TEXT_ENCODERS:
        raise ValueError(f"{subfolder}/config.json names architecture {name!r}, which is not supported; "
                         f"FLUX.1 uses {' and '.join(SUPPORTED_TEXT_ENCODERS)}")
    return name


def text_ids(sequence_length: int) -> np.ndarray:
    """FLUX gives text tokens all-zero 3-axis position ids."""
    return np.zeros((sequence_length, 3), dtype=np.float32)


def latent_image_ids(latent_height: int, latent_width: int) -> np.ndarray:
    """FLUX's 3-axis position ids of the packed 2x2 latent patches: (0, row, column)."""
    ids = np.zeros((latent_height // 2, latent_width // 2, 3), dtype=np.float32)
    ids[..., 1] = np.arange(latent_height // 2)[:, None]
    ids[..., 2] = np.arange(latent_width // 2)[None, :]
    return ids.reshape(-1, 3)


@dataclass
class StepInputs:
    """Everything one micro-step consumes, framework-free: both trainers turn it into tensors."""

    pixel_values: np.ndarray  # (B, 3, H, W) in [-1, 1]
    clip_ids: np.ndarray  # (B, 77)
    t5_ids: np.ndarray  # (B, max_sequence_length)
    num_instance: int  # rows [num_instance:] are prior-preservation (class) images
    draws: object  # fluxlora.draws.Draws
    prompts: list[str]


def latent_shape(vae_config, resolution: int) -> tuple[int, int, int]:
    factor = 2 ** (len(vae_config.block_out_channels) - 1)
    return (vae_config.latent_channels, resolution // factor, resolution // factor)


def make_step_inputs(batch, tokenizers: Tokenizers, args, seed: int, micro_step: int, sample_offset: int,
                     vae_config, schedule: tuple[np.ndarray, np.ndarray]) -> StepInputs:
    """Tokenize a data batch and draw its random numbers; sample ids are positions in the global batch."""
    from .draws import step_draws

    clip_ids, t5_ids = tokenize(tokenizers, batch.prompts, args.max_sequence_length)
    count = batch.pixel_values.shape[0]
    draws = step_draws(seed, micro_step, list(range(sample_offset, sample_offset + count)),
                       latent_shape(vae_config, batch.pixel_values.shape[-1]), schedule[0], schedule[1],
                       args.weighting_scheme, args.logit_mean, args.logit_std, args.mode_scale)
    return StepInputs(batch.pixel_values, clip_ids, t5_ids, batch.num_instance, draws, batch.prompts)
