"""Trainer and scorer of the CAMERA ranking model (paper III-C, III-D, eq. 5-19).

Every account is reduced, before training, to fixed arrays indexed by account row (its top-K
concepts and their w_a weights, its scaled engagement and follower features).  These tables are
replicated on every device; a training batch is only integer rows (brand, positive influencer,
sampled negatives) plus a validity mask, sharded over the ``data`` axis.  The jitted step gathers
what it needs from the tables, so nothing is recompiled per step and the host sends a few bytes
per triplet: once per epoch, since an epoch's steps run in one jitted call (``lax.scan``,
:func:`make_train_epoch`).

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
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from camera_jax import losses as losses_lib
from camera_jax.models import camera as camera_lib
from camera_jax.training import checkpoint as ckpt_lib
from camera_jax.training import compiler_options
from camera_jax.training import sharding
from camera_jax.training import trainer


@dataclasses.dataclass(frozen=True)
class RankerConfig:
  """Settings of the ranking stage (see camera_jax.config.Config for their meaning)."""

  epochs: int = 40
  batch_size: int = 8
  learning_rate: float = 1e-3
  representation_lr_scale: float = 1.0   # x learning_rate for psi, rho and gamma (not the phi)
  lr_decay: float = 0.95
  dropout: float = 0.6
  init_scale: float = 0.1
  l1: float = 1e-3
  psi_features: tuple[int, ...] = (1024, 512)
  gamma_features: tuple[int, ...] = (1024, 1024, 512)
  d_score: int = 64
  attention_scale: str = "inner"
  history_norm: str = "none"
  use_interaction: bool = True
  num_negatives: int = 1
  loss: str = "triplet"
  loss_hparams: tuple[tuple[str, Any], ...] = ()  # (name, value) pairs for get_loss; () keeps the loss's own defaults
  endorsement: str = "mean"
  eval_chunk: int = 0                # pairs per scoring call; 0: auto_eval_chunk()
  seed: int = 0
  dropout_rng: str = "hash"          # "hash" (fast counter-based masks) | "threefry" (nn.Dropout)
  matmul_dtype: str = "float32"     # "bfloat16": bf16 matmul operands, f32 accumulation


@dataclasses.dataclass
class Tables:
  """Per-account inputs of the ranker, indexed by account row (numpy on the host)."""

  top_idx: np.ndarray        # [A, K] int32 top-K concepts of w_a
  top_w: np.ndarray          # [A, K] float32 their w_a weights
  engagement: np.ndarray     # [A] scaled mean engagement rate E(a)
  followers: np.ndarray      # [A] scaled follower count
  concepts: np.ndarray       # [n, d_u] standardised U_C
  top_mask: np.ndarray | None = None  # [A, K] bool: the concept occurs in the account's history

  def __post_init__(self):
    if self.top_mask is None:
      self.top_mask = np.ones(np.shape(self.top_idx), bool)

  def device(self, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    return sharding.replicate({k: jnp.asarray(v) for k, v in dataclasses.asdict(self).items()}, mesh)


#: The representation MLPs (top-level parameter names of CAMERA and of Hp+MR's module).
REPRESENTATION_PARAMS = ("psi", "rho", "gamma_mlp")


def make_optimizer(cfg: RankerConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam, lr decayed per epoch; psi, rho and gamma at ``representation_lr_scale`` x the lr."""
  return trainer.make_optimizer(
      cfg.learning_rate, cfg.lr_decay, steps_per_epoch,
      lr_scales={k: cfg.representation_lr_scale for k in REPRESENTATION_PARAMS})


def make_model(cfg: RankerConfig) -> camera_lib.CAMERA:
  """The CAMERA module with the configured sizes."""
  return camera_lib.CAMERA(
      d_hidden=tuple(cfg.psi_features), gamma=tuple(cfg.gamma_features), d_score=cfg.d_score,
      dropout=cfg.dropout, init_scale=cfg.init_scale, attention_scale=cfg.attention_scale,
      history_norm=cfg.history_norm, use_interaction=cfg.use_interaction, dropout_rng=cfg.dropout_rng,
      dtype=jnp.dtype(cfg.matmul_dtype))


