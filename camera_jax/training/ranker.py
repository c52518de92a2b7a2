"""Trainer and scorer of the CAMERA ranking model (paper III-C, III-D, eq. 5-19).

Every account is reduced, before training, to fixed arrays indexed by account row (its top-K
concepts and their w_a weights, its scaled engagement and follower features).  These tables are
replicated on every device; a training batch is only integer rows (brand, positive influencer,
sampled negatives) plus a validity mask, sharded over the ``data`` axis.  The jitted step gathers
what it needs from the tables, so nothing is recompiled per step and the host sends a few bytes
per triplet.

Leak-free features: the endorsement input E(p~) (eq. 11) exists only for pairs that cooperated.
By default (``endorsement="mean"``) every pair, positive or negative, training or test, gets the
same label-free estimate: the influencer's mean engagement rate E(m).  ``endorsement="observed"``
is the paper's form for training only (observed E(p~) for positives, S_ed = 0 for negatives);
evaluation always uses the label-free estimate.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from camera_jax import losses as losses_lib
from camera_jax.models import camera as camera_lib
from camera_jax.training import checkpoint as ckpt_lib
from camera_jax.training import sharding
from camera_jax.training import trainer


@dataclasses.dataclass(frozen=True)
class RankerConfig:
  """Settings of the ranking stage (see camera_jax.config.Config for their meaning)."""

  epochs: int = 40
  batch_size: int = 8
  learning_rate: float = 1e-3
  lr_decay: float = 0.95
  dropout: float = 0.6
  init_scale: float = 0.1
  l1: float = 1e-3
  psi_features: tuple[int, ...] = (1024, 512)
  gamma_features: tuple[int, ...] = (1024, 1024, 512)
  d_score: int = 64
  attention_scale: str = "inner"
  use_interaction: bool = True
  num_negatives: int = 1
  loss: str = "triplet"
  loss_hparams: tuple[tuple[str, float], ...] = (("margin", 7.0),)
  endorsement: str = "mean"
  eval_chunk: int = 8192
  seed: int = 0


@dataclasses.dataclass
class Tables:
  """Per-account inputs of the ranker, indexed by account row (numpy on the host)."""

  top_idx: np.ndarray        # [A, K] int32 top-K concepts of w_a
  top_w: np.ndarray          # [A, K] float32 their w_a weights
  engagement: np.ndarray     # [A] scaled mean engagement rate E(a)
  followers: np.ndarray      # [A] scaled follower count
  concepts: np.ndarray       # [n, d_u] standardised U_C

  def device(self, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    return sharding.replicate({k: jnp.asarray(v) for k, v in dataclasses.asdict(self).items()}, mesh)


def make_model(cfg: RankerConfig) -> camera_lib.CAMERA:
  """The CAMERA module with the configured sizes."""
  return camera_lib.CAMERA(
      d_hidden=tuple(cfg.psi_features), gamma=tuple(cfg.gamma_features), d_score=cfg.d_score,
      dropout=cfg.dropout, init_scale=cfg.init_scale, attention_scale=cfg.attention_scale,
      use_interaction=cfg.use_interaction)


def pair_inputs(tables: dict[str, jax.Array], brand: jax.Array, influencer: jax.Array,
                ed_post: jax.Array | None = None) -> dict[str, jax.Array]:
  """Gathers the model inputs of (brand, influencer) pairs from the account tables.

  ``ed_post`` defaults to the leak-free estimate of E(p~): the influencer's mean engagement.
  """
  eng_inf = tables["engagement"][influencer]
  return {
      "brand_idx": tables["top_idx"][brand], "brand_w": tables["top_w"][brand],
      "inf_idx": tables["top_idx"][influencer], "inf_w": tables["top_w"][influencer],
      "ed_post": eng_inf if ed_post is None else ed_post,
      "ed_brand": tables["engagement"][brand],
      "followers": tables["followers"][influencer],
      "eng_inf": eng_inf,
  }


def init_params(cfg: RankerConfig, tables: Tables, key: jax.Array) -> Any:
  """Initialises the ranker's parameters (uniform(-init_scale, init_scale), paper IV-B)."""
  model = make_model(cfg)
  dev = {k: jnp.asarray(v) for k, v in dataclasses.asdict(tables).items()}
  dummy = pair_inputs(dev, jnp.zeros((2,), jnp.int32), jnp.zeros((2,), jnp.int32))
  return model.init({"params": key, "dropout": key}, dummy, dev["concepts"], deterministic=True)["params"]


