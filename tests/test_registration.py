"""`type = modal` works in any Python process of the environment, with no code in workflows."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import redun_modal_executor

PTH_SOURCE = Path(redun_modal_executor.__file__).with_name("registration.pth")


def python(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_installed_pth_is_the_packaged_one():
    installed = Path(sysconfig.get_paths()["purelib"]) / "redun_modal_executor_registration.pth"
    assert installed.read_text() == PTH_SOURCE.read_text()


def test_interpreter_start_imports_neither_redun_nor_this_package():
    found = python(
        "import sys; print(sorted(m for m in sys.modules if m.startswith(('redun', 'modal'))))"
    )
    assert found == "[]"


def test_modal_type_is_registered_when_redun_is_imported():
    found = python(
        "from redun.executors.base import get_executor_class;"
        "print(get_executor_class('modal').__module__)"
    )
    assert found == "redun_modal_executor.executor"


def test_scheduler_builds_modal_executor_from_config_alone():
    found = python(
        "from redun import Scheduler; from redun.config import Config;"
        "config = Config({'executors.default': {'type': 'modal', 'backend': 'local'}});"
        "executor = Scheduler(config=config).executors['default'];"
        "print(type(executor).__name__, executor.config.backend)"
    )
    assert found == "ModalExecutor local"


def test_redun_046_class_path_resolves():
    # redun >= 0.46 registers `class = ...` under the section's type when the type is unknown,
    # then imports the class through getattr on the module.
    found = python(
        "import importlib;"
        "from redun.executors.base import Executor;"
        "module, _, name = 'redun_modal_executor.ModalExecutor'.rpartition('.');"
        "cls = getattr(importlib.import_module(module), name);"
        "print(issubclass(cls, Executor), cls('modal', config={'type': 'modal',"
        " 'class': 'redun_modal_executor.ModalExecutor'}).name)"
    )
    assert found == "True modal"
