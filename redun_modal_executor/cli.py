"""``redun-modal``: deploy the generic worker app and inspect what the executor would do."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from redun_modal_executor.config import ConfigError, ExecutorConfig

EXECUTOR_TYPE = "modal"


def modal_executor_configs(config_dir: str | None) -> list[ExecutorConfig]:
    """Every ``[executors.*]`` section with ``type = modal`` in the project's redun.ini."""
    from redun.cli import setup_config

    config = setup_config(config_dir, initialize=False)
    executors = config.get("executors", {})
    return [
        ExecutorConfig.from_section(name, section)
        for name, section in executors.items()
        if section.get("type") == EXECUTOR_TYPE
    ]


def deploy_command(args: argparse.Namespace) -> int:
    from redun_modal_executor.modal_app import deploy, function_name

    configs = [
        config
        for config in modal_executor_configs(args.config)
        if config.backend == "modal" and (not args.executor or config.name in args.executor)
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
        if first.images != config.images:
            print(
                f"[executors.{first.name}] and [executors.{config.name}] deploy the same app "
                f"{config.app_name!r} with different images: give one its own app_name, or "
                "the same image keys.",
                file=sys.stderr,
            )
            return 2
    for config in apps.values():
        names = ", ".join(function_name(image) for image in config.images)
        print(f"Deploying Modal app {config.app_name!r} for [executors.{config.name}]: {names}")
        deploy(config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redun-modal",
        description="Run redun workflows on Modal: deploy and inspect redun-modal-executor.",
    )
    parser.add_argument(
        "-c", "--config", help="redun config dir (default: as redun finds it, usually .redun)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    deploy = commands.add_parser(
        "deploy",
        help="deploy (or redeploy) the Modal app with the generic worker function",
        description="Build the images configured in redun.ini and deploy the app. Run it once, "
        "and again after changing images or dependencies; code changes need no redeploy.",
    )
    deploy.add_argument(
        "--executor", action="append", help="only this [executors.NAME] section (repeatable)"
    )
    deploy.set_defaults(run=deploy_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"redun-modal: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
