"""Write the trained LoRA in diffusers' format, and render validation images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fluxlora.args import DEFAULT_TEXT_ENCODER_TARGETS, transformer_targets
from fluxlora.data import fill_class_images, save_images
from fluxlora.draws import generation_latents
from fluxlora.lora_file import lora_metadata, save_lora_file


def lora_weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: p.detach().float().cpu().numpy() for name, p in model.named_parameters() if "lora_" in name}


def save_lora(output_dir: str | Path, models, args) -> Path:
    """The LoRA parameters are fp32 (the document's table), so the file is fp32 whatever the mixed precision."""
    parts = {"transformer": (lora_weights(models.transformer),
                             lora_metadata(args.rank, args.lora_alpha, transformer_targets(args)))}
    if args.train_text_encoder:
        parts["text_encoder"] = (lora_weights(models.text_encoder_one),
                                 lora_metadata(args.rank, args.lora_alpha, list(DEFAULT_TEXT_ENCODER_TARGETS)))
    return save_lora_file(output_dir, parts)


CLASS_IMAGES = 1 << 30  # noise stream of class image k: CLASS_IMAGES + k (validation uses 0)


@torch.no_grad()
def generate_images(models, args, prompt: str, count: int, seed: int, purpose: int) -> list:
    """Images from the current models through diffusers' FluxPipeline, starting from numpy noise."""
    from diffusers import FluxPipeline

    pipeline = FluxPipeline(scheduler=models.noise_scheduler, vae=models.vae,
                            text_encoder=models.text_encoder_one, tokenizer=models.tokenizers.clip,
                            text_encoder_2=models.text_encoder_two, tokenizer_2=models.tokenizers.t5,
                            transformer=models.transformer)
    pipeline.set_progress_bar_config(disable=True)
    latents = generation_latents(seed, count, args.resolution, models.vae.config, purpose)
    latents = torch.from_numpy(latents).to(models.transformer.device, models.transformer.dtype)
    return pipeline(prompt=[prompt] * count, latents=latents, height=args.resolution, width=args.resolution,
                    num_inference_steps=20, guidance_scale=args.guidance_scale,
                    max_sequence_length=args.max_sequence_length).images


def render_validation(models, args, seed: int, step: int, output_dir: str | Path) -> list[Path]:
    """The same starting noise at every validation, so images from different steps are comparable."""
    images = generate_images(models, args, args.validation_prompt, args.num_validation_images, seed, purpose=0)
    return save_images(images, Path(output_dir) / "validation", f"step{step:06d}_")


def generate_class_images(models, args, seed: int, missing: int) -> list[Path]:
    """Prior preservation: fill --class_data_dir up to --num_class_images from --class_prompt (base model)."""
    return fill_class_images(args, missing, lambda count, start: generate_images(
        models, args, args.class_prompt, count, seed, purpose=CLASS_IMAGES + start))
