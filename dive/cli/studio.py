"""`dive studio-latency`: time the studio's first Generate."""

from __future__ import annotations

import argparse
import json


def _cmd_studio_latency(args: argparse.Namespace) -> int:
    from dive.studio.bench import first_image_latency

    print(json.dumps(first_image_latency(repeats=args.repeats), indent=2))
    return 0


def _register_studio_latency(sub) -> None:
    p = sub.add_parser("studio-latency", help="time the studio's first Generate (4 images, default settings)")
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=_cmd_studio_latency)


COMMANDS = {"studio-latency": _register_studio_latency}
