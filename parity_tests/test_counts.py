"""Parameter counts of the real FLUX.1-dev shapes, in both frameworks, without allocating weights.

Reconciling the design document's numbers with the models (each computed below, not copied):
- "11.91B": the FLUX.1-dev transformer has 11,901,408,320 parameters. Attention LoRA on
  to_k/to_q/to_v/to_out.0 covers 190 linear layers (19 double blocks x 4 + 38 single blocks x 3) and
  adds 1,167,360 x rank, so rank 4 gives 4,669,440 and a total of 11,906,077,760: "11.91B" is the
  transformer *with* its LoRA at rank 4 (without it, it would still round to 11.90B).
- "123.36M" is not the transformer's LoRA (that is 4.67M at rank 4, and would need rank ~106 to reach
  123M). It is the CLIP-L text encoder with its own LoRA at rank 4: 123,060,480 + 294,912 =
  123,355,392. The document's "trainable ~123.36M" thus describes --train_text_encoder's CLIP, whose
  base weights are frozen: the trainable part of it is only the 294,912 LoRA parameters.
The tests assert both readings from the models themselves, in torch and in MindSpore.
"""

from __future__ import annotations

import pytest
import torch

from fluxlora.args import DEFAULT_TEXT_ENCODER_TARGETS, DEFAULT_TRANSFORMER_TARGETS, DIFFUSERS_DEFAULT_TARGETS
from fluxlora.tiny import clip_config, transformer_config

from .harness import hf_name

FLUX_DEV_TRANSFORMER = 11_901_408_320  # published size of black-forest-labs/FLUX.1-dev's transformer
CLIP_L_TEXT = 123_060_480  # openai/clip-vit-large-patch14 text tower, as FLUX.1-dev ships it


def torch_transformer(targets=None, rank=4):
    from diffusers import FluxTransformer2DModel

    from torch_reference.lora import lora_config

    with torch.device("meta"):
        model = FluxTransformer2DModel(**transformer_config("full"))
        if targets:
            model.add_adapter(lora_config(rank, rank, list(targets)))
    return model


def ms_transformer(targets=None, rank=4):
    from mindone.diffusers import FluxTransformer2DModel
    from mindspore.nn.utils import no_init_parameters

    from mindspore_impl.lora import lora_config

    with no_init_parameters():
        model = FluxTransformer2DModel(**transformer_config("full"))
        if targets:
            model.add_adapter(lora_config(rank, rank, list(targets)))
    return model


def torch_shapes(model) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def ms_shapes(model) -> dict[str, tuple]:
    return {hf_name(p.name): tuple(p.shape) for p in model.get_parameters()}


def total(shapes: dict[str, tuple]) -> int:
    count = 0
    for shape in shapes.values():
        n = 1
        for s in shape:
            n *= s
        count += n
    return count


def lora_only(shapes: dict[str, tuple]) -> dict[str, tuple]:
    return {n: s for n, s in shapes.items() if ".lora_" in n}


def test_flux_dev_transformer_same_layers_in_both_frameworks():
    t, m = torch_shapes(torch_transformer()), ms_shapes(ms_transformer())
    assert sorted(t) == sorted(m), sorted(set(t) ^ set(m))[:10]
    mismatched = {n: (t[n], m[n]) for n in t if t[n] != m[n]}
    assert not mismatched, list(mismatched.items())[:5]
    assert total(t) == total(m) == FLUX_DEV_TRANSFORMER


@pytest.mark.parametrize("rank", [4, 16, 64])
@pytest.mark.parametrize("targets", [DEFAULT_TRANSFORMER_TARGETS, DIFFUSERS_DEFAULT_TARGETS],
                         ids=["document_attention", "diffusers_default"])
def test_lora_counts_agree_across_frameworks(targets, rank):
    t = lora_only(torch_shapes(torch_transformer(targets, rank)))
    m = lora_only(ms_shapes(ms_transformer(targets, rank)))
    assert t == m
    adapted = {n.rsplit(".lora_", 1)[0] for n in t}
    # every adapted Linear(in, out) gets A (rank x in) and B (out x rank)
    base = torch_shapes(torch_transformer())
    assert total(t) == sum(rank * sum(base[f"{name}.weight"]) for name in adapted)
    if targets == DEFAULT_TRANSFORMER_TARGETS:
        assert len(adapted) == 19 * 4 + 38 * 3 == 190
        assert total(t) == 1_167_360 * rank


def test_document_totals_reconciled():
    with_lora = total(torch_shapes(torch_transformer(DEFAULT_TRANSFORMER_TARGETS, rank=4)))
    assert with_lora == 11_906_077_760 and round(with_lora / 1e9, 2) == 11.91
    from transformers import CLIPTextConfig, CLIPTextModel

    from torch_reference.lora import lora_config

    with torch.device("meta"):
        clip = CLIPTextModel(CLIPTextConfig(**clip_config("full")))
        assert total(torch_shapes(clip)) == CLIP_L_TEXT
        clip.add_adapter(lora_config(4, 4, list(DEFAULT_TEXT_ENCODER_TARGETS)))
    shapes = torch_shapes(clip)
    assert total(lora_only(shapes)) == 294_912
    assert total(shapes) == 123_355_392 and round(total(shapes) / 1e6, 2) == 123.36


def test_clip_l_counts_agree_across_frameworks():
    from mindone.transformers import CLIPTextModel as MsClip
    from mindspore.nn.utils import no_init_parameters
    from transformers import CLIPTextConfig, CLIPTextModel

    from mindspore_impl.lora import lora_config as ms_lora
    from torch_reference.lora import lora_config as torch_lora

    with torch.device("meta"):
        torch_clip = CLIPTextModel(CLIPTextConfig(**clip_config("full")))
        torch_clip.add_adapter(torch_lora(4, 4, list(DEFAULT_TEXT_ENCODER_TARGETS)))
    with no_init_parameters():
        ms_clip = MsClip(CLIPTextConfig(**clip_config("full")))
        ms_clip.add_adapter(ms_lora(4, 4, list(DEFAULT_TEXT_ENCODER_TARGETS)))
    t, m = torch_shapes(torch_clip), ms_shapes(ms_clip)
    assert t == m, sorted(set(t) ^ set(m))[:5]
    assert total(m) - total(lora_only(m)) == CLIP_L_TEXT
