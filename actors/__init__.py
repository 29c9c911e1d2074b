"""The distributed runtime (DESIGN.md §2): the only package that imports ray.

Layout (one job per module; the run's steps, in order, are in `run`):

- `run`           the `ensemble-da run` job: checks → inputs → runtime → background → store →
                  units → finish
- `checks`        what is checked before the run directory is touched
- `executor`      the executor and aggregation protocols, their in-process versions
- `schedule`      `UnitQueue`: dependencies, lead bound, affinity, re-queued units (no Ray)
- `backends`      `open_runtime`: in-process or Ray, from `cluster.address`
- `ray_backend`   the Ray side: `session` (starting or joining Ray, loopback recipe),
                  `coordinator` (the Ray executor: placement, a queue of units per replica, node
                  loss, stragglers), `services` (writer actor, aggregator actors, scoring tasks)
- `replica`       `ModelReplica`: samples a unit, writes its block, returns a small report and
                  the block's statistics (plain class; a Ray actor on Ray)
- `writer`        who writes a block: the claim ledger (one writer per block), shared store or
                  writer actor
- `aggregator`    per-time reduction of block statistics (Chan merges, obs-space fit, scores
                  over cell chunks) → metrics for the driver
- `time_modes`    cycle (per-time barrier or flowing blocks) and reanalysis on an executor
- `background`    the unguided background ensemble and its QC (`diagnostics.background`)
- `grow`          more members for a finished run (`--resume --set ensemble.members=N`)
- `sweep`         `ensemble-da sweep`: a config grid in one Ray session
- `run_state`     `run_state.json`: the MLflow run and times logged, for `--resume`
- `progress`      the progress bar
- `outputs`       the end of a run: figures, summary.json, report, store finalized
- `command`       `ensemble-da run` on the command line: the printed table

Only `ray_backend`, `writer`, `replica` and `sweep` import ray (lazily); everything else also runs
in-process (`cluster.address: inprocess`).
"""