def pair_inputs(tables: dict[str, jax.Array], brand: jax.Array, influencer: jax.Array,
                ed_post: jax.Array | None = None) -> dict[str, jax.Array]:
  """Gathers the model inputs of (brand, influencer) pairs from the account tables.

  ``ed_post`` defaults to the leak-free estimate of E(p~): the influencer's mean engagement.
  """
  eng_inf = tables["engagement"][influencer]
  return {
      "brand_idx": tables["top_idx"][brand], "brand_w": tables["top_w"][brand],
      "inf_idx": tables["top_idx"][influencer], "inf_w": tables["top_w"][influencer],
      "brand_mask": tables["top_mask"][brand], "inf_mask": tables["top_mask"][influencer],
      "ed_post": eng_inf if ed_post is None else ed_post,
      "ed_brand": tables["engagement"][brand],
      "followers": tables["followers"][influencer],
      "eng_inf": eng_inf,
  }


def group_inputs(tables: dict[str, jax.Array], brand: jax.Array, influencers: jax.Array,
                 ed_post: jax.Array | None = None, brand_table: np.ndarray | None = None
                 ) -> dict[str, jax.Array]:
  """Inputs of :meth:`CAMERA.score_groups`: brands [B] and their influencer groups [B, M].

  The same features as :func:`pair_inputs` for the B x M pairs, with the brand's given once.
  ``brand_table``: sorted distinct account rows holding every brand of ``brand`` (padding rows
  aside): ``brand_table_idx``, ``brand_table_w`` and each triplet's ``brand_slot`` in it
  (:func:`brand_table`).
  """
  eng_inf = tables["engagement"][influencers]
  out = {
      "brand_idx": tables["top_idx"][brand], "brand_w": tables["top_w"][brand],
      "inf_idx": tables["top_idx"][influencers], "inf_w": tables["top_w"][influencers],
      "ed_post": eng_inf if ed_post is None else ed_post,
      "ed_brand": jnp.broadcast_to(tables["engagement"][brand][:, None], eng_inf.shape),
      "followers": tables["followers"][influencers],
      "eng_inf": eng_inf,
  }
  if tables.get("top_mask") is not None:
    out["brand_mask"] = tables["top_mask"][brand]
    out["inf_mask"] = tables["top_mask"][influencers]
  if brand_table is not None:
    rows = jnp.asarray(brand_table, jnp.int32)
    out["brand_table_idx"] = tables["top_idx"][rows]
    out["brand_table_w"] = tables["top_w"][rows]
    # a padding row's brand may be in no slot: any slot serves (it is masked out)
    out["brand_slot"] = jnp.minimum(jnp.searchsorted(rows, brand, method="compare_all"),
                                    len(brand_table) - 1)
  return out


def brand_table(brands: np.ndarray | None) -> np.ndarray | None:
  """The sorted distinct brands of the training triplets (:func:`group_inputs`), or None.

  With it, :meth:`CAMERA.score_groups` draws one psi dropout mask per brand and step (shared by
  the brand's triplets in the batch, as the authors' DropConnect shares one mask per weight
  matrix and step), and a batch of more triplets than brands computes psi once per brand.

  >>> brand_table(np.array([7, 3, 7, 5])).tolist()
  [3, 5, 7]
  """
  if brands is None or not len(brands):
    return None
  return np.unique(np.asarray(brands, np.int32))


@dataclasses.dataclass(frozen=True)
class RankerModel:
  """How the trainer builds and feeds a ranking module (CAMERA by default).

  ``make(cfg)`` returns a flax module applied as ``module(inputs, tables.get("concepts"),
  deterministic=...)`` that returns at least ``S`` [B]; ``inputs(tables, brand, influencer,
  ed_post=None)`` gathers its per-pair inputs from the device tables (any dataclass of per-account
  arrays with an ``engagement`` [A] field, see :class:`Tables`). The Hp+MR baseline
  (``camera_jax.models.history_pooling``) plugs in here.
  """

  make: Callable[[RankerConfig], Any]
  inputs: Callable[..., dict[str, jax.Array]]


def _camera_model() -> RankerModel:
  return RankerModel(make=make_model, inputs=pair_inputs)


def init_params(cfg: RankerConfig, tables: Any, key: jax.Array,
                model: RankerModel | None = None) -> Any:
  """Initialises the ranker's parameters (uniform(-init_scale, init_scale), paper IV-B)."""
  spec = model or _camera_model()
  module = spec.make(cfg)
  dev = {k: jnp.asarray(v) for k, v in dataclasses.asdict(tables).items()}
  dummy = spec.inputs(dev, jnp.zeros((2,), jnp.int32), jnp.zeros((2,), jnp.int32))
  return module.init({"params": key, "dropout": key}, dummy, dev.get("concepts"),
                     deterministic=True)["params"]


