"""``redun-modal``: deploy the generic worker app and inspect what the executor would do."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence

from redun_modal_executor import __version__
from redun_modal_executor.backends import backend_class, create_backend
from redun_modal_executor.config import ConfigError, ExecutorConfig
from redun_modal_executor.errors import LaunchError, ModalAuthError, ModalUnreachableError

LOG_ENTRIES = 1000

EXECUTOR_TYPE = "modal"


def _is_ours(section) -> bool:
    """``type = modal``, or redun >= 0.46's ``class =`` naming this package's executor."""
    return section.get("type") == EXECUTOR_TYPE or str(section.get("class", "")).startswith(
        "redun_modal_executor."
    )


def modal_executor_configs(config_dir: str | None) -> list[ExecutorConfig]:
    """Every ``[executors.*]`` section of this executor in the project's redun.ini."""
    from redun.cli import setup_config

    config = setup_config(config_dir, initialize=False)
    executors = config.get("executors", {})
    return [
        ExecutorConfig.from_section(name, section)
        for name, section in executors.items()
        if _is_ours(section)
    ]


def _deployed_configs(args: argparse.Namespace) -> list[ExecutorConfig]:
    """The sections of this executor whose backend has an app to deploy."""
    return [
        config
        for config in modal_executor_configs(args.config)
        if backend_class(config.backend).deploys
    ]


# What the sections that deploy one app must agree on, and what to say when they do not.
_SHARED = (
    ("images", "images: give one its own app_name, or the same image keys"),
    (
        "memory_snapshot",
        "memory_snapshot settings: give one its own app_name, or the same setting",
    ),
)


def deploy_command(args: argparse.Namespace) -> int:
    """Build the images configured in redun.ini and deploy the app. Run it once, and again
    after changing images or dependencies; code changes need no redeploy."""
    from redun_modal_executor.backends.modal.app import connect, deploy, function_name

    configs = [
        config
        for config in _deployed_configs(args)
        if not args.executor or config.name in args.executor
    ]
    if not configs:
        print(
            "No executor to deploy: add a section with `type = modal` (and backend = modal, "
            "the default) to .redun/redun.ini, or check --executor.",
            file=sys.stderr,
        )
        return 2
    apps: dict[tuple[str, str | None], ExecutorConfig] = {}
    for config in configs:
        target = (config.app_name, config.environment)
        first = apps.setdefault(target, config)
        differs = next(
            (text for key, text in _SHARED if getattr(first, key) != getattr(config, key)), None
        )
        if differs is not None:
            print(
                f"[executors.{first.name}] and [executors.{config.name}] deploy the same app "
                f"{config.app_name!r} with different {differs}.",
                file=sys.stderr,
            )
            return 2
    connect()  # No credentials, or no Modal: say so in one line, before building anything.
    for config in apps.values():
        names = ", ".join(function_name(image) for image in config.images)
        print(f"Deploying Modal app {config.app_name!r} for [executors.{config.name}]: {names}")
        deploy(config)
    return 0


def doctor_command(args: argparse.Namespace) -> int:
    """For each Modal executor in redun.ini: look up the deployed functions (this checks the
    credentials too) and compare the deployed Python, redun, cloudpickle and payload format
    versions with this environment's. Exit 1 on a problem."""
    from redun_modal_executor.backends.modal.app import check_deployment

    configs = _deployed_configs(args)
    if not configs:
        print("No [executors.*] section with `type = modal` and backend = modal to check.")
        return 0
    problems = 0
    for config in configs:
        print(
            f"[executors.{config.name}] app {config.app_name!r}, environment "
            f"{config.environment or '(profile default)'}"
        )
        for check, ok, detail in check_deployment(config):
            problems += not ok
            print(f"  {'ok  ' if ok else 'FAIL'} {check}: {detail}")
    print("all good" if not problems else f"{problems} problem(s) found")
    return 0 if not problems else 1


def plan_command(args: argparse.Namespace) -> int:
    """Import the workflow and print, for each of its tasks, the executor, backend, image
    (function) and resources it would get, checking task options as the executor would.
    Calls nothing. Exit 1 if an option is invalid."""
    from redun.cli import import_script, setup_config
    from redun.task import get_task_registry

    from redun_modal_executor.config import TaskOptionError, resolve_call_options

    config = setup_config(args.config, initialize=False)
    sections = config.get("executors", {})
    module = import_script(args.workflow)
    problems = 0
    for task in sorted(get_task_registry(), key=lambda task: task.fullname):
        if task.load_module != module.__name__:
            continue
        executor = task.get_task_option("executor") or "default"
        section = sections.get(executor)
        if section is not None and _is_ours(section):
            section = {**section, "type": EXECUTOR_TYPE}
        if section is None and executor != "default":
            problems += 1
            print(f"{task.fullname}: ERROR executor {executor!r} is not in redun.ini")
            continue
        if section is None or section.get("type") != EXECUTOR_TYPE:
            kind = f"type {section.get('type')}" if section else "redun's built-in threads"
            print(f"{task.fullname}: executor {executor!r} ({kind}), not this package's")
            continue
        executor_config = ExecutorConfig.from_section(executor, section)
        try:
            options = resolve_call_options(task.fullname, task.get_task_options(), executor_config)
        except TaskOptionError as error:
            problems += 1
            print(f"{task.fullname}: ERROR {error}")
            continue
        where = create_backend(executor_config).describe(options)
        settings = ", ".join(f"{k}={v}" for k, v in options.set_options().items()) or "defaults"
        print(f"{task.fullname}: executor {executor!r} -> {where}; {settings}")
    return 0 if not problems else 1


