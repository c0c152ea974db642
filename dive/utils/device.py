"""`--device` and `--dtype` of every generation command, `dive train` and the studio.

* ``--device auto|cpu|cuda|cuda:N|mps``: ``auto`` is cuda when torch sees a GPU, else cpu (mps
  only when named). A named device that is not there is one clear error line, never a silent
  fall-back to the CPU.
* ``--dtype fp32|fp16|bf16``: the weights' dtype for generation (noise is still drawn in float32
  on the CPU from each image's own generator, then cast, so per-image seeds, file names and the
  images' composition do not depend on the device or dtype); the mixed precision of training
  (trainable parameters stay float32, as accelerate keeps them). fp16 is refused on the CPU,
  whose half-precision convolutions are slow or missing: use bf16 or fp32 there.

`resolve_device` / `resolve_dtype` raise `ValueError` naming the option, which the command line
prints as one `dive: error:` line.
"""

from __future__ import annotations

import re

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("fp32", "fp16", "bf16")
#: --dtype -> accelerate's mixed_precision
MIXED_PRECISION = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}

DEVICE_HELP = "auto (cuda when a GPU is present, else cpu), cpu, cuda, cuda:N or mps"
DTYPE_HELP = ("weights dtype: fp32, bf16 or fp16 (fp16 needs a GPU: refused on cpu); noise is drawn in float32 on "
              "the CPU, so seeds and file names do not depend on it")


def check_device_name(name: str, option: str = "--device") -> str:
    """`name` if it is a --device value (not checking that the device is present), else ValueError."""
    if name in DEVICES or re.fullmatch(r"cuda:\d+", str(name)):
        return name
    raise ValueError(f"{option} {name!r}: expected one of {', '.join(DEVICES)} or cuda:N")


def resolve_device(name: str = "auto", option: str = "--device"):
    """The torch.device of a --device value; one clear line when the named device is not there."""
    import torch

    check_device_name(name, option)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {name}: torch sees no CUDA GPU here; use {option} cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"{option} {name}: torch sees {torch.cuda.device_count()} CUDA GPU(s) here")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{option} mps: torch sees no Apple GPU (MPS) here; use {option} cpu or auto")
    return torch.device(name)


def check_dtype_name(name: str, option: str = "--dtype") -> str:
    if name not in DTYPES:
        raise ValueError(f"{option} {name!r}: expected one of {', '.join(DTYPES)}")
    return name


def resolve_dtype(name: str = "fp32", device=None, option: str = "--dtype"):
    """The torch dtype of a --dtype value on `device` (a torch.device or its name; None: no device
    check). fp16 on the CPU is refused."""
    import torch

    check_dtype_name(name, option)
    if name == "fp16" and device is not None and torch.device(device).type == "cpu":
        raise ValueError(f"{option} fp16: half precision needs a GPU (CPU fp16 convolutions are slow or "
                         f"unsupported); use {option} bf16 or fp32 on cpu")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def dtype_name(dtype) -> str:
    """fp32 / fp16 / bf16 of a torch dtype (its own name for any other)."""
    import torch

    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    return names.get(dtype, str(dtype).replace("torch.", ""))


def resolve(device: str = "auto", dtype: str = "fp32"):
    """(torch.device, torch.dtype) of --device and --dtype, both checked."""
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev)


def accelerate_options(device: str = "auto", dtype: str | None = None, *, cpu: bool = False,
                       mixed_precision: str = "no") -> tuple[bool, str]:
    """accelerate's (cpu, mixed_precision) for `dive train`'s --device / --dtype. `auto` leaves the
    device to accelerate (a GPU when there is one); a named device must be present. The older
    --cpu and --mixed-precision keep working as before (--mixed-precision is passed on unchecked);
    a contradiction between the two spellings is an error."""
    if cpu and device not in ("auto", "cpu"):
        raise ValueError(f"--cpu with --device {device}: give one of them")
    if re.fullmatch(r"cuda:\d+", str(device)):
        raise ValueError(f"--device {device}: training takes cuda (each process its own GPU); pick GPUs with "
                         "CUDA_VISIBLE_DEVICES")
    dev = resolve_device("cpu" if cpu else device)
    on_cpu = cpu or device == "cpu"
    if dtype is None:
        return on_cpu, mixed_precision
    mixed = MIXED_PRECISION[check_dtype_name(dtype)]
    if mixed_precision not in ("no", mixed):
        raise ValueError(f"--dtype {dtype} with --mixed-precision {mixed_precision}: give one of them")
    resolve_dtype(dtype, dev)
    return on_cpu, mixed
