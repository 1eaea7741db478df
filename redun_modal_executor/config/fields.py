"""How a configuration key is declared: as a dataclass field, with its parser and its doc.

``setting()`` makes such a field; ``settings_of()`` lists the keys a class declares. A field
made with ``settings_from()`` holds the values of another class's keys (``ExecutorConfig``'s
``images`` and ``task_defaults``); its place in the field order is where those keys are listed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

_SETTING = "redun_modal_executor.setting"
_SETTINGS_FROM = "redun_modal_executor.settings_from"


@dataclass(frozen=True)
class Setting:
    """One configuration key: how to parse it, its default, what it means."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    shown: str  # The default as the docs show it.
    doc: str
    task_option: bool = False
    passthrough: bool = False  # A task option that Modal's with_options takes as it is.


def setting(
    default: Any,
    parse: Callable[[Any], Any],
    doc: str,
    *,
    shown: str | None = None,
    passthrough: bool = False,
) -> Any:
    """A dataclass field that is a configuration key. ``shown`` is the default as the docs
    show it, where the value alone says too little (``None`` that means Modal's default)."""
    declared = {
        "parse": parse,
        "shown": _shown(default) if shown is None else shown,
        "doc": doc,
        "passthrough": passthrough,
    }
    return field(default=default, metadata={_SETTING: declared})


def settings_from(
    cls: type, default_factory: Callable[[], Any], *, task_options: bool = False
) -> Any:
    """A dataclass field whose value holds the values of ``cls``'s keys."""
    return field(default_factory=default_factory, metadata={_SETTINGS_FROM: (cls, task_options)})


def settings_of(cls: type, task_option: bool = False) -> tuple[Setting, ...]:
    """The keys ``cls`` declares, in field order, with those of its ``settings_from`` fields."""
    found: list[Setting] = []
    for spec in fields(cls):
        if _SETTINGS_FROM in spec.metadata:
            found += settings_of(*spec.metadata[_SETTINGS_FROM])
        elif _SETTING in spec.metadata:
            declared = spec.metadata[_SETTING]
            found.append(
                Setting(spec.name, default=spec.default, task_option=task_option, **declared)
            )
    return tuple(found)


def _shown(default: Any) -> str:
    """A default as the docs show it: ``none`` for nothing, a list as its items."""
    if default is None or default == ():
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, tuple):
        return " ".join(default)
    return str(default)
