"""Every random number a training step needs, drawn from numpy generators keyed by (seed, step, sample).

Both trainers take their noise, VAE posterior samples and timesteps from here instead of their
framework's RNG. That makes a whole run comparable across frameworks (not only one injected step),
makes resume exact without saving RNG states, and gives sample k the same draws on whatever
data-parallel rank it lands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Draws:
    noise: np.ndarray  # (B, C, h, w) the flow-matching noise, in latent space
    latent_eps: np.ndarray  # (B, C, h, w) the standard normal that samples the VAE posterior
    timesteps: np.ndarray  # (B,) scheduler timesteps in [1, 1000]
    sigmas: np.ndarray  # (B,) noise level of each sample
    weighting: np.ndarray  # (B,) loss weight of each sample (weighting scheme)


def timestep_density(rng: np.random.Generator, scheme: str, logit_mean: float, logit_std: float,
                     mode_scale: float) -> float:
    """u in [0, 1): where on the noise schedule a sample lands (SD3 paper, section 3.1)."""
    if scheme == "logit_normal":
        return 1.0 / (1.0 + math.exp(-rng.normal(logit_mean, logit_std)))
    u = rng.random()
    if scheme == "mode":
        return 1.0 - u - mode_scale * (math.cos(math.pi * u / 2) ** 2 - 1.0 + u)
    return u


def loss_weighting(scheme: str, sigmas: np.ndarray) -> np.ndarray:
    if scheme == "sigma_sqrt":
        return (sigmas ** -2.0).astype(np.float32)
    if scheme == "cosmap":
        return (2.0 / (math.pi * (1.0 - 2.0 * sigmas + 2.0 * sigmas ** 2))).astype(np.float32)
    return np.ones_like(sigmas, dtype=np.float32)


def step_draws(seed: int, step: int, sample_ids: list[int], latent_shape: tuple[int, int, int],
               schedule_timesteps: np.ndarray, schedule_sigmas: np.ndarray, weighting_scheme: str = "none",
               logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29) -> Draws:
    """Draws for micro-step `step`; `sample_ids` are the samples' positions in the global batch.

    `schedule_timesteps` / `schedule_sigmas` are the training scheduler's tables (as numpy), so the
    timestep index is chosen exactly as diffusers' script does: int(u * num_train_timesteps).
    """
    noise, eps, indices = [], [], []
    for sample in sample_ids:
        rng = np.random.default_rng([seed, step, sample, 0xF1])
        noise.append(rng.standard_normal(latent_shape, dtype=np.float32))
        eps.append(rng.standard_normal(latent_shape, dtype=np.float32))
        u = timestep_density(rng, weighting_scheme, logit_mean, logit_std, mode_scale)
        indices.append(min(int(u * len(schedule_timesteps)), len(schedule_timesteps) - 1))
    indices = np.asarray(indices)
    sigmas = schedule_sigmas[indices].astype(np.float32)
    return Draws(np.stack(noise), np.stack(eps), schedule_timesteps[indices].astype(np.float32), sigmas,
                 loss_weighting(weighting_scheme, sigmas))


def generation_latents(seed: int, count: int, resolution: int, vae_config, purpose: int = 0) -> np.ndarray:
    """Initial packed noise for generated images (validation, class images), from numpy so both
    frameworks start alike; `purpose` keeps the streams of different uses apart."""
    factor = 2 ** (len(vae_config.block_out_channels) - 1)
    side = resolution // factor
    rng = np.random.default_rng([seed, 0x7A11, purpose])
    noise = rng.standard_normal((count, vae_config.latent_channels, side, side), dtype=np.float32)
    b, c, h, w = noise.shape
    return noise.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
