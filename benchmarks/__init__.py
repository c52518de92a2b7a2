"""Benchmarks of camera-jax: ``python benchmarks/run.py [--quick] [--out=FILE.json]`` (see README.md)."""
