"""The DiVE checkpoint: LoRA + identity embeddings + the token table, in formats other tools load.

A checkpoint folder holds::

    pytorch_lora_weights.safetensors  the UNet LoRA, diffusers' format: `pipe.load_lora_weights(dir)`
    learned_embeds.safetensors        {token: embedding} of every learned token:
                                      `pipe.load_textual_inversion(list(emb.values()), token=list(emb))`
    tokens.json                       the token table (identity token -> dataset, original id, image
                                      count; camera token -> dataset, camera, modality) and the prompt
                                      template: saved with every checkpoint, so a checkpoint is usable
                                      without any side file (the authors' code regenerated its camera
                                      strings at random and lost them)
    dive.json                         how it was trained (base model, config, step)
    infrared_lora_weights.safetensors only with `dive train --infrared-adapter`: a second UNet LoRA
                                      in the same format, on for infrared cameras only. Vanilla
                                      diffusers: `pipe.load_lora_weights(dir, weight_name=
                                      "infrared_lora_weights.safetensors", adapter_name="infrared")`,
                                      then `pipe.set_adapters(["dive", "infrared"])` for infrared
                                      prompts and `pipe.set_adapters(["dive"])` for visible ones
    text_encoder_lora.safetensors     only with `dive train --text-rank R` (an experiment, off by
                                      default): a LoRA on the text encoder's attention as plain
                                      {module.lora_A, module.lora_B} tensors, merged into the text
                                      encoder's weights by `load_into_pipeline`. A separate file
                                      because diffusers reads text-encoder LoRA keys through
                                      transformers' `load_adapter`, which needs peft >= 0.22 (the
                                      registry here has 0.21.2): vanilla diffusers ignores this file

Training, generation, export and the studio import this package; none of them imports the trainer.
Its parts: `tokens` (the token table), `format` (file names, saving, hashing, finding the base) and
`loading` (checks and loading into a diffusers pipeline).
"""

from dive.checkpoint.format import (EMBEDS_FILE, INFRARED_ADAPTER, INFRARED_LORA_FILE, LORA_FILE, META_FILE,
                                    REFERENCES_DIR, SHARED_ADAPTER, TEXT_LORA_FILE, TOKENS_FILE, CheckpointError,
                                    _hashed_bytes, _named_base, check_checkpoint_dir, checkpoint_hash, find_base,
                                    has_infrared_adapter, is_checkpoint_dir, read_safetensors, reference_path, resolve_base,
                                    save_checkpoint, trained_base, training_config)
from dive.checkpoint.loading import check_checkpoint, check_lora_fits, load_into_pipeline, merge_text_lora
from dive.checkpoint.tokens import (CAMERA_MODES, DEFAULT_TEMPLATE, CameraToken, IdentityToken, TokenTable,
                                    check_template, identity_token_name, random_camera_strings)

__all__ = [
    "CAMERA_MODES", "DEFAULT_TEMPLATE", "EMBEDS_FILE", "INFRARED_ADAPTER", "INFRARED_LORA_FILE", "LORA_FILE",
    "META_FILE", "REFERENCES_DIR", "SHARED_ADAPTER", "TEXT_LORA_FILE", "TOKENS_FILE", "CameraToken",
    "CheckpointError", "IdentityToken", "TokenTable", "check_checkpoint", "check_checkpoint_dir", "check_template", "check_lora_fits", "checkpoint_hash",
    "find_base", "has_infrared_adapter", "identity_token_name", "is_checkpoint_dir", "load_into_pipeline",
    "merge_text_lora", "random_camera_strings", "read_safetensors", "reference_path", "resolve_base", "save_checkpoint",
    "trained_base", "training_config",
]