def make_train_step(cfg: RankerConfig, model: RankerModel | None = None, *,
                    grouped: bool | None = None, jit: bool = True,
                    brands: np.ndarray | None = None):
  """The jitted, donated train step: ``state, metrics = step(state, batch, tables, key)``.

  ``batch``: brand [B], pos [B], neg [B, N] int32 account rows, mask [B] bool, ed_obs [B] (the
  observed endorsement engagement of the positive pair; used only with endorsement="observed").
  ``grouped`` (default: True for CAMERA, False for another ``model``) scores each triplet's
  brand once against its positive and negatives (:meth:`CAMERA.score_groups`); False scores the
  B (1 + N) pairs independently (``CAMERA.__call__``, the reference). ``jit=False`` returns the
  plain function (op by op, for reference timings). ``brands``: the training brands (every
  batch brand among them, padding rows aside); grouped, one psi dropout mask per brand and
  step, and psi once per brand when a batch has more triplets (:func:`brand_table`). A batch
  whose unmasked rows hold a brand not in ``brands`` would score another brand's features: its
  step is skipped instead (its loss is reported as NaN, so the guard keeps the state) and the metric
  ``unlisted_brands`` counts those rows, which :func:`trainer.check_finite` reports by name.
  """
  grouped = model is None if grouped is None else grouped
  spec = model or _camera_model()
  module = spec.make(cfg)
  loss_fn = losses_lib.get_loss(cfg.loss, **dict(cfg.loss_hparams))
  observed = cfg.endorsement == "observed"
  table = brand_table(brands)

  def train_step(state: trainer.TrainState, batch: dict[str, jax.Array],
                 tables: dict[str, jax.Array], key: jax.Array):
    b, n_neg = batch["neg"].shape
    dropout_key = jax.random.fold_in(key, state.step)
    brand = jnp.repeat(batch["brand"][:, None], 1 + n_neg, axis=1).reshape(-1)
    infl = jnp.concatenate([batch["pos"][:, None], batch["neg"]], axis=1).reshape(-1)
    ed_post = None
    if observed:
      ed_post = jnp.concatenate(
          [batch["ed_obs"][:, None], tables["engagement"][batch["neg"]]], axis=1)
    if grouped:  # the brand once per triplet (or once per brand: brand_table)
      inputs = group_inputs(tables, batch["brand"], infl.reshape(b, 1 + n_neg), ed_post, table)
      method = {"method": camera_lib.CAMERA.score_groups}
    else:
      inputs = spec.inputs(tables, brand, infl, None if ed_post is None else ed_post.reshape(-1))
      method = {}
    where = jnp.broadcast_to(batch["mask"][:, None], (b, n_neg))
    unlisted = None
    if grouped and table is not None:   # a brand outside the table has no slot of its own
      listed = jnp.asarray(table, jnp.int32)[inputs["brand_slot"]] == batch["brand"]
      unlisted = jnp.sum((batch["mask"] & ~listed).astype(jnp.float32))

    def objective(params):
      out = module.apply({"params": params}, inputs, tables.get("concepts"), deterministic=False,
                         rngs={"dropout": dropout_key}, **method)
      s = out["S"].reshape(b, 1 + n_neg)
      pos, neg = s[:, 0], s[:, 1:]
      if observed and cfg.use_interaction:  # the paper's form: a negative pair has S_ed = 0,
        neg = jnp.zeros_like(neg)           # hence S = 0 (eq. 18); C-w/o-MR has no S_ed: S = S_con
      rank_loss = loss_fn(pos, neg, where)
      total = rank_loss + cfg.l1 * trainer.l1_penalty(params) if cfg.l1 else rank_loss
      return total, rank_loss

    # Only the gradient of the L1 term is formed: its value, a pass over every kernel (0.26 ms
    # of a 5.8 ms batch-8 step), is taken once per epoch by train_ranker. The loss is checked
    # per step, the gradients through the parameters once per epoch (train_ranker's
    # check_finite): a pass over 3 M gradients is 10 % of a batch-8 step.
    grads, rank_loss = jax.grad(objective, has_aux=True)(state.params)
    if unlisted is not None:   # NaN: the guard skips the step (its gradients are never applied)
      rank_loss = jnp.where(unlisted > 0, jnp.nan, rank_loss)
    new_state, bad = trainer.guarded_update(state, grads, rank_loss, check_grads=False)
    rows = jnp.sum(batch["mask"].astype(jnp.float32))
    metrics = {"loss": rank_loss * rows, "rows": rows, "nonfinite": bad}
    if unlisted is not None:
      metrics["unlisted_brands"] = unlisted
    return new_state, metrics

  if not jit:
    return train_step
  return jax.jit(train_step, donate_argnums=0,
                 compiler_options=compiler_options.ranker_step_options())


