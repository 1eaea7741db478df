"""A generic worker from "another environment": it reports other redun/cloudpickle versions.

Deployed on the fake Modal in place of `backends.modal.app.run_job` to show version skew end to
end.
"""

from redun_modal_executor import payload
from redun_modal_executor.worker import run_call


def run_job(data: bytes) -> bytes:
    real = payload.runtime_versions()
    payload.runtime_versions = lambda: {**real, "redun": "0.0.1", "cloudpickle": "9.9"}
    return run_call(data)
