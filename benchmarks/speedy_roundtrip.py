"""What the HEALPix round trip costs a SPEEDY forecast (`cycle.forecast: speedy`).

`ensemble_da.dynamics.speedy` cannot restart SPEEDY from the analysed HEALPix channels alone; it
adds the analysis increment (analysis − the member's own forecast, T/U/V at the analysed levels,
HEALPix → Gaussian grid → sigma levels) to the member's kept full state. This measures what is
lost on the way. For each case:

- truth: the spun-up climate state (`--spinup-days`, seed `--seed`) perturbed by member `case`'s
  noise and integrated `--lead-days` (so every case is a different state of the same date); its
  channels at that time are T0, its own 6 h forecast F(truth), read as the training data are;
- background: another perturbed member integrated as long (a state that has drifted from the
  truth, as a cycled member's forecast has);
- round trip: the background plus the increment T0 − (background's channels), forecast 6 h.

Printed per channel (RMSE over cells, root mean square over cases; K, m s⁻¹, m² s⁻²):
(a) round-trip forecast − F(truth): what the round trip loses (a perfect analysis of the
analysed channels, as a HEALPix field, restarted through the increment); (b) F(truth) − T0, the
6 h forecast change itself, for scale; (c) the background's own forecast − F(truth): the error
(a) starts from without the increment.

    .venv/bin/python benchmarks/speedy_roundtrip.py [--nside 16 --cases 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ensemble_da.data.speedy import DEFAULT_CHANNELS  # noqa: E402
from ensemble_da.dynamics.speedy import SpeedyForecast  # noqa: E402
from ensemble_da.grid import HealpixGrid  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nside", type=int, default=16)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--spinup-days", type=float, default=30.0)
    ap.add_argument("--lead-days", type=float, default=2.0, help="days each perturbed member runs before time 0")
    ap.add_argument("--perturbation-k", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    fc = SpeedyForecast.create(HealpixGrid(args.nside), DEFAULT_CHANNELS, hours=6.0, spinup_days=args.spinup_days,
                               perturbation_k=args.perturbation_k, seed=args.seed)
    print(f"SPEEDY built and spun up ({args.spinup_days:g} days) in {time.time() - t0:.0f} s", flush=True)
    steps = int(round(args.lead_days * 4))

    def member(m: int):
        state = fc.perturbed_climate(args.seed, 0, m)
        for _ in range(steps - 1):
            state = fc._run(state)[0]
        return fc.integrate(state)  # (state at time 0, its channels)

    lost, change, background = [], [], []
    for case in range(args.cases):
        truth, truth0 = member(2 * case)
        bg, bg0 = member(2 * case + 1)
        _, truth1 = fc.integrate(truth)
        _, bg1 = fc.integrate(bg)
        _, trip1 = fc.integrate(fc.add_increment(bg, truth0 - bg0))
        rms = lambda d: np.sqrt((np.asarray(d, np.float64) ** 2).mean(-1))  # noqa: E731
        lost.append(rms(trip1 - truth1))
        change.append(rms(truth1 - truth0))
        background.append(rms(bg1 - truth1))
        print(f"case {case}: done ({time.time() - t0:.0f} s)", flush=True)
    agg = lambda rows: np.sqrt((np.array(rows) ** 2).mean(0))  # noqa: E731
    print(f"\nnside {args.nside}, {args.cases} cases, members perturbed by {args.perturbation_k:g} K and run "
          f"{args.lead_days:g} days after a {args.spinup_days:g}-day spin-up; RMSE (K, m s-1, m2 s-2):\n")
    print("| | " + " | ".join(DEFAULT_CHANNELS) + " |")
    print("|---|" + "---|" * len(DEFAULT_CHANNELS))
    for name, rows in (("(a) round-trip forecast vs truth forecast", lost), ("(b) 6 h forecast change", change),
                       ("(c) background forecast vs truth forecast", background)):
        print(f"| {name} | " + " | ".join(f"{v:.3g}" for v in agg(rows)) + " |")
    print("| (a) / (c): error left with a perfect analysis of the channels | "
          + " | ".join(f"{v:.2f}" for v in agg(lost) / agg(background)) + " |")
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
