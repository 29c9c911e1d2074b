"""The `ensemble-da` command (DESIGN.md §7, §8): one typer app, one function per command.

Every command wraps its body in `cli_errors(debug)`: an `InputError` (bad file, key, value)
becomes one line `error: ...` on stderr and exit status 2, with the traceback only under
`--debug`. Heavy imports (torch, ray, mlflow) happen inside the commands so `--help` is fast.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator, Optional

import typer

from ensemble_da.errors import InputError

__all__ = ["app", "cli_errors"]

app = typer.Typer(
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


_SET_HELP = "Override a config key, e.g. --set ensemble.members=32 (value parsed as YAML); repeatable."


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="Run config YAML (default: the packaged demo)."),
    set_: list[str] = typer.Option([], "--set", help=_SET_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<run_name>-<timestamp>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out: sample only missing members."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Sample a posterior ensemble for every analysis time and write DIR/ (DESIGN.md §7)."""
    with cli_errors(debug):
        from actors.pipeline import run_from_cli

        run_from_cli(config, set_, out, resume)


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

        cfg = load_config(config, set_)
        files = write_osse_dir(cfg, load_prior(cfg.model, cfg.grid), out)
        print(f"wrote {', '.join(p.name for p in files.era5)}, {files.truth.name}, {files.config.name} in {out}")


if __name__ == "__main__":  # pragma: no cover
    app()
