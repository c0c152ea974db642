"""Cross-attention maps of the DiVE generator: where in the image each prompt token looks.

The paper's observation to check: the camera token attends globally (person and background:
it sets the modality), the identity token attends to the person. Common attention-map tools
break on non-square images, on guidance <= 1 and on added (textual-inversion) tokens; this
module avoids all three with one small processor that

- is installed only on the UNet's cross-attention layers, and only inside
  `with record_attention(pipe, ...) as rec:` (the original processors are put back on exit, so
  outside the block the pipeline is untouched and nothing is paid);
- leaves the forward pass alone: the layer output is the original processor's own output
  (images are bitwise identical with and without recording), and the attention probabilities are
  computed beside it, for the conditional branch only (with classifier-free guidance the UNet
  batch is [uncond, cond]; with guidance <= 1 it is [cond]);
- averages the probabilities over heads and reshapes them to the layer's real latent grid
  (h, w), found from the layer's sequence length and the latent (H, W) the UNet was called with
  (128x64 images: 16x8, 8x4, 4x2 latents);
- keeps one record per (UNet call = sampling step, layer), optionally only for some token
  positions (`tokens=`), some layers and some steps.

Aggregation (`AttentionStore.heatmaps`) upsamples each chosen record bilinearly to the image size
and averages them. Token location (`locate_tokens`) works on token ids: the identity token is one
added id; the camera string is all its BPE pieces (the 8-character random strings split into
several); each ordinary word is its pieces. A token's heat map is the SUM of its pieces' maps
(the attention mass the word receives as a whole, comparable with a one-piece token; summing and
averaging give the same normalised picture, only the raw mass differs).

`attention_maps(generator, identity, camera)` renders one image (the same image `dive generate`
makes for that identity, camera, seed and index) and returns an `AttentionResult`; the numeric
summary measures, per token, how much of its attention mass falls on the person (a person mask
estimated from the image itself, see `person_mask`) and how spread out the attention is
(`area50`: the smallest fraction of the image holding half the mass; 0.5 = uniform).
`attention_figure` draws it; `dive attention` is the command line.

Modules: `record` (layer and step selection, the recorder), `tokens` (token location), `maps`
(person mask, numeric summary, `attention_maps`), `figure`, `run` (overhead timing, the command).
"""

from dive.generate.attention.figure import attention_figure, build_figure, overlay
from dive.generate.attention.maps import (MASK_METHODS, AttentionResult, attention_maps, attention_stats, center_mask,
                                          default_tokens, person_mask)
from dive.generate.attention.record import (LAYER_GROUPS, AttentionStore, CrossAttentionRecorder, cross_attention_layers,
                                            latent_grid, layer_factor, record_attention, select_layers, select_steps)
from dive.generate.attention.run import AttentionConfig, attention_overhead, run_attention
from dive.generate.attention.tokens import TokenSpan, locate_tokens, prompt_ids

__all__ = [
    "LAYER_GROUPS", "AttentionStore", "CrossAttentionRecorder", "cross_attention_layers", "latent_grid", "layer_factor",
    "record_attention", "select_layers", "select_steps",
    "TokenSpan", "locate_tokens", "prompt_ids",
    "MASK_METHODS", "AttentionResult", "attention_maps", "attention_stats", "center_mask", "default_tokens", "person_mask",
    "attention_figure", "build_figure", "overlay",
    "AttentionConfig", "attention_overhead", "run_attention",
]
