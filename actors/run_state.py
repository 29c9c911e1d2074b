"""`run_state.json`: what a `--resume` needs besides the store — the MLflow run to continue and
the analysis times already logged to it, so a resumed run logs into the same MLflow run and
logs every time exactly once. Written atomically (write, then rename).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["STATE_FILE", "RunState", "write_json"]

STATE_FILE = "run_state.json"


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON to `path` atomically (numpy scalars and arrays allowed)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    tmp.replace(path)


class RunState:
    """The run's `run_state.json` (empty for a new run).

    Parameters
    ----------
    out_dir : Path
        The run directory.
    """

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / STATE_FILE
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data.setdefault("logged_times", [])

    def run_id_for(self, uri: str) -> str | None:
        """The MLflow run to continue, if it was tracked at `uri`."""
        return self.data.get("run_id") if self.data.get("tracking_uri") == uri else None

    def set_tracking(self, uri: str, run_id: str | None) -> None:
        self.data.update(run_id=run_id, tracking_uri=uri)
        self.save()

    def log_time_once(self, tracker, t_index: int, metrics: Mapping[str, float]) -> None:
        """Log the metrics of analysis time `t_index` unless an earlier attempt did (DESIGN.md §7)."""
        if t_index in self.data["logged_times"]:
            return
        tracker.log_metrics(dict(metrics), step=t_index)
        if tracker.ok:
            self.data["logged_times"].append(t_index)
            self.save()

    def note_residual(self, t_index: int, value: float) -> None:
        """Keep the largest MMPS residual of time `t_index`'s blocks, so that a resumed or grown
        run's `mmps_residual/max` covers the blocks sampled before it too (they are only read back)."""
        if not np.isfinite(value):
            return
        maxima = self.data.setdefault("residual_max", {})
        key = str(t_index)
        if value > maxima.get(key, -np.inf):
            maxima[key] = float(value)
            self.save()

    def residual_max(self, t_index: int) -> float:
        """The largest MMPS residual noted for time `t_index` (NaN: none)."""
        return float(self.data.get("residual_max", {}).get(str(t_index), np.nan))

    def save(self) -> None:
        write_json(self.path, self.data)
