"""Register the ``modal`` executor type the moment redun's executor registry is imported.

redun 0.44 finds executors only in its in-process registry, which must be filled before a
``Scheduler`` reads ``[executors.*]`` from redun.ini; it has no entry-point discovery. The
``redun_modal_executor_registration.pth`` file that the wheel puts in site-packages adds a
trigger to ``sys.meta_path`` at interpreter start: a lambda that compares module names and
imports nothing. When ``redun.executors.base`` is about to be imported, the trigger calls
``find_spec`` here, which wraps that module's loader so that the registration runs right after
the module body. The registration names the class by path, so even then nothing of this
package's executor (or of modal) is imported until a config actually uses ``type = modal``.
It also registers the ``modalvol://`` file system (``files.filesystem``), which imports redun's
file module and this package's configuration, but not modal.
"""

from importlib.machinery import ModuleSpec, PathFinder

EXECUTOR_TYPE = "modal"
EXECUTOR_CLASS_PATH = "redun_modal_executor.executor.ModalExecutor"


def register(registry_module) -> None:
    """Add the ``modal`` type to redun's executor registry unless it is there already, and
    the ``modalvol`` scheme to redun's file systems."""
    if registry_module.get_executor_class(EXECUTOR_TYPE, required=False) is None:
        registry_module.register_executor(EXECUTOR_TYPE, EXECUTOR_CLASS_PATH)
    from redun_modal_executor.files.filesystem import register as register_filesystem

    register_filesystem()


class _RegisteringLoader:
    """Runs the real loader of redun's registry module, then registers the executor."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        register(module)

    def __getattr__(self, name: str):
        # get_source, get_code, ... for tools that inspect module.__loader__.
        return getattr(self._loader, name)


def find_spec(name: str, path=None, target=None) -> ModuleSpec | None:
    """The spec of ``redun.executors.base`` with a loader that registers after executing."""
    spec = PathFinder.find_spec(name, path, target)
    if spec is not None and spec.loader is not None:
        spec.loader = _RegisteringLoader(spec.loader)
    return spec
