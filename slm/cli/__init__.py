"""`slm` — the one face that dispatches every verb.

Each module in this package registers its verbs (`register(subparsers)`); each verb is a thin function over
a library call that tests call directly. User mistakes (SlmError) print one line and exit 2. A verb names its
model arguments in `hub_models` ({dest: what it needs}); `main` turns any Hugging Face Hub id among them into
its HF cache folder (slm.hub) before the verb runs, and keeps what was typed in `args.given`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
import threading

from slm import __version__
from slm.errors import SlmError, disk_full, is_disk_full
from slm.hub import resolve_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm", description="Grow, specialise, export and profile small "
                                                             "language models.")
    parser.add_argument("--version", action="version", version=f"slm-lab {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)
                      if not m.name.startswith("_")):  # not __main__
        importlib.import_module(f"{__name__}.{mod}").register(sub)
    return parser


def _exit_on_sigterm() -> None:
    """SIGTERM (what `timeout`, Slurm and Kubernetes send) becomes SystemExit(143), so every `finally` runs:
    the output guard releases its lock and atomic writers remove their temporaries. `slm train` installs its
    own handler on top (save a checkpoint, then stop)."""

    def _stop(signum, frame):
        print("stopped by SIGTERM", file=sys.stderr)
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, _stop)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        _exit_on_sigterm()
    try:
        resolve_hub_args(args)
        rc = args.func(args)
    except SlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a writer outside the output guard (a cache, a record) found the disk full
        if not is_disk_full(e):
            raise
        print(f"error: {disk_full(e.filename or '.')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def resolve_hub_args(args: argparse.Namespace) -> None:
    """Replace each model argument the verb declared (`hub_models`: dest → weights | tokenizer | config) that
    is a Hub id by its HF cache folder; `args.given` keeps the text the user typed."""
    args.given = {}
    for dest, need in (getattr(args, "hub_models", None) or {}).items():
        value = getattr(args, dest, None)
        if not value:
            continue
        args.given[dest] = value
        if isinstance(value, list):
            setattr(args, dest, [resolve_model(v, need) for v in value])
        else:
            setattr(args, dest, resolve_model(value, need))
