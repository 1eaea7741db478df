"""Credentials stay out of payloads, results, logs and the redun database."""

from __future__ import annotations

import pytest
from helpers import APP, MODAL_CONFIG, TARGET, final_line

from redun_modal_executor.payload import decode_call
from redun_modal_executor.worker import run_call

pytestmark = pytest.mark.e2e


def test_token_and_secret_values_appear_nowhere(project, fake_modal):
    project.write(".redun/redun.ini", MODAL_CONFIG)
    fake_modal.register_function(APP, "run_job", TARGET)
    secret_value = "s3cr3t-value-that-must-not-leak"
    fake_modal.register_secret("hf-token", {"HF_TOKEN": secret_value})
    project.write(
        "wf.py",
        """\
        import os
        from redun import task

        @task(secrets=["hf-token"])
        def uses_secret() -> int:
            return len(os.environ["HF_TOKEN"])

        @task(secrets=["hf-token"])
        def fails_with_secret() -> int:
            raise RuntimeError("token has " + str(len(os.environ["HF_TOKEN"])) + " chars")
        """,
    )
    output = project.redun("run", "wf.py", "uses_secret").stdout
    assert final_line(output) == str(len(secret_value))
    output += project.redun("run", "wf.py", "fails_with_secret", check=False).stdout

    token = fake_modal.env["MODAL_TOKEN_SECRET"]
    inputs = [fake_modal._arguments(record) for record in fake_modal.inputs.values()]
    assert inputs and all(data is not None for data in inputs)
    database = (project.root / ".redun" / "redun.db").read_bytes()
    for place, data in [
        ("output", output.encode()),
        ("database", database),
        *(("payload", data) for data in inputs),
    ]:
        assert token.encode() not in data, place
        assert secret_value.encode() not in data, place


def test_worker_rejects_bytes_that_are_not_a_call():
    from redun_modal_executor.payload import decode_result

    for junk in (b"", b"\x80\x04K\x01.", b"RMX:CALL" + b"\xff" * 20):
        failure = decode_result(run_call(junk))
        assert type(failure.error).__name__ in {"PayloadError", "VersionSkewError"}
    with pytest.raises(Exception, match="not a redun-modal-executor call payload"):
        decode_call(b"\x80\x04K\x01.")
