"""``FlexibleArgumentParser``: vLLM's parser, which takes ``--max_model_len`` as ``--max-model-len``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


class FlexibleArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` for which underscores and dashes in long option names are the same.

    Options are declared kebab-case (``--max-model-len``); before parsing,
    ``--max_model_len 64`` and ``--max_model_len=64`` are rewritten to that
    spelling. Values are left alone (``--prompt a_b`` keeps its underscore).
    """

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([_kebab(a) for a in args], namespace)


def _kebab(arg: str) -> str:
    if not arg.startswith("--") or arg == "--":
        return arg
    name, eq, value = arg.partition("=")
    return name.replace("_", "-") + eq + value
