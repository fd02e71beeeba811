"""One FLUX flow-matching LoRA step in torch: (models, inputs) -> loss, gradients, and every stage.

The stages (prompt embeddings, latents, packed latents, prediction, loss) are returned so the parity
harness can say *where* two frameworks part ways, not only that the losses differ.
"""

from __future__ import annotations

import torch

from fluxlora.inputs import StepInputs, latent_image_ids, text_ids


def encode_prompt(models, clip_ids: torch.Tensor, t5_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled CLIP embedding (B, 768), T5 token embeddings (B, L, 4096)) at FLUX.1-dev size."""
    pooled = models.text_encoder_one(clip_ids, output_hidden_states=False).pooler_output
    prompt_embeds = models.text_encoder_two(t5_ids, output_hidden_states=False)[0]
    return pooled, prompt_embeds


def vae_posterior(vae, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the VAE's latent distribution (what --cache_latents keeps)."""
    posterior = vae.encode(pixel_values.to(vae.dtype)).latent_dist
    return posterior.mean, posterior.std


def sample_latents(vae_config, mean: torch.Tensor, std: torch.Tensor, latent_eps: torch.Tensor) -> torch.Tensor:
    """Sample the posterior with the given standard normal, then FLUX's shift and scale."""
    latents = mean + std * latent_eps.to(mean.dtype)
    return (latents - vae_config.shift_factor) * vae_config.scaling_factor


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): FLUX's 2x2 patch tokens."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    b, _, d = tokens.shape
    x = tokens.reshape(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weighting: torch.Tensor) -> torch.Tensor:
    per_sample = (weighting.float().reshape(-1, 1, 1, 1) * (prediction.float() - target.float()) ** 2)
    return per_sample.reshape(prediction.shape[0], -1).mean(1).mean()


def forward_loss(models, inputs: StepInputs, guidance_scale: float, prior_loss_weight: float,
                 prompt_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                 posterior: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
    """The loss of one micro-batch. `prompt_embeddings` / `posterior` skip the frozen encoders when cached."""
    transformer = models.transformer
    device, dtype = transformer.device, transformer.dtype
    as_tensor = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    draws = inputs.draws
    if prompt_embeddings is None:
        prompt_embeddings = encode_prompt(models, as_tensor(inputs.clip_ids), as_tensor(inputs.t5_ids))
    pooled, prompt_embeds = prompt_embeddings
    if posterior is None:
        posterior = vae_posterior(models.vae, as_tensor(inputs.pixel_values))
    model_input = sample_latents(models.vae.config, *posterior, as_tensor(draws.latent_eps)).to(dtype)
    noise = as_tensor(draws.noise).to(dtype)
    sigmas = as_tensor(draws.sigmas).to(dtype).reshape(-1, 1, 1, 1)
    noisy = (1.0 - sigmas) * model_input + sigmas * noise
    _, _, height, width = model_input.shape
    packed = pack_latents(noisy)
    batch = packed.shape[0]
    img_ids = as_tensor(latent_image_ids(height, width))
    txt_ids = as_tensor(text_ids(prompt_embeds.shape[1]))
    guidance = torch.full((batch,), guidance_scale, device=device, dtype=torch.float32)
    if not transformer.config.guidance_embeds:
        guidance = None
    packed_pred = transformer(hidden_states=packed, timestep=as_tensor(draws.timesteps).to(dtype) / 1000,
                              guidance=guidance, pooled_projections=pooled.to(dtype),
                              encoder_hidden_states=prompt_embeds.to(dtype), txt_ids=txt_ids, img_ids=img_ids,
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


def loss_and_grads(models, params: dict[str, torch.nn.Parameter], inputs: StepInputs, guidance_scale: float,
                   prior_loss_weight: float, **cached) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """The training step's math: loss and d(loss)/d(param) for every trainable (LoRA) parameter."""
    loss, stages = forward_loss(models, inputs, guidance_scale, prior_loss_weight, **cached)
    grads = torch.autograd.grad(loss, list(params.values()))
    return loss.detach(), dict(zip(params, grads)), stages


def clip_and_step(optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter],
                  grads: dict[str, torch.Tensor], lrs: list[float], max_grad_norm: float) -> float:
    """Clip the global gradient norm, set each group's learning rate, take one optimizer step."""
    for name, p in params.items():
        p.grad = grads[name].to(p.dtype, copy=True)  # clipping scales .grad in place: keep the caller's grads
    grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), max_grad_norm)
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)
