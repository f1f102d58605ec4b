"""Accuracy and cost of the ODE posteriors' solves: the figures quoted in their docstrings.

For each ODE posterior, at the reference mean, q05 and q95 points: the largest error in
:math:`\\log y(t_n)` of the model's default solve against SciPy's ``DOP853`` at
``rtol=1e-12``; the same for a SciPy stand-in of Stan's configured solver (``RK45`` at
Lotka-Volterra's ``rtol=1e-5, atol=1e-3``; ``BDF`` at ``1e-6`` for the one-compartment
model); and the time of one forward and backward pass for 1 and 8 particles.

Usage::

    PYTHONPATH=$PWD nice -n 10 python -m benchmarks.posteriordb.ode_check
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .posteriors import hudson_lynx_hare_lotka_volterra as lv
from .posteriors import one_comp_mm_elim_abs_one_comp_mm_elim_abs as pk
from .spec import load_reference

__all__ = ["main"]

_STATS = ("mean", "q05", "q95")


def _timed(fn: Callable[[], torch.Tensor], repeats: int = 3) -> float:
    fn().sum().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn().sum().backward()
    return (time.perf_counter() - start) / repeats


def _dz_dt(t: float, z: np.ndarray, theta: np.ndarray) -> list[float]:
    a, b, g, d = theta
    return [(a - b * z[1]) * z[0], (-g + d * z[0]) * z[1]]


def _lotka_volterra() -> None:
    ref = load_reference("hudson_lynx_hare-lotka_volterra")
    ts = np.asarray(ref.data["ts"], dtype=float)
    for stat in _STATS:
        theta = np.array([ref.params[f"theta[{i}]"][stat] for i in range(1, 5)])
        z_init = np.array([ref.params[f"z_init[{i}]"][stat] for i in (1, 2)])
        exact = np.log(lv.stan_populations(theta, z_init, ts))
        ours = lv.log_populations(torch.tensor(theta), torch.tensor(z_init), torch.tensor(ts))
        stan = solve_ivp(
            functools.partial(_dz_dt, theta=theta),
            (0.0, ts[-1]),
            z_init,
            t_eval=ts,
            method="RK45",
            rtol=1e-5,
            atol=1e-3,
        ).y.T
        print(
            f"lotka_volterra {stat}: ours {np.abs(ours.numpy() - exact).max():.2e}, "
            f"Stan-like RK45 {np.abs(np.log(stan) - exact).max():.2e}"
        )
    for particles in (1, 8):
        theta = torch.tensor([ref.params[f"theta[{i}]"]["mean"] for i in range(1, 5)])
        theta = theta.repeat(particles, 1).requires_grad_()
        z_init = torch.tensor([ref.params[f"z_init[{i}]"]["mean"] for i in (1, 2)])
        z_init = z_init.repeat(particles, 1)
        seconds = _timed(functools.partial(lv.log_populations, theta, z_init, torch.tensor(ts)))
        print(f"lotka_volterra forward+backward, {particles} particle(s): {seconds * 1e3:.0f} ms")


def _one_compartment() -> None:
    ref = load_reference("one_comp_mm_elim_abs-one_comp_mm_elim_abs")
    kw = pk.data(ref.data)
    for stat in _STATS:
        theta = np.array([ref.params[k][stat] for k in ("k_a", "K_m", "V_m")])
        exact = np.log(pk.stan_concentration(theta, ref.data))
        k_a, K_m, V_m = torch.tensor(theta)
        ours = pk.concentration(k_a, K_m, V_m, kw["t0"], kw["times"], kw["D"], kw["V"])
        stan = pk.stan_concentration(theta, ref.data, rtol=1e-6, atol=1e-6, method="BDF")
        print(
            f"one_comp {stat}: ours {np.abs(ours[:, 0].log().numpy() - exact).max():.2e}, "
            f"Stan-like BDF {np.abs(np.log(stan) - exact).max():.2e}"
        )
    for particles in (1, 8):
        theta = torch.tensor([ref.params[k]["mean"] for k in ("k_a", "K_m", "V_m")])
        theta = theta.repeat(particles, 1).requires_grad_()
        args = (*theta.unbind(-1), kw["t0"], kw["times"], kw["D"], kw["V"])
        seconds = _timed(functools.partial(pk.concentration, *args))
        print(f"one_comp forward+backward, {particles} particle(s): {seconds * 1e3:.0f} ms")


def main() -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    _lotka_volterra()
    _one_compartment()


if __name__ == "__main__":
    main()
