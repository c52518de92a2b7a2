"""Data layer: dataset format v1 (``format``), its validator (``validate``; the command is
``experiments/validate.py``), the synthetic
generator, the TFDS builder and input pipeline, text embeddings and engagement features.

Import the submodules directly (``from camera_jax.data import format``); this package imports
nothing heavy on its own.
"""
