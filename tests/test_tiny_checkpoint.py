"""The built-in FLUX.1-shaped checkpoint: deterministic, complete, and loadable by diffusers."""

from __future__ import annotations

import hashlib

import pytest
import torch

from fluxlora.tiny import write_checkpoint


def digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_folders(tmp_path, tiny_checkpoint):
    again = write_checkpoint(tmp_path / "again", "tiny", seed=0)
    assert digest(again) == digest(tiny_checkpoint)
    other = digest(write_checkpoint(tmp_path / "other", "tiny", seed=1))
    changed = {name for name, h in other.items() if h != digest(tiny_checkpoint)[name]}
    assert changed == {"transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                       "text_encoder/model.safetensors", "text_encoder_2/model.safetensors"}


def test_existing_folder_is_never_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        write_checkpoint(tmp_path / "taken", "tiny")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize("component,loader", [
    ("transformer", "diffusers.FluxTransformer2DModel"),
    ("vae", "diffusers.AutoencoderKL"),
    ("text_encoder", "transformers.CLIPTextModel"),
    ("text_encoder_2", "transformers.T5EncoderModel"),
])
def test_every_weight_is_used_and_none_is_missing(tiny_checkpoint, component, loader):
    import importlib

    module, name = loader.split(".")
    cls = getattr(importlib.import_module(module), name)
    _, info = cls.from_pretrained(tiny_checkpoint, subfolder=component, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    if component == "text_encoder_2":  # mindone needs the embedding under its own name, not only `shared`
        from safetensors import safe_open

        with safe_open(tiny_checkpoint / component / "model.safetensors", "np") as f:
            assert {"shared.weight", "encoder.embed_tokens.weight"} <= set(f.keys())


def test_flux_pipeline_loads_and_generates(tiny_checkpoint):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_checkpoint)
    assert pipe.transformer.config.guidance_embeds and pipe.vae.config.latent_channels == 16
    assert pipe.vae.config.shift_factor == pytest.approx(0.1159)
    assert pipe.vae.config.scaling_factor == pytest.approx(0.3611)
    image = pipe("a photo", height=32, width=32, num_inference_steps=2, max_sequence_length=16, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(image)).all()


def test_tokenizers_are_clip_bpe_and_sentencepiece(tiny_checkpoint):
    from fluxlora.inputs import load_tokenizers

    tok = load_tokenizers(str(tiny_checkpoint))
    # ids of the real CLIP vocabulary (openai/clip-vit-large-patch14): <|startoftext|> a photo of <|endoftext|>
    assert tok.clip("a photo of").input_ids == [49406, 320, 1125, 539, 49407]
    assert len(tok.clip) == 49408
    ids = tok.t5("a photo of").input_ids
    assert ids[-1] == tok.t5.eos_token_id == 1 and tok.t5.pad_token_id == 0
    assert tok.t5.convert_tokens_to_ids("<extra_id_0>") > 0
    from transformers import T5Tokenizer  # the slow sentencepiece tokenizer: the fast one must agree

    slow = T5Tokenizer.from_pretrained(tiny_checkpoint, subfolder="tokenizer_2")
    for text in ("a photo of sks robot", "A dog, in Paris.  Two spaces", "unusual-words: xylophone 2024"):
        assert tok.t5(text).input_ids == slow(text).input_ids, text
