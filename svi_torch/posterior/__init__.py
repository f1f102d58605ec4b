"""What comes after ``fit``: draws, summaries, the predictive, saving and the ArviZ export.

The :class:`~svi_torch.training.FitResult` methods delegate here:

* :mod:`~svi_torch.posterior.draws`: seeded draws :math:`z_s \\sim q`, mapped to the
  constrained space with the model's derived quantities (``sample``);
* :mod:`~svi_torch.posterior.summary`: the posterior table (``summary``);
* :mod:`~svi_torch.posterior.predictive`: posterior predictive draws and the per-point
  log likelihood (``predictive``, ``log_likelihood``);
* :mod:`~svi_torch.posterior.persistence`: ``save``, :func:`load_result`, :func:`load_run`;
* :mod:`~svi_torch.posterior.arviz`: ``to_arviz`` (ArviZ 1.x, an optional extra);
* :mod:`~svi_torch.posterior.plots`: the posterior predictive check figure.
"""

from .arviz import to_arviz
from .draws import DEFAULT_SEED, constrained_draws, draw_latents, seeded
from .persistence import ResultFileError, family_spec, load_result, load_run, save_result
from .plots import ppc_figure
from .predictive import pointwise_log_likelihood, posterior_predictive
from .summary import SummaryTable, summary_table

__all__ = [
    "DEFAULT_SEED",
    "seeded",
    "draw_latents",
    "constrained_draws",
    "posterior_predictive",
    "pointwise_log_likelihood",
    "SummaryTable",
    "summary_table",
    "save_result",
    "load_result",
    "load_run",
    "family_spec",
    "ResultFileError",
    "to_arviz",
    "ppc_figure",
]
