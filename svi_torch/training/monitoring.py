"""Monitoring callback: KL divergences, gradient-noise statistics, histograms, figures, hparams.

:class:`TrainingMonitor` is a loop callback. Each time the loop logs (every
``log_every`` steps) it adds to the metrics

* ``kl/prior``: :math:`\\mathrm{KL}(q\\|p_0) = \\mathbb{E}_q[\\log q(z) - \\log p_0(z)]`, the
  reverse KL from the family to the prior over the unconstrained :math:`z`; analytic when
  both are Gaussian, otherwise a Monte Carlo average over draws :math:`z \\sim q` with
  :math:`\\log p_0(z) = \\log p(T(z)) + \\log|\\det J_T(z)|`;
* ``kl/posterior``: :math:`\\mathrm{KL}(q\\|p(\\cdot\\mid D))` when the model is a
  :class:`~svi_torch.models.ConjugateModel` (exact posterior known); analytic for Gaussian
  families. Since :math:`\\mathrm{ELBO} = \\log p(D) - \\mathrm{KL}(q\\|p)`, this is the gap of
  the bound;
* ``kl/posterior_averaged``, ``kl/prior_averaged`` and ``posterior/variance_mean_averaged``:
  the same figures for the averaged iterate (the result a run reports), once the rule
  averages (the refine phase of the ``"auto"`` schedule); the plain tags follow the raw
  iterate, which keeps the noise of the last steps, so the run's printed KL is where the
  ``_averaged`` curve ends;
* every ``grad_stats_every`` steps, ``grad/variance`` and ``grad/snr``: ``R`` independent
  gradient estimates :math:`g_1..g_R` of the loss on one fixed minibatch (so only the
  particle noise varies), total variance :math:`\\sum_j \\widehat{\\mathrm{Var}}[g_j]` and
  signal-to-noise ratio :math:`\\|\\bar g\\| / \\sqrt{\\sum_j \\widehat{\\mathrm{Var}}[g_j]}`;

* ``posterior/exact_variance_mean``: the exact posterior's mean marginal variance, the
  line ``posterior/variance_mean`` should reach, when the posterior is known;

and every ``histogram_every`` steps it writes histograms of the variational means and
marginal standard deviations. It gives each logger that takes one (``set_dashboard``) the
run's :func:`dashboard`: the ELBO with its noise band, the KL and the posterior variance,
first in TensorBoard. :meth:`TrainingMonitor.finish` writes the hyperparameters with the
final metrics (TensorBoard's HParams tab), an optional text summary and a figure of the
marginals of :math:`q` against the exact posterior (or the prior). All random draws here
run under a forked RNG state, so monitoring never changes the training trajectory.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from ..families.base import VariationalFamily
from ..models.base import ConjugateModel, Model
from ..posterior.draws import element_names as _element_names
from .logging import Chart, Dashboard

__all__ = [
    "TrainingMonitor",
    "dashboard",
    "unconstrained_prior",
    "exact_posterior",
    "kl_to_prior",
    "kl_to_posterior",
    "gradient_statistics",
    "marginals_figure",
]


# -- reference distributions -----------------------------------------------------------
def unconstrained_prior(model: Model) -> Distribution | None:
    """The prior over the unconstrained :math:`z` as a distribution, where it is known.

    The model's own :meth:`~svi_torch.models.Model.unconstrained_prior` hook says it (the
    built-in models with a Gaussian prior on real-valued parameters give it); ``None``
    otherwise, and for objects without the hook (the KL to the prior then falls back to
    Monte Carlo).
    """
    custom = getattr(model, "unconstrained_prior", None)
    return custom() if callable(custom) else None


def exact_posterior(model: Model) -> Distribution | None:
    """:math:`p(z\\mid D)` for conjugate models (``None`` when unknown or not available)."""
    if not isinstance(model, ConjugateModel):
        return None
    try:
        with torch.no_grad():
            return model.exact_posterior()
    except (NotImplementedError, ValueError):
        return None


def _gaussian(family: VariationalFamily) -> Distribution | None:
    """:math:`q` as a float64 Gaussian (from its own factors) when the family is Gaussian.

    The factors (Cholesky, low-rank, diagonal) are converted, never the covariance
    :math:`LL^\top` formed in float32, which can lose positive definiteness when the
    posterior is narrow and correlated.
    """
    with torch.no_grad():
        dist = family()
        if isinstance(dist, MultivariateNormal):
            return MultivariateNormal(dist.loc.double(), scale_tril=dist.scale_tril.double())
        if isinstance(dist, LowRankMultivariateNormal):
            return LowRankMultivariateNormal(
                dist.loc.double(), dist.cov_factor.double(), dist.cov_diag.double()
            )
        if (
            isinstance(dist, Independent)
            and isinstance(dist.base_dist, Normal)
            and dist.reinterpreted_batch_ndims == 1
            and dist.event_shape == (family.dim,)
        ):
            scale = dist.base_dist.scale.double().expand(family.dim)
            return MultivariateNormal(
                dist.base_dist.loc.double().expand(family.dim), scale_tril=torch.diag_embed(scale)
            )
    return None


def _double(dist: Distribution) -> Distribution:
    if isinstance(dist, MultivariateNormal):
        return MultivariateNormal(dist.loc.double(), scale_tril=dist.scale_tril.double())
    return dist


# -- KL divergences ----------------------------------------------------------------------
def kl_to_prior(
    model: Model,
    family: VariationalFamily,
    num_samples: int = 256,
    prior: Distribution | None = None,
) -> tuple[float, str]:
    """Reverse :math:`\\mathrm{KL}(q\\|p_0)` to the prior and the method (``"analytic"``/``"mc"``)."""
    prior = prior if prior is not None else unconstrained_prior(model)
    with torch.no_grad():
        q = _gaussian(family)
        if q is not None and prior is not None:
            with contextlib.suppress(NotImplementedError):
                return kl_divergence(q, _double(prior)).item(), "analytic"
        z, log_q = family.rsample_and_log_prob((num_samples,))
        if prior is not None:
            log_p = prior.log_prob(z)
        else:
            params, log_det = model.constrain(z)
            log_p = model.log_prior(params) + log_det
        return (log_q - log_p).double().mean().item(), "mc"


def kl_to_posterior(
    family: VariationalFamily, posterior: Distribution, num_samples: int = 256
) -> tuple[float, str]:
    """Reverse :math:`\\mathrm{KL}(q\\|p(\\cdot\\mid D))`, analytic for Gaussian pairs."""
    with torch.no_grad():
        q = _gaussian(family)
        if q is not None:
            with contextlib.suppress(NotImplementedError):
                return kl_divergence(q, _double(posterior)).item(), "analytic"
        z, log_q = family.rsample_and_log_prob((num_samples,))
        return (log_q - posterior.log_prob(z)).double().mean().item(), "mc"


# -- gradient noise --------------------------------------------------------------------
def gradient_statistics(state: Any, draws: int = 16) -> tuple[float, float]:
    """Total variance and SNR of the loss gradient over ``draws`` estimates on one batch.

    Returns ``(sum_j Var[g_j], ||mean g|| / sqrt(sum_j Var[g_j]))`` with the unbiased
    sample variance over the ``draws`` estimates. The batch is fixed, so the spread is
    the Monte Carlo noise of the objective's particles alone.
    """
    model, family, objective = state.model, state.family, state.objective
    params = [p for p in state.params if p.requires_grad]
    stream = state.stream
    if stream is None:
        batch, scale = None, 1.0
    else:
        g = torch.Generator().manual_seed(int(state.settings.seed) * 7919 + int(state.step))
        indices = torch.randperm(model.num_data, generator=g)[: stream.batch_size]
        batch = model.index_data(indices.to(stream.device))
        scale = model.num_data / indices.shape[0]
    estimates = []
    for _ in range(draws):
        output = objective(family, model, batch, likelihood_scale=scale)
        grads = torch.autograd.grad(output.loss, params, allow_unused=True)
        estimates.append(
            torch.cat(
                [
                    (gr if gr is not None else torch.zeros_like(p)).reshape(-1)
                    for gr, p in zip(grads, params, strict=True)
                ]
            )
        )
    stacked = torch.stack(estimates).double()
    variance = stacked.var(0).sum()
    snr = stacked.mean(0).norm() / variance.sqrt()
    return variance.item(), snr.item()


# -- what a reader sees first ------------------------------------------------------------
def dashboard(posterior_known: bool) -> Dashboard:
    r"""The charts of a run that TensorBoard shows first: ELBO, KL and posterior variance.

    In the Custom Scalars tab, two sections: ``ELBO`` with

    * the ELBO: ``elbo/smoothed`` inside the band from ``elbo/band_lower`` to
      ``elbo/band_upper``, :math:`\pm` one exponentially weighted standard deviation of
      the per-step estimates around it (where the raw ``elbo`` points fall: the Monte
      Carlo noise of one step's minibatch and particles, widened by the curve's own climb
      early on);

    then ``KL and posterior variance`` with

    * the reverse :math:`\mathrm{KL}(q\|p(\cdot\mid D))` of the iterate and of the
      averaged iterate when the exact posterior is known, else :math:`\mathrm{KL}(q\|p_0)`
      to the prior;
    * the mean marginal variance of :math:`q` (iterate and averaged) and, when known, the
      exact posterior's.

    In the Time Series tab (which opens first), the group ``Overview`` repeats ``elbo``
    (TensorBoard draws it smoothed over its faint raw points), the KL of the iterate and
    ``posterior/variance_mean`` as ``Overview/elbo``, ``Overview/kl_posterior`` (or
    ``Overview/kl_prior``) and ``Overview/variance_mean``.

    Example:
        >>> list(dashboard(posterior_known=True).categories)
        ['ELBO', 'KL and posterior variance']
    """
    if posterior_known:
        kl, kl_title = "posterior", "KL(q‖p(z|D)), the reverse KL to the exact posterior (nats)"
    else:
        kl, kl_title = "prior", "KL(q‖prior) (nats; the posterior is not known)"
    variance = ("posterior/variance_mean", "posterior/variance_mean_averaged")
    if posterior_known:
        variance += ("posterior/exact_variance_mean",)
    return Dashboard(
        {
            "ELBO": (
                Chart(
                    "ELBO (smoothed) ± sd of one step's estimate",
                    ("elbo/smoothed",),
                    band=("elbo/band_lower", "elbo/band_upper"),
                ),
            ),
            "KL and posterior variance": (
                Chart(
                    f"{kl_title}: iterate and averaged iterate", (f"kl/{kl}", f"kl/{kl}_averaged")
                ),
                Chart("posterior variance, mean over the coordinates of z", variance),
            ),
        },
        first={
            "elbo": "elbo",
            f"kl/{kl}": f"kl_{kl}",
            "posterior/variance_mean": "variance_mean",
        },
    )


# -- the callback ------------------------------------------------------------------------
class TrainingMonitor:
    """Trainer callback adding KL, gradient-noise metrics and histograms; see the module doc.

    Args:
        grad_stats_every: steps between gradient statistics (0: never); a multiple of the
            loop's ``log_every``.
        grad_stats_draws: gradient estimates per statistic, ``R >= 2``.
        histogram_every: steps between histograms (0: never).
        kl_samples: draws for Monte Carlo KL estimates.
        seed: seed of the monitor's own random draws.

    Example:
        >>> monitor = TrainingMonitor(grad_stats_every=500)
        >>> # st.fit(model, family, loggers=[logger], callbacks=[monitor], log_every=100)
    """

    def __init__(
        self,
        grad_stats_every: int = 500,
        grad_stats_draws: int = 16,
        histogram_every: int = 500,
        kl_samples: int = 256,
        seed: int = 0,
    ) -> None:
        if grad_stats_every and grad_stats_draws < 2:
            raise ValueError("grad_stats_draws must be >= 2 to estimate a variance")
        self.grad_stats_every = grad_stats_every
        self.grad_stats_draws = grad_stats_draws
        self.histogram_every = histogram_every
        self.kl_samples = kl_samples
        self.seed = seed
        self._posterior: Distribution | None = None
        self._prior: Distribution | None = None
        self._exact_variance_mean: float | None = None
        self._references_for: int | None = None

    def references(self, model: Model) -> tuple[Distribution | None, Distribution | None]:
        """``(exact posterior, prior)`` over :math:`z`, each ``None`` when unknown; cached."""
        # The exact posterior costs O(N D^2): compute it once per model.
        if self._references_for != id(model):
            self._posterior = exact_posterior(model)
            self._prior = unconstrained_prior(model)
            self._exact_variance_mean = (
                None if self._posterior is None else self._posterior.variance.double().mean().item()
            )
            self._references_for = id(model)
        return self._posterior, self._prior

    @contextlib.contextmanager
    def _own_rng(self, family: VariationalFamily, step: int) -> Iterator[None]:
        devices = [p.device for p in family.parameters() if p.device.type == "cuda"][:1]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed * 1_000_003 + step)
            yield

    def kl_metrics(self, model: Model, family: VariationalFamily, step: int) -> dict[str, float]:
        """``kl/prior`` and (when the posterior is known) ``kl/posterior``."""
        self.references(model)
        out: dict[str, float] = {}
        with self._own_rng(family, step):
            out["kl/prior"], _ = kl_to_prior(model, family, self.kl_samples, self._prior)
            if self._posterior is not None:
                out["kl/posterior"], _ = kl_to_posterior(family, self._posterior, self.kl_samples)
        return out

    def on_log(self, state: Any, step: int, metrics: dict[str, float]) -> None:
        """Add the KL metrics (and, on their steps, gradient statistics and histograms).

        Each logger with a ``set_dashboard`` method gets the run's :func:`dashboard`
        before it writes this step's scalars (the loop calls callbacks first).
        """
        family, model = state.family, state.model
        metrics.update(self.kl_metrics(model, family, step))
        board = dashboard(self._posterior is not None)
        for logger in state.loggers:
            set_dashboard = getattr(logger, "set_dashboard", None)
            if set_dashboard is not None:
                set_dashboard(board)
        if self._exact_variance_mean is not None and "posterior/variance_mean" in metrics:
            metrics["posterior/exact_variance_mean"] = self._exact_variance_mean
        averaged = _averaged_family(state)
        if averaged is not None:
            for key, value in self.kl_metrics(model, averaged, step).items():
                metrics[f"{key}_averaged"] = value
            with torch.no_grad():
                variance = averaged.variance(state.context)
            if variance.dim() == 1:
                metrics["posterior/variance_mean_averaged"] = variance.mean().item()
        if self.grad_stats_every and step % self.grad_stats_every == 0:
            with self._own_rng(family, step):
                variance, snr = gradient_statistics(state, self.grad_stats_draws)
            metrics["grad/variance"] = variance
            metrics["grad/snr"] = snr
        if self.histogram_every and step % self.histogram_every == 0:
            self.log_histograms(state.loggers, step, family)

    @staticmethod
    def log_histograms(loggers: Sequence[Any], step: int, family: VariationalFamily) -> None:
        with torch.no_grad():
            values = {"family/loc": family.mean(), "family/scale": family.variance().sqrt()}
        for logger in loggers:
            logger.log_histograms(step, values)

    def finish(
        self,
        loggers: Sequence[Any],
        step: int,
        model: Model,
        family: VariationalFamily,
        hparams: dict[str, Any],
        final_metrics: dict[str, float],
        figure: bool = True,
        figure_path: Path | None = None,
        summary: str | None = None,
    ) -> None:
        """Write final histograms, the marginals figure, the hparams with final metrics and
        ``summary`` (Markdown, TensorBoard's Text tab, tag ``summary``).

        Single end-of-run numbers go to the HParams tab and the text, not to line charts
        of one point each.
        """
        self.references(model)
        self.log_histograms(loggers, step, family)
        if figure:
            fig = marginals_figure(model, family, self._posterior, self._prior)
            if figure_path is not None:
                fig.savefig(figure_path, dpi=100)
            for logger in loggers:
                logger.log_figure(step, "posterior/marginals", fig)
        finite = {k: v for k, v in final_metrics.items() if math.isfinite(v)}
        for logger in loggers:
            logger.log_hparams(hparams, finite)
            log_text = getattr(logger, "log_text", None)  # loggers written before it had none
            if summary is not None and log_text is not None:
                log_text(step, "summary", summary)


def _averaged_family(state: Any) -> VariationalFamily | None:
    """The rule's averaged iterate as a family copy, if the rule averages (else ``None``)."""
    averaged = getattr(getattr(state, "rule", None), "averaged_family", None)
    return averaged(state) if callable(averaged) else None


# -- figure ------------------------------------------------------------------------------
def marginals_figure(
    model: Model,
    family: VariationalFamily,
    posterior: Distribution | None = None,
    prior: Distribution | None = None,
    max_panels: int = 12,
    num_samples: int = 4000,
    reference: Mapping[str, Tensor] | None = None,
    seed: int | None = 0,
) -> Any:
    """Marginals of :math:`q` over each constrained scalar (and derived quantity).

    Draws :math:`z_s \\sim q` are mapped through the model's constraining transform,
    :math:`\\theta_s = T(z_s)` (so a positive parameter such as eight schools' :math:`\\tau`
    is shown as :math:`\\tau`, not :math:`\\log\\tau`), and the model's derived quantities
    are added. Each panel compares :math:`q` with a reference: ``reference`` (constrained
    draws by name, e.g. NUTS draws), else the exact posterior over :math:`z` (draws mapped
    the same way), else the prior. Densities are drawn in closed form where the parameter
    is unconstrained and the distribution Gaussian, as histograms of the draws otherwise.
    Returns a ``matplotlib.figure.Figure`` (no pyplot state, safe in threads and servers).
    """
    from matplotlib.figure import Figure

    from ..posterior.draws import constrained_draws, draw_latents, flat_draws, seeded

    z, _ = draw_latents(family, num_samples, seed)
    names, q_flat = flat_draws(constrained_draws(model, z), num_samples)
    ref_flat, label, ref_names = None, None, []
    ref_gauss = None
    if reference is not None:
        ref_size = next(iter(reference.values())).shape[0]
        ref_names, ref_flat = flat_draws(dict(reference), ref_size)
        label = "reference"
    else:
        dist, label = (posterior, "exact posterior") if posterior is not None else (prior, "prior")
        if dist is not None:
            with torch.no_grad(), seeded(None if seed is None else seed + 1):
                ref_z = dist.sample((num_samples,)).to(z)
            ref_names, ref_flat = flat_draws(constrained_draws(model, ref_z), num_samples)
            if isinstance(dist, MultivariateNormal):
                ref_gauss = dist
    columns = {name: j for j, name in enumerate(ref_names)}
    # Constrained scalars that *are* coordinates of z (real-line parameters): closed forms.
    coordinate = {}
    for spec in model.param_specs.values():
        if spec.is_identity:
            for k, name in enumerate(_element_names(spec.name, spec.shape)):
                coordinate[name] = spec.offset + k
    q_gauss = _gaussian(family)
    panels = min(len(names), max_panels)
    cols = min(panels, 4)
    rows = -(-panels // cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for j, ax in enumerate(axes):
        if j >= panels:
            ax.set_visible(False)
            continue
        name = names[j]
        q_col = q_flat[:, j].cpu()
        ref_col = ref_flat[:, columns[name]].cpu() if name in columns else None
        lo, hi = q_col.quantile(0.001).item(), q_col.quantile(0.999).item()
        if ref_col is not None and label != "prior":
            lo = min(lo, ref_col.quantile(0.001).item())
            hi = max(hi, ref_col.quantile(0.999).item())
        grid = torch.linspace(lo, hi, 300, dtype=torch.float64)
        d = coordinate.get(name)
        if q_gauss is not None and d is not None:
            m, sd = q_gauss.loc[d].item(), q_gauss.covariance_matrix[d, d].sqrt().item()
            ax.plot(grid, _normal_pdf(grid, m, sd), color="C0", label="q")
        else:
            ax.hist(q_col, bins=60, range=(lo, hi), density=True, color="C0", alpha=0.5, label="q")
        if ref_gauss is not None and d is not None:
            m = ref_gauss.loc[d].double().item()
            sd = ref_gauss.covariance_matrix[d, d].double().sqrt().item()
            ax.plot(grid, _normal_pdf(grid, m, sd), "--", color="k", label=label)
        elif ref_col is not None:
            ax.hist(
                ref_col,
                bins=60,
                range=(lo, hi),
                density=True,
                histtype="step",
                color="k",
                label=label,
            )
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        if j == 0:
            ax.legend(fontsize=7)
    title = "marginals of q (constrained parameters and derived quantities)"
    if ref_flat is None:
        title += "; no reference distribution known"
    fig.suptitle(title, fontsize=10)
    return fig


def _normal_pdf(x: Tensor, mean: float, sd: float) -> Tensor:
    return torch.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
