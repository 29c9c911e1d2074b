"""The distributed runtime (DESIGN.md §2): the only package that imports ray.

Layout (one job per module; the run's steps, in order, are in `run`):

- `run`          the `ensemble-da run` job: checks → inputs → executor → store → units → finish
- `checks`       what is checked before the run directory is touched
- `executor`     the executor protocol and the in-process executor; `open_executor` chooses
- `coordinator`  the Ray executor: placement, pull-style units, faults
- `replica`      `ModelReplica`: one copy of the prior sampling work units (plain class; Ray actor)
- `aggregator`   per-time streaming statistics, metrics handed to the driver
- `run_state`    `run_state.json`: the MLflow run and times logged, for `--resume`
- `progress`     the progress bar
- `outputs`      the end of a run: figures, summary.json, store finalized
- `command`      `ensemble-da run` on the command line: the printed table
- `runtime`      starting or joining Ray (loopback recipe)

Only `coordinator` and `runtime` import ray (lazily); everything else also runs in-process
(`cluster.address: inprocess`).
"""
