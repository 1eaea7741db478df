"""Value parsers: each takes an ini string or a Python value and raises ValueError saying why.

The settings in ``settings.py`` name one of these each; the message completes a sentence that
starts with the key, as in ``timeout must be a positive number of seconds``.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

# Modal's GPU types (https://modal.com/docs/guide/gpu), upper-cased as Modal compares them.
GPU_TYPES = (
    "T4",
    "L4",
    "A10",
    "A10G",
    "L40S",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "RTX-PRO-6000",
    "H100",
    "H100!",
    "H200",
    "B200",
    "B200+",
    "ANY",
)
MAX_GPUS_PER_CONTAINER = 8
# Modal counts memory in MiB; a request below this is almost surely GiB written as MiB.
MIN_MEMORY_MIB = 128
# Modal's bounds on `scaledown_window` (modal/_functions.py: _Function._from_local, and
# _FunctionAutoscalerManager.update).
SCALEDOWN_WINDOW_SECONDS = (2, 3600)
# What a shell takes as a variable name.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def did_you_mean(name: str, candidates: Any) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, else ``"."``."""
    matches = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f"; did you mean {matches[0]!r}?" if matches else "."


def choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {text!r}")
        return text

    return parse


def _number(value: Any, kind: Callable[[str], Any], what: str) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be {what}; got {value!r}")
    try:
        return kind(str(value).strip())
    except ValueError:
        raise ValueError(f"must be {what}; got {value!r}") from None


def positive_int(value: Any) -> int:
    number = _number(value, int, "a whole number")
    if number < 1:
        raise ValueError(f"must be at least 1; got {number}")
    return number


def count(value: Any) -> int:
    number = _number(value, int, "a whole number")
    if number < 0:
        raise ValueError(f"must be 0 or more; got {number}")
    return number


def _positive(value: Any, noun: str) -> float:
    number = _number(value, float, f"a {noun}")
    if not number > 0:
        raise ValueError(f"must be a positive {noun}; got {value!r}")
    return number


def seconds(value: Any) -> float:
    return _positive(value, "number of seconds")


def scaledown_seconds(value: Any) -> int:
    """Whole seconds within Modal's bounds for ``scaledown_window``."""
    number = _number(value, int, "a whole number of seconds")
    low, high = SCALEDOWN_WINDOW_SECONDS
    if not low <= number <= high:
        raise ValueError(f"must be {low} to {high} seconds, as Modal allows; got {number}")
    return number


def cpu(value: Any) -> float:
    return _positive(value, "number of CPU cores")


def memory(value: Any) -> int:
    mebibytes = _number(value, int, "a whole number of MiB")
    if mebibytes < MIN_MEMORY_MIB:
        raise ValueError(
            f"is in MiB, as in Modal: {mebibytes} means {mebibytes} MiB. For {mebibytes} GiB "
            f"write memory={mebibytes * 1024}."
        )
    return mebibytes


def gpu(value: Any) -> str:
    text = str(value).strip()
    gpu_type, _, number_text = text.partition(":")
    if gpu_type.upper() not in GPU_TYPES:
        raise ValueError(
            f"has unknown GPU type {gpu_type!r}{did_you_mean(gpu_type.upper(), GPU_TYPES)} "
            f"Modal's GPU types: {', '.join(GPU_TYPES)}; add ':N' for N GPUs."
        )
    if number_text:
        number = _number(number_text, int, "a GPU type, optionally with ':count'")
        if not 1 <= number <= MAX_GPUS_PER_CONTAINER:
            raise ValueError(f"asks for {number} GPUs; Modal allows 1 to 8 per container")
        return f"{gpu_type.upper()}:{number}"
    return gpu_type.upper()


def text(value: Any) -> str:
    return str(value).strip()


def words(value: Any) -> tuple[str, ...]:
    """Names from a list, or from an ini string separated by commas or whitespace."""
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    if not all(isinstance(item, str) and item for item in items):
        raise ValueError(f"must be a list of names; got {value!r}")
    return tuple(items)


def patterns(value: Any) -> tuple[str, ...]:
    """Glob patterns from a list, or from an ini string split as redun splits its
    ``code_includes`` / ``code_excludes``: ``shlex.split``, so whitespace separates and shell
    quotes keep a pattern with spaces whole."""
    if isinstance(value, str):
        try:
            items = shlex.split(value)
        except ValueError as error:  # shlex's "No closing quotation" and the like.
            raise ValueError(
                "must be glob patterns separated by spaces, quoted as in a shell "
                f"({str(error).lower()}); got {value!r}"
            ) from None
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"must be a list of glob patterns; got {value!r}")
    if not all(isinstance(item, str) and item for item in items):
        raise ValueError(f"must be a list of glob patterns; got {value!r}")
    return tuple(items)


def requirements(value: Any) -> tuple[str, ...]:
    """Package specs from a list, or from an ini string separated by whitespace or newlines
    (not commas: ``numpy>=1.26,<2`` is one requirement)."""
    items = value.split() if isinstance(value, str) else list(value)
    if not all(isinstance(item, str) and item for item in items):
        raise ValueError(f"must be a list of packages; got {value!r}")
    return tuple(items)


def split_pairs(items: list[str], written: str) -> list[tuple[str, str]]:
    """``key=value`` items of an ini value, as pairs; ValueError unless each is so written."""
    pairs = []
    for item in items:
        key, equals, text = item.partition("=")
        if not equals:
            raise ValueError(f"must be written {written}; got {item!r}")
        pairs.append((key, text))
    return pairs


def env_vars(value: Any) -> tuple[tuple[str, str], ...]:
    """``{"NAME": "value"}``, or ``NAME=value, OTHER=value`` in redun.ini (split as a shell
    splits words, commas also separating: quote a value that holds a space or a comma)."""
    if isinstance(value, str):
        try:
            lexer = shlex.shlex(value, posix=True)
            lexer.whitespace += ","
            lexer.whitespace_split = True
            items = list(lexer)
        except ValueError as error:  # shlex's "No closing quotation".
            raise ValueError(
                f"must be written NAME=value, quoted as in a shell ({str(error).lower()}); "
                f"got {value!r}"
            ) from None
        pairs = split_pairs(items, "NAME=value")
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise ValueError(f"must map variable names to string values; got {value!r}")
    for name, text in pairs:
        if not (isinstance(name, str) and _ENV_NAME.fullmatch(name)):
            raise ValueError(
                f"has {name!r}, which is not a variable name: letters, digits and _, "
                "not starting with a digit"
            )
        if not isinstance(text, str):
            raise ValueError(
                f"values must be strings; {name!r} is {text!r}: write {{{name!r}: {str(text)!r}}}"
            )
    if len({name for name, _ in pairs}) != len(pairs):
        raise ValueError(f"names a variable twice; got {value!r}")
    return tuple(sorted(pairs))


def mount_path(value: Any) -> str:
    path = str(value).strip()
    if not path.startswith("/") or path == "/":
        raise ValueError(f"must be an absolute path below /; got {value!r}")
    return path.rstrip("/")


def flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"must be true or false; got {value!r}")