def make_train_epoch(cfg: RankerConfig, model: RankerModel | None = None, *,
                     grouped: bool | None = None, brands: np.ndarray | None = None):
  """The jitted, donated epoch: ``state, sums = run(state, batches, tables, key)``.

  Runs :func:`make_train_step`'s step over every batch of an epoch in one call (``lax.scan``
  on the device), so no step waits for Python: no dispatch, no host batch, no metric add
  between steps. ``batches`` holds the step batches stacked on axis 1, the batch axis staying
  first so that it shards over ``'data'`` as a step's batch does (:func:`epoch_batches`):
  brand, pos, mask, ed_obs [B, S]; neg [B, S, N]. ``sums`` are the step metrics summed in
  step order (as adding them after each step, to float rounding: XLA may round the reported
  rank loss differently in the two programs). The parameters and the optimiser state equal
  those of calling the step once per batch (tested bit for bit); one compiled program serves
  every epoch (same S). ``brands``: see :func:`make_train_step`.
  """
  step = make_train_step(cfg, model, grouped=grouped, jit=False, brands=brands)

  def run(state: trainer.TrainState, batches: dict[str, jax.Array],
          tables: dict[str, jax.Array], key: jax.Array):
    xs = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), batches)       # [S, B, ...]
    first = jax.tree.map(lambda a: a[0], xs)
    zeros = jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype),
                         jax.eval_shape(lambda: step(state, first, tables, key)[1]))

    def body(carry, batch):
      st, acc = carry
      st, metrics = step(st, batch, tables, key)
      return (st, trainer.add_metrics(acc, metrics)), None

    (state, sums), _ = jax.lax.scan(body, (state, zeros), xs)
    return state, sums

  return jax.jit(run, donate_argnums=0, compiler_options=compiler_options.ranker_step_options())


def epoch_batches(trip: dict[str, np.ndarray], ed_obs: np.ndarray, batch_size: int,
                  steps: int, width: int | None = None) -> dict[str, np.ndarray]:
  """An epoch's host batches for :func:`make_train_epoch`: [W, S] arrays (neg [W, S, N]).

  Step ``s`` takes triplets ``s * B`` to ``(s + 1) * B`` (B = ``batch_size``); the last step's
  missing rows are zero padding with ``mask`` False (nothing is dropped). ``width`` W >= B (the
  batch rounded up to a multiple of the device count, default B) adds W - B padding rows to
  every step, so every device holds as many rows while each step still trains on B triplets.

  >>> trip = {"brand": np.arange(5), "pos": np.arange(5), "neg": np.zeros((5, 1), int)}
  >>> b = epoch_batches(trip, np.zeros(5, np.float32), batch_size=2, steps=3, width=4)
  >>> b["brand"].T.tolist(), b["mask"].T.astype(int).tolist()
  ([[0, 1, 0, 0], [2, 3, 0, 0], [4, 0, 0, 0]], [[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
  """
  host = {"brand": trip["brand"], "pos": trip["pos"], "neg": trip["neg"], "ed_obs": ed_obs}
  host, mask = sharding.pad_batch(host, steps * batch_size)
  host["mask"] = mask
  host = {k: np.swapaxes(v.reshape((steps, batch_size) + v.shape[1:]), 0, 1)
          for k, v in host.items()}
  # the W - B extra rows of every step: zeros, mask False
  return sharding.pad_batch(host, batch_size if width is None else width)[0]


