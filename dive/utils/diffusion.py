"""The denoising loss, in one place for base pretraining, DiVE training and the speed reference.

The target follows the scheduler's `prediction_type`, so the same code trains an epsilon model
(SD 1.5) or a v-prediction model (SD 2.x, and the shipped tiny base: at 16x8 latents an epsilon
model's x0 estimate at high noise overshoots - measured worse than predicting the mean at t>=900 -
and samples come out as saturated blobs; v-prediction has no such 1/sqrt(alpha_bar) blow-up).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r} in the scheduler config (expected 'epsilon' or 'v_prediction')")


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), for the scheduler's prediction type."""
    ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = ac / (1 - ac)
    clipped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def diffusion_loss(scheduler, pred: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                   *, snr_gamma: float = 0.0) -> torch.Tensor:
    """Mean over the batch of the per-sample MSE to the target, min-SNR weighted when gamma > 0."""
    target = diffusion_target(scheduler, latents, noise, timesteps).to(pred.device)
    per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.ndim)))
    if snr_gamma > 0:
        per = per * min_snr_weights(scheduler, timesteps, snr_gamma).to(per.device)
    return per.mean()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, *, device="cpu", dtype=torch.float32, batch: int = 64, flip: bool = True,
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and stds (float32, CPU) of uint8 (N, 3, H, W) images, then of their mirror
    images when `flip`: (2N, C, h, w) each, mirrors second. Done once per run (the VAE is frozen)."""
    from tqdm import tqdm

    means, stds = [], []
    for mirrored in ((False, True) if flip else (False,)):
        for i in tqdm(range(0, len(images), batch), desc="encoding latents" + (" (mirrored)" if mirrored else ""),
                      disable=not progress, leave=False):
            x = images[i : i + batch].to(device=device, dtype=dtype).div(127.5).sub(1.0)
            if mirrored:
                x = x.flip(-1)
            post = vae.encode(x).latent_dist
            means.append(post.mean.float().cpu())
            stds.append(post.std.float().cpu())
    return torch.cat(means), torch.cat(stds)
