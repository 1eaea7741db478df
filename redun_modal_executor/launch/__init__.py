"""``redun launch`` on this executor: a redun scheduler in a worker, its database durable.

- ``submit``: the client side; a root ``redun.script_task`` job becomes a launch call.
- ``spec``: what the launch call carries (its config files and database), typed.
- ``scheduler``: what the launch call runs in its worker (lock, copy in, ``redun run``, sync).
- ``lock``: one writer at a time for a database on a volume (each backend implements it).
- ``follow``: a launch seen from the user's machine (``redun-modal status``, ``logs``, ``pull``).
"""
