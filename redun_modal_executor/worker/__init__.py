"""What runs in the container (or a local worker process): a call payload in, a result out.

- ``run``: ``run_call``, the body of the generic function.
- ``code``: the code package a call names, unpacked and put first on ``sys.path``.

A launch call runs ``launch.scheduler`` from here.
"""

from redun_modal_executor.worker.run import run_call

__all__ = ["run_call"]