def _launch_config(args: argparse.Namespace) -> ExecutorConfig:
    """The executor section a launch command is about: ``--executor``, else ``default``
    if it is this package's, else the first of this package's."""
    configs = modal_executor_configs(args.config)
    if args.executor:
        configs = [config for config in configs if config.name == args.executor]
    if not configs:
        wanted = f"[executors.{args.executor}]" if args.executor else "[executors.*] section"
        raise ConfigError(f"redun.ini has no {wanted} with `type = modal`")
    return next((config for config in configs if config.name == "default"), configs[0])


STATUS_EXIT = {"succeeded": 0, "failed": 1, "running": 3}


def status_command(args: argparse.Namespace) -> int:
    """Print the state of a call started by `redun launch` and, once it has ended, the
    launched command's output or its error. Exit 0 if it succeeded, 1 if it failed, 3 if it
    is still running."""
    from redun_modal_executor.launch.follow import outcome

    found = outcome(create_backend(_launch_config(args)), args.call_id, wait=args.wait)
    print(f"{args.call_id}: {found.state}")
    if found.text:
        print(found.text.rstrip("\n"))
    return STATUS_EXIT[found.state]


def logs_command(args: argparse.Namespace) -> int:
    """Print the output of a call started by `redun launch` (on Modal, its last 1000 log
    entries)."""
    backend = create_backend(_launch_config(args))
    for line in backend.log_lines(args.call_id, LOG_ENTRIES):
        sys.stdout.write(line if line.endswith("\n") else line + "\n")
    return 0


def pull_command(args: argparse.Namespace) -> int:
    """Copy the sqlite database that launched schedulers keep on scheduler_volume and merge
    its records into this project's database, so that `redun log` and `redun console` show
    the launched runs. Safe to repeat."""
    from redun.cli import setup_scheduler

    from redun_modal_executor.launch.follow import pull_records

    config = _launch_config(args)
    destination = setup_scheduler(args.config, migrate_if_local=True).backend
    count = pull_records(config, create_backend(config), destination)
    print(
        f"Pulled {count} new record(s) from volume {config.scheduler_volume_name!r}; "
        "`redun log` and `redun console` show them."
    )
    return 0


# Each command: what it runs, and its one-line help; its description is the function's docstring.
COMMANDS = {
    "deploy": (deploy_command, "deploy (or redeploy) the Modal app with the generic function"),
    "doctor": (doctor_command, "check credentials, the deployed app, and versions agree"),
    "plan": (plan_command, "show where each task of a workflow would run, calling nothing"),
    "status": (status_command, "say whether a launched scheduler runs, succeeded or failed"),
    "logs": (logs_command, "print a launched scheduler's log"),
    "pull": (pull_command, "merge launched schedulers' records into the local database"),
}
CALL_ID_HELP = "the call id `redun launch` printed"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redun-modal",
        description="Run redun workflows on Modal: deploy and inspect redun-modal-executor.",
    )
    parser.add_argument(
        "-c", "--config", help="redun config dir (default: as redun finds it, usually .redun)"
    )
    parser.add_argument("--version", action="version", version=f"redun-modal {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    commands = {}
    for name, (run, summary) in COMMANDS.items():
        description = inspect.getdoc(run)
        commands[name] = subparsers.add_parser(name, help=summary, description=description)
        commands[name].set_defaults(run=run)
    commands["deploy"].add_argument(
        "--executor", action="append", help="only this [executors.NAME] section (repeatable)"
    )
    commands["plan"].add_argument("workflow", help="workflow file or module, as for `redun run`")
    for name in ("status", "logs", "pull"):
        commands[name].add_argument(
            "--executor",
            help="the [executors.NAME] section launches used (default: `default`, else the "
            "first with type = modal)",
        )
    for name in ("status", "logs"):
        commands[name].add_argument("call_id", help=CALL_ID_HELP)
    commands["status"].add_argument("--wait", action="store_true", help="wait for the call to end")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from redun.cli import RedunClientError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (
        ConfigError,
        LaunchError,
        ModalAuthError,
        ModalUnreachableError,
        RedunClientError,
    ) as error:
        print(f"redun-modal: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
