"""The `ensemble-da` command (DESIGN.md §7, §8): one typer app, one function per command.

Every command wraps its body in `cli_errors(debug)`: an `InputError` (bad file, key, value)
becomes one line `error: ...` on stderr and exit status 2, with the traceback only under
`--debug`; a command line click cannot parse (unknown option, `--max-parallel 0`) is one such
line too (`_OneLineErrors`), not click's usage box. `run` also shows what the observation
readers did to the data (unit conversions, ignored variables: the `ensemble_da.obs` logger at
INFO) as `note: ...` lines on stderr
(`reader_notes`). Heavy imports (torch, ray, mlflow) happen inside the commands so `--help` is fast.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
import typer.core

from ensemble_da.errors import InputError

__all__ = ["app", "cli_errors", "reader_notes"]


class _OneLineErrors(typer.core.TyperGroup):
    """The command group whose parse errors are one `error: <message> (see <command> --help)` line
    on stderr, exit status 2, like every other bad input; `ensemble-da` alone still shows the help."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        # click's exception classes, wherever this typer takes click from (vendored since 0.25)
        errors = sys.modules[typer.BadParameter.__module__]
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
            code = result if isinstance(result, int) else 0
        except errors.ClickException as exc:
            result, code = None, exc.exit_code
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()
            else:
                line = " ".join(exc.format_message().split())
                if isinstance(exc, errors.UsageError):
                    line += f" (see {exc.ctx.command_path if exc.ctx is not None else self.name} --help)"
                print(f"error: {line}", file=sys.stderr)
        except errors.Abort:
            print("error: aborted", file=sys.stderr)
            result, code = None, 1
        if standalone_mode:
            sys.exit(code)
        return result


app = typer.Typer(
    cls=_OneLineErrors,
    name="ensemble-da",
    help="Posterior ensembles from score-based diffusion priors on the HEALPix sphere.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main() -> None:
    """Distributed ensemble data assimilation (see `ensemble-da COMMAND --help`)."""


@contextlib.contextmanager
def cli_errors(debug: bool = False) -> Iterator[None]:
    """Map `InputError` to `error: <msg>` on stderr and exit 2 (traceback only with --debug)."""
    try:
        yield
    except InputError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


class _NoteLines(logging.Handler):
    """A log record as one `note: <message>` line on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"note: {record.getMessage()}", file=sys.stderr)


@contextlib.contextmanager
def reader_notes() -> Iterator[None]:
    """Show the observation readers' INFO records (`ensemble_da.obs`: e.g. `z` in gpm converted
    to geopotential × 9.80665) as `note:` lines on stderr while the block runs."""
    log = logging.getLogger("ensemble_da.obs")
    handler, level = _NoteLines(logging.INFO), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


_SET_HELP = "Override a config key, e.g. --set ensemble.members=32 (value parsed as YAML); repeatable."


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="Run config YAML (default: the packaged demo)."),
    set_: list[str] = typer.Option([], "--set", help=_SET_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<run_name>-<timestamp>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out: sample only missing members."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Sample a posterior ensemble for every analysis time; write DIR (analysis.zarr, summary, figures, MLflow)."""
    with cli_errors(debug), reader_notes():
        from actors.command import run_from_cli

        run_from_cli(config, set_, out, resume)


