"""`redun run` and friends as a user runs them, in a temporary project on the local backend
(and on the fake Modal too, where a test is parametrized over both backends).

Workflow files here are plain redun: they never import redun_modal_executor.
"""

from __future__ import annotations

import re

import pytest
from helpers import APP, LOCAL_CONFIG, final_line, job_tag_rows, ran

pytestmark = pytest.mark.e2e

WORKFLOW = """\
import os
from redun import task

@task
def square(x: int) -> int:
    return x * x

@task
def shout(text: str) -> str:
    return text.upper() + "!"

@task
def bracket(text: str) -> str:
    return f"[{text}]"

@task
def total(values: list) -> int:
    return sum(values)

@task
def main(n: int = 6) -> dict:
    return {"total": total([square(i) for i in range(n)]), "word": bracket(shout("hi"))}
"""


def test_results_then_fully_cached_rerun(project):
    project.write("wf.py", WORKFLOW)
    first = project.redun("run", "wf.py", "main").stdout
    assert final_line(first) == "{'total': 55, 'word': '[HI!]'}"
    assert ran(first, "square") == 6 and ran(first, "shout") == 1

    second = project.redun("run", "wf.py", "main").stdout
    assert final_line(second) == "{'total': 55, 'word': '[HI!]'}"
    assert ran(second, "square") == 0 and ran(second, "shout") == 0 and ran(second, "main") == 0


def test_code_change_reruns_only_that_task_and_its_dependents(project):
    workflow = project.write("wf.py", WORKFLOW)
    project.redun("run", "wf.py", "main")
    workflow.write_text(WORKFLOW.replace('text.upper() + "!"', 'text.upper() + "?"'))
    output = project.redun("run", "wf.py", "main").stdout
    assert final_line(output) == "{'total': 55, 'word': '[HI?]'}"
    assert ran(output, "shout") == 1 and ran(output, "bracket") == 1
    assert ran(output, "square") == 0 and ran(output, "total") == 0


@pytest.mark.parametrize("backend", ["local", "modal"])
def test_remote_exception_shows_type_message_traceback_and_logs(backend, request):
    project = request.getfixturevalue("modal_project" if backend == "modal" else "project")
    project.write(
        "wf.py",
        """\
        from redun import task

        @task
        def fails(x: int) -> int:
            print("about to fail on", x)
            raise KeyError(f"no sample {x}")

        @task
        def main() -> int:
            return fails(3)
        """,
    )
    process = project.redun("run", "wf.py", "main", check=False)
    output = process.stdout
    assert process.returncode != 0
    assert "KeyError: 'no sample 3'" in output
    assert 'raise KeyError(f"no sample {x}")' in output  # the remote frame
    assert "Latest logs:" in output
    assert "about to fail on 3" in output.split("Latest logs:", 1)[1]
    if backend == "modal":
        fake_modal = request.getfixturevalue("fake_modal")
        # The task's exception and its output come back in the call's result envelope: Modal
        # saw a call that returned, so nothing reads the call's log, and nothing runs again.
        assert fake_modal.rpc_counts["AppFetchLogs"] == 0
        assert fake_modal.executions[f"{APP}/run_job"] == 2  # main, fails


def test_async_task_and_task_defined_inside_a_function(project):
    project.write(
        "wf.py",
        """\
        from redun import task

        @task(cache=False)
        async def double(x: int) -> int:
            return 2 * x

        def make_adder(offset: int):
            @task(name="add_offset")
            def add_offset(x: int) -> int:
                return x + offset
            return add_offset

        add_ten = make_adder(10)

        @task
        def main() -> list:
            return [double(4), add_ten(1)]
        """,
    )
    assert final_line(project.redun("run", "wf.py", "main").stdout) == "[8, 11]"


def test_script_task(project):
    project.write(
        "wf.py",
        """\
        from redun import script, task

        @task
        def main() -> str:
            return script("echo hello from a script")
        """,
    )
    output = project.redun("run", "wf.py", "main").stdout
    assert "hello from a script" in final_line(output)


def test_timeout_fails_the_job_and_finished_results_stay_cached(project):
    project.write(
        "wf.py",
        """\
        import time
        from redun import task

        @task
        def quick() -> str:
            return "done"

        @task(timeout=1)
        def slow() -> str:
            time.sleep(60)
            return "never"

        @task
        def main() -> list:
            return [quick(), slow()]

        @task
        def only_quick() -> str:
            return quick()
        """,
    )
    process = project.redun("run", "wf.py", "main", check=False, timeout=60)
    assert process.returncode != 0
    assert "CallTimeoutError: Task slow: timed out after 1 s" in process.stdout

    rerun = project.redun("run", "wf.py", "only_quick").stdout
    assert final_line(rerun) == "'done'"
    assert ran(rerun, "quick") == 0


