"""A data pipeline on a Modal Volume: a parquet table per shard, then their aggregate, all as
redun Files at ``modalvol://`` URLs, so that a second run is served from redun's cache.

    modal volume create redun-examples      # once, for the Modal backend
    redun run examples/volume_tables.py main --shards 4

``write_shard`` names no Volume in its arguments: it writes its table through Modal's Volume
API. ``aggregate`` and ``report`` take Files on the Volume, so their containers mount it (at
``volume_files_mount``/redun-examples) and read and write there; the worker commits what they
wrote. On the local backend the Volume is a directory under ``local_dir``. Run it again: no
task runs. Change a table (``modal volume put``, or the file under ``local_dir``) and its
shard runs again, with the steps after it.
"""

import pandas as pd
from redun import File, task

redun_namespace = "examples.volume_tables"

ROOT = "modalvol://redun-examples/tables"


@task(executor="modal")
def write_shard(shard: int, rows: int, root: str) -> File:
    """One shard's table: ``rows`` rows, in three groups."""
    frame = pd.DataFrame(
        {"group": [f"g{(shard + i) % 3}" for i in range(rows)], "value": range(rows)}
    )
    table = File(f"{root}/shard-{shard}.parquet")
    with table.open("wb") as out:
        frame.to_parquet(out, index=False)
    return table


@task(executor="modal", memory=2048)
def aggregate(tables: list[File], root: str) -> File:
    """The sum and count of each group over every shard, as one more table."""
    frames = []
    for table in tables:
        with table.open("rb") as data:
            frames.append(pd.read_parquet(data))
    totals = pd.concat(frames).groupby("group", as_index=False)["value"].agg(["sum", "count"])
    summary = File(f"{root}/summary.parquet")
    with summary.open("wb") as out:
        totals.to_parquet(out, index=False)
    return summary


@task(executor="modal")
def report(summary: File) -> dict[str, float]:
    """The mean value of each group."""
    with summary.open("rb") as data:
        totals = pd.read_parquet(data).set_index("group")
    return (totals["sum"] / totals["count"]).round(2).to_dict()


@task
def main(shards: int = 4, rows: int = 1000, root: str = ROOT) -> dict[str, float]:
    tables = [write_shard(shard, rows, root) for shard in range(shards)]
    return report(aggregate(tables, root))
