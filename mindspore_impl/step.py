"""One FLUX flow-matching LoRA step in MindSpore: (models, inputs) -> loss, gradients, and every stage.

Mirrors torch_reference/step.py function for function; gradients come from
`mindspore.value_and_grad` over the trainable (LoRA) parameters only.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import ops

from fluxlora.inputs import StepInputs, latent_image_ids, text_ids


def encode_prompt(models, clip_ids: ms.Tensor, t5_ids: ms.Tensor) -> tuple[ms.Tensor, ms.Tensor]:
    """(pooled CLIP embedding (B, 768), T5 token embeddings (B, L, 4096)) at FLUX.1-dev size."""
    pooled = models.text_encoder_one(clip_ids, output_hidden_states=False, return_dict=False)[1]
    prompt_embeds = models.text_encoder_two(t5_ids, output_hidden_states=False, return_dict=False)[0]
    return pooled, prompt_embeds


def vae_posterior(vae, pixel_values: ms.Tensor) -> tuple[ms.Tensor, ms.Tensor]:
    """Mean and standard deviation of the VAE's latent distribution (what --cache_latents keeps)."""
    dtype = next(iter(vae.get_parameters())).dtype
    moments = vae.encode(pixel_values.astype(dtype), return_dict=False)[0]
    mean, _, _, std = vae.diag_gauss_dist.init(moments)
    return mean, std


def sample_latents(vae_config, mean: ms.Tensor, std: ms.Tensor, latent_eps: ms.Tensor) -> ms.Tensor:
    """Sample the posterior with the given standard normal, then FLUX's shift and scale."""
    latents = mean + std * latent_eps.astype(mean.dtype)
    return (latents - vae_config.shift_factor) * vae_config.scaling_factor


def pack_latents(latents: ms.Tensor) -> ms.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): FLUX's 2x2 patch tokens."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: ms.Tensor, height: int, width: int) -> ms.Tensor:
    b, _, d = tokens.shape
    x = tokens.reshape(b, height // 2, width // 2, d // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def weighted_mse(prediction: ms.Tensor, target: ms.Tensor, weighting: ms.Tensor) -> ms.Tensor:
    per_sample = weighting.astype(ms.float32).reshape(-1, 1, 1, 1) * (
        prediction.astype(ms.float32) - target.astype(ms.float32)) ** 2
    return per_sample.reshape(prediction.shape[0], -1).mean(1).mean()


def model_dtype(cell: ms.nn.Cell):
    return next(p.dtype for p in cell.get_parameters() if not p.requires_grad)


def forward_loss(models, inputs: StepInputs, guidance_scale: float, prior_loss_weight: float,
                 prompt_embeddings: tuple[ms.Tensor, ms.Tensor] | None = None,
                 posterior: tuple[ms.Tensor, ms.Tensor] | None = None) -> tuple[ms.Tensor, dict]:
    """The loss of one micro-batch. `prompt_embeddings` / `posterior` skip the frozen encoders when cached."""
    transformer = models.transformer
    dtype = model_dtype(transformer)
    as_tensor = ms.Tensor
    draws = inputs.draws
    if prompt_embeddings is None:
        prompt_embeddings = encode_prompt(models, as_tensor(inputs.clip_ids), as_tensor(inputs.t5_ids))
    pooled, prompt_embeds = prompt_embeddings
    if posterior is None:
        posterior = vae_posterior(models.vae, as_tensor(inputs.pixel_values))
    model_input = sample_latents(models.vae.config, *posterior, as_tensor(draws.latent_eps)).astype(dtype)
    noise = as_tensor(draws.noise).astype(dtype)
    sigmas = as_tensor(draws.sigmas).astype(dtype).reshape(-1, 1, 1, 1)
    noisy = (1.0 - sigmas) * model_input + sigmas * noise
    _, _, height, width = model_input.shape
    packed = pack_latents(noisy)
    batch = packed.shape[0]
    img_ids = as_tensor(latent_image_ids(height, width))
    txt_ids = as_tensor(text_ids(prompt_embeds.shape[1]))
    guidance = ops.full((batch,), guidance_scale, dtype=ms.float32) if transformer.config.guidance_embeds else None
    packed_pred = transformer(hidden_states=packed, timestep=as_tensor(draws.timesteps).astype(dtype) / 1000,
                              guidance=guidance, pooled_projections=pooled.astype(dtype),
                              encoder_hidden_states=prompt_embeds.astype(dtype), txt_ids=txt_ids, img_ids=img_ids,
                              return_dict=False)[0]
    model_pred = unpack_latents(packed_pred, height, width)
    target = noise - model_input
    weighting = as_tensor(draws.weighting)
    n = inputs.num_instance
    loss = weighted_mse(model_pred[:n], target[:n], weighting[:n])
    if n < batch:  # prior preservation: the class half of the batch, its own term
        loss = loss + prior_loss_weight * weighted_mse(model_pred[n:], target[n:], weighting[n:])
    stages = {"pooled_prompt_embeds": pooled, "prompt_embeds": prompt_embeds, "model_input": model_input,
              "packed_noisy_input": packed, "img_ids": img_ids, "model_pred": model_pred, "target": target,
              "loss": loss}
    return loss, stages


def loss_and_grads(models, params: dict[str, ms.Parameter], inputs: StepInputs, guidance_scale: float,
                   prior_loss_weight: float, **cached) -> tuple[ms.Tensor, dict[str, ms.Tensor], dict]:
    """The training step's math: loss and d(loss)/d(param) for every trainable (LoRA) parameter."""
    def loss_fn():
        return forward_loss(models, inputs, guidance_scale, prior_loss_weight, **cached)

    grad_fn = ms.value_and_grad(loss_fn, grad_position=None, weights=list(params.values()), has_aux=True)
    (loss, stages), grads = grad_fn()
    return loss, dict(zip(params, grads)), stages


def global_norm(grads: list[ms.Tensor]) -> ms.Tensor:
    return ops.sqrt(sum((g.astype(ms.float32) ** 2).sum() for g in grads))


def clip_and_step(optimizer, params: dict[str, ms.Parameter], grads: dict[str, ms.Tensor], lrs: list[float],
                  max_grad_norm: float) -> float:
    """Clip the global gradient norm (torch's clip_grad_norm_ rule), set learning rates, take one step."""
    ordered = [grads[name].astype(p.dtype) for name, p in params.items()]
    norm = global_norm(ordered)
    scale = max_grad_norm / (float(norm) + 1e-6)
    if scale < 1.0:
        ordered = [g * scale for g in ordered]
    optimizer.set_learning_rates(lrs)
    optimizer.step(ordered)
    return float(norm)
