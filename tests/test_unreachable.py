"""Modal out of reach: no server at the address, a server that never answers, a short outage,
no credentials. The real `redun` and `redun-modal` commands, with their messages, exit
statuses, how long they take, and what they leave behind."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator

import modal.exception
import pytest
from grpclib import Status
from helpers import APP, MODAL_CONFIG, REDUN, REDUN_MODAL, Project, final_line, ran

from redun_modal_executor import __version__
from redun_modal_executor.backends.modal import explain as explain_module
from redun_modal_executor.backends.modal.app import COMMAND_REACH_SECONDS
from redun_modal_executor.backends.modal.explain import (
    REACH_HINT,
    UNREACHABLE_SECONDS,
    explain,
    through_transient_errors,
    within_reach,
)
from redun_modal_executor.config import CallOptions
from redun_modal_executor.errors import ModalUnreachableError, RemoteCallError, is_retriable

# The targets. The commands give up on Modal after UNREACHABLE_SECONDS (a job) or
# COMMAND_REACH_SECONDS (a `redun-modal` command), and take a few seconds to start and exit.
RUN_LIMIT = 45.0  # `redun run`: every job failed
COMMAND_LIMIT = 20.0  # `redun-modal doctor`, `deploy`

# square(2) is cached by a first run; main runs on redun's own threads, so that its squares
# reach the Modal executor; `retries` must not make an unreachable Modal be tried again.
CACHED_THEN_UNREACHABLE = """\
from redun import task

@task(retries=3)
def square(x: int) -> int:
    return x * x

@task(executor="here")
def main(n: int = 3) -> list:
    return [square(x=i) for i in range(n)]
"""
LOCAL_EXECUTOR = """\

[executors.here]
type = local
"""


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that accepts connections (the kernel does) and never answers: a black hole."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def modal_env(project: Project, url: str | None, *, credentials: bool = True) -> dict[str, str]:
    """The environment of a user whose modal client points at `url` with a made-up token (or,
    without `credentials`, with no token at all), and who has no ~/.modal.toml."""
    env = {k: v for k, v in project.environment().items() if not k.startswith("MODAL_")}
    home = project.root / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    if url is not None:
        env["MODAL_SERVER_URL"] = url
    if credentials:
        env["MODAL_TOKEN_ID"], env["MODAL_TOKEN_SECRET"] = "ak-unreachable", "as-unreachable"
    return env


def run(
    project: Project, env: dict[str, str], command: str, *args: str
) -> tuple[subprocess.CompletedProcess, float]:
    """A command run in the project (output: stdout and stderr together), and its seconds."""
    started = time.monotonic()
    process = subprocess.run(
        [command, *args],
        cwd=project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    return process, time.monotonic() - started


def unreachable_line(url: str) -> str:
    """How the message starts, up to the reason in parentheses."""
    return f"cannot reach Modal at {url} ("


class Relay(socketserver.ThreadingTCPServer):
    """127.0.0.1:`port` forwarded to the fake, but only from `open_after` seconds on: until
    then nothing listens there (connections are refused), as while a network is down."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target: int, open_after: float) -> None:
        self.target = target
        port = closed_port()
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(("127.0.0.1", port), _Forward, bind_and_activate=False)
        self._timer = threading.Timer(open_after, self._open)
        self._serving: threading.Thread | None = None

    def _open(self) -> None:
        self.server_bind()
        self.server_activate()
        self._serving = threading.Thread(target=self.serve_forever, daemon=True)
        self._serving.start()

    def __enter__(self) -> Relay:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._timer.join()
        if self._serving is not None:
            self.shutdown()
        self.server_close()


class _Forward(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, Relay)
        with socket.create_connection(("127.0.0.1", self.server.target)) as upstream:
            back = threading.Thread(target=_pump, args=(upstream, self.request), daemon=True)
            back.start()
            _pump(self.request, upstream)
            back.join()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


# ----- `redun run` -----


