"""Interpretability tools for a finished CAMERA run (paper sections III-E and IV-H).

Modules:

* :mod:`camera_jax.explain.radar` -- concept-based radar charts (paper Fig. 4):
  the historical-activities chart of an account (its top concepts of ``w_a``)
  and the marketing-direction charts of a brand/influencer pair (``w_b`` and
  ``w_m`` from the bi-directional concept attention, eq. 7).
* :mod:`camera_jax.explain.search` -- keyword-based micro-influencer search
  (paper IV-H-3, Fig. 5) and the paper's two baselines (caption keyword
  matching and exact profile matching).
* :mod:`camera_jax.explain.recommend` -- ranked recommendations for a known
  brand or for a brand the model has never seen, as a table, JSON or CSV.
* :mod:`camera_jax.explain.names` -- account ids as a user gives them: an unknown id, or a
  brand where an influencer is wanted (or the reverse), refused in one line.
* :mod:`camera_jax.explain.report` -- a static, self-contained HTML report
  (metrics, loss curves, case studies with charts and posts).

Everything here works on a :class:`camera_jax.run.Run` (or any object with the
attributes documented in ``docs/architecture.md``) and never reads absl flags;
the command-line entry points live in ``experiments/``.  See
``docs/interpretability.md`` for the commands and formulas.
"""
