"""Stage entry points: an error is one line on stderr, never a traceback.

Every ``stages/<name>.py`` wraps its ``main`` with :func:`stage_main`. An error the user can
fix (bad params, a missing or unreadable input file, unsafe data) prints
``error: <file or key>: <what is wrong>`` and exits with status 2; any other exception prints
``error: internal: <type>: <message>`` and exits with status 1. An OS error that is the
machine's state (read-only file system, full disk, no permission, quota: ``EROFS``, ``ENOSPC``,
``EACCES``, ``EDQUOT``), wherever it happens, is one line naming the path, exit status 2
(:func:`pipeline.files.os_error_text`); atomic writes leave the resume point intact.
``--debug`` (anywhere on the command line) or the environment variable ``AVE_DEBUG=1``
re-raises instead, with the full traceback.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Optional

from pipeline.config import DEFAULT_PARAMS, ConfigError, InputError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "AVE_DEBUG"
EXIT_INPUT = 2  # the user's params or inputs are wrong
EXIT_INTERNAL = 1  # anything else (a bug, or a failure of the machine)
# Errors whose message names the key or file at fault: shown as they are.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ConfigError, InputError, FileNotFoundError,
                                                 IsADirectoryError, PermissionError)


def debug_enabled(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (an OSError without a message names its file)."""
    if isinstance(err, OSError) and err.filename is not None and not err.args[1:]:
        text = f"{err.filename}: {err.strerror or err}"
    else:
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split()) or type(err).__name__


def _os_error_text(err: BaseException) -> Optional[str]:
    """:func:`pipeline.files.os_error_text` of ``err`` or of the error it was raised from."""
    from pipeline.files import os_error_text

    while err is not None:
        text = os_error_text(err)
        if text is not None:
            return text
        err = err.__cause__ or err.__context__
    return None


def stage_main(main: Callable[[Optional[list[str]]], Any]) -> Callable[[Optional[list[str]]], Any]:
    """Wrap a stage's ``main(argv)``: errors become one line and an exit status (see module doc)."""
    @functools.wraps(main)
    def wrapper(argv: Optional[list[str]] = None) -> Any:
        args = list(sys.argv[1:] if argv is None else argv)
        debug = debug_enabled(args)
        args = [a for a in args if a != DEBUG_FLAG]
        try:
            return main(args)
        except KeyboardInterrupt:
            if debug:
                raise
            print("error: interrupted", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        except INPUT_ERRORS as e:
            if debug:
                raise
            print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_INPUT) from None
        except Exception as e:
            if debug:
                raise
            machine = _os_error_text(e)
            if machine is not None:
                print(f"error: {machine}", file=sys.stderr, flush=True)
                raise SystemExit(EXIT_INPUT) from None
            print(f"error: internal: {type(e).__name__}: {one_line(e)} (rerun with {DEBUG_FLAG} "
                  f"or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_INTERNAL) from None
    return wrapper


def params_restore_hint(path: str, message: str = "") -> str:
    """``'; <what to do>'`` when the params file ``path`` differs from the experiment's baseline
    (``DVC_EXP_BASELINE_REV``) or the last commit: a failed ``dvc exp run -S`` leaves its values
    there. ``message`` is the error (``'<key>: ...'``): the hint names that one key and the
    committed value, so other changes (an applied experiment's) are kept."""
    import os
    import subprocess
    from pathlib import Path

    import yaml

    rev = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    try:
        proc = subprocess.run(["git", "show", f"{rev}:./{path}"], capture_output=True, timeout=30)
        current = Path(path).read_bytes()
    except (OSError, subprocess.SubprocessError):
        return ""
    if proc.returncode != 0 or proc.stdout == current:
        return ""
    message = message.removeprefix(f"{path}: ")  # load_params names the file first
    key = message.split(":", 1)[0].strip() if ":" in message else ""
    try:
        committed, now = yaml.safe_load(proc.stdout), yaml.safe_load(current)
    except yaml.YAMLError:
        committed = now = None
    missing = object()

    def lookup(tree, dotted: str):
        for part in dotted.split("."):
            if not isinstance(tree, dict) or part not in tree:
                return missing
            tree = tree[part]
        return tree

    if not key or " " in key or lookup(now, key) is missing:
        return f"; {path} differs from the last commit (`git diff {path}` shows how)"
    old = lookup(committed, key)
    if old is missing:
        return f"; remove {key} from {path} (the last commit has no such key)"
    if old == lookup(now, key):
        return ""
    shown = "null" if old is None else str(old).lower() if isinstance(old, bool) else old
    return f"; {path} keeps it: set {key} back to {shown}, the last commit's value"


PARAMS_HELP = ("the params file the stage reads its sections from (default: params.yaml, the one "
               "dvc.yaml lists; another file is for running the stage by hand)")


def stage_parser(doc: str):
    """The argument parser of a stage: its docstring's first paragraph as the description, and
    ``--params``."""
    import argparse

    first = " ".join(doc.strip().split("\n\n")[0].split())
    p = argparse.ArgumentParser(description=first)
    p.add_argument("--params", default=DEFAULT_PARAMS, metavar="FILE", help=PARAMS_HELP)
    return p
