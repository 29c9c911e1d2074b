"""A learned window prior (issue 17 item 5, DESIGN.md §10): `ensemble-da train` with `window: L`
stacks L consecutive states as window.py lays them out, a window checkpoint's `window(L,
conditioned)` is a window denoiser with `sample_window`'s interface, and mode cycle and
reanalysis run with it through `run_pipeline`; what it cannot serve is one InputError line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.run import run_pipeline
from ensemble_da.config import RunConfig
from ensemble_da.cycling import create_generator
from ensemble_da.data.speedy import write_dataset
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.io import open_run
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.priors.checkpoint import load_checkpoint
from ensemble_da.priors.gaussian_markov import PREVIOUS
from ensemble_da.training import TrainConfig, stack_windows, states_per_day, train, window_starts

NSIDE = 4
CHANNELS = ["T850", "Z500"]
STEPS = 30


@pytest.fixture(scope="module")
def ar1_dataset(tmp_path_factory):
    """96 six-hourly states of 2 channels at nside 4: smooth patterns whose amplitudes follow an
    AR(1) process in time (ρ = 0.9), in physical-looking units."""
    grid = HealpixGrid(NSIDE)
    r = grid.unit_vectors
    patterns = np.stack([r[:, 2], r[:, 0], r[:, 1], r[:, 0] * r[:, 1]], axis=0)
    rng = np.random.default_rng(1)
    t, rho = 96, 0.9
    amp = np.zeros((t, 2, 4))
    amp[0] = rng.normal(size=(2, 4))
    for k in range(1, t):
        amp[k] = rho * amp[k - 1] + np.sqrt(1 - rho**2) * rng.normal(size=(2, 4))
    state = np.einsum("tck,kp->tcp", amp, patterns) + 0.05 * rng.normal(size=(t, 2, grid.npix))
    state = state * np.array([5.0, 800.0])[None, :, None] + np.array([270.0, 55000.0])[None, :, None]
    times = np.datetime64("2001-01-01", "ns") + np.arange(t) * np.timedelta64(6, "h")
    path = tmp_path_factory.mktemp("data") / "ar1.zarr"
    write_dataset(path, state.astype(np.float32), times, CHANNELS, grid)
    return path, times


@pytest.fixture(scope="module")
def window_checkpoint(ar1_dataset, tmp_path_factory):
    """A 2-slot window checkpoint conditioned on the state before its window, trained in seconds."""
    out = tmp_path_factory.mktemp("train")
    cfg = TrainConfig.model_validate(dict(
        data=str(ar1_dataset[0]), out=str(out / "run"), name="win", holdout_days=4, window=2, previous=True,
        network=dict(widths=[8, 16], emb_dim=16, conditional=False), steps=STEPS, batch_size=8, lr=3e-3,
        warmup_steps=5, ema_decay=0.9, log_every=10, checkpoint_every=STEPS, threads=1,
        tracking=dict(uri=f"sqlite:///{out / 'mlflow.db'}")))
    return train(cfg, progress=False).checkpoint


def test_windows_stack_consecutive_states_slot_major():
    z = torch.arange(5 * 2 * 3, dtype=torch.float32).reshape(5, 2, 3)
    w = stack_windows(z, torch.tensor([0, 2]), 3)
    assert w.shape == (2, 6, 3)
    for b, s in enumerate([0, 2]):
        for j in range(3):
            for c in range(2):  # slot j's channel c is channel j·C + c (window.py)
                np.testing.assert_array_equal(w[b, j * 2 + c].numpy(), z[s + j, c].numpy())
    np.testing.assert_array_equal(window_starts(10, 3, previous=False), np.arange(0, 8))
    np.testing.assert_array_equal(window_starts(10, 3, previous=True), np.arange(1, 8))
    six_hourly = np.datetime64("2001-01-01", "ns") + np.arange(9) * np.timedelta64(6, "h")
    assert states_per_day(six_hourly) == 4 and states_per_day(six_hourly[::4]) == 1


def test_no_training_window_reaches_the_held_out_states(window_checkpoint, ar1_dataset):
    den = load_checkpoint(window_checkpoint)
    training = den.meta["training"]
    times = ar1_dataset[1]
    # 4 held-out days of six-hourly states: the last 16 of 96; windows end by state 79.
    assert training["train_states"] == 96 - 16
    assert training["train_time_range"][1] == str(np.datetime_as_string(times[79], unit="s"))
    assert window_starts(training["train_states"], 2, True).max() + 1 == 79
    assert den.meta["network"]["window"] == 2 and den.meta["network"]["previous"] is True
    assert den.meta["network"]["channels"] == 4  # L·C


def test_window_denoiser_shapes_and_refusals(window_checkpoint):
    den = load_checkpoint(window_checkpoint)
    assert den.window_slots == 2
    npix = 12 * NSIDE**2
    z = torch.randn(3, 4, npix, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((3,), 0.7)
    free = den.window(2)
    assert free.slots == 2 and list(free.normalization.channels) == ["T850@0", "Z500@0", "T850@1", "Z500@1"]
    assert free(z, sigma).shape == (3, 4, npix)
    cond = den.window(2, conditioned=True)
    prev = torch.randn(3, 2, npix, generator=torch.Generator().manual_seed(1))
    a, b = cond(z, sigma, {PREVIOUS: prev}), cond(z, sigma, {PREVIOUS: 2 * prev})
    assert a.shape == (3, 4, npix) and not torch.allclose(a, b)  # the net reads the previous state
    # Row r depends only on row r (a member does not depend on its batch).
    np.testing.assert_allclose(cond(z[1:2], sigma[1:2], {PREVIOUS: prev[1:2]}).numpy(), a[1:2].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="previous_state"):
        cond(z, sigma)
    with pytest.raises(InputError, match="has 2 slots, asked for 3: set cycle.window: 2"):
        den.window(3)
    with pytest.raises(InputError, match="window prior of 2 times"):
        den(z[:, :2], sigma)


def _run_config(checkpoint, mode: str, **cycle) -> RunConfig:
    times = [str(np.datetime64("2001-01-21T00:00") + np.timedelta64(6 * k, "h")) for k in range(4)]
    return RunConfig.model_validate(dict(
        run_name=f"learned-window-{mode}", seed=3, mode=mode, times=times, grid=dict(nside=NSIDE),
        model=dict(kind="checkpoint", path=str(checkpoint)),
        cycle=dict(window=2, **cycle), sampler=dict(steps=5, batch_size=2),
        guidance=dict(method="mmps", solver="cg", cg_iters=2), ensemble=dict(members=4),
        observations=dict(channels=CHANNELS, num_obs=20, sigma=dict(T850=1.0, Z500=100.0)),
        diagnostics=dict(exact=False, qc_sigma_k=1e6),  # no first-guess rejections: the stored flags are the draws'
        cluster=dict(address="inprocess", replicas=1, members_per_unit=2, device="cpu"),
    ))


def test_cycle_run_with_the_learned_window_equals_the_python_filter(window_checkpoint, tmp_path):
    config = _run_config(window_checkpoint, "cycle", carry=True, forecast="window")
    run_pipeline(config, tmp_path / "run", progress=False)
    run = open_run(tmp_path / "run")
    analysis = np.asarray(run["analysis"].values)  # (time, member, channel, cell)
    assert analysis.shape == (4, 4, 2, 12 * NSIDE**2) and np.isfinite(analysis).all()
    truth = np.asarray(run["truth"].values)
    assert truth.shape == (4, 2, 12 * NSIDE**2) and np.isfinite(truth).all()
    # The same filter in memory (ensemble_da.cycling.create_generator), fed the store's
    # observations of each time, with the same seeds, gives the same members.
    obs = open_run(tmp_path / "run", group="observations")
    den = load_checkpoint(window_checkpoint)
    gen = create_generator(den, 4, seed=3, window=2, carry=True, sampler=config.sampler, guidance=config.guidance)
    next(gen)
    for k, when in enumerate(config.analysis_times()):
        rows = np.asarray(obs.time.values) == when
        assert rows.any()
        at = ObservationSet(*(np.asarray(obs[v].values)[rows] for v in ("time", "lat", "lon", "channel", "value",
                                                                         "sigma", "assimilated")))
        members = gen.send(at)
        scale = np.asarray(den.normalization.scale)[None, :, None]
        np.testing.assert_allclose(members / scale, analysis[k] / scale, atol=1e-4)


def test_reanalysis_run_with_the_learned_window(window_checkpoint, tmp_path):
    run_pipeline(_run_config(window_checkpoint, "reanalysis"), tmp_path / "run", progress=False)
    analysis = np.asarray(open_run(tmp_path / "run")["analysis"].values)
    assert analysis.shape == (4, 4, 2, 12 * NSIDE**2) and np.isfinite(analysis).all()


@pytest.mark.parametrize("mode, cycle, message", [
    ("cycle", dict(window=3), "has 2 slots, asked for 3: set cycle.window: 2"),
    ("cycle", dict(forecast="markov"), "cycle.forecast markov is the transition of model.kind gaussian_markov"),
    ("analysis", dict(), "window prior of 2 times: use mode cycle or reanalysis"),
])
def test_what_the_learned_window_cannot_serve_is_one_line(window_checkpoint, tmp_path, mode, cycle, message):
    config = _run_config(window_checkpoint, mode)
    config = RunConfig.model_validate({**config.model_dump(), "cycle": {**config.cycle.model_dump(), **cycle}})
    with pytest.raises(InputError, match=message) as err:
        run_pipeline(config, tmp_path / "run", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_single_time_checkpoint_has_no_window():
    with pytest.raises(InputError, match="single-time prior"):
        load_checkpoint(None).window(2)


def test_the_shipped_window_checkpoint_is_a_two_slot_window_before_its_held_out_days():
    den = load_checkpoint("shipped-window")
    single = load_checkpoint(None)
    assert den.window_slots == 2 and den.model.net.config.previous and den.grid.nside == 16
    assert den.normalization.channels == single.normalization.channels
    training = den.meta["training"]
    config = training["config"]
    assert config["window"] == 2 and config["holdout_days"] > 0
    # six-hourly training states, all before the held-out tail of holdout_days · 4 states
    start, end = (np.datetime64(t) for t in training["train_time_range"])
    assert (end - start) / np.timedelta64(6, "h") + 1 == training["train_states"]
    npix = 12 * 16**2
    z = torch.zeros(1, 12, npix)
    assert den.window(2, conditioned=True)(z, torch.ones(1), {PREVIOUS: torch.zeros(1, 6, npix)}).shape == (1, 12, npix)
