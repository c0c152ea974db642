"""`dive baseline cyclegan train` / `apply`: a small unpaired visible->infrared translator
(CycleGAN, Zhu et al. 2017) in plain torch, trained on the VI set's training images and applied to
the external identities' visible images.

Model (sizes are options):

- two ResNet-style generators, G: visible->infrared and F: infrared->visible. 7x7 conv (width w),
  two stride-2 3x3 convs (2w, 4w), `--g-blocks` residual blocks at 4w, two (2x nearest upsampling +
  3x3 conv) stages back to w, 7x7 conv to 3 channels, tanh; reflection padding, instance norm.
  Default w = 16: 64 channels at most, 4 blocks, 0.35 M parameters each. (Upsampling + conv
  instead of transposed convs avoids checkerboard artefacts.)
- two PatchGAN discriminators (D_I on infrared, D_V on visible): 4x4 convs, widths 16, 32, 64
  (`--d-width`, `--d-layers` stride-2 layers, then one stride-1 layer and a 1-channel output), leaky
  ReLU 0.2, instance norm; each output cell judges a ~34x34 patch.
- losses: least-squares GAN, cycle L1 weighted `--lambda-cycle` (10), identity L1 (G(i) ~ i,
  F(v) ~ v) weighted `--lambda-cycle` x `--lambda-identity` (0.5; 0 turns it off); the
  discriminators see fakes through a 50-image history pool each; Adam 2e-4, beta1 0.5, constant
  learning rate, then linear decay to 0 over the last half of the steps.
- data: every training-split visible and infrared image of the VI set (`--vi-splits`), resized to
  128x64 once, unpaired (each step draws `--batch-size` visible and as many infrared images
  independently), random horizontal flips.

Determinism and resume: weights are initialised from `--seed`; each step's randomness (batch,
flips, pool) comes from a generator seeded by (seed, stage, step) (`dive.utils.state`), and a
checkpoint holds the four networks, both Adam states and both pools, so a run resumed from
`checkpoint-N` ends with exactly the weights of an uninterrupted run (same thread count).

Time: the default (batch 4, 1,300 steps) is sized for about 10 minutes on the project's 2-core CPU
with one thread: measured 0.46 s/step (median of 7 timings of 10-50 steps, range 0.42-0.58; default
config, `torch.set_num_threads(1)`, nice 19, while another training job held about 1.5 of the 2
cores), so 1,300 steps take about 10 minutes (9-12.5 with the load seen). Loading the default
SynthVI world's 7,804 training images first takes a few seconds.

Run folder (`--out`): `config.json`, `log.jsonl` (losses every `--log-every` steps),
`checkpoint-N/` (state.safetensors + state.json, the last `--keep-checkpoints` kept),
then `generator.safetensors` (G only) + `generator.json` (its architecture, image size, training
config, sha256), the latter written last.

`apply` translates the selected external identities' visible images (the same identities and
source images as `dive baseline grayscale` with the same seed, `dive.generate.sources`) with G.
CycleGAN has no camera control: every infrared camera gets its own `--n` images, from different
source images where the identity has enough, all made by the one generator; `camid` records the
camera the image is assigned to.

Modules: `networks` (the networks, their image range, the generator files), `training`, `apply`.
"""

from dive.baselines.cyclegan.apply import CycleGANApplyConfig, apply_cyclegan, translate
from dive.baselines.cyclegan.networks import (FORMAT, GENERATOR_CONFIG, GENERATOR_WEIGHTS, ImagePool, PatchDiscriminator,
                                              ResidualBlock, ResnetGenerator, count_parameters, init_weights,
                                              load_generator, rgb_tensor, to_uint8, to_unit)
from dive.baselines.cyclegan.training import (RESUMABLE_KEYS, STAGE, CycleGAN, CycleGANTrainConfig, check_trained_on,
                                              load_images, lr_factor, train_cyclegan, vi_training_records)

__all__ = [
    "CycleGANApplyConfig", "apply_cyclegan", "translate",
    "FORMAT", "GENERATOR_CONFIG", "GENERATOR_WEIGHTS", "ImagePool", "PatchDiscriminator", "ResidualBlock",
    "ResnetGenerator", "count_parameters", "init_weights", "load_generator", "rgb_tensor", "to_uint8", "to_unit",
    "RESUMABLE_KEYS", "STAGE", "CycleGAN", "CycleGANTrainConfig", "check_trained_on", "load_images", "lr_factor",
    "train_cyclegan", "vi_training_records",
]
