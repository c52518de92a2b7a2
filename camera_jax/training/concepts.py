"""Trainers of the concept layer: the concept generator (paper IV-D) and COSMIC (paper III-B).

Both are image models trained on batches streamed from the TFDS data source
(``camera_jax.data.input_pipeline.ImageBatches``): decoding happens on the host (augmentation's
random shifts are drawn there too and applied inside the jitted step, ``augmentation.apply_shifts``);
the jitted step sees uint8 image batches (a quarter of float32's bytes; the encoder converts them
to [0, 1] on the device, ``models.visual.unit_pixels``) sharded over the ``data`` axis of a mesh
of all devices; the last partial batch is padded and masked.  One orbax checkpoint is written per epoch
(params, BatchNorm statistics, optimiser state, step); the data order of an epoch is a function of
(seed, epoch) only, so a resumed run replays exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from camera_jax.data import augmentation
from camera_jax.data import input_pipeline
from camera_jax.models import concept_generator as cg_lib
from camera_jax.models import cosmic as cosmic_lib
from camera_jax.training import compiler_options
from camera_jax.training import sharding
from camera_jax.training import trainer


@dataclasses.dataclass(frozen=True)
class ImageStageConfig:
  """Optimisation settings of one image stage."""

  epochs: int
  batch_size: int
  learning_rate: float
  lr_decay: float = 1.0
  l1: float = 0.0
  image_size: int = 64
  augment: bool = False
  seed: int = 0
  input_threads: int = 0   # ImageBatches decoding threads, batches prepared ahead; 0: in the loop


def create_image_state(model: Any, image_size: int, key: jax.Array, tx: Any) -> trainer.TrainState:
  """Initialises params and BatchNorm statistics of an image model (NHWC input)."""
  variables = model.init({"params": key, "dropout": key},
                         jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
  return trainer.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                   batch_stats=variables.get("batch_stats", {}))


def make_image_steps(loss_fn: Callable[[Any, dict[str, jax.Array]], jax.Array], l1: float):
  """Builds the jitted train step and the jitted predict step of an image stage.

  ``loss_fn(outputs, batch) -> scalar`` is the task loss (masked by ``batch['mask']``). A batch
  with ``shift`` (``ImageBatches(device_augment=True)``) is augmented in the step
  (:func:`camera_jax.data.augmentation.apply_shifts`: the host's pixels, the host's draws).

  The NaN guard skips a non-finite step with ``lax.cond`` (``guarded_update(skip="cond")``):
  selecting between the new and the old state recomputed Adam's arithmetic in three select
  fusions per parameter (the fully connected 3200 x 1024 kernel alone: 12 ms of a traced step;
  the COSMIC step at 64 px, batch 32 ran 105 against 118 ms), and the ranker's ``"fold"`` made
  it slower here (64.6 to 64.7 against 61.5 to 62.0 ms, 2 alternating rounds; benchmarks/README.md).
  """

  def train_step(state: trainer.TrainState, batch: dict[str, jax.Array], key: jax.Array):
    dropout_key = jax.random.fold_in(key, state.step)

    images = batch["image"]
    if "shift" in batch:
      images = augmentation.apply_shifts(images, batch["shift"])

    def objective(params):
      outputs, mutated = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True,
          mask=batch["mask"], mutable=["batch_stats"], rngs={"dropout": dropout_key})
      task = loss_fn(outputs, batch)
      total = task + l1 * trainer.l1_penalty(params) if l1 else task
      return total, (task, mutated)

    (_, (task, mutated)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    new_state, bad = trainer.guarded_update(state, grads, task, skip="cond",
                                            batch_stats=mutated["batch_stats"])
    rows = jnp.sum(batch["mask"].astype(jnp.float32))
    return new_state, {"loss": task * rows, "rows": rows, "nonfinite": bad}

  def predict(state: trainer.TrainState, images: jax.Array):
    return state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images,
                          train=False)

  options = compiler_options.image_step_options()
  return (jax.jit(train_step, donate_argnums=0, compiler_options=options),
          jax.jit(predict, compiler_options=options))


def process_part(width: int) -> tuple[int, int, int] | None:
  """``ImageBatches(part=...)`` of this process: in a multi-process run each process reads and
  decodes only its slice of every global batch padded to ``width``; None in a single process
  (its batch is the whole batch)."""
  if jax.process_count() == 1:
    return None
  return width, jax.process_index(), jax.process_count()


def fit_image_model(*, stage: str, model: Any, source: Any, indices: np.ndarray,
                    targets: dict[str, np.ndarray],
                    loss_fn: Callable[[Any, dict[str, jax.Array]], jax.Array],
                    cfg: ImageStageConfig, ckpt_dir: pathlib.Path | None, log: trainer.TrainLog,
                    mesh: jax.sharding.Mesh) -> trainer.TrainState:
  """Trains an image model for ``cfg.epochs`` epochs over the data-source ``indices``.

  ``targets`` maps batch keys to host arrays indexed by the record's ``row``; each batch gets
  ``targets[k][row]``.  Resumes from the latest checkpoint in ``ckpt_dir`` when there is one.
  """
  # Each step trains on cfg.batch_size images whatever the device count; the rows are padded
  # to a multiple of it (masked, out of BatchNorm's statistics too).
  batch_size = cfg.batch_size
  width = sharding.round_up(batch_size, mesh.devices.size)
  steps_per_epoch = max(1, -(-len(indices) // batch_size))
  tx = trainer.make_optimizer(cfg.learning_rate, cfg.lr_decay, steps_per_epoch)
  key = jax.random.PRNGKey(cfg.seed)
  init_key, step_key = jax.random.split(key)
  state = create_image_state(model, cfg.image_size, init_key, tx)
  checkpointer, state, start_epoch = trainer.resume(stage, state, ckpt_dir, log, mesh.devices.size,
                                                     cfg.epochs)
  state = sharding.replicate(state, mesh)
  step_key = sharding.replicate(step_key, mesh)
  train_step, _ = make_image_steps(loss_fn, cfg.l1)
  lr_fn = trainer.learning_rate_schedule(cfg.learning_rate, cfg.lr_decay, steps_per_epoch)

  part = process_part(width)
  for epoch in range(start_epoch, cfg.epochs):
    batches = input_pipeline.ImageBatches(
        source, batch_size, cfg.image_size, shuffle=True, seed=cfg.seed, epoch=epoch,
        augment=cfg.augment, device_augment=True, indices=indices, num_threads=cfg.input_threads,
        prefetch=cfg.input_threads > 0, dtype=np.uint8,  # the encoder converts on the device
        part=part)
    batches.decoded()   # a decoded file's one decoding pass (logged) stays off the epoch's clock
    t0 = time.perf_counter()
    acc = None
    for batch in batches:
      host = {k: batch[k] for k in ("image", "mask", "shift") if k in batch}
      rows = np.where(batch["mask"], batch["row"], 0)
      for name, table in targets.items():
        host[name] = table[rows]
      if part is None:
        if width > batch_size:
          host, _ = sharding.pad_batch(host, width)
        host = sharding.process_local(host)
      state, metrics = train_step(state, sharding.shard_batch(host, mesh), step_key)
      acc = trainer.add_metrics(acc, metrics)
    sums = trainer.host_sums(acc)
    trainer.check_finite(stage, epoch + 1, sums, checkpointer)
    seconds = time.perf_counter() - t0
    loss = sums.get("loss", 0.0) / max(sums.get("rows", 1.0), 1.0)
    images_per_s = sums.get("rows", 0.0) / max(seconds, 1e-9)
    lr = float(lr_fn(steps_per_epoch * epoch))
    logging.info("%s epoch %d/%d: loss %.4f, lr %.2e, %.0f images/s", stage, epoch + 1,
                 cfg.epochs, loss, lr, images_per_s)
    log.write(stage=stage, epoch=epoch + 1, loss=loss, lr=lr, images_per_s=images_per_s,
              seconds=seconds, devices=mesh.devices.size)
    if checkpointer is not None:
      checkpointer.save(epoch + 1, jax.device_get(state), {"epoch": epoch + 1, "loss": loss,
                                                          "devices": mesh.devices.size})
  if checkpointer is not None:
    checkpointer.wait()
  return state


def predict_all(*, model_outputs: Callable[[Any], np.ndarray], state: trainer.TrainState,
                source: Any, indices: np.ndarray | None, n_rows: int, width: int,
                batch_size: int, image_size: int, mesh: jax.sharding.Mesh,
                dtype: Any = np.float32, input_threads: int = 0) -> np.ndarray:
  """Runs the model over the given data-source records; returns outputs [n_rows, width] by row.

  ``model_outputs(outputs) -> array [B, width]`` picks what to keep from the model's outputs;
  ``input_threads`` as :class:`ImageStageConfig`'s. Several processes: each reads and decodes
  only its slice of every global batch (``ImageBatches(part=...)``), as in training; the
  outputs, rows and mask are gathered, so every process returns the whole array.
  """
  _, predict = make_image_steps(lambda o, b: jnp.zeros(()), 0.0)
  batch_size = sharding.round_up(batch_size, mesh.devices.size)
  part = process_part(batch_size)
  out = np.zeros((n_rows, width), dtype)
  for batch in input_pipeline.ImageBatches(source, batch_size, image_size, shuffle=False,
                                            seed=0, epoch=0, augment=False, indices=indices,
                                            num_threads=input_threads, prefetch=input_threads > 0,
                                            dtype=np.uint8, part=part):
    dev = sharding.shard_batch({k: batch[k] for k in ("image", "row", "mask")}, mesh)
    values, rows, keep = sharding.to_host(
        (model_outputs(predict(state, dev["image"])), dev["row"], dev["mask"]))
    out[rows[keep]] = values[keep]
  return out


# --------------------------------------------------------------------------- concept generator


def multi_hot(concept_lists: Sequence[Sequence[str]], vocabulary: dict[str, int]) -> np.ndarray:
  """[N, n] bool multi-hot matrix of concept-name lists."""
  out = np.zeros((len(concept_lists), len(vocabulary)), bool)
  for i, names in enumerate(concept_lists):
    for name in names or ():
      out[i, vocabulary[name]] = True
  return out


def train_concept_generator(*, labeled_source: Any, labels: np.ndarray, posts_source: Any,
                            n_posts: int, cfg: ImageStageConfig, model_kwargs: dict[str, Any],
                            held_out: float, threshold: float, min_k: int, max_k: int,
                            ckpt_dir: pathlib.Path | None, log: trainer.TrainLog,
                            mesh: jax.sharding.Mesh) -> tuple[np.ndarray, dict[str, float]]:
  """Trains the multi-label concept generator on the labeled posts; labels every post.

  Returns (h [n_posts, n] bool, held-out metrics incl. the frequency baseline's micro-F1).
  """
  n = labels.shape[1]
  model = cg_lib.ConceptGenerator(num_concepts=n, **model_kwargs)
  train_idx, test_idx = input_pipeline.split_indices(len(labeled_source), held_out, cfg.seed)
  state = fit_image_model(
      stage="concept_generator", model=model, source=labeled_source, indices=train_idx,
      targets={"target": labels.astype(np.float32)},
      loss_fn=lambda logits, b: cg_lib.multilabel_bce(logits, b["target"], b["mask"]),
      cfg=cfg, ckpt_dir=ckpt_dir, log=log, mesh=mesh)
  # Held-out evaluation.
  logits = predict_all(model_outputs=lambda o: o, state=state, source=labeled_source,
                       indices=test_idx, n_rows=labels.shape[0], width=n,
                       batch_size=cfg.batch_size, image_size=cfg.image_size, mesh=mesh,
                       input_threads=cfg.input_threads)
  rows_of = input_pipeline.rows_of(labeled_source)
  test_rows = np.sort(rows_of[test_idx])
  train_rows = np.sort(rows_of[train_idx])
  metrics = evaluate_concept_predictions(logits[test_rows], labels[test_rows], labels[train_rows],
                                         threshold=threshold, min_k=min_k, max_k=max_k)
  logging.info("concept generator held-out: %s", metrics)
  # Label every post of the brand-influencer data.
  post_logits = predict_all(model_outputs=lambda o: o, state=state, source=posts_source,
                            indices=None, n_rows=n_posts, width=n, batch_size=cfg.batch_size,
                            image_size=cfg.image_size, mesh=mesh,
                            input_threads=cfg.input_threads)
  h = np.asarray(cg_lib.predict_multi_hot(post_logits, threshold=threshold, min_k=min_k,
                                          max_k=max_k))
  return h, metrics


def evaluate_concept_predictions(logits: np.ndarray, target: np.ndarray, train_target: np.ndarray,
                                 *, threshold: float, min_k: int, max_k: int,
                                 k: int = 5) -> dict[str, float]:
  """Micro/macro F1 and precision@k of the generator, next to the frequency baseline.

  The frequency baseline predicts, for every post, the ``m`` concepts most frequent in the
  training labels, ``m`` = the mean number of concepts per training post (rounded).
  """
  if target.shape[0] == 0:  # --cg_held_out=0: nothing held out, the metrics are undefined (null)
    nan = float("nan")
    return {"micro_f1": nan, "macro_f1": nan, f"precision@{k}": nan,
            "frequency_baseline_micro_f1": nan, f"frequency_baseline_precision@{k}": nan,
            "n_held_out": 0}
  pred = np.asarray(cg_lib.predict_multi_hot(logits, threshold=threshold, min_k=min_k, max_k=max_k))
  ours = cg_lib.multilabel_metrics(pred, target)
  freq = train_target.mean(0)
  m = max(1, int(round(train_target.sum(1).mean())))
  base = np.zeros_like(target, bool)
  base[:, np.argsort(-freq, kind="stable")[:m]] = True
  baseline = cg_lib.multilabel_metrics(base, target)
  return {
      "micro_f1": float(ours["micro_f1"]),
      "macro_f1": float(ours["macro_f1"]),
      f"precision@{k}": float(cg_lib.precision_at_k(logits, target, k)),
      "frequency_baseline_micro_f1": float(baseline["micro_f1"]),
      f"frequency_baseline_precision@{k}": float(cg_lib.precision_at_k(
          np.broadcast_to(freq, target.shape), target, k)),
      "n_held_out": int(target.shape[0]),
  }


# --------------------------------------------------------------------------- COSMIC


def semantic_distributions(t: np.ndarray, has_text: np.ndarray, l: np.ndarray, h: np.ndarray, *,
                           mode: str, semantic: bool, chunk: int = 8192) -> np.ndarray:
  """z' of every post (the semantic attention after eq. 2), computed in chunks: [P, n] float32."""
  fn = jax.jit(lambda t_, ht, h_: cosmic_lib.semantic_distribution(
      t_, l, h_, ht, mode=mode, semantic=semantic))
  out = np.zeros(h.shape, np.float32)
  for s in range(0, h.shape[0], chunk):
    e = min(s + chunk, h.shape[0])
    pad = chunk - (e - s)
    tt = np.pad(t[s:e], ((0, pad), (0, 0)))
    hh = np.pad(h[s:e].astype(np.float32), ((0, pad), (0, 0)))
    ht = np.pad(has_text[s:e], (0, pad))
    out[s:e] = np.asarray(fn(tt, ht, hh))[: e - s]
  return out


def train_cosmic(*, posts_source: Any, z_prime: np.ndarray, cfg: ImageStageConfig,
                 model_kwargs: dict[str, Any], held_out: float, ckpt_dir: pathlib.Path | None,
                 log: trainer.TrainLog, mesh: jax.sharding.Mesh) -> tuple[np.ndarray, dict[str, float]]:
  """Trains COSMIC (eq. 2-4) so that the visual z matches the semantic z'; returns U_C and metrics.

  U_C is exported standardised per dimension (the authors' choice) from the trained
  ``concept_matrix`` parameter, never from optimiser slots (the authors' extraction bug).
  Metrics: on held-out posts, how often the top-5 concepts by z agree with the top-5 by z'
  (overlap / 5, with k = min(5, |support of z'|)), next to chance (k / n).
  """
  n = z_prime.shape[1]
  model = cosmic_lib.COSMIC(num_concepts=n, **model_kwargs)
  valid = (z_prime.sum(1) > 0).astype(np.float32)
  train_idx, test_idx = input_pipeline.split_indices(len(posts_source), held_out, cfg.seed)
  state = fit_image_model(
      stage="cosmic", model=model, source=posts_source, indices=train_idx,
      targets={"z_prime": z_prime, "valid": valid},
      loss_fn=lambda out, b: cosmic_lib.cosmic_loss(
          out["logits"], b["z_prime"], jnp.logical_and(b["mask"], b["valid"] > 0)),
      cfg=cfg, ckpt_dir=ckpt_dir, log=log, mesh=mesh)
  u_c = np.asarray(cosmic_lib.export_concept_matrix(jax.device_get(state.params)))
  logits = predict_all(model_outputs=lambda o: o["logits"], state=state, source=posts_source,
                       indices=test_idx, n_rows=z_prime.shape[0], width=n,
                       batch_size=cfg.batch_size, image_size=cfg.image_size, mesh=mesh,
                       input_threads=cfg.input_threads)
  rows = np.sort(input_pipeline.rows_of(posts_source)[test_idx])
  metrics = topk_agreement(logits[rows], z_prime[rows], k=5)
  logging.info("COSMIC held-out: %s", metrics)
  return u_c, metrics


def topk_agreement(z_logits: np.ndarray, z_prime: np.ndarray, k: int = 5,
                   seed: int = 0) -> dict[str, float]:
  """Mean overlap of the top-k concepts by z and by z' (k_i = min(k, support of z'_i)).

  Reported with the same statistic for random scores (chance). A vocabulary of fewer than k
  concepts uses them all (k_i <= the support anyway).
  """
  k = min(k, z_prime.shape[1])
  support = (z_prime > 0).sum(1)
  keep = support > 0
  z_logits, z_prime, support = z_logits[keep], z_prime[keep], support[keep]
  if len(z_prime) == 0:
    return {"top5_agreement": float("nan"), "top5_chance": float("nan"), "n_held_out": 0}
  ki = np.minimum(k, support)

  def overlap(scores: np.ndarray) -> float:
    top_a = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_b = np.argsort(-z_prime, axis=1, kind="stable")[:, :k]
    ranks = np.arange(k)[None, :]
    a = np.where(ranks < ki[:, None], top_a, -1)
    b = np.where(ranks < ki[:, None], top_b, -2)
    hits = (a[:, :, None] == b[:, None, :]).any(2).sum(1)
    return float(np.mean(hits / ki))

  rng = np.random.default_rng(seed)
  return {"top5_agreement": overlap(z_logits),
          "top5_chance": overlap(rng.random(z_logits.shape)),
          "n_held_out": int(len(z_prime))}


def account_distributions(z_prime: np.ndarray, post_account: np.ndarray, n_accounts: int) -> np.ndarray:
  """Sum of z' over each account's posts, [A, n] (the input of eq. 5)."""
  order = np.argsort(post_account, kind="stable")
  sorted_acc = post_account[order]
  sums = np.zeros((n_accounts, z_prime.shape[1]), np.float64)
  if len(order):
    starts = np.flatnonzero(np.r_[True, sorted_acc[1:] != sorted_acc[:-1]])
    sums[sorted_acc[starts]] = np.add.reduceat(z_prime[order].astype(np.float64), starts, axis=0)
  return sums.astype(np.float32)
