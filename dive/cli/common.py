"""What every command module of the `dive` command line shares."""

from __future__ import annotations

import argparse

from dive.utils.config import add_dataclass_arguments


def add_stage(sub, name: str, help_text: str, config_cls: type, func) -> argparse.ArgumentParser:
    """A command whose options are exactly its stage's config dataclass."""
    p = sub.add_parser(name, help=help_text)
    add_dataclass_arguments(p, config_cls)
    p.set_defaults(func=func)
    return p


def print_wait_note(threads: int = 0) -> None:
    """A command's warning when OpenMP threads sleep between operations (dive.utils.flops); threads
    0: torch's current thread count."""
    import os

    import torch

    from dive.utils.flops import wait_policy_note

    threads = threads or torch.get_num_threads()
    note = wait_policy_note(os.environ.get("OMP_WAIT_POLICY"), threads)
    if note:
        print(f"note: {note}")
