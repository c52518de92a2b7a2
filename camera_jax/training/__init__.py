"""Training infrastructure for camera-jax.

Modules:

* :mod:`camera_jax.training.sharding` -- a 1-D device mesh on axis ``data``, padded and
  masked batches, placing batches (sharded) and state (replicated) on the mesh, and
  multi-process initialisation (``jax.distributed`` with gloo collectives on CPU).
* :mod:`camera_jax.training.checkpoint` -- :class:`~camera_jax.training.checkpoint.Checkpointer`,
  a thin wrapper over orbax's ``CheckpointManager`` that saves a train-state pytree
  (optax states, typed PRNG keys, batch statistics) plus a JSON ``meta`` dict atomically
  and restores them with a template's structure and shardings.
* ``concepts`` / ``ranker`` -- the trainers of the concept generator, COSMIC and the
  CAMERA ranker, built on the two modules above.

Nothing here reads command-line flags; the ``experiments/`` mains pass settings in.
"""
