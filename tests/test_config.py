import os

import pytest

from redun_modal_executor.config import (
    CallOptions,
    ConfigError,
    ExecutorConfig,
    TaskOptionError,
    resolve_call_options,
)


def test_defaults():
    config = ExecutorConfig.from_section("modal", {"type": "modal"})
    assert config.backend == "modal"
    assert config.max_workers == (os.cpu_count() or 1)
    assert config.timeout is None
    assert config.scratch == "/tmp/redun"


def test_parses_strings_from_redun_ini():
    config = ExecutorConfig.from_section(
        "modal",
        {"type": "modal", "backend": "local", "max_workers": "3", "timeout": "1.5"},
    )
    assert (config.backend, config.max_workers, config.timeout) == ("local", 3, 1.5)


def test_accepts_redun_046_class_key():
    section = {"type": "modal", "class": "redun_modal_executor.ModalExecutor", "backend": "local"}
    assert ExecutorConfig.from_section("modal", section).backend == "local"


@pytest.mark.parametrize(
    "section, message",
    [
        (
            {"backend": "lcoal"},
            "[executors.modal]: backend must be one of modal, local; got 'lcoal'",
        ),
        ({"timeout": "-5"}, "[executors.modal]: timeout must be a positive number of seconds"),
        ({"timeout": "soon"}, "timeout must be a number of seconds; got 'soon'"),
        ({"max_workers": "0"}, "max_workers must be at least 1; got 0"),
        ({"max_workers": "two"}, "max_workers must be a whole number; got 'two'"),
        ({"max_worker": "2"}, "unknown key 'max_worker'; did you mean 'max_workers'?"),
    ],
)
def test_bad_config_names_key_and_fix(section, message):
    with pytest.raises(ConfigError) as error:
        ExecutorConfig.from_section("modal", section)
    assert message in str(error.value)


def test_task_option_wins_over_executor_default():
    config = ExecutorConfig.from_section("modal", {"timeout": "60"})
    assert resolve_call_options("wf.t", {}, config) == CallOptions(timeout=60.0)
    assert resolve_call_options("wf.t", {"timeout": 5}, config) == CallOptions(timeout=5.0)


def test_redun_options_pass_through():
    config = ExecutorConfig.from_section("modal", {})
    options = {"executor": "modal", "cache": False, "check_valid": "shallow", "nout": 2}
    assert resolve_call_options("wf.t", options, config) == CallOptions()


def test_unknown_task_option_names_task_and_suggests():
    config = ExecutorConfig.from_section("modal", {})
    with pytest.raises(TaskOptionError) as error:
        resolve_call_options("wf.train", {"timout": 3}, config)
    message = str(error.value)
    assert message.startswith("Task wf.train: unknown task option 'timout' for executor 'modal'")
    assert "did you mean 'timeout'?" in message


def test_invalid_task_option_value():
    config = ExecutorConfig.from_section("modal", {})
    with pytest.raises(TaskOptionError, match="Task wf.t: task option timeout must be a positive"):
        resolve_call_options("wf.t", {"timeout": 0}, config)
