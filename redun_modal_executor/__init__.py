"""Run redun workflows on Modal.

This module is imported at every interpreter start (through the registration ``.pth``), so it
imports nothing: ``ModalExecutor`` is loaded on first access.
"""

__version__ = "0.1.0"
__all__ = ["BucketMount", "ModalExecutor", "VolumeMount", "__version__"]


def __getattr__(name: str):
    # redun >= 0.46 resolves `class = redun_modal_executor.ModalExecutor` through getattr.
    if name == "ModalExecutor":
        from redun_modal_executor.executor import ModalExecutor

        return ModalExecutor
    if name in ("BucketMount", "VolumeMount"):  # The values of the `volumes` task option.
        from redun_modal_executor.config import mounts

        return getattr(mounts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