@app.command()
def sweep(
    config: Optional[Path] = typer.Argument(None, help="Run config YAML, may hold a sweep: section (default: the demo)."),
    grid: list[str] = typer.Option([], "--grid", help="KEY=V1,V2,... (values parsed as YAML); repeatable: all combinations."),
    set_: list[str] = typer.Option([], "--set", help=_SET_HELP + " Applied to CONFIG before the grid."),
    out: Optional[Path] = typer.Option(None, "--out", help="Sweep directory (default runs/sweep-<timestamp>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the sweep in --out: run only unfinished runs."),
    max_parallel: Optional[int] = typer.Option(
        None, "--max-parallel", min=1,
        help="Runs at once on the sweep's local Ray (default: as many as its free CPUs/GPUs hold)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Run every combination of a grid of config values in one session; write DIR/runs/<NN>/, sweep.parquet/.csv/.html."""
    with cli_errors(debug), reader_notes():
        import shlex
        from datetime import datetime

        from actors.sweep import plan_sweep, run_sweep

        if resume and out is None:
            raise InputError("--resume needs --out DIR (the sweep directory to continue)")
        out = out or Path("runs") / f"sweep-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        plan = plan_sweep(config, grid, out, resume=resume, overrides=set_)
        for note in plan.notes:
            print(f"note: {note}", file=sys.stderr)
        try:
            table = run_sweep(plan, resume=resume, progress=True, max_parallel=max_parallel)
        except KeyboardInterrupt:
            sets = [f"--set {shlex.quote(item)}" for item in set_]
            again = " ".join(str(a) for a in ("ensemble-da sweep", config or "", *sets, "--resume --out", out) if a != "")
            print(f"error: interrupted; the finished runs are kept: continue with {again}", file=sys.stderr)
            raise typer.Exit(130) from None
        keys = list(plan.grid)
        shown = keys + ["status", "members"] + [c for c in table.columns if c.startswith(("rmse/", "spread/", "ssr/"))][:6]
        print(table[shown].to_string(index=False))
        print(f"sweep directory: {out} (sweep.parquet, sweep.csv, sweep.html)")
        if plan.failures:
            failed = ", ".join(f"{plan.runs[i].out_dir.relative_to(out)} ({msg})" for i, msg in plan.failures.items())
            raise InputError(f"{len(plan.failures)} of {len(plan.runs)} sweep runs failed: {failed}; "
                             f"the other runs are in {out}")


@app.command()
def osse(
    config: Optional[Path] = typer.Argument(None, help="Run config YAML (default: the packaged demo)."),
    out: Path = typer.Option(..., "--out", help="New directory for the OSSE files (must not exist or be empty)."),
    set_: list[str] = typer.Option([], "--set", help=_SET_HELP),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Draw a truth per analysis time from the prior; write it as ERA5-layout NetCDF, truth.zarr
    (HEALPix) and config.yaml, the run config that assimilates them."""
    with cli_errors(debug):
        from ensemble_da.config import load_config
        from ensemble_da.obs.osse import write_osse_dir
        from ensemble_da.priors import load_prior
        from ensemble_da.truth import draw_truths

        cfg = load_config(config, set_)
        prior = load_prior(cfg.model, cfg.grid)
        files = write_osse_dir(cfg, draw_truths(prior, cfg), prior.grid, list(prior.normalization.channels), out)
        print(f"wrote {', '.join(p.name for p in files.era5)}, {files.truth.name}, {files.config.name} in {out}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A finished run directory (analysis.zarr, summary.json)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Write DIR/report.html: maps, observation residuals, rank histograms, spread-skill, per-channel table."""
    with cli_errors(debug):
        from ensemble_da.report import write_report

        print(f"wrote {write_report(run_dir)}")


data_app = typer.Typer(help="Generate training data for learned priors.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("speedy")
def data_speedy(
    out: Path = typer.Option(..., "--out", help="Output zarr store (time, channel, cell)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial-state perturbation."),
    days: int = typer.Option(365, "--days", help="Days of states kept after the spin-up."),
    interval_hours: int = typer.Option(24, "--interval-hours", help="Hours between stored states (24: daily; 6: six-hourly)."),
    spinup_days: int = typer.Option(120, "--spinup-days", help="Days integrated and discarded first."),
    nside: int = typer.Option(16, "--nside", help="HEALPix nside of the output (NEST)."),
    channels: str = typer.Option("T850,T500,T300,U850,V850,Z500", "--channels", help="Comma-separated channels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Integrate SPEEDY (jcm, packaged T30 boundary data) and store HEALPix states (daily by default)."""
    with cli_errors(debug):
        from ensemble_da.data.speedy import generate_speedy

        names = [c.strip() for c in channels.split(",") if c.strip()]
        path = generate_speedy(
            out, seed=seed, days=days, spinup_days=spinup_days, nside=nside, channels=names, overwrite=overwrite,
            interval_hours=interval_hours,
        )
        print(f"wrote {path}")


@app.command()
def train(
    config: Path = typer.Argument(..., help="Training config YAML (see ensemble_da.training.TrainConfig)."),
    set_: list[str] = typer.Option([], "--set", help=_SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the training state in the config's out folder."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Train a HEALPix EDM denoiser; writes <out>/<name>.safetensors + .json."""
    with cli_errors(debug):
        from ensemble_da.training import load_train_config
        from ensemble_da.training import train as run_training

        result = run_training(load_train_config(config, set_), resume=resume, progress=sys.stderr.isatty())
        print(f"wrote {result.checkpoint} after {result.steps} steps (loss {result.final_loss:.4f})")


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="ensemble-da")