class CatalogueScorer:
  """Deterministic CAMERA scoring of (brand, influencer) row pairs, per-account work done once.

  :meth:`score` (used by :func:`score_pairs`) computes rho(U_C) and U_C W_r once per call,
  psi(e_h), q = psi rho(U_C)^T and e_h W_h + b once per distinct account, then per chunk of
  pairs only the attention, gamma's last layers and the scores (see the "fast paths" of
  :class:`camera_jax.models.camera.CAMERA`). Device memory is O(distinct accounts + chunk).
  Calling the object, ``scorer(params, brand, influencer, tables)``, is the drop-in form of
  :func:`make_score_fn`'s jitted function: one jitted call for one chunk of pairs.
  """

  def __init__(self, cfg: RankerConfig):
    self.cfg = cfg
    module = make_model(cfg)
    cam = camera_lib.CAMERA

    def concept_parts(params, tables):
      return module.apply({"params": params}, tables["concepts"], method=cam.catalogue_concepts)

    def account_parts(params, tables, rows, rho):
      mask = tables["top_mask"][rows] if tables.get("top_mask") is not None else None
      return module.apply({"params": params}, tables["top_idx"][rows], tables["top_w"][rows],
                          mask, tables["concepts"], rho, method=cam.catalogue_accounts)

    def pair_scores(params, enc, r1, tables, b_local, m_local, brand, influencer):
      feats = pair_inputs(tables, brand, influencer)
      pick = lambda rows: jax.tree.map(lambda a: a[rows], enc)  # noqa: E731
      return module.apply({"params": params}, pick(b_local), pick(m_local), r1, feats,
                          method=cam.catalogue_pairs)

    def oneshot(params, brand, influencer, tables):
      parts = concept_parts(params, tables)
      rows = jnp.concatenate([brand, influencer])
      enc = account_parts(params, tables, rows, parts["rho"])
      local = jnp.arange(rows.shape[0], dtype=jnp.int32)
      n = brand.shape[0]
      return pair_scores(params, enc, parts["r1"], tables, local[:n], local[n:], brand, influencer)

    self.concept_parts = jax.jit(concept_parts)
    self.account_parts = jax.jit(account_parts)
    self.pair_scores = jax.jit(pair_scores)
    self._oneshot = jax.jit(oneshot)
    self.plain = dict(concept_parts=concept_parts, account_parts=account_parts,
                      pair_scores=pair_scores)

  def __call__(self, params, brand, influencer, tables):
    return self._oneshot(params, brand, influencer, tables)

  def score(self, params: Any, tables: dict[str, jax.Array], brand: np.ndarray,
            influencer: np.ndarray, *, mesh: jax.sharding.Mesh, chunk: int,
            keys: Sequence[str], jit: bool = True) -> dict[str, np.ndarray]:
    """Scores row pairs; ``params`` and ``tables`` already replicated on ``mesh``.

    Distinct accounts are encoded in chunks of at most ``chunk`` rows, padded to a power of two
    (at most log2 compilations); pairs in chunks of ``chunk`` (the last one padded). Chunk i + 1
    is dispatched before chunk i is fetched, so the host never waits on an idle device.
    ``jit=False`` runs the same computation op by op (the reference timing).
    """
    fns = (self.concept_parts, self.account_parts, self.pair_scores) if jit else (
        self.plain["concept_parts"], self.plain["account_parts"], self.plain["pair_scores"])
    concept_parts, account_parts, pair_scores = fns
    brand = np.asarray(brand, np.int64)
    influencer = np.asarray(influencer, np.int64)
    n = len(brand)
    if n == 0:
      return {k: np.zeros((0,), np.float32) for k in keys}
    parts = concept_parts(params, tables)
    # The distinct accounts and a row -> local index lookup in O(accounts) memory (np.unique of
    # the concatenated pairs held about 90 bytes a pair: its copy, sort order and inverse).
    present = np.zeros(int(tables["top_idx"].shape[0]), bool)
    for s in range(0, n, chunk):
      present[brand[s:s + chunk]] = True
      present[influencer[s:s + chunk]] = True
    uniq = np.flatnonzero(present)
    lookup = np.zeros(len(present), np.int32)
    lookup[uniq] = np.arange(len(uniq), dtype=np.int32)
    n_acc = len(uniq)
    enc_chunk = min(chunk, 1 << max(6, (n_acc - 1).bit_length()))
    n_pad = sharding.round_up(n_acc, enc_chunk)
    rows = np.zeros((n_pad,), np.int32)
    rows[:n_acc] = uniq
    pieces = [account_parts(params, tables, sharding.replicate(rows[s:s + enc_chunk], mesh),
                            parts["rho"]) for s in range(0, n_pad, enc_chunk)]
    enc = pieces[0] if len(pieces) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a), *pieces)
    out: dict[str, np.ndarray] = {}
    pending = None
    for s in range(0, n + chunk, chunk):
      current = None
      if s < n:
        host = {"b": lookup[brand[s:s + chunk]], "m": lookup[influencer[s:s + chunk]],
                "brand": brand[s:s + chunk].astype(np.int32),
                "influencer": influencer[s:s + chunk].astype(np.int32)}
        real = len(host["b"])
        host, _ = sharding.pad_batch(host, chunk)
        dev = sharding.shard_batch(host, mesh)
        res = pair_scores(params, enc, parts["r1"], tables, dev["b"], dev["m"], dev["brand"],
                          dev["influencer"])
        current = ({k: res[k] for k in keys}, real, s)
      if pending is not None:
        res, real, start = pending
        for k, v in jax.device_get(res).items():
          v = np.asarray(v)[:real]
          if k not in out:   # written in place: no list of chunks and no concatenated copy
            out[k] = np.empty((n,) + v.shape[1:], v.dtype)
          out[k][start:start + real] = v
      pending = current
    return out


