import configparser

import pytest
from redun.executors.code_packaging import parse_code_package_config

from redun_modal_executor.config import (
    CallOptions,
    ConfigError,
    ExecutorConfig,
    ImageSpec,
    TaskOptionError,
    VolumeMount,
    resolve_call_options,
)


def test_defaults():
    config = ExecutorConfig.from_section("modal", {"type": "modal"})
    assert config.backend == "modal"
    assert config.max_workers is None  # The local backend then uses one worker per CPU.
    assert config.app_name == "redun-modal-executor"
    assert config.environment is None
    assert config.ship_code is True
    assert config.memory_snapshot is True
    assert config.scratch == "/tmp/redun"
    assert config.images == {"default": ImageSpec("default")}
    assert config.task_defaults == {}
    assert resolve_call_options("wf.t", {}, config) == CallOptions()


def test_parses_strings_from_redun_ini():
    config = ExecutorConfig.from_section(
        "modal",
        {
            "type": "modal",
            "backend": "local",
            "max_workers": "3",
            "timeout": "1.5",
            "environment": "dev",
            "ship_code": "no",
            "pip": "pandas==2.2 numpy>=1.26,<3\n scikit-learn",
            "apt": "samtools",
            "image.gpu.registry_image": "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
            "image.gpu.pip": "torch",
            "gpu": "a10g",
            "memory": "2048",
            "secrets": "hf-token, aws",
            "volumes": "/data=reads, /ref=genomes",
            "memory_snapshot": "off",
            "buffer_containers": "2",
            "scaledown_window": "300",
            "env": "MODE=fast, GREETING='hello, world'\n EMPTY=",
        },
    )
    assert (config.backend, config.max_workers, config.environment) == ("local", 3, "dev")
    assert config.ship_code is False
    assert config.memory_snapshot is False
    assert config.images == {
        "default": ImageSpec(
            "default", pip=("pandas==2.2", "numpy>=1.26,<3", "scikit-learn"), apt=("samtools",)
        ),
        "gpu": ImageSpec(
            "gpu", pip=("torch",), registry_image="nvidia/cuda:12.4.1-runtime-ubuntu22.04"
        ),
    }
    assert resolve_call_options("wf.t", {}, config) == CallOptions(
        timeout=1.5,
        gpu="A10G",
        memory=2048,
        secrets=("hf-token", "aws"),
        volumes=(("/data", VolumeMount("reads")), ("/ref", VolumeMount("genomes"))),
        buffer_containers=2,
        scaledown_window=300,
        env=(("EMPTY", ""), ("GREETING", "hello, world"), ("MODE", "fast")),
    )


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
        ({"zzz": "2"}, "unknown key 'zzz'. Known keys:"),
        ({"image.gpu.pipp": "x"}, "'image.gpu.pipp' should be image.<name>.pip"),
        ({"image": "gpu"}, "image 'gpu' is not configured. Configured images: default."),
        ({"ship_code": "maybe"}, "ship_code must be true or false; got 'maybe'"),
        ({"volumes": "data"}, "volumes must be written /mount/path=volume-name; got 'data'"),
        ({"memory_snapshot": "maybe"}, "memory_snapshot must be true or false; got 'maybe'"),
        ({"buffer_containers": "-1"}, "buffer_containers must be 0 or more; got -1"),
        (
            {"scaledown_window": "1"},
            "scaledown_window must be 2 to 3600 seconds, as Modal allows; got 1",
        ),
        ({"scaledown_window": "1.5"}, "scaledown_window must be a whole number of seconds"),
        ({"env": "MODE"}, "[executors.modal]: env must be written NAME=value; got 'MODE'"),
        ({"env": "MODE='fast"}, "env must be written NAME=value, quoted as in a shell"),
        ({"env": "1MODE=x"}, "env has '1MODE', which is not a variable name"),
        (
            {"code_excludes": "'my notes/**"},
            "code_excludes must be glob patterns separated by spaces, quoted as in a shell "
            "(no closing quotation)",
        ),
    ],
)
def test_bad_config_names_key_and_fix(section, message):
    with pytest.raises(ConfigError) as error:
        ExecutorConfig.from_section("modal", section)
    assert message in str(error.value)


def test_code_patterns_are_split_as_redun_splits_them():
    section = {
        "code_includes": '"data files/*.csv" **/*.py\n  lib/*.py',
        "code_excludes": "'my notes/**' flows/*,tests/*",
    }
    config = ExecutorConfig.from_section("modal", section)
    assert config.code_includes == ("data files/*.csv", "**/*.py", "lib/*.py")
    assert config.code_excludes == ("my notes/**", "flows/*,tests/*")  # A comma is no separator.
    # What `redun launch --code-package` reads from the same section.
    ini = configparser.ConfigParser()
    ini.read_dict({"executors.modal": section})
    redun_reads = parse_code_package_config(ini["executors.modal"])
    assert redun_reads == {
        "includes": list(config.code_includes),
        "excludes": list(config.code_excludes),
    }
    # Lists from Python are taken as they are.
    config = ExecutorConfig.from_section("modal", {"code_includes": ["my notes/*.py"]})
    assert config.code_includes == ("my notes/*.py",)


