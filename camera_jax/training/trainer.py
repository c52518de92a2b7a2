"""Pieces shared by every trainer: train state, optimiser, L1 term, NaN guard, epoch logs.

Each stage (concept generator, COSMIC, ranker) is trained by a pure, jitted ``train_step`` of
the form ``state, metrics = train_step(state, batch, key)`` where ``metrics`` is a dict of
on-device *sums* (loss x rows, rows, non-finite steps).  Sums are accumulated on device and read
once per epoch, so the training loop never syncs with the host between logging intervals.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Literal, Mapping

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from camera_jax import atomic
from camera_jax import strict_json


class TrainState(train_state.TrainState):
  """A flax TrainState that also carries BatchNorm statistics (empty dict when unused)."""

  batch_stats: Any = flax.struct.field(default_factory=dict)


class NonFiniteError(RuntimeError):
  """Raised when a loss or gradient became NaN or inf; the last good checkpoint is kept.

  ``stage``: the training stage that stopped ("concept_generator", "cosmic", "ranker", ...).
  """

  def __init__(self, message: str, stage: str | None = None):
    super().__init__(message)
    self.stage = stage


def make_optimizer(learning_rate: float, decay_rate: float, steps_per_epoch: int,
                   lr_scales: Mapping[str, float] | None = None) -> GuardedTransformation:
  """Adam with an exponential per-epoch (staircase) learning-rate decay, as in paper IV-B.

  The paper: lr 0.001 decayed by 0.95 every epoch.  ``steps_per_epoch`` turns the per-epoch
  decay into optax's step-based schedule.  ``lr_scales`` optionally multiplies the learning rate
  of whole top-level parameter subtrees (``{"psi": 0.1}``: psi's parameters get 0.1 x the
  schedule); the others keep the schedule. Without scales other than 1 the optimizer computes
  ``optax.adam`` (:func:`adam`: the same state and the same arithmetic, plus the NaN guard's
  ``ok`` argument).
  """
  scales = {k: float(v) for k, v in (lr_scales or {}).items() if float(v) != 1.0}
  if not scales:
    return adam(learning_rate_schedule(learning_rate, decay_rate, steps_per_epoch))
  groups = sorted(set(scales.values()) | {1.0})
  txs = {f"x{v!r}": adam(learning_rate_schedule(learning_rate * v, decay_rate,
                                                steps_per_epoch)) for v in groups}

  def labels(params):
    return {k: jax.tree.map(lambda _, k=k: f"x{scales.get(k, 1.0)!r}", sub)
            for k, sub in params.items()}

  tx = optax.multi_transform(txs, labels)   # passes ``ok`` on to every group's adam
  return GuardedTransformation(tx.init, tx.update)


class GuardedTransformation(optax.GradientTransformationExtraArgs):
  """An optax transformation whose ``update(grads, state, params, ok=flag)`` leaves the state
  unchanged and returns zero updates where the traced bool ``flag`` is False.

  What :func:`guarded_update`'s default ``skip="fold"`` needs: the guard's selects then sit in
  the optimiser's own element-wise passes (:func:`adam`), with no ``lax.cond`` around the
  update and no second pass over the new state.
  """


def adam(learning_rate: optax.Schedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8) -> GuardedTransformation:
  """``optax.adam(learning_rate)``, with the NaN guard folded in: ``update(..., ok=flag)``.

  The state is optax.adam's (``(ScaleByAdamState, ScaleByScheduleState)``: checkpoints of
  either restore into the other) and, with ``ok`` True, the arithmetic is optax's, operation
  for operation (optax's own moment and bias-correction functions; tested bit for bit). With
  ``ok`` False the moments and both counts keep their values and the updates are 0, so
  ``optax.apply_updates`` returns the parameters (a -0.0 becomes +0.0). ``ok`` is selected per
  element inside each pass, where a NaN gradient's moments are computed and dropped.

  >>> tx = adam(lambda count: 0.1)
  >>> state = tx.init({"w": jnp.zeros(2)})
  >>> u, new = tx.update({"w": jnp.array([1.0, -2.0])}, state, ok=jnp.array(False))
  >>> u["w"].tolist(), int(new[0].count), int(new[1].count)
  ([0.0, 0.0], 0, 0)
  >>> u, new = tx.update({"w": jnp.array([1.0, -2.0])}, state, ok=jnp.array(True))
  >>> [round(x, 4) for x in u["w"].tolist()], int(new[0].count), int(new[1].count)
  ([-0.1, 0.1], 1, 1)
  """
  # optax's own transformations give the initial states (optax.adam's chain of the two)
  adam_init = optax.scale_by_adam(b1, b2, eps).init
  schedule_init = optax.scale_by_learning_rate(learning_rate).init

  def adam_update(updates, state, params=None, *, ok=True, **_):
    del params
    keep = lambda new, old: jnp.where(ok, new, old)
    mu = jax.tree.map(keep, optax.tree.update_moment(updates, state.mu, b1, 1), state.mu)
    nu = jax.tree.map(keep, optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2),
                      state.nu)
    count_inc = optax.safe_increment(state.count)
    mu_hat = optax.tree.bias_correction(mu, b1, count_inc)
    nu_hat = optax.tree.bias_correction(nu, b2, count_inc)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + 0.0) + eps), mu_hat, nu_hat)
    return updates, optax.ScaleByAdamState(count=keep(count_inc, state.count), mu=mu, nu=nu)

  def schedule_update(updates, state, params=None, *, ok=True, **_):
    del params
    step_size = -1 * learning_rate(state.count)
    updates = jax.tree.map(
        lambda g: jnp.where(ok, jnp.array(step_size, dtype=g.dtype) * g, jnp.zeros_like(g)),
        updates)
    count = jnp.where(ok, optax.safe_increment(state.count), state.count)
    return updates, optax.ScaleByScheduleState(count=count)

  tx = optax.chain(optax.GradientTransformationExtraArgs(adam_init, adam_update),
                   optax.GradientTransformationExtraArgs(schedule_init, schedule_update))
  return GuardedTransformation(tx.init, tx.update)


def learning_rate_schedule(learning_rate: float, decay_rate: float, steps_per_epoch: int) -> optax.Schedule:
  """lr(step) = learning_rate * decay_rate ** floor(step / steps_per_epoch)."""
  return optax.exponential_decay(
      init_value=learning_rate, transition_steps=max(1, int(steps_per_epoch)),
      decay_rate=decay_rate, staircase=True)


def l1_penalty(params: Any) -> jax.Array:
  """Sum of |w| over every weight matrix: the leaves with 2 or more axes (dense and convolution
  kernels, the concept matrix U_C, COSMIC's embedding W_v, the phi score MLPs' W_1 and W_2).

  The paper "tuned the L1 regularization with the regularization rate of 0.001"; the authors'
  code applies it to weight matrices only, not to biases or BatchNorm scales (1 axis).

  >>> float(l1_penalty({"dense": {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([5.0])},
  ...                   "phi": {"w1": jnp.array([[-3.0]]), "b1": jnp.array([7.0])}}))
  6.0
  """
  total = jnp.zeros((), jnp.float32)
  for leaf in jax.tree_util.tree_leaves(params):
    if jnp.ndim(leaf) >= 2:
      total = total + jnp.sum(jnp.abs(leaf))
  return total


def all_finite(tree: Any) -> jax.Array:
  """True when every leaf of ``tree`` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def guarded_update(state: TrainState, grads: Any, loss: jax.Array, *,
                   skip: Literal["fold", "cond", "select"] = "fold", check_grads: bool = True,
                   **updates: Any) -> tuple[TrainState, jax.Array]:
  """Applies ``grads`` only when the loss (and with ``check_grads``, every gradient) is finite.

  big_vision's NaN guard. Returns the new state and a 0/1 flag counting a skipped
  (non-finite) step. The training loop reads the flag's epoch sum and stops the run with
  ``NonFiniteError`` before checkpointing.

  ``skip`` says how a skipped step keeps the old state. All three keep it exactly (``"fold"``
  may turn a -0.0 parameter into +0.0); an applied step may round differently in the last bit,
  as the programs fuse differently:

  * ``"fold"`` (the default) passes the flag into the optimiser (``tx.update(..., ok=flag)``,
    a :class:`GuardedTransformation` such as :func:`make_optimizer`'s), which selects per
    element inside its own passes. No ``lax.cond`` and no extra pass: XLA schedules each
    parameter's update as soon as its gradient exists. The ranker's step at batch 8 ran 6.0
    to 6.4 ms against 6.5 to 7.3 ms with ``"cond"`` (benchmarks/README.md).
  * ``"cond"`` skips with ``lax.cond``, for any optax transformation.
  * ``"select"`` computes the update and selects between the new and the old state: a select
    keeps both states alive, so XLA copies every donated buffer each step (measured in
    benchmarks/: the ranker's step at batch 8 spent more time in those copies than in its
    matmuls).

  ``check_grads=False`` checks the loss only and leaves the gradients to the end of the epoch:
  Adam turns a NaN or inf gradient into a NaN parameter (its moments, then its update, are
  NaN), so the loop's per-epoch :func:`check_finite` with ``params`` stops the stage before that
  epoch is checkpointed, exactly as a skipped step would have. That holds for the optimisers
  of :func:`make_optimizer` (Adam, no clipping; a transform that zeroes NaNs, such as
  ``optax.zero_nans``, would break it). It saves a pass over every gradient per step (the
  ranker at batch 8: 7.25-7.33 -> 6.45-6.65 ms a step with bfloat16 matmuls, on the 2-core
  CPU; benchmarks/README.md).
  """
  ok = jnp.isfinite(loss)
  if check_grads:
    ok = jnp.logical_and(ok, all_finite(grads))
  if skip == "fold":
    if not isinstance(state.tx, GuardedTransformation):
      raise TypeError("guarded_update(skip='fold') needs an optimiser whose update takes ok= "
                      "(trainer.make_optimizer, trainer.adam); use skip='cond' for "
                      f"{type(state.tx).__name__}")
    opt_updates, opt_state = state.tx.update(grads, state.opt_state, state.params, ok=ok)
    keep = lambda new, old: jnp.where(ok, new, old)
    new_state = state.replace(
        step=keep(state.step + 1, state.step), params=optax.apply_updates(state.params, opt_updates),
        opt_state=opt_state,
        **{k: jax.tree.map(keep, v, getattr(state, k)) for k, v in updates.items()})
  elif skip == "cond":
    new_state = jax.lax.cond(ok, lambda s, g, u: s.apply_gradients(grads=g, **u),
                             lambda s, g, u: s, state, grads, updates)
  elif skip == "select":
    new_state = state.apply_gradients(grads=grads, **updates)
    new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(ok, new, old), new_state, state)
  else:
    raise ValueError(f"unknown skip {skip!r}: 'fold', 'cond' or 'select'")
  return new_state, jnp.logical_not(ok).astype(jnp.int32)