def make_train_step(cfg: RankerConfig):
  """The jitted, donated train step: ``state, metrics = step(state, batch, tables, key)``.

  ``batch``: brand [B], pos [B], neg [B, N] int32 account rows, mask [B] bool, ed_obs [B] (the
  observed endorsement engagement of the positive pair; used only with endorsement="observed").
  """
  model = make_model(cfg)
  loss_fn = losses_lib.get_loss(cfg.loss, **dict(cfg.loss_hparams))
  observed = cfg.endorsement == "observed"

  def train_step(state: trainer.TrainState, batch: dict[str, jax.Array],
                 tables: dict[str, jax.Array], key: jax.Array):
    b, n_neg = batch["neg"].shape
    dropout_key = jax.random.fold_in(key, state.step)
    brand = jnp.repeat(batch["brand"][:, None], 1 + n_neg, axis=1).reshape(-1)
    infl = jnp.concatenate([batch["pos"][:, None], batch["neg"]], axis=1).reshape(-1)
    ed_post = None
    if observed:
      ed_post = jnp.concatenate(
          [batch["ed_obs"][:, None], tables["engagement"][batch["neg"]]], axis=1).reshape(-1)
    inputs = pair_inputs(tables, brand, infl, ed_post)
    where = jnp.broadcast_to(batch["mask"][:, None], (b, n_neg))

    def objective(params):
      out = model.apply({"params": params}, inputs, tables["concepts"], deterministic=False,
                        rngs={"dropout": dropout_key})
      s = out["S"].reshape(b, 1 + n_neg)
      pos, neg = s[:, 0], s[:, 1:]
      if observed:  # the paper's form: a negative pair has S_ed = 0, hence S = 0 (eq. 18).
        neg = jnp.zeros_like(neg)
      rank_loss = loss_fn(pos, neg, where)
      total = rank_loss + cfg.l1 * trainer.l1_penalty(params) if cfg.l1 else rank_loss
      return total, rank_loss

    (total, rank_loss), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    new_state, bad = trainer.guarded_update(state, grads, total)
    rows = jnp.sum(batch["mask"].astype(jnp.float32))
    return new_state, {"loss": rank_loss * rows, "total": total * rows, "rows": rows,
                       "nonfinite": bad}

  return jax.jit(train_step, donate_argnums=0)


def make_score_fn(cfg: RankerConfig):
  """Jitted deterministic scoring of (brand, influencer) row pairs: dict(S, S_con, S_ed, S_in, w_b, w_m)."""
  model = make_model(cfg)

  def score(params, brand, influencer, tables):
    inputs = pair_inputs(tables, brand, influencer)
    return model.apply({"params": params}, inputs, tables["concepts"], deterministic=True)

  return jax.jit(score)


def sample_triplets(positives: np.ndarray, positive_sets: dict[int, set[int]], candidates: np.ndarray,
                    num_negatives: int, seed: int, epoch: int) -> dict[str, np.ndarray]:
  """One epoch of triplets: every positive (brand, influencer) row pair, shuffled, with negatives.

  Negatives are drawn uniformly from ``candidates`` that did not cooperate with the brand; the
  draw depends only on (seed, epoch), so a resumed run resamples identically.
  """
  rng = np.random.default_rng([seed, epoch, 7])
  order = rng.permutation(len(positives))
  pos = positives[order]
  neg = candidates[rng.integers(0, len(candidates), size=(len(pos), num_negatives))]
  for i in range(len(pos)):  # rejection: resample the (few) negatives that are positives
    banned = positive_sets[int(pos[i, 0])]
    for j in range(num_negatives):
      while int(neg[i, j]) in banned:
        neg[i, j] = candidates[rng.integers(0, len(candidates))]
  return {"brand": pos[:, 0].astype(np.int32), "pos": pos[:, 1].astype(np.int32),
          "neg": neg.astype(np.int32), "order": order}


