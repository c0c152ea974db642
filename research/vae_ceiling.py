"""How much identity survives the base model's VAE? A ceiling for any generator on that base.

Usage: python research/vae_ceiling.py SOURCE BASE OUT

SOURCE is a synthetic-source folder (images + manifest.jsonl), e.g. `dive baseline oracle`'s true
infrared renders of the external ids. Every image is encoded (posterior mean) and decoded by
BASE's VAE and written to OUT with the same manifest (`dive.baselines.vae_roundtrip`), so `dive
metrics` scores the round trip next to the originals and `dive bench-row --source OUT --name NAME` trains ReID on it:
if the reconstructions lose the identity, no UNet trained on this VAE's latents can draw it.
"""

from __future__ import annotations

import sys

from dive.baselines.vae_roundtrip import vae_round_trip

if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    info = vae_round_trip(*sys.argv[1:4])
    print(f"{info['images']} images through {info['vae']} -> {sys.argv[3]}; "
          f"mean absolute pixel error {info['mean_abs_error']:.2f} / 255")
