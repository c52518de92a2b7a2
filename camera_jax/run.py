"""A finished run, loaded back from its work directory (for evaluate, explain, search, recommend).

``load_run(workdir)`` reads the resolved flags, the dataset, the concept layer's outputs and the
ranker's latest checkpoint; ``Run.score`` scores any (brand, influencer) rows leak-free, and
``Run.represent_posts`` takes an unseen account's posts through the trained concept layer.
"""

from __future__ import annotations

import dataclasses
import pathlib
import pickle
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from camera_jax import config as config_lib
from camera_jax.data import engagement as engagement_lib
from camera_jax.data import format as format_lib
from camera_jax.data import input_pipeline
from camera_jax.data import text as text_lib
from camera_jax.models import camera as camera_lib
from camera_jax.models import concept_generator as cg_lib
from camera_jax.training import checkpoint as ckpt_lib
from camera_jax.training import concepts as concepts_lib
from camera_jax.training import ranker as ranker_lib
from camera_jax.training import sharding, trainer


@dataclasses.dataclass
class Run:
  """The artefacts of a finished run (see docs/architecture.md for the attributes)."""

  workdir: pathlib.Path
  config: config_lib.Config
  dataset: format_lib.Dataset
  concepts: tuple[str, ...]
  U_C: np.ndarray
  embedder: text_lib.TextEmbedder
  w_a: np.ndarray
  top_idx: np.ndarray
  top_w: np.ndarray
  account_ids: list[str]
  account_index: dict[str, int]
  categories: list[str]
  tables: ranker_lib.Tables
  params: Any
  _score_fn: Any = None
  #: bool [A, n]: the concepts some history post of each account shows (pipeline.account_shown;
  #: None when the run has no concepts/h.npy)
  shown: np.ndarray | None = None

  @property
  def ranker_config(self) -> ranker_lib.RankerConfig:
    from camera_jax import pipeline
    return pipeline.ranker_config(self.config, scoring=True)

  def score(self, brand_rows: Sequence[int], influencer_rows: Sequence[int]) -> dict[str, np.ndarray]:
    """S, S_con, S_ed, S_in [N] and w_b, w_m [N, K] of the row pairs (chunked, leak-free)."""
    if self._score_fn is None:
      self._score_fn = ranker_lib.make_score_fn(self.ranker_config)
    return ranker_lib.score_pairs(self.ranker_config, self.params, self.tables,
                                  np.asarray(brand_rows), np.asarray(influencer_rows),
                                  score_fn=self._score_fn)

  def represent_posts(self, posts: Sequence[format_lib.Post], root: str | pathlib.Path,
                      followers: int | None = None) -> dict[str, Any]:
    """Takes an unseen account's posts through the trained concept layer (h, z', w_a, top-K)."""
    root = pathlib.Path(root)
    vocab = {c: i for i, c in enumerate(self.concepts)}
    if self.config.use_gt_concepts and all(p.concepts is not None for p in posts):
      h = concepts_lib.multi_hot([p.concepts for p in posts], vocab)
    elif self.config.use_gt_concepts:  # such a run trains no concept generator
      missing = next(p.id for p in posts if p.concepts is None)
      raise ValueError(f"post {missing!r}: this run took the posts' ground-truth concepts "
                       "(--use_gt_concepts) and has no concept generator to predict them: give "
                       'every post a "concepts" list')
    else:
      h = self._predict_concepts([root / p.image for p in posts])
    t, has_text = self.embedder.embed_captions([p.caption for p in posts])
    l = self.embedder.embed_concepts(self.concepts)
    z_prime = concepts_lib.semantic_distributions(t, has_text, l, h, mode=self.config.zprime_mode,
                                                  semantic=self.config.semantic, chunk=256)
    sums = z_prime.sum(0)
    w_a = np.asarray(camera_lib.historical_distribution(sums), np.float32)
    from camera_jax import pipeline
    shown = np.asarray(h).sum(0) > 0
    idx, w, mask = pipeline.top_concept_table(sums, self.config.top_k, shown)
    fol = int(followers) if followers else int(np.median([self.dataset.accounts[i].followers
                                                          for i in range(len(self.dataset.accounts))]))
    rates = engagement_lib.engagement_rate(np.array([p.likes for p in posts], float),
                                           np.array([p.comments for p in posts], float),
                                           np.full(len(posts), fol, float))
    return {"w_a": w_a, "top_idx": idx, "top_w": w, "top_mask": mask, "shown": shown,
            "mean_engagement": float(np.mean(rates)) if len(posts) else 0.0, "followers": fol}

  def _predict_concepts(self, paths: Sequence[pathlib.Path]) -> np.ndarray:
    cfg = self.config
    model = cg_lib.ConceptGenerator(num_concepts=len(self.concepts), channels=tuple(cfg.cnn_channels),
                                    pools=tuple(cfg.cnn_pools), fc=cfg.cnn_fc)
    tx = trainer.make_optimizer(cfg.cg_learning_rate, cfg.cg_lr_decay, 1)
    state = concepts_lib.create_image_state(model, cfg.image_size, jax.random.PRNGKey(0), tx)
    with ckpt_lib.Checkpointer(self.workdir / "checkpoints" / "concept_generator") as ckpt:
      if ckpt.latest_step() is None:
        raise FileNotFoundError(f"{self.workdir}: no concept generator checkpoint")
      state, _ = ckpt.restore(target=state)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    chunk = max(1, cfg.cg_batch_size)
    logits = []
    for start in range(0, len(paths), chunk):  # stream: one padded batch of images at a time
      images = np.stack([input_pipeline.decode_image(p.read_bytes(), cfg.image_size)
                         for p in paths[start:start + chunk]])
      # the last batch padded (one compiled shape); the padding rows' logits are dropped
      batch, _ = sharding.pad_batch({"image": images}, chunk)
      logits.append(np.asarray(apply(variables, jnp.asarray(batch["image"])))[:len(images)])
    return np.asarray(cg_lib.predict_multi_hot(np.concatenate(logits), threshold=cfg.cg_threshold,
                                               min_k=cfg.cg_min_k, max_k=cfg.cg_max_k))

  def add_account(self, account_id: str, rep: dict[str, Any], category: str = "") -> int:
    """Appends an unseen account (from ``represent_posts``); returns its row."""
    if account_id in self.account_index:
      return self.account_index[account_id]
    t = self.tables
    self.tables = ranker_lib.Tables(
        top_idx=np.concatenate([t.top_idx, rep["top_idx"][None]]),
        top_w=np.concatenate([t.top_w, rep["top_w"][None]]),
        top_mask=np.concatenate([t.top_mask, rep["top_mask"][None]]),
        engagement=np.append(t.engagement, np.float32(engagement_lib.scale_engagement(rep["mean_engagement"]))),
        followers=np.append(t.followers, np.float32(engagement_lib.scale_followers(rep["followers"]))),
        concepts=t.concepts)
    self.w_a = np.concatenate([self.w_a, rep["w_a"][None]])
    if self.shown is not None:
      self.shown = np.concatenate([self.shown, np.asarray(rep["shown"], bool)[None]])
    self.top_idx, self.top_w = self.tables.top_idx, self.tables.top_w
    self.account_ids.append(account_id)
    self.categories.append(category)
    self.account_index[account_id] = len(self.account_ids) - 1
    return self.account_index[account_id]