def add_metrics(acc: dict[str, jax.Array] | None, new: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """On-device accumulation of metric sums."""
  if acc is None:
    return new
  return jax.tree_util.tree_map(jnp.add, acc, new)


_all_finite_jit = jax.jit(all_finite)


def check_finite(stage: str, epoch: int, sums: dict[str, float], checkpointer: Any = None,
                 params: Any = None) -> None:
  """Raises NonFiniteError with a clear message when any step of the epoch was non-finite.

  ``params`` (the state's parameters at the end of the epoch; for a train step whose guard
  leaves the gradients unchecked, see :func:`guarded_update`) are checked too: one jitted
  reduction per epoch. ``checkpointer`` (the stage's ``Checkpointer``, saving asynchronously)
  is waited for first, so the last good epoch's checkpoint is complete on disk when the error
  leaves the trainer.
  """
  bad = int(sums.get("nonfinite", 0))
  unlisted = int(sums.get("unlisted_brands", 0))
  bad_params = params is not None and not bool(_all_finite_jit(params))
  if bad or bad_params:
    if checkpointer is not None:
      checkpointer.wait()
    what = (f"{bad} step(s) of epoch {epoch} had a NaN or inf loss or gradient" if bad else
            f"the parameters became NaN or inf in epoch {epoch} (a NaN or inf gradient)")
    advice = "Lower the learning rate or check the inputs."
    if unlisted:
      what = (f"{bad} step(s) of epoch {epoch} were skipped: {unlisted} triplet(s) had a brand "
              "missing from the step's brand table")
      advice = "Pass every training brand to make_train_step(brands=...)."
    raise NonFiniteError(
        f"{stage}: {what}; stopping (the last good checkpoint is kept). {advice}", stage=stage)


@dataclasses.dataclass
class TrainLog:
  """Appends one JSON object per line to ``workdir/train_log.jsonl`` (only on process 0)."""

  path: pathlib.Path | None
  enabled: bool = True

  def write(self, **record: Any) -> None:
    if self.path is None or not self.enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(strict_json.dumps(record, sort_keys=True) + "\n")

  def truncate_stage(self, stage: str, after_epoch: int) -> None:
    """Drops the stage's records for epochs > after_epoch (a resumed run rewrites them).

    A line that is not a JSON object (the torn last line of a run killed while appending) is
    dropped too. The file is replaced atomically.
    """
    if self.path is None or not self.enabled or not self.path.exists():
      return
    keep = []
    for line in self.path.read_text(encoding="utf-8").splitlines():
      try:
        rec = json.loads(line)
      except ValueError:
        continue
      if not isinstance(rec, dict):
        continue
      if rec.get("stage") == stage and int(rec.get("epoch", 0)) > after_epoch:
        continue
      keep.append(line)
    atomic.write_bytes(self.path, "".join(l + "\n" for l in keep).encode("utf-8"))


def resume(stage: str, state: TrainState, ckpt_dir, log: "TrainLog", devices: int | None = None,
           epochs: int | None = None):
  """Restores the latest checkpoint of a stage, if any: returns (checkpointer, state, start epoch).

  The stage's train-log records after the restored epoch are dropped (the resumed run rewrites
  them).  ``ckpt_dir=None`` trains without checkpoints. ``devices``: the mesh size this run
  trains on; a checkpoint saved on another count (its meta's ``devices``) is resumed with a
  warning when epochs are left to train (before ``epochs``, the stage's count, if given), since
  the result then matches neither device count's uninterrupted run; a finished stage trains no
  step, so its parameters are its own device count's.
  """
  from absl import logging
  from camera_jax.training import checkpoint as ckpt_lib
  start_epoch = 0
  checkpointer = ckpt_lib.Checkpointer(ckpt_dir) if ckpt_dir is not None else None
  if checkpointer is not None and checkpointer.latest_step() is not None:
    state, meta = checkpointer.restore(target=state)
    start_epoch = int(meta["epoch"])
    logging.info("%s: resumed from epoch %d", stage, start_epoch)
    saved = meta.get("devices")
    left = epochs is None or start_epoch < epochs
    if devices is not None and saved is not None and int(saved) != devices and left:
      logging.warning("%s: epoch %d was trained on %d devices, this run has %d: the result will "
                      "not be byte-identical to an uninterrupted run on either count "
                      "(docs/workdir.md)", stage, start_epoch, int(saved), devices)
  log.truncate_stage(stage, start_epoch)
  return checkpointer, state, start_epoch


def host_sums(acc: dict[str, jax.Array] | None) -> dict[str, float]:
  """Fetches accumulated on-device sums (one host sync per epoch)."""
  if acc is None:
    return {}
  return {k: float(v) for k, v in jax.device_get(acc).items()}


StepFn = Callable[..., tuple[TrainState, dict[str, jax.Array]]]