@pytest.mark.e2e
def test_unreachable_modal_fails_each_job_once_and_finished_results_stay_cached(
    modal_project, fake_modal
):
    modal_project.write(".redun/redun.ini", MODAL_CONFIG + LOCAL_EXECUTOR)
    modal_project.write("wf.py", CACHED_THEN_UNREACHABLE)
    first = modal_project.redun("run", "wf.py", "square", "--x", "2").stdout
    assert final_line(first) == "4"

    url = f"http://127.0.0.1:{closed_port()}"
    env = modal_env(modal_project, url)
    failed, seconds = run(modal_project, env, REDUN, "run", "wf.py", "main", "--n", "3")
    output = failed.stdout
    assert failed.returncode == 1, output
    assert seconds < RUN_LIMIT, output
    message = f"ModalUnreachableError: Task square: {unreachable_line(url)}"
    assert message in output and output.rstrip().endswith(REACH_HINT), output
    assert ran(output, "square") == 2  # square(2) came from the cache.
    assert "modal calls: 0 done, 2 failed" in output  # Each once, despite `retries`.
    log = run(modal_project, env, REDUN, "log")[0].stdout
    assert "[FAILED]" in log and "run wf.py main --n 3" in log, log

    again = modal_project.redun("run", "wf.py", "main", "--n", "3").stdout
    assert final_line(again) == "[0, 1, 4]"
    assert ran(again, "square") == 2
    assert fake_modal.executions[f"{APP}/run_job"] == 1 + 2  # square(2) ran once in all.


@pytest.mark.e2e
def test_a_server_that_never_answers_fails_the_run_in_time(project, silent_url):
    project.write(".redun/redun.ini", "[executors.default]\ntype = modal\n")
    project.write("wf.py", CACHED_THEN_UNREACHABLE)
    failed, seconds = run(
        project, modal_env(project, silent_url), REDUN, "run", "wf.py", "square", "--x", "3"
    )
    assert failed.returncode == 1, failed.stdout
    assert seconds < RUN_LIMIT, failed.stdout
    reason = f"no answer in {UNREACHABLE_SECONDS:g} s)"
    expected = f"ModalUnreachableError: Task square: {unreachable_line(silent_url)}{reason}"
    assert expected in failed.stdout


@pytest.mark.e2e
def test_a_short_outage_at_the_start_is_ridden_out(modal_project, fake_modal):
    modal_project.write("wf.py", CACHED_THEN_UNREACHABLE)
    with Relay(fake_modal.port, open_after=3.0) as relay:
        env = {**modal_project.environment(), "MODAL_SERVER_URL": relay.url}
        done, seconds = run(modal_project, env, REDUN, "run", "wf.py", "square", "--x", "3")
    assert done.returncode == 0, done.stdout
    assert final_line(done.stdout) == "9"
    assert seconds > 3.0


@pytest.mark.e2e
def test_dropped_lookups_are_retried(modal_project, fake_modal):
    modal_project.write("wf.py", CACHED_THEN_UNREACHABLE)
    # The client tries each RPC 4 times: the first look-up fails, the second gets through.
    fake_modal.fail_rpc("FunctionGet", Status.UNAVAILABLE, count=6)
    done = modal_project.redun("run", "wf.py", "square", "--x", "3")
    assert final_line(done.stdout) == "9"
    assert fake_modal.rpc_counts["FunctionGet"] == 7


# ----- `redun-modal` -----


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_doctor_says_modal_cannot_be_reached(project, silent_url, kind):
    project.write(".redun/redun.ini", "[executors.default]\ntype = modal\n")
    url = silent_url if kind == "silent" else f"http://127.0.0.1:{closed_port()}"
    process, seconds = run(project, modal_env(project, url), REDUN_MODAL, "doctor")
    assert process.returncode == 1, process.stdout
    assert seconds < COMMAND_LIMIT, process.stdout
    lines = process.stdout.splitlines()
    assert lines[1].startswith(f"  FAIL connection: {unreachable_line(url)}"), lines
    # The client keeps trying to connect for longer than that, so even a refused connection:
    assert f"(no answer in {COMMAND_REACH_SECONDS:g} s)" in lines[1]
    assert lines[1].endswith(REACH_HINT) and lines[2:] == ["1 problem(s) found"]