def test_unknown_task_option_fails_the_job_with_a_suggestion(project):
    project.write(
        "wf.py",
        """\
        from redun import task

        @task(timout=5)
        def typo() -> int:
            return 1
        """,
    )
    process = project.redun("run", "wf.py", "typo", check=False)
    assert process.returncode != 0
    assert "Task typo: unknown task option 'timout' for executor 'default'" in process.stdout
    assert "did you mean 'timeout'?" in process.stdout


def test_unpicklable_result_names_the_task(project):
    project.write(
        "wf.py",
        """\
        import threading
        from redun import task

        @task
        def lock() -> object:
            return threading.Lock()
        """,
    )
    process = project.redun("run", "wf.py", "lock", check=False)
    assert process.returncode != 0
    assert "Task lock: its result (lock) cannot be pickled" in process.stdout


def test_bad_config_value_is_reported_before_anything_runs(project):
    project.write(".redun/redun.ini", "[executors.default]\ntype = modal\nbackend = lcoal\n")
    project.write("wf.py", WORKFLOW)
    process = project.redun("run", "wf.py", "main", check=False)
    assert process.returncode != 0
    assert (
        "[executors.default]: backend must be one of modal, local; got 'lcoal'" in process.stdout
    )


def test_per_task_executor_selection(project):
    project.write(
        ".redun/redun.ini",
        "[executors.modal]\ntype = modal\nbackend = local\nmax_workers = 2\n",
    )
    project.write(
        "wf.py",
        """\
        import os
        from redun import task

        @task(executor="modal")
        def remote_pid() -> int:
            return os.getpid()

        @task
        def main() -> bool:
            return remote_pid() != os.getpid()
        """,
    )
    output = project.redun("run", "wf.py", "main").stdout
    assert final_line(output) == "True"
    assert re.search(r"Run +Job \w+: +remote_pid\(\) on modal", output)


def test_redun_log_shows_the_jobs(project):
    project.write("wf.py", WORKFLOW)
    project.redun("run", "wf.py", "main")
    log = project.redun("log").stdout
    assert "[ DONE ]" in log and "run wf.py main" in log
    jobs = project.redun("log", "--job").stdout
    assert "square" in jobs and "shout" in jobs


def test_retries_rerun_a_failing_task_but_never_a_timeout(project, tmp_path):
    attempts = tmp_path / "attempts"
    project.write(
        "wf.py",
        f"""\
        import time
        from pathlib import Path
        from redun import task

        ATTEMPTS = Path({str(attempts)!r})

        @task(retries=2)
        def flaky() -> str:
            with ATTEMPTS.open("a") as log:
                log.write("x")
            if len(ATTEMPTS.read_text()) < 3:
                raise ConnectionError("shard server busy")
            return "third time lucky"

        @task(retries=2, timeout=1)
        def slow() -> str:
            time.sleep(30)
            return "never"
        """,
    )
    output = project.redun("run", "wf.py", "flaky").stdout
    assert final_line(output) == "'third time lucky'"
    assert attempts.read_text() == "xxx"
    assert "Task flaky failed (ConnectionError: shard server busy); running it again" in output

    process = project.redun("run", "wf.py", "slow", check=False, timeout=60)
    assert process.returncode != 0
    assert "timed out after 1 s" in process.stdout
    assert "running it again" not in process.stdout


def test_without_retries_a_failing_task_runs_once(project, tmp_path):
    attempts = tmp_path / "attempts"
    project.write(
        "wf.py",
        f"""\
        from pathlib import Path
        from redun import task

        @task
        def fails() -> None:
            with Path({str(attempts)!r}).open("a") as log:
                log.write("x")
            raise ConnectionError("no")
        """,
    )
    assert project.redun("run", "wf.py", "fails", check=False).returncode != 0
    assert attempts.read_text() == "x"


def test_progress_lines_and_summary(project):
    project.write(".redun/redun.ini", LOCAL_CONFIG + "progress_interval = 0.001\n")
    project.write("wf.py", WORKFLOW)
    output = project.redun("run", "wf.py", "main").stdout
    assert re.search(r"Executor\[default\]: \d+ job\(s\) in flight, \d+ done, 0 failed", output)
    assert "Executor[default]: local calls: 10 done, 0 failed" in output


def test_local_jobs_are_tagged_only_when_asked(project):
    project.write(
        "wf.py",
        """\
        from redun import task

        @task(memory=512)
        def small() -> int:
            return 1
        """,
    )
    project.redun("run", "wf.py", "small")
    assert job_tag_rows(project, "small") == []  # As under redun's own LocalExecutor.
    project.configure(LOCAL_CONFIG + "job_tags = true\n")
    project.redun("run", "wf.py", "small", "--no-cache")
    assert job_tag_rows(project, "small") == [("modal_memory", 512)]