#: Pairs per scoring call when ``eval_chunk`` is 0, per (backend, matmul dtype). On the CPU
#: smaller calls are faster, because gamma's [2 x chunk, 1024] activations stay in cache: on the
#: 2-core development CPU, side by side, the 74 x 797 catalogue scored in 1.43 to 1.47 s with
#: calls of 1,536 pairs against 1.56 to 1.75 s with 2,048 (float32; 2.04 s with 8,192), and in
#: 0.42 to 0.43 s with 2,048 against 0.45 s with 1,536 (bfloat16 matmuls; 0.77 s with 8,192).
#: On a GPU the calls are latency-bound and larger is faster.
AUTO_EVAL_CHUNK = {("cpu", "float32"): 1536, ("cpu", "bfloat16"): 2048}
AUTO_EVAL_CHUNK_OTHER = 8192


def auto_eval_chunk(eval_chunk: int, backend: str | None = None,
                    matmul_dtype: str = "float32") -> int:
  """``eval_chunk`` itself when positive; 0 means the measured default of :data:`AUTO_EVAL_CHUNK`.

  That is 1,536 pairs on a CPU with float32 matmuls, 2,048 with bfloat16 ones, and 8,192 on
  other backends. ``backend`` is the platform of the devices that score (default: JAX's default
  backend); ``matmul_dtype`` is ``RankerConfig.matmul_dtype``.
  """
  if eval_chunk > 0:
    return eval_chunk
  backend = backend or jax.default_backend()
  return AUTO_EVAL_CHUNK.get((backend, jnp.dtype(matmul_dtype).name), AUTO_EVAL_CHUNK_OTHER)


