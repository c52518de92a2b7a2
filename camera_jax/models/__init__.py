"""Flax models and the paper's equations as pure functions.

* :mod:`camera_jax.models.visual` -- ``VisualEncoder``, the 5-layer CNN giving v1 (III-B).
* :mod:`camera_jax.models.concept_generator` -- ``ConceptGenerator``, the multi-label post
  classifier producing the multi-hot h (IV-D), its BCE loss, multi-hot rule and metrics.
* :mod:`camera_jax.models.cosmic` -- ``COSMIC`` (eq. 2-4), the semantic distribution z' (after eq. 2),
  the loss (eq. 4) and the standardised export of the concept matrix U_C.
* :mod:`camera_jax.models.camera` -- eq. 5-18: historical distribution and top-10 concepts,
  the bi-directional concept attention, fusion, S_ed, S_in, S_con and the ranking score, and
  the ``CAMERA`` module.

Submodules are imported explicitly (``from camera_jax.models import camera``); this package
imports nothing on its own.
"""
