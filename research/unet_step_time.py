"""How long does a UNet training step take at each width? Seconds per step (forward + backward +
AdamW) at the tiny base's latent size: why the base's UNet is wide (at 16x8 latents a CPU step is
mostly fixed cost).

    python research/unet_step_time.py [BATCH] [THREADS]   (~1 minute)
"""
import sys
import time

import torch
import torch.nn.functional as F

from dive.base.models import TinySDConfig, build_unet

batch = int(sys.argv[1]) if len(sys.argv) > 1 else 32
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
for channels in [(32, 64, 128), (48, 96, 192), (64, 128, 192), (64, 128, 256)]:
    cfg = TinySDConfig(unet_channels=channels)
    torch.manual_seed(0)
    unet = build_unet(cfg)
    opt = torch.optim.AdamW(unet.parameters(), 1e-4)
    x = torch.randn(batch, cfg.latent_channels, *unet.config.sample_size)
    t, h = torch.randint(0, 1000, (batch,)), torch.randn(batch, cfg.max_length, cfg.text_width)
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        loss = F.mse_loss(unet(x, t, encoder_hidden_states=h).sample, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"UNet {channels}: {params:.1f}M parameters, {sorted(times[1:])[2]:.3f} s/step (batch {batch}, median of 5)")