def test_task_option_wins_over_executor_default():
    config = ExecutorConfig.from_section("modal", {"timeout": "60", "gpu": "T4"})
    assert resolve_call_options("wf.t", {}, config) == CallOptions(timeout=60.0, gpu="T4")
    assert resolve_call_options("wf.t", {"timeout": 5, "gpu": "H100:2"}, config) == CallOptions(
        timeout=5.0, gpu="H100:2"
    )


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


@pytest.mark.parametrize(
    "options, message",
    [
        ({"gpu": "A10"}, None),
        ({"gpu": "a100-80gb:4"}, None),
        ({"gpu": "A100-80G"}, "unknown GPU type 'A100-80G'; did you mean 'A100-80GB'?"),
        ({"gpu": "RTX4090"}, "unknown GPU type 'RTX4090'"),
        ({"gpu": "H100:9"}, "asks for 9 GPUs; Modal allows 1 to 8 per container"),
        (
            {"memory": 16},
            "memory is in MiB, as in Modal: 16 means 16 MiB. For 16 GiB write memory=16384.",
        ),
        ({"memory": "lots"}, "memory must be a whole number of MiB"),
        ({"cpu": 0}, "cpu must be a positive number of CPU cores"),
        ({"retries": -1}, "retries must be 0 or more"),
        ({"secrets": "hf-token"}, None),
        ({"secrets": [1]}, "secrets must be a list of names"),
        ({"volumes": {"data": "v"}}, "volumes needs absolute mount paths; got 'data'"),
        ({"buffer_containers": 0}, None),
        ({"buffer_containers": "many"}, "buffer_containers must be a whole number"),
        ({"scaledown_window": 3600}, None),
        ({"scaledown_window": 7200}, "scaledown_window must be 2 to 3600 seconds"),
        ({"env": {"LOG_LEVEL": "debug"}}, None),
        (
            {"env": {"WORKERS": 4}},
            "env values must be strings; 'WORKERS' is 4: write {'WORKERS': '4'}",
        ),
        ({"env": {"LOG-LEVEL": "x"}}, "env has 'LOG-LEVEL', which is not a variable name"),
        ({"env": ["A=1"]}, "env must map variable names to string values"),
        ({"image": "gpu"}, "image 'gpu' is not configured"),
        ({"vcpus": 4}, "unknown task option 'vcpus' for executor 'modal'; did you mean 'cpu'?"),
        ({"zzz": 4}, "unknown task option 'zzz' for executor 'modal'. Options this executor"),
    ],
)
def test_modal_task_options_are_validated_before_dispatch(options, message):
    config = ExecutorConfig.from_section("modal", {})
    if message is None:
        resolve_call_options("wf.train", options, config)
        return
    with pytest.raises(TaskOptionError) as error:
        resolve_call_options("wf.train", options, config)
    assert str(error.value).startswith("Task wf.train: ")
    assert message in str(error.value)


def test_call_options_are_hashable_and_list_what_is_set():
    config = ExecutorConfig.from_section("modal", {})
    options = resolve_call_options(
        "wf.t", {"gpu": "T4", "volumes": {"/b": "y", "/a": "x"}, "secrets": ["s"]}, config
    )
    assert hash(options) == hash(
        CallOptions(
            gpu="T4", volumes=(("/a", VolumeMount("x")), ("/b", VolumeMount("y"))), secrets=("s",)
        )
    )
    assert options.set_options() == {
        "gpu": "T4",
        "secrets": ("s",),
        "volumes": (("/a", VolumeMount("x")), ("/b", VolumeMount("y"))),
    }


def test_task_env_replaces_the_executors_and_stays_hashable():
    config = ExecutorConfig.from_section("modal", {"env": "MODE=slow, LOG_LEVEL=info"})
    assert resolve_call_options("wf.t", {}, config).env == (
        ("LOG_LEVEL", "info"),
        ("MODE", "slow"),
    )
    options = resolve_call_options("wf.t", {"env": {"MODE": "fast"}}, config)
    assert options.env == (("MODE", "fast"),)  # Replaced, as secrets and volumes are.
    assert hash(options) == hash(CallOptions(env=(("MODE", "fast"),)))
    assert options.set_options() == {"env": (("MODE", "fast"),)}
