"""The Ray backend of the runtime (DESIGN.md §2): everything that talks to Ray besides the
replica and writer classes, which are plain classes that Ray runs as actors.

- `session`      starting or joining Ray for a run (loopback for a local cluster)
- `coordinator`  the Ray executor: placement, a queue of units per replica, node loss, stragglers
- `services`     the Ray runtime: writer actor, aggregator actors, scoring tasks
"""
