"""A script task: a shell command run in the worker, its output back as the result.

redun run examples/script.py main
"""

from redun import script, task

redun_namespace = "examples.script"


@task
def main(name: str = "redun") -> str:
    return script(f"echo 'hello from a script job, {name}'; uname -s", executor="modal")
