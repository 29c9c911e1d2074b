"""The distributed runtime (DESIGN.md §2): the only package that imports ray.

Layout (one job per module; the run's steps, in order, are in `run`):

- `run`           the `ensemble-da run` job: checks → inputs → runtime → background → store →
                  units → finish
- `checks`        what is checked before the run directory is touched
- `executor`      the executor and aggregation protocols, their in-process versions
- `backends`      `open_runtime`: in-process or Ray, from `cluster.address`
- `coordinator`   the Ray executor: placement, a queue of units per replica, node loss,
                  stragglers
- `replica`       `ModelReplica`: samples a unit, writes its block, returns a small report and
                  the block's statistics (plain class; a Ray actor on Ray)
- `writer`        who writes a block: the claim ledger (one writer per block), shared store or
                  writer actor
- `aggregator`    per-time reduction of block statistics (Chan merges, obs-space fit, scores
                  over cell chunks) → metrics for the driver
- `ray_services`  the Ray side besides replicas: writer actor, aggregator actors, scoring tasks
- `background`    the unguided background ensemble and its QC (`diagnostics.background`)
- `run_state`     `run_state.json`: the MLflow run and times logged, for `--resume`
- `progress`      the progress bar
- `outputs`       the end of a run: figures, summary.json, report, store finalized
- `command`       `ensemble-da run` on the command line: the printed table
- `runtime`       starting or joining Ray (loopback recipe)

Only `coordinator`, `ray_services`, `writer` and `runtime` import ray (lazily); everything else
also runs in-process (`cluster.address: inprocess`).
"""