class RunError(ValueError):
  """A work directory (or a dataset given with it) that a finished run cannot be loaded from."""


def _check_same_accounts_and_posts(workdir: pathlib.Path, ddir: pathlib.Path) -> None:
  """Raises RunError when ``ddir``'s accounts.jsonl or posts.jsonl is not the file the run was
  trained on (its sha256 against the run's ``data_digests.json``; a run without that record is
  not checked, an unreadable record is refused): the concept layer's outputs and the account
  features are the run's."""
  from camera_jax import pipeline
  record = workdir / pipeline.DATA_RECORD
  try:
    before = pipeline.read_data_record(workdir)
  except ValueError as e:
    raise RunError(f"{e}, so the dataset cannot be checked against the run") from None
  if before is None:
    return
  for name in (format_lib.ACCOUNTS_FILE, format_lib.POSTS_FILE):
    if name in before and pipeline.file_sha256(ddir / name) != before[name]:
      raise RunError(
          f"{ddir / name}: not the file the run was trained on (its sha256 differs from "
          f"{record}'s); the run's concept layer and account features come from its own accounts "
          "and posts, so a dataset to rescore may differ from the run's only in its "
          "cooperations and split.json")


def _load_file(load, path: pathlib.Path):
  """``load(path)``; a missing or unreadable file as one RunError line naming it."""
  try:
    return load(path)
  except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
    if isinstance(e, FileNotFoundError):
      raise FileNotFoundError(f"{path}: missing") from None
    raise RunError(f"{path}: unreadable ({type(e).__name__}: {e}); rerun the stage that "
                   "writes it (docs/workdir.md)") from None


