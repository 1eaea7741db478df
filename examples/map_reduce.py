"""A pandas map-reduce: per-shard summaries in parallel, then one merge with more memory.

    redun run examples/map_reduce.py main --shards 8

On Modal each `summarize` gets a small container and `merge` a bigger one (the `memory`
option, in MiB); on the local backend both run in local worker processes.
"""

import pandas as pd
from redun import task

redun_namespace = "examples.map_reduce"


@task(executor="modal", memory=1024)
def summarize(shard: int, rows: int) -> pd.DataFrame:
    """The map step: one shard's rows, summarized per group."""
    frame = pd.DataFrame(
        {"group": [f"g{(shard + i) % 3}" for i in range(rows)], "value": range(rows)}
    )
    return frame.groupby("group", as_index=False)["value"].agg(["sum", "count"])


@task(executor="modal", memory=4096)
def merge(summaries: list[pd.DataFrame]) -> dict[str, float]:
    """The reduce step: the mean value per group over every shard."""
    totals = pd.concat(summaries).groupby("group")[["sum", "count"]].sum()
    return (totals["sum"] / totals["count"]).round(2).to_dict()


@task
def main(shards: int = 8, rows: int = 1000) -> dict[str, float]:
    return merge([summarize(shard, rows) for shard in range(shards)])
