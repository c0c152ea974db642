"""One config dataclass per stage; the command line's options are generated from it.

Each field becomes `--field-name` with the field's default and the help text from
`field(metadata={"help": ...})`, so an option and its default are defined exactly once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _base_type(tp: Any) -> Any:
    """Strip Optional[...] / `X | None` to X."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        tp = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs: dict[str, Any] = {"dest": f.name, "help": f"{help_text} (default: {default})" if not required else help_text}
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kwargs)
            continue
        origin = typing.get_origin(tp)
        if origin in (tuple, list):
            args = typing.get_args(tp)
            elem = args[0] if args else str
            kwargs["nargs"] = len(args) if origin is tuple and args and args[-1] is not Ellipsis else "+"
            kwargs["type"] = elem
            kwargs["metavar"] = elem.__name__.upper()
        elif tp in (int, float, str):
            kwargs["type"] = tp
        elif isinstance(tp, type) and issubclass(tp, Path):
            kwargs["type"] = Path
        else:
            kwargs["type"] = str
        choices = f.metadata.get("choices")
        if choices:
            kwargs["choices"] = choices
        parser.add_argument(flag, default=None if required else default, required=required, **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            if isinstance(v, list) and isinstance(f.default, tuple):
                v = tuple(v)
            values[f.name] = v
    values.update(overrides)
    return cls(**values)


def config_to_dict(cfg: Any) -> dict:
    def conv(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple):
            return list(v)
        return v

    return {k: conv(v) for k, v in dataclasses.asdict(cfg).items()}


def config_to_json(cfg: Any) -> str:
    return json.dumps(config_to_dict(cfg), indent=2, sort_keys=True)
