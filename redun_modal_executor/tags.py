"""What a job is tagged with in the redun database: where and how it ran, where that leads
somewhere (`redun log`, `redun console`)."""

from __future__ import annotations

from typing import Any

from redun_modal_executor.backends import Backend
from redun_modal_executor.calls import CallAddress
from redun_modal_executor.config import CallOptions

Tags = list[tuple[str, Any]]


def where_tags(backend: Backend, options: CallOptions) -> Tags:
    """The backend's tags, and the options a job was given that redun does not record."""
    tags = backend.job_tags()
    for name, value in options.set_options().items():
        if name == "volumes":
            value = {path: mount.shown() for path, mount in value}
        elif name == "env":
            value = dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        tags.append((f"modal_{name}", value))
    return tags


def address_tags(address: CallAddress) -> Tags:
    """The tags that lead from a job to its call on Modal (and its input, in a batch)."""
    tags: Tags = [("modal_call", address.call_id)]
    if address.index is not None:
        tags.append(("modal_input", address.index))
    return tags
