"""The distributed runtime (DESIGN.md §2): the only package that imports ray.

Modules that need Ray import it inside (`coordinator`, `runtime`); `pipeline` and `replica` also
run in-process without it (`cluster.address: inprocess`).
"""
