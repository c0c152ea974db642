import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path

import pytest

#: a micro SD architecture: every real class, a few thousand parameters
MICRO_MODEL = dict(text_width=32, text_layers=1, text_heads=2, unet_channels=(16, 16, 32), unet_head_dim=4,
                   vae_channels=(8, 16, 16, 16), latent_channels=4, norm_groups=8)
TINY_WORLD = dict(vi_train_ids=4, vi_val_ids=1, vi_test_ids=2, vi_images_per_camera=(1, 2), ext_ids=4,
                  ext_test_ids=1, web_images=48)


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory) -> Path:
    from dive.data.synthvi.build import SynthConfig, build_world

    out = tmp_path_factory.mktemp("world") / "synthvi"
    build_world(SynthConfig(out=out, seed=5, workers=1, **TINY_WORLD), progress=False)
    return out


@pytest.fixture(scope="session")
def micro_base(tiny_world_dir, tmp_path_factory) -> Path:
    from dive.base.models import TinySDConfig
    from dive.base.pretrain import BasePretrainConfig, pretrain

    root = tmp_path_factory.mktemp("base")
    cfg = BasePretrainConfig(data=tiny_world_dir, out=root / "base", run_dir=root / "run", vae_steps=4, vae_batch=4,
                             text_steps=3, text_batch=8, steps=6, batch_size=4, warmup=2, save_every=3, preview_every=6,
                             model=TinySDConfig(**MICRO_MODEL), threads=1)
    return pretrain(cfg, progress=False)


@pytest.fixture(scope="session")
def micro_dive_run(micro_base, tiny_world_dir, tmp_path_factory) -> Path:
    from dive.train.trainer import DiVETrainConfig, train_dive

    out = tmp_path_factory.mktemp("dive") / "run"
    cfg = DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=out, steps=6, batch_size=4, min_images=3,
                          save_every=3, preview_every=6, rank=4)
    train_dive(cfg, progress=False)
    return out


# micro models gain nothing from threads, and several OpenMP threads per process on a shared
# 2-core machine slow everything down (spin-waiting): tests run single-threaded
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def studio_dirs(micro_base, micro_dive_run, tmp_path_factory):
    """A studio data folder holding a copy of the micro base, and a 'shipped' folder holding the
    micro DiVE checkpoint whose dive.json points at that base."""
    import json
    import shutil

    root = tmp_path_factory.mktemp("studio")
    data = root / "data"
    shipped = root / "shipped"
    shutil.copytree(micro_base, data / "bases" / "micro")
    from dive.studio.service import DEMO_NAME

    demo = shipped / DEMO_NAME
    shutil.copytree(micro_dive_run / "final", demo)
    meta = json.loads((demo / "dive.json").read_text())
    meta["base"] = str(data / "bases" / "micro")
    (demo / "dive.json").write_text(json.dumps(meta))
    return data, shipped
