"""How much does the text lower the denoising loss? The v-prediction MSE of real images at fixed
timesteps with the right text, with another image's text (shifted by one), and with the empty text.
If the right text barely beats the wrong one, the model hardly uses its conditioning, whatever
the text is (a caption or a learned identity token).

    # the base (a diffusers folder):
    python research/text_loss_gap.py base checkpoints/tiny-sd-base
    python research/text_loss_gap.py base runs/base-tte/model
    # a DiVE checkpoint: external images with their own identity token vs the next identity's
    python research/text_loss_gap.py dive checkpoints/dive-demo [BASE]
    # the same on the VI set's infrared images (ids the checkpoint saw in infrared)
    python research/text_loss_gap.py dive-ir checkpoints/dive-demo [BASE]
    # the ceiling: how much of the latent variance identity explains (external visible / VI infrared images)
    python research/text_loss_gap.py variance [BASE]
    python research/text_loss_gap.py variance-ir [BASE]
    # where the base's cross-attention goes: mean probability per text position (25 steps, all layers)
    python research/text_loss_gap.py attention [BASE]

Reference: identity alone explains ~29% of the latent variance of SynthVI's external images
(pixel-aligned identity means over 40 ids), so a model that used identity fully would lose up to
about that much at t=950 with the right text.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dive import defaults
from dive.utils.diffusion import diffusion_target

TIMESTEPS = (200, 400, 600, 800, 950)


def base_models(path: Path):
    """(tokenizer, text_encoder, vae, unet, scheduler) of a diffusers base folder (a `dive base
    pretrain` run exports one: give its model folder)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    if not (path / "model_index.json").exists():
        raise SystemExit(f"{path}: expected a diffusers base folder (model_index.json)")
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    return pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, DDPMScheduler.from_config(pipe.scheduler.config)


@torch.no_grad()
def gaps(tok, te, vae, unet, sched, images: np.ndarray, right: list[str], wrong: list[str]) -> None:
    x = torch.tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    lat = vae.encode(x).latent_dist.mean * vae.config.scaling_factor

    def enc(prompts):
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        return te(ids)[0]

    hidden = [enc(right), enc(wrong), enc([""] * len(right))]
    g = torch.Generator().manual_seed(0)
    for t in TIMESTEPS:
        noise = torch.randn(lat.shape, generator=g)
        ts = torch.full((len(lat),), t)
        noisy = sched.add_noise(lat, noise, ts)
        target = diffusion_target(sched, lat, noise, ts)
        r, w, e = (((unet(noisy, ts, encoder_hidden_states=h).sample - target) ** 2).mean().item() for h in hidden)
        print(f"t={t}: right text {r:.4f} | wrong text {w:.4f} | empty {e:.4f} | right lowers the loss by "
              f"{100 * (1 - r / w):.1f}% vs wrong, {100 * (1 - r / e):.1f}% vs empty")


def read(path, size=(64, 128)) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize(size, Image.BICUBIC))


def main() -> None:
    torch.set_num_threads(2)
    kind = sys.argv[1]
    path = Path(sys.argv[2] if len(sys.argv) > 2 else str(defaults.BASE))
    if kind == "base":
        caps = [json.loads(line) for line in open("data/synthvi/web/captions.jsonl")][-64:]
        images = np.stack([read(Path("data/synthvi/web") / c["file"]) for c in caps])
        right = [c["caption"] for c in caps]
        gaps(*base_models(path), images, right, right[1:] + right[:1])
    elif kind in ("dive", "dive-ir"):
        from dive.data.records import Modality
        from dive.data.registry import load_dataset
        from dive.generate.pipeline import load_generator

        base = sys.argv[3] if len(sys.argv) > 3 else str(defaults.BASE)
        gen = load_generator(base, path)
        gen.use_adapters(infrared=kind == "dive-ir")  # a checkpoint's infrared adapter, if it has one
        table, pipe = gen.table, gen.pipe
        has_ir = {c.dataset for c in table.cameras if c.modality == "infrared"}
        ext = [i for i in table.identities if (i.dataset in has_ir) == (kind == "dive-ir")][:16]
        ds = load_dataset("synthvi", "data/synthvi")
        images, right, wrong = [], [], []
        for j, ident in enumerate(ext):
            recs = [r for r in ds.records if r.dataset == ident.dataset and r.pid == ident.pid
                    and (kind == "dive" or r.modality == Modality.INFRARED)]
            for r in recs[:4]:
                cam = table.camera(r.dataset, r.camid).token
                images.append(read(r.path))
                right.append(table.prompt(ident.token, cam))
                wrong.append(table.prompt(ext[(j + 1) % len(ext)].token, cam))
        from diffusers import DDPMScheduler

        gaps(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, DDPMScheduler.from_config(pipe.scheduler.config),
             np.stack(images), right, wrong)
    elif kind in ("variance", "variance-ir"):
        from diffusers import AutoencoderKL

        from dive.data.registry import load_dataset

        vae = AutoencoderKL.from_pretrained(path / "vae").eval()
        recs_all = load_dataset("synthvi", "data/synthvi").records
        if kind == "variance":  # the external ids' visible images
            ext = [r for r in recs_all if r.dataset == "synthvi_ext" and r.split == "train"]
        else:  # the VI set's infrared training images, one camera at a time would be fairer; both here
            ext = [r for r in recs_all if r.dataset == "synthvi_vi" and r.split == "train" and r.modality.value == "infrared"]
        pids = sorted({r.pid for r in ext})[:40]
        lats, labels = [], []
        with torch.no_grad():
            for p in pids:
                recs = [r for r in ext if r.pid == p][:12]
                x = torch.tensor(np.stack([read(r.path) for r in recs])).permute(0, 3, 1, 2).float() / 127.5 - 1
                lats.append(vae.encode(x).latent_dist.mean)
                labels += [p] * len(recs)
        lat, labels = torch.cat(lats), np.array(labels)
        total = ((lat - lat.mean(0)) ** 2).mean().item()
        within = np.mean([((lat[labels == p] - lat[labels == p].mean(0)) ** 2).mean().item() for p in pids])
        what = "external ids, visible images" if kind == "variance" else "VI ids, infrared images of both IR cameras"
        print(f"latent variance {total:.3f}, within-identity {within:.3f}: identity explains {100 * (1 - within / total):.1f}% "
              f"({len(pids)} {what}, up to 12 images each, pixel-aligned means)")
    elif kind == "attention":
        from dive.generate.attention import record_attention
        from dive.generate.pipeline import ImageJob, load_generator

        gen = load_generator(path)
        prompt = "a photo of a average medium person, seen from the front, wearing a red shirt and blue pants and black shoes"
        with record_attention(gen.pipe) as store:
            gen.render([ImageJob("", "", 0, 1, prompt)], steps=25, guidance=1.0)
        mass = torch.stack([v.mean(dim=(0, 2, 3)) for v in store.records.values()]).mean(0)
        ids = gen.pipe.tokenizer(prompt).input_ids
        words = gen.pipe.tokenizer.convert_ids_to_tokens(ids)
        print(" | ".join(f"{w}:{100 * mass[j]:.1f}%" for j, w in enumerate(words)) + f" | padding:{100 * mass[len(ids):].sum():.1f}%")
    else:
        raise SystemExit("usage: text_loss_gap.py base|dive|dive-ir|variance|variance-ir|attention PATH [BASE]")


if __name__ == "__main__":
    main()
