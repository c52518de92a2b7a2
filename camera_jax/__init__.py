"""camera-jax: CAMERA (concept-based micro-influencer ranking, IEEE TMM 2022) in JAX/Flax.

Subpackages: ``camera_jax.data`` (dataset format, text, engagement, input pipeline),
``camera_jax.models``, ``camera_jax.training`` and ``camera_jax.explain``. See
``docs/architecture.md`` for the module contracts.
"""

__version__ = "0.1.0"