def train_ranker(*, cfg: RankerConfig, tables: Tables, positives: np.ndarray, ed_observed: np.ndarray,
                 candidates: np.ndarray, ckpt_dir: pathlib.Path | None, log: trainer.TrainLog,
                 mesh: jax.sharding.Mesh, stage: str = "ranker") -> Any:
  """Trains the ranker on the training positives; returns the trained params (host pytree).

  ``positives`` [M, 2] (brand row, influencer row); ``ed_observed`` [M] the scaled engagement
  of each positive's sponsored post (used only with endorsement="observed").
  """
  positive_sets: dict[int, set[int]] = {}
  for b, m in positives:
    positive_sets.setdefault(int(b), set()).add(int(m))
  batch_size = sharding.round_up(cfg.batch_size, mesh.devices.size)
  steps_per_epoch = max(1, -(-len(positives) // batch_size))
  tx = trainer.make_optimizer(cfg.learning_rate, cfg.lr_decay, steps_per_epoch)
  key = jax.random.PRNGKey(cfg.seed)
  init_key, step_key = jax.random.split(key)
  params = init_params(cfg, tables, init_key)
  state = trainer.TrainState.create(apply_fn=None, params=params, tx=tx)
  start_epoch = 0
  checkpointer = ckpt_lib.Checkpointer(ckpt_dir) if ckpt_dir is not None else None
  if checkpointer is not None and checkpointer.latest_step() is not None:
    state, meta = checkpointer.restore(target=state)
    start_epoch = int(meta["epoch"])
    logging.info("%s: resumed from epoch %d", stage, start_epoch)
  log.truncate_stage(stage, start_epoch)
  state = sharding.replicate(state, mesh)
  dev_tables = tables.device(mesh)
  step_key = sharding.replicate(step_key, mesh)
  train_step = make_train_step(cfg)
  lr_fn = trainer.learning_rate_schedule(cfg.learning_rate, cfg.lr_decay, steps_per_epoch)
  for epoch in range(start_epoch, cfg.epochs):
    t0 = time.perf_counter()
    trip = sample_triplets(positives, positive_sets, candidates, cfg.num_negatives, cfg.seed, epoch)
    ed_obs = ed_observed[trip["order"]].astype(np.float32)
    acc = None
    for s in range(0, len(trip["brand"]), batch_size):
      host = {"brand": trip["brand"][s:s + batch_size], "pos": trip["pos"][s:s + batch_size],
              "neg": trip["neg"][s:s + batch_size], "ed_obs": ed_obs[s:s + batch_size]}
      host, mask = sharding.pad_batch(host, batch_size)
      host["mask"] = mask
      state, metrics = train_step(state, sharding.shard_batch(sharding.process_local(host), mesh),
                                  dev_tables, step_key)
      acc = trainer.add_metrics(acc, metrics)
    sums = trainer.host_sums(acc)
    trainer.check_finite(stage, epoch + 1, sums)
    seconds = time.perf_counter() - t0
    rows = max(sums.get("rows", 1.0), 1.0)
    loss, total = sums.get("loss", 0.0) / rows, sums.get("total", 0.0) / rows
    lr = float(lr_fn(steps_per_epoch * epoch))
    logging.info("%s epoch %d/%d: loss %.4f (with L1 %.4f), lr %.2e, %.0f triplets/s", stage,
                 epoch + 1, cfg.epochs, loss, total, lr, rows / max(seconds, 1e-9))
    log.write(stage=stage, epoch=epoch + 1, loss=loss, loss_with_l1=total, lr=lr,
              triplets_per_s=rows / max(seconds, 1e-9), seconds=seconds)
    if checkpointer is not None:
      checkpointer.save(epoch + 1, jax.device_get(state), {"epoch": epoch + 1, "loss": loss})
  if checkpointer is not None:
    checkpointer.wait()
  return jax.device_get(state.params)


def restore_params(cfg: RankerConfig, tables: Tables, ckpt_dir: pathlib.Path) -> Any:
  """The params of the latest ranker checkpoint (for evaluate/recommend)."""
  params = init_params(cfg, tables, jax.random.PRNGKey(0))
  tx = trainer.make_optimizer(cfg.learning_rate, cfg.lr_decay, 1)
  state = trainer.TrainState.create(apply_fn=None, params=params, tx=tx)
  checkpointer = ckpt_lib.Checkpointer(ckpt_dir)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f"{ckpt_dir}: no ranker checkpoint")
  state, _ = checkpointer.restore(target=state)
  return jax.device_get(state.params)


def score_pairs(cfg: RankerConfig, params: Any, tables: Tables | dict[str, jax.Array],
                brand: np.ndarray, influencer: np.ndarray, *, mesh: jax.sharding.Mesh | None = None,
                score_fn=None, keys: Sequence[str] = ("S", "S_con", "S_ed", "S_in", "w_b", "w_m"),
                ) -> dict[str, np.ndarray]:
  """Scores row pairs in fixed-size chunks (one compilation; the last chunk padded, sliced off)."""
  mesh = mesh or sharding.make_mesh()
  dev_tables = tables.device(mesh) if isinstance(tables, Tables) else tables
  score_fn = score_fn or make_score_fn(cfg)
  params = sharding.replicate(params, mesh)
  n = len(brand)
  chunk = sharding.round_up(min(cfg.eval_chunk, max(n, 1)), mesh.devices.size)
  out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
  for s in range(0, n, chunk):
    host = {"brand": np.asarray(brand[s:s + chunk], np.int32),
            "influencer": np.asarray(influencer[s:s + chunk], np.int32)}
    real = len(host["brand"])
    host, _ = sharding.pad_batch(host, chunk)
    dev = sharding.shard_batch(host, mesh)
    res = jax.device_get(score_fn(params, dev["brand"], dev["influencer"], dev_tables))
    for k in keys:
      out[k].append(np.asarray(res[k])[:real])
  return {k: (np.concatenate(v) if v else np.zeros((0,), np.float32)) for k, v in out.items()}
