"""Load FLUX.1's parts with mindone.diffusers/mindone.transformers, as the design document does, and freeze them."""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindone.diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from mindone.transformers import CLIPTextModel, T5EncoderModel

from fluxlora.args import UsageError
from fluxlora.inputs import Tokenizers, load_tokenizers, text_encoder_architecture

TEXT_ENCODER_CLASSES = {"CLIPTextModel": CLIPTextModel, "T5EncoderModel": T5EncoderModel}


@dataclass
class FluxModels:
    tokenizers: Tokenizers
    text_encoder_one: CLIPTextModel
    text_encoder_two: T5EncoderModel
    vae: AutoencoderKL
    transformer: FluxTransformer2DModel
    noise_scheduler: FlowMatchEulerDiscreteScheduler

    def named_modules(self) -> dict[str, ms.nn.Cell]:
        return {"vae": self.vae, "text_encoder": self.text_encoder_one, "text_encoder_2": self.text_encoder_two,
                "transformer": self.transformer}


def text_encoder_class(location: str, subfolder: str, revision: str | None):
    return TEXT_ENCODER_CLASSES[text_encoder_architecture(location, subfolder, revision)]


def load_models(location: str, revision: str | None = None, variant: str | None = None) -> FluxModels:
    try:
        tokenizers = load_tokenizers(location, revision)
        one = text_encoder_class(location, "text_encoder", revision)
        two = text_encoder_class(location, "text_encoder_2", revision)
        common = dict(revision=revision, variant=variant)
        return FluxModels(
            tokenizers=tokenizers,
            text_encoder_one=one.from_pretrained(location, subfolder="text_encoder", **common),
            text_encoder_two=two.from_pretrained(location, subfolder="text_encoder_2", **common),
            vae=AutoencoderKL.from_pretrained(location, subfolder="vae", **common),
            transformer=FluxTransformer2DModel.from_pretrained(location, subfolder="transformer", **common),
            noise_scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(location, subfolder="scheduler",
                                                                            revision=revision),
        )
    except (OSError, EnvironmentError) as error:
        raise UsageError(f"cannot load FLUX.1 from {location!r}: {error}") from None


def freeze(*models: ms.nn.Cell) -> None:
    """MindSpore cells have no `requires_grad_`: set the flag on every parameter (the document's freeze_params)."""
    for model in models:
        for p in model.get_parameters():
            p.requires_grad = False


def schedule_tables(scheduler: FlowMatchEulerDiscreteScheduler) -> tuple[np.ndarray, np.ndarray]:
    """The training schedule (timesteps, sigmas) as numpy, for fluxlora.draws."""
    return scheduler.timesteps.asnumpy().astype(np.float32), scheduler.sigmas.asnumpy().astype(np.float32)


def enable_gradient_checkpointing(transformer, text_encoder=None) -> None:
    """Recompute each block's activations in backward instead of keeping them.

    mindone 0.5.0's FluxTransformer2DModel refuses `enable_gradient_checkpointing()`, so we use
    MindSpore's own mechanism, `Cell.recompute()`, on every double and single block (and on CLIP's
    encoder layers when it trains): the same granularity diffusers checkpoints at.
    """
    for block in list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks):
        block.recompute()
    if text_encoder is not None:
        for layer in text_encoder.text_model.encoder.layers:
            layer.recompute()