def load_run(workdir: str | pathlib.Path, data_dir: str | pathlib.Path | None = None) -> Run:
  """Loads a finished run; ``data_dir`` overrides the run's dataset.

  The concept layer's outputs (``concepts/w_a.npy``) are reused as they are, so ``data_dir`` must
  hold the run's accounts in the run's order (``concepts/accounts.txt``) and as many posts as the
  run's ``concepts/h.npy``, in the very files the run was trained on (``accounts.jsonl`` and
  ``posts.jsonl`` byte for byte, checked against the run's ``data_digests.json``); its
  cooperations and split may differ.  Raises RunError otherwise (an unseen account goes through ``Run.represent_posts`` and
  ``Run.add_account``), FileNotFoundError for a missing file, DatasetError for an invalid dataset,
  ValueError for a run whose ranker stopped before its ``--epochs`` (an unfinished run).
  """
  from camera_jax import pipeline
  workdir = pathlib.Path(workdir)
  if not (workdir / "flags.txt").exists():
    raise FileNotFoundError(f"{workdir}: not a run directory (no flags.txt)")
  cfg = config_lib.read_flags(workdir / "flags.txt")
  if data_dir:
    cfg = cfg.replace(data_dir=str(data_dir))
  ddir = pathlib.Path(cfg.data_dir) if cfg.data_dir else workdir / "data"
  dataset = format_lib.load(ddir, seed=cfg.seed, check_images=False)
  cdir = workdir / "concepts"
  for name in ("accounts.txt", "concepts.txt", "U_C.npy", "w_a.npy"):
    if not (cdir / name).exists():
      raise FileNotFoundError(f"{cdir / name}: missing (the run did not finish its concept layer)")
  run_ids = [x for x in (cdir / "accounts.txt").read_text(encoding="utf-8").splitlines() if x]
  data_ids = [a.id for a in dataset.accounts]
  if data_ids != run_ids:
    extra = sorted(set(data_ids) - set(run_ids))
    what = (f"{len(extra)} account(s) the run has not seen (e.g. {extra[0]})" if extra else
            "not the run's accounts in the run's order")
    raise RunError(f"{ddir}: {what}; rescoring a dataset with other accounts than the run's is "
                   "not supported yet (score new accounts with Run.represent_posts/add_account)")
  n_posts = np.load(cdir / "h.npy", mmap_mode="r").shape[0] if (cdir / "h.npy").exists() else None
  if n_posts is not None and len(dataset.posts) != n_posts:
    raise RunError(f"{ddir}: {len(dataset.posts)} posts, the run's concept layer has {n_posts}; "
                   "a dataset with other posts than the run's is not supported yet")
  _check_same_accounts_and_posts(workdir, ddir)
  concepts = tuple(x for x in (cdir / "concepts.txt").read_text(encoding="utf-8").splitlines() if x)
  u_c = _load_file(np.load, cdir / "U_C.npy")
  w_a = _load_file(np.load, cdir / "w_a.npy")
  feats = pipeline.account_features(dataset, cfg)
  tables = pipeline.build_tables(cfg, _load_file(pipeline.load_account_sums, cdir), u_c, feats)
  if (cdir / pipeline.TOP_MASK_FILE).exists():  # the mask the ranker trained with
    tables.top_mask = _load_file(np.load, cdir / pipeline.TOP_MASK_FILE)
  # else: a run made before the mask was saved trained with the row-minimum rule, as above
  params = ranker_lib.restore_params(pipeline.ranker_config(cfg, scoring=True), tables, workdir / "checkpoints" / "ranker",
                                     finished=True)
  ids = [a.id for a in dataset.accounts]
  return Run(workdir=workdir, config=cfg, dataset=dataset, concepts=concepts, U_C=u_c,
             embedder=_load_file(text_lib.TextEmbedder.load, workdir / "word2vec"), w_a=w_a,
             top_idx=tables.top_idx, top_w=tables.top_w, account_ids=ids,
             account_index={a: i for i, a in enumerate(ids)},
             categories=[a.category for a in dataset.accounts], tables=tables, params=params,
             shown=(pipeline.account_shown(cfg, dataset, np.load(cdir / "h.npy", mmap_mode="r"))
                    if (cdir / "h.npy").exists() else None))