@pytest.mark.e2e
def test_deploy_says_modal_cannot_be_reached(project):
    project.write(".redun/redun.ini", "[executors.default]\ntype = modal\n")
    url = f"http://127.0.0.1:{closed_port()}"
    process, seconds = run(project, modal_env(project, url), REDUN_MODAL, "deploy")
    assert process.returncode == 2, process.stdout
    assert seconds < COMMAND_LIMIT
    assert process.stdout.startswith(f"redun-modal: {unreachable_line(url)}")
    assert len(process.stdout.splitlines()) == 1, process.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("command", [["deploy"], ["logs", "fc-0123"], ["status", "fc-0123"]])
def test_commands_without_credentials_say_how_to_get_them(project, command):
    project.write(".redun/redun.ini", "[executors.default]\ntype = modal\n")
    env = modal_env(project, None, credentials=False)  # And no MODAL_SERVER_URL.
    process, _ = run(project, env, REDUN_MODAL, *command)
    assert process.returncode == 2, process.stdout
    (line,) = process.stdout.splitlines()
    assert (
        line.startswith("redun-modal: ") and "Modal could not authenticate (Token missing" in line
    )
    assert line.endswith("run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET.")


def test_version(project):
    process, _ = run(project, project.environment(), REDUN_MODAL, "--version")
    assert process.returncode == 0
    assert process.stdout == f"redun-modal {__version__}\n"


# ----- the bounds, in-process -----


def test_transient_errors_are_not_retried_past_the_deadline():
    attempts = []

    async def refused() -> None:
        attempts.append(time.monotonic())
        raise modal.exception.ConnectionError("refused")

    async def main() -> None:
        deadline = asyncio.get_running_loop().time() + 1.2
        with pytest.raises(modal.exception.ConnectionError):
            await through_transient_errors(refused, deadline)

    asyncio.run(main())
    assert len(attempts) == 2  # At 0 and 0.5 s; the next, at 1.5 s, would be past 1.2 s.


def test_within_reach_gives_up_on_a_request_never_answered(monkeypatch):
    monkeypatch.setenv("MODAL_SERVER_URL", "http://127.0.0.1:9")
    monkeypatch.setattr(explain_module, "server_url", lambda: "http://127.0.0.1:9")

    async def never() -> None:
        await asyncio.Event().wait()

    with pytest.raises(ModalUnreachableError) as raised:
        asyncio.run(within_reach(never, 0.2))
    assert str(raised.value) == (
        f"cannot reach Modal at http://127.0.0.1:9 (no answer in 0.2 s); {REACH_HINT}"
    )
    assert isinstance(raised.value, RemoteCallError) and not is_retriable(raised.value)


def test_errors_before_a_spawn_say_so(monkeypatch):
    monkeypatch.setattr(explain_module, "server_url", lambda: "https://api.example")
    lost = asyncio.run(
        explain(modal.exception.ConnectionError("no route"), "Task t", CallOptions(), None)
    )
    assert type(lost) is ModalUnreachableError
    assert str(lost) == (
        "Task t: cannot reach Modal at https://api.example (ConnectionError: no route); "
        + REACH_HINT
    )
    other = asyncio.run(
        explain(modal.exception.InvalidError("bad"), "Task t", CallOptions(), None)
    )
    assert str(other) == "Task t: the Modal call could not be spawned: InvalidError: bad"


@pytest.mark.e2e
def test_a_detached_launch_says_modal_cannot_be_reached(project):
    project.write(".redun/redun.ini", "[executors.default]\ntype = modal\n")
    url = f"http://127.0.0.1:{closed_port()}"
    env = modal_env(project, url)
    command = ("launch", "--executor", "default", "redun", "run", "wf.py", "main")
    process, seconds = run(project, env, REDUN, *command)
    assert process.returncode == 1, process.stdout
    assert seconds < COMMAND_LIMIT  # Checking the scheduler's database is bounded too.
    assert f"RedunClientError: redun launch: {unreachable_line(url)}" in process.stdout