def catalogue_chunk(n: int, eval_chunk: int, n_devices: int = 1) -> int:
  """Pairs per jitted call of :meth:`CatalogueScorer.score` for ``n`` pairs.

  Up to ``eval_chunk`` pairs: the next power of two (few distinct compilations for the small
  calls of recommend/search); more: ``ceil(n / eval_chunk)`` equal chunks rounded up to a
  multiple of 256, so the padded last chunk wastes little (74 x 797 = 58,978 pairs with
  ``eval_chunk`` 8,192: 8 chunks of 7,424, 0.7 % padding, instead of 8 of 8,192, 11 %; with
  1,536, the CPU's float32 default: 39 chunks of 1,536, 1.6 %). ``eval_chunk`` must be resolved
  (:func:`auto_eval_chunk`) and positive.
  """
  if eval_chunk < 1:
    raise ValueError(f"catalogue_chunk: eval_chunk must be >= 1, got {eval_chunk} "
                     "(resolve 0 with auto_eval_chunk)")
  if n <= eval_chunk:
    chunk = min(eval_chunk, 1 << max(0, (n - 1).bit_length()))
  else:
    pieces = -(-n // eval_chunk)
    chunk = sharding.round_up(-(-n // pieces), 256)
  return sharding.round_up(chunk, n_devices)


def mesh_eval_chunk(cfg: RankerConfig, mesh: jax.sharding.Mesh) -> int:
  """``cfg.eval_chunk`` resolved (:func:`auto_eval_chunk`) for the devices of ``mesh``."""
  return auto_eval_chunk(cfg.eval_chunk, mesh.devices.flat[0].platform, cfg.matmul_dtype)


def pair_chunk(cfg: RankerConfig, n: int, mesh: jax.sharding.Mesh) -> int:
  """Pairs per call when :func:`score_pairs` scores ``n`` pairs with a :class:`CatalogueScorer`."""
  return catalogue_chunk(n, mesh_eval_chunk(cfg, mesh), mesh.devices.size)


def make_score_fn(cfg: RankerConfig, model: RankerModel | None = None):
  """Deterministic scoring of (brand, influencer) row pairs: dict(S, S_con, S_ed, S_in, w_b, w_m).

  For CAMERA (``model`` None) a :class:`CatalogueScorer` (callable with the same signature, and
  used by :func:`score_pairs` for its fast catalogue path); otherwise the model's jitted
  ``score(params, brand, influencer, tables)``.
  """
  if model is None:
    return CatalogueScorer(cfg)
  spec = model
  module = spec.make(cfg)

  def score(params, brand, influencer, tables):
    inputs = spec.inputs(tables, brand, influencer)
    return module.apply({"params": params}, inputs, tables.get("concepts"), deterministic=True)

  return jax.jit(score)


def sample_triplets(positives: np.ndarray, positive_sets: dict[int, set[int]], candidates: np.ndarray,
                    num_negatives: int, seed: int, epoch: int) -> dict[str, np.ndarray]:
  """One epoch of triplets: every positive (brand, influencer) row pair, shuffled, with negatives.

  Negatives are drawn uniformly from ``candidates`` (the pool: every influencer in the main job,
  ``pipeline.negative_pool``) that did not cooperate with the brand; the draw depends only on
  (seed, epoch), so a resumed run resamples identically.
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
                 mesh: jax.sharding.Mesh, stage: str = "ranker",
                 model: RankerModel | None = None) -> Any:
  """Trains the ranker on the training positives; returns the trained params (host pytree).

  ``positives`` [M, 2] (brand row, influencer row); ``ed_observed`` [M] the scaled engagement
  of each positive's sponsored post (used only with endorsement="observed"); ``candidates``: the
  rows negatives are drawn from (:func:`sample_triplets`). ``model``: another
  ranking module and its input builder (default CAMERA); ``tables`` then is that model's table
  dataclass (it needs a ``device(mesh)`` method and an ``engagement`` field).
  """
  positive_sets: dict[int, set[int]] = {}
  for b, m in positives:
    positive_sets.setdefault(int(b), set()).add(int(m))
  # Each step trains on cfg.batch_size triplets whatever the device count; the rows are padded
  # to a multiple of it (masked), and a row's dropout mask follows its triplet (camera.
  # group_row_ids), so the schedule and the masks do not depend on the hardware (the float
  # rounding of the gradients' sums does).
  batch_size = cfg.batch_size
  width = sharding.round_up(batch_size, mesh.devices.size)
  steps_per_epoch = max(1, -(-len(positives) // batch_size))
  tx = make_optimizer(cfg, steps_per_epoch)
  key = jax.random.PRNGKey(cfg.seed)
  init_key, step_key = jax.random.split(key)
  params = init_params(cfg, tables, init_key, model)
  state = trainer.TrainState.create(apply_fn=None, params=params, tx=tx)
  checkpointer, state, start_epoch = trainer.resume(stage, state, ckpt_dir, log, mesh.devices.size,
                                                     cfg.epochs)
  state = sharding.replicate(state, mesh)
  dev_tables = tables.device(mesh)
  step_key = sharding.replicate(step_key, mesh)
  train_epoch = make_train_epoch(cfg, model, brands=positives[:, 0])
  lr_fn = trainer.learning_rate_schedule(cfg.learning_rate, cfg.lr_decay, steps_per_epoch)
  l1_value = jax.jit(trainer.l1_penalty)
  for epoch in range(start_epoch, cfg.epochs):
    t0 = time.perf_counter()
    trip = sample_triplets(positives, positive_sets, candidates, cfg.num_negatives, cfg.seed, epoch)
    ed_obs = ed_observed[trip["order"]].astype(np.float32)
    acc = None
    if len(trip["brand"]):
      host = epoch_batches(trip, ed_obs, batch_size, steps_per_epoch, width)
      state, acc = train_epoch(state, sharding.shard_batch(sharding.process_local(host), mesh),
                               dev_tables, step_key)
    if cfg.l1:   # the L1 term of the epoch's final parameters (the step forms its gradient only)
      acc = {**(acc or {}), "l1": l1_value(state.params)}
    sums = trainer.host_sums(acc)
    trainer.check_finite(stage, epoch + 1, sums, checkpointer, params=state.params)
    seconds = time.perf_counter() - t0
    rows = max(sums.get("rows", 1.0), 1.0)
    loss = sums.get("loss", 0.0) / rows
    total = loss + cfg.l1 * sums.get("l1", 0.0)
    lr = float(lr_fn(steps_per_epoch * epoch))
    logging.info("%s epoch %d/%d: loss %.4f%s, lr %.2e, %.0f triplets/s", stage, epoch + 1,
                 cfg.epochs, loss, f" (with L1 {total:.4f})" if cfg.l1 else "", lr,
                 rows / max(seconds, 1e-9))
    log.write(stage=stage, epoch=epoch + 1, loss=loss, loss_with_l1=total, lr=lr,
              lr_representation=lr * cfg.representation_lr_scale,
              triplets_per_s=rows / max(seconds, 1e-9), seconds=seconds, devices=mesh.devices.size)
    if checkpointer is not None:
      checkpointer.save(epoch + 1, jax.device_get(state), {"epoch": epoch + 1, "loss": loss,
                                                          "devices": mesh.devices.size})
  if checkpointer is not None:
    checkpointer.wait()
  return jax.device_get(state.params)


def restore_params(cfg: RankerConfig, tables: Tables, ckpt_dir: pathlib.Path, *,
                   finished: bool = False) -> Any:
  """The params of the latest ranker checkpoint (for evaluate/recommend).

  ``finished``: raise ValueError when the latest checkpoint is of an epoch before
  ``cfg.epochs`` (a run stopped before its end).
  """
  # Checked before a checkpoint manager opens the directory: it would create a missing one (a
  # read-only command leaving an empty checkpoints/ranker behind) and start a clean-up thread
  # that can outlive the refusal and print a traceback at exit.
  if not pathlib.Path(ckpt_dir).is_dir():
    raise FileNotFoundError(f"{ckpt_dir}: no ranker checkpoint")
  params = init_params(cfg, tables, jax.random.PRNGKey(0))
  tx = make_optimizer(cfg, 1)
  state = trainer.TrainState.create(apply_fn=None, params=params, tx=tx)
  with ckpt_lib.Checkpointer(ckpt_dir) as checkpointer:
    step = checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(f"{ckpt_dir}: no ranker checkpoint")
    if finished and step < cfg.epochs:
      raise ValueError(f"{ckpt_dir}: the ranker stopped after epoch {step} of {cfg.epochs} "
                       "(an unfinished run); finish it with python experiments/train.py "
                       "--flagfile=WORKDIR/flags.txt")
    state, _ = checkpointer.restore(target=state)
  return jax.device_get(state.params)


def score_pairs(cfg: RankerConfig, params: Any, tables: Tables | dict[str, jax.Array],
                brand: np.ndarray, influencer: np.ndarray, *, mesh: jax.sharding.Mesh | None = None,
                score_fn=None, keys: Sequence[str] = ("S", "S_con", "S_ed", "S_in", "w_b", "w_m"),
                ) -> dict[str, np.ndarray]:
  """Scores row pairs in fixed-size chunks (one compilation; the last chunk padded, sliced off).

  With a :class:`CatalogueScorer` (the default for CAMERA) per-account and per-concept work is
  done once (:meth:`CatalogueScorer.score`); any other ``score_fn`` is called per chunk.
  """
  mesh = mesh or sharding.make_mesh()
  dev_tables = tables.device(mesh) if isinstance(tables, Tables) else tables
  score_fn = score_fn or make_score_fn(cfg)
  params = sharding.replicate(params, mesh)
  n = len(brand)
  if isinstance(score_fn, CatalogueScorer):
    return score_fn.score(params, dev_tables, brand, influencer, mesh=mesh,
                          chunk=pair_chunk(cfg, n, mesh), keys=keys)
  chunk = sharding.round_up(min(mesh_eval_chunk(cfg, mesh), max(n, 1)), mesh.devices.size)
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
