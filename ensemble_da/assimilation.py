"""The in-process API: sample posterior members for a run config (DESIGN.md §2, §3, §7).

`Assimilator` is the work one model replica does: it owns the prior and, for one analysis time
and its `ObservationSet`, samples a block of member ids and returns them as float32 physical
fields (member, channel, cell). The distributed runtime (`actors/`) calls exactly this per work
unit; `run_inprocess` drives it for a whole run without Ray.
"""
# (implementation in progress)
