"""Tasks that fail in ways redun's own executors handle and a pickle boundary makes harder:
``sys.exit``, other ``BaseException``s, errors redun cannot pickle, and exceptions or results
whose classes the client cannot load. Each is driven through `redun run`."""

from __future__ import annotations

import pytest
from helpers import APP, final_line, ran

pytestmark = pytest.mark.e2e

EXITING = """\
import sys
from pathlib import Path
from redun import task

@task
def ok(i: int) -> int:
    return i

@task(retries={retries})
def bail(values: list) -> int:
    with Path("bail-runs.txt").open("a") as runs:
        runs.write("ran\\n")
    {exit}
    return sum(values)

@task
def main() -> int:
    return bail([ok(i) for i in range(3)])
"""


@pytest.mark.parametrize(
    "exit, message",
    [
        ("sys.exit(3)", "Task bail called sys.exit(3): exit status 3"),
        ('sys.exit("no input files")', "Task bail called sys.exit('no input files'): no input"),
        ("raise KeyboardInterrupt('pressed')", "Task bail let out KeyboardInterrupt: pressed"),
        ("raise GeneratorExit()", "Task bail let out GeneratorExit (not an Exception)"),
    ],
)
def test_a_task_that_exits_fails_its_job_like_any_task_error(project, exit, message):
    workflow = project.write("wf.py", EXITING.format(retries=0, exit=exit))
    failed = project.redun("run", "wf.py", "main", check=False)
    assert failed.returncode == 1, failed.stdout
    assert message in failed.stdout
    assert "TaskExitError" in failed.stdout and "AssertionError" not in failed.stdout
    assert "[FAILED]" in project.redun("log").stdout  # Not left [ RUN ] for good.
    # The finished siblings stay cached; the task that exited runs again.
    workflow.write_text(EXITING.format(retries=0, exit="pass"))
    fixed = project.redun("run", "wf.py", "main").stdout
    assert final_line(fixed) == "3"
    assert ran(fixed, "ok") == 0 and ran(fixed, "bail") == 1


def test_retries_treat_an_exit_as_a_task_failure(project):
    project.write("wf.py", EXITING.format(retries=1, exit="sys.exit(3)"))
    failed = project.redun("run", "wf.py", "main", check=False)
    assert failed.returncode == 1
    assert "running it again (0 more retries left)" in failed.stdout
    assert (project.root / "bail-runs.txt").read_text() == "ran\nran\n"


def test_an_error_redun_cannot_pickle_fails_the_run_with_the_tasks_error(project):
    project.write(
        "wf.py",
        """\
        from redun import task

        @task
        def fine() -> int:
            return 1

        @task
        def picky(value: int) -> int:
            raise ValueError(lambda: "x")  # cloudpickle sends it back; redun's pickle cannot.

        @task
        def main() -> int:
            return picky(fine())
        """,
    )
    failed = project.redun("run", "wf.py", "main", check=False)
    assert failed.returncode == 1, failed.stdout
    assert "ValueError" in failed.stdout and "Can't pickle" not in failed.stdout
    assert "AttributeError" not in failed.stdout
    log = project.redun("log").stdout  # The database is consistent: it reads back.
    assert "[FAILED]" in log
    again = project.redun("run", "wf.py", "main", check=False)
    assert again.returncode == 1 and ran(again.stdout, "fine") == 0


# A module the task writes and imports in its worker only: the client never has it.
ONLY_IN_THE_WORKER = """\
import sys
import tempfile
from pathlib import Path
from redun import task

def worker_module():
    where = Path(tempfile.mkdtemp())
    (where / "only_in_worker.py").write_text(
        "class Boom(Exception):\\n    pass\\n\\nclass Thing:\\n    pass\\n"
    )
    sys.path.insert(0, str(where))
    import only_in_worker
    return only_in_worker

@task
def boom() -> None:
    raise worker_module().Boom("made in the worker")

@task
def thing() -> object:
    return worker_module().Thing()
"""


@pytest.mark.parametrize(
    "task, message",
    [
        (
            "boom",
            "Task boom raised only_in_worker.Boom: made in the worker (its class cannot be "
            "loaded here: ModuleNotFoundError: No module named 'only_in_worker')",
        ),
        (
            "thing",
            "Task thing: its result cannot be loaded here: ModuleNotFoundError: No module "
            "named 'only_in_worker'. Unpickling it needs what made it in the worker",
        ),
    ],
)
def test_what_the_client_cannot_load_fails_with_a_message_naming_the_task(project, task, message):
    project.write("wf.py", ONLY_IN_THE_WORKER)
    failed = project.redun("run", "wf.py", task, check=False)
    assert failed.returncode == 1, failed.stdout
    assert message in failed.stdout.replace("\n", " ")
    assert "[FAILED]" in project.redun("log").stdout


def test_a_task_that_exits_on_modal_fails_its_job_too(modal_project, fake_modal):
    modal_project.write("wf.py", EXITING.format(retries=0, exit="sys.exit(3)"))
    failed = modal_project.redun("run", "wf.py", "main", check=False)
    assert failed.returncode == 1, failed.stdout
    assert "Task bail called sys.exit(3): exit status 3" in failed.stdout
    assert fake_modal.executions[f"{APP}/run_job"] == 5  # main, 3 x ok, bail: once each.
