"""The end-to-end CAMERA job: data -> concepts -> account representations -> ranker -> metrics.

``train_and_evaluate(config, workdir)`` runs every stage and caches each stage's output in the
work directory (layout in docs/workdir.md), so rerunning the same command resumes: finished
stages are loaded, an interrupted stage continues from its last per-epoch checkpoint.
Every file is written atomically (temporary name, then rename): nothing half-written is trusted.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import pathlib
import time
import typing
from typing import Any

import jax
import numpy as np
from absl import logging

from camera_jax import atomic
from camera_jax import baselines as baselines_lib
from camera_jax import metrics as metrics_lib
from camera_jax import config as config_lib
from camera_jax import strict_json
from camera_jax.config import Config
from camera_jax.data import engagement as engagement_lib
from camera_jax.data import format as format_lib
from camera_jax.data import input_pipeline
from camera_jax.data import text as text_lib
from camera_jax.models import camera as camera_lib
from camera_jax.models import precision
from camera_jax.models import visual as visual_lib
from camera_jax.training import checkpoint as ckpt_lib
from camera_jax.training import concepts as concepts_lib
from camera_jax.training import ranker as ranker_lib
from camera_jax.training import sharding
from camera_jax.training import trainer

METRIC_KEYS = ("auc", "cauc", "recall@10", "recall@50", "mrr", "map", "medr")


class ConfigError(ValueError):
  """A setting of the run that cannot work (one line per problem in ``errors``)."""

  def __init__(self, errors: list[str]):
    super().__init__("; ".join(errors))
    self.errors = list(errors)


_CHOICES = {
    "zprime_mode": ("masked", "faithful"),
    "cosmic_logit_scale": ("inner", "mean"),
    "attention_scale": ("inner", "mean"),
    "history_norm": typing.get_args(camera_lib.HistoryNorm),
    "endorsement": ("mean", "observed"),
    "history": ("all", "unsponsored"),
    "matmul_dtype": precision.MATMUL_DTYPES,
}


def check_config(cfg: Config, *, evaluate_loss: bool = True) -> list[str]:
  """The problems of ``cfg`` found without doing any work: one "--flag=value: why" line each.

  ``evaluate_loss=False`` only traces the loss (``losses.check``), starting no JAX backend:
  for a check before ``jax.distributed.initialize``; a non-finite loss is then found by the
  check at the start of :func:`train_and_evaluate`.
  """
  from camera_jax import losses as losses_lib
  errors = []
  if cfg.loss not in losses_lib.REGISTRY:
    errors.append(f"--loss={cfg.loss}: unknown loss; available: {', '.join(sorted(losses_lib.REGISTRY))}")
  else:
    try:
      settings = loss_hparams(cfg)
      twice = _loss_flags_given_twice(cfg)
      if twice:
        raise ValueError(f"{twice} is also set by --{twice}={getattr(cfg, twice)}; set it once")
    except ValueError as e:
      errors.append(f"--loss_hparams={cfg.loss_hparams}: {e}")
    else:
      problem = losses_lib.check(cfg.loss, dict(settings), evaluate=evaluate_loss)
      if problem:
        taken = losses_lib.hparams_of(cfg.loss)
        given = ", ".join(f"{k}={v}" for k, v in settings if k in taken)
        errors.append(f"--loss={cfg.loss}" + (f" with {given}" if given else "") + f": {problem}")
  for name, choices in _CHOICES.items():
    if getattr(cfg, name) not in choices:
      errors.append(f"--{name}={getattr(cfg, name)}: must be one of {', '.join(choices)}")
  unknown = [b for b in cfg.baselines if b.upper() not in baselines_lib.BASELINES]
  if unknown:
    errors.append(f"--baselines={','.join(cfg.baselines)}: unknown {', '.join(unknown)}; "
                  f"available: {', '.join(sorted(baselines_lib.BASELINES))}")
  if not cfg.data_dir:
    from camera_jax.data import synthetic
    if cfg.preset not in synthetic.PRESETS:
      errors.append(f"--preset={cfg.preset}: unknown preset; available: {', '.join(sorted(synthetic.PRESETS))}")
    if 1 <= cfg.image_size < synthetic.MIN_IMAGE_SIZE:
      errors.append(f"--image_size={cfg.image_size}: the synthetic data (no --data_dir) is drawn "
                    f"at >= {synthetic.MIN_IMAGE_SIZE} px")
  def commas(values) -> str:
    return ",".join(map(str, values))

  pools = tuple(cfg.cnn_pools)
  cnn = f"--cnn_channels={commas(cfg.cnn_channels)} --cnn_pools={commas(pools)}"
  if len(cfg.cnn_channels) != len(pools) or not pools:
    errors.append(f"{cnn}: one pool per convolution (the same count, >= 1)")
  elif any(not p >= 1 for p in pools) or any(not c >= 1 for c in cfg.cnn_channels):
    errors.append(f"{cnn}: every channel count and pool must be >= 1")
  elif cfg.image_size >= 1 and visual_lib.output_side(cfg.image_size, pools) < 1:
    errors.append(f"--image_size={cfg.image_size}: the CNN's pools (--cnn_pools={commas(pools)}) "
                  f"need images of >= {math.prod(pools)} px")
  for name in ("psi_features", "gamma_features"):
    widths = tuple(getattr(cfg, name))
    if not widths or any(not w >= 1 for w in widths):
      errors.append(f"--{name}={commas(widths)}: one or more layer widths, each >= 1")
  for name in ("batch_size", "cg_batch_size", "cosmic_batch_size", "top_k", "num_negatives",
               "image_size", "w2v_dim", "d_u", "d_score", "num_processes", "cg_max_k", "cnn_fc",
               # every stage trains at least one epoch: a stage of none saves no checkpoint, and
               # the finished run's tools (evaluate, recommend, report) restore them
               "epochs", "cg_epochs", "cosmic_epochs", "w2v_epochs"):
    if getattr(cfg, name) < 1:
      errors.append(f"--{name}={getattr(cfg, name)}: must be >= 1")
  for name in ("eval_chunk", "input_threads", "image_cache_gb", "seed", "cg_min_k"):
    if not getattr(cfg, name) >= 0:  # also refuses NaN
      errors.append(f"--{name}={getattr(cfg, name)}: must be >= 0")
  for name in ("learning_rate", "cg_learning_rate", "cosmic_learning_rate",
               "representation_lr_scale", "lr_decay", "cg_lr_decay", "cosmic_lr_decay",
               "init_scale"):
    if not getattr(cfg, name) > 0:  # also refuses NaN
      errors.append(f"--{name}={getattr(cfg, name)}: must be > 0")
  for name in ("l1", "cosmic_l1"):
    if not getattr(cfg, name) >= 0:
      errors.append(f"--{name}={getattr(cfg, name)}: must be >= 0")
  for name in ("cg_held_out", "dropout"):
    if not 0.0 <= getattr(cfg, name) < 1.0:
      errors.append(f"--{name}={getattr(cfg, name)}: must be in [0, 1)")
  if not 0.0 <= cfg.cg_threshold <= 1.0:
    errors.append(f"--cg_threshold={cfg.cg_threshold}: must be in [0, 1]")
  for name in ("margin", "temperature"):  # whether or not the loss takes them (flags.txt keeps them)
    if getattr(cfg, name) is not None and not math.isfinite(getattr(cfg, name)):
      errors.append(f"--{name}={getattr(cfg, name)}: must be a finite number")
  if cfg.num_processes >= 1 and not 0 <= cfg.process_id < cfg.num_processes:
    errors.append(f"--process_id={cfg.process_id}: must be in [0, --num_processes={cfg.num_processes})")
  return errors


# --------------------------------------------------------------------------- small utilities


atomic_write_bytes = atomic.write_bytes


atomic_write_text = atomic.write_text


def save_npy(path: pathlib.Path, array: np.ndarray) -> None:
  buf = io.BytesIO()
  np.save(buf, array, allow_pickle=False)
  atomic_write_bytes(path, buf.getvalue())


def is_main() -> bool:
  return jax.process_index() == 0


# --------------------------------------------------------------------------- stages


def resolve_data(cfg: Config, workdir: pathlib.Path) -> pathlib.Path:
  """The dataset directory: ``cfg.data_dir``, or a synthetic preset generated into workdir/data."""
  if cfg.data_dir:
    return pathlib.Path(cfg.data_dir)
  from camera_jax.data import synthetic  # Imported lazily: only needed without --data_dir.
  out = workdir / "data"
  if is_main():
    try:
      synthetic.generate(out, preset=cfg.preset, seed=cfg.seed, image_size=cfg.image_size)
    except FileExistsError as e:  # another preset, seed or image size: a one-line refusal
      raise ConfigError([str(e)]) from None
  sharding.sync("synthetic-data")
  return out


def open_sources(data_dir: pathlib.Path, tfds_dir: pathlib.Path,
                 key: str | None = None) -> dict[str, Any]:
  """The TFDS data sources, built (once) by process 0 alone, then opened by every process.

  ``key``: the data's TFDS fingerprint when already known (:func:`data_digests`).
  """
  if is_main():
    sources = input_pipeline.prepare(data_dir, tfds_dir, key)
  sharding.sync("tfds-build")
  if not is_main():
    sources = input_pipeline.prepare(data_dir, tfds_dir, key)
  return sources


def decoded_sources(cfg: Config, sources: dict[str, Any], tfds_dir: pathlib.Path,
                    key: str) -> dict[str, Any]:
  """``sources`` with each split that fits ``--image_cache_gb`` as an
  ``input_pipeline.DecodedImages`` at ``--image_size`` in ``cache_dir`` = ``tfds_dir/key/decoded``
  (``key`` the data's TFDS fingerprint, so the directory lies in its build).

  The file (``<split>_<S>px_<decoder key>.npy``) is written the first time an image stage reads
  the split (not at all when the concept stages are cached) and reused by later epochs, stages
  and runs; ``cache_dir`` lies in the TFDS build of this data, so it goes when the data changes,
  and a file of another size or decoder (``input_pipeline.decoder_key``) is deleted here. Multi-
  process runs decode every epoch (one file per process would be written concurrently): in a
  training epoch each process decodes only its slice of every global batch
  (``ImageBatches(part=...)``); the stage's one prediction pass decodes every image in every
  process.
  """
  if jax.process_count() > 1:
    return sources
  cache_dir = tfds_dir / key / "decoded"
  out, keep = dict(sources), set()
  for split, source in sources.items():
    if source is None or cfg.image_cache_gb <= 0:
      continue
    name = f"{split}_{cfg.image_size}px_{input_pipeline.decoder_key()}.npy"
    decoded = input_pipeline.DecodedImages(source, cfg.image_size, cache_dir / name,
                                           num_threads=input_threads(cfg))
    if decoded.nbytes <= cfg.image_cache_gb * 1e9:
      out[split] = decoded
      keep |= {decoded.path.name, decoded.rows_path.name}
    else:
      logging.info("%s: %d images at %d px would take %.1f GB > --image_cache_gb=%g: decoded every "
                   "epoch", split, len(source), cfg.image_size, decoded.nbytes / 1e9,
                   cfg.image_cache_gb)
  if cache_dir.is_dir():
    for old in cache_dir.iterdir():
      if old.name not in keep and old.is_file():
        old.unlink(missing_ok=True)
  return out


def load_dataset(cfg: Config, data_dir: pathlib.Path) -> format_lib.Dataset:
  """Validates then loads the dataset; raises DatasetError with FILE:LINE lines when invalid.

  Also raises DatasetError when no cooperation involves a training brand: the ranker would
  have nothing to learn from.
  """
  dataset = format_lib.load(data_dir, seed=cfg.seed, check_images=cfg.check_images)
  problems = training_problems(cfg, dataset, data_dir)
  if problems:
    raise format_lib.DatasetError(problems)
  return dataset


def training_problems(cfg: Config, dataset: format_lib.Dataset, data_dir: pathlib.Path
                      ) -> list[str]:
  """``FILE:LINE`` lines for a valid dataset the method cannot train on: no cooperation of a
  training brand, a training brand that cooperated with every influencer (no negative to draw:
  :func:`negative_pool`), fewer concepts than ``--top_k``, or with ``--history=unsponsored``
  an account whose every post is sponsored (no history post). A split without test brands or
  candidates trains; its metrics are null, with a warning (:func:`test_set_counts`)."""
  split_file = data_dir / format_lib.SPLIT_FILE
  where = "split.json's" if split_file.exists() else "the default split's"
  train = set(dataset.split.train)
  out = []
  if len(dataset.concepts) < cfg.top_k:
    out.append(f"{data_dir / format_lib.CONCEPTS_FILE}:0: {len(dataset.concepts)} concept(s), "
               f"fewer than --top_k={cfg.top_k} (the concepts that represent each account)")
  if not any(c.brand in train for c in dataset.cooperations):
    out.append(f"{data_dir / format_lib.COOPERATIONS_FILE}:0: no cooperation of a training brand "
               f"({len(train)} in {where} \"train\"): the ranker has no positive to learn from")
  influencers = {a.id for a in dataset.influencers()}
  partners = dataset.positives()
  for brand in dataset.split.train:
    if influencers <= partners.get(brand, set()):
      out.append(f"{data_dir / format_lib.COOPERATIONS_FILE}:0: training brand {brand!r} "
                 f"cooperated with every influencer ({len(influencers)}): no negative to draw "
                 "for it")
      break
  if cfg.history == "unsponsored":
    # eq. 5 and eq. 10 average over an account's history posts: with none, its w_a would be
    # uniform, its engagement 0 and its one attention slot an arbitrary concept
    kept = {post.account for post, keep in zip(dataset.posts, history_mask(cfg, dataset)) if keep}
    bare = [a.id for a in dataset.accounts if a.id not in kept]
    if bare:
      out.append(f"{data_dir / format_lib.COOPERATIONS_FILE}:0: {len(bare)} account(s) with "
                 f"every post sponsored (e.g. {bare[0]!r}): no history under "
                 "--history=unsponsored")
  return out


def negative_pool(dataset: format_lib.Dataset) -> np.ndarray:
  """The account rows the ranker draws a training brand's negatives from: every influencer
  (paper III-D-3: m_q in M_i^-, the micro-influencers of the whole dataset the brand did not
  cooperate with; ``ranker.sample_triplets`` leaves out its partners), in account file order.
  Not ``split.candidates``: that list is the test protocol's (every test brand is ranked
  against it; the authors' 797), and with it as the pool most influencers would never be a
  negative."""
  return np.array([i for i, a in enumerate(dataset.accounts) if a.kind == format_lib.INFLUENCER],
                  np.int64)


#: The work directory's record of the dataset its stages were built from.
DATA_RECORD = "data_digests.json"
#: Work-directory entries that hold stages built from the dataset.
_DATA_STAGES = ("word2vec", "concepts", "checkpoints")


def data_digests(data_dir: pathlib.Path) -> dict[str, str]:
  """A digest per dataset file (sha256 of its bytes, or "missing"), plus "image files": the
  TFDS fingerprint of posts.jsonl, labeled_posts.jsonl and every image's path, size and mtime.

  Raises DatasetError (one ``FILE:LINE`` line per image) when an image file cannot be stat'ed.
  """
  from camera_jax.data import tfds_builder  # Imported lazily, like input_pipeline does.
  out = file_digests(data_dir, (format_lib.CONCEPTS_FILE, format_lib.ACCOUNTS_FILE,
                                format_lib.POSTS_FILE, format_lib.COOPERATIONS_FILE,
                                format_lib.LABELED_POSTS_FILE, format_lib.SPLIT_FILE))
  missing: list[str] = []
  out["image files"] = tfds_builder.fingerprint(data_dir, missing)
  if missing:  # Possible with --check_images=false: stop before the record or any stage.
    raise format_lib.DatasetError(missing)
  return out


def file_digests(data_dir: pathlib.Path, names: tuple[str, ...]) -> dict[str, str]:
  """``{name: sha256 of data_dir/name, or "missing"}``."""
  return {name: file_sha256(data_dir / name) if (data_dir / name).exists() else "missing"
          for name in names}


def file_sha256(path: pathlib.Path) -> str:
  """The hex sha256 of a file's bytes, read in 1 MiB chunks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def read_data_record(workdir: pathlib.Path) -> dict[str, str] | None:
  """The work directory's :data:`DATA_RECORD` (:func:`data_digests` of the data its stages were
  built from); None when there is none. Raises ValueError (naming the file) when it cannot be
  read or is not a JSON object."""
  path = pathlib.Path(workdir) / DATA_RECORD
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read the run's record of its dataset ({str(e)[:80]})") from None
  if not isinstance(record, dict):
    raise ValueError(f"{path}: cannot read the run's record of its dataset (not a JSON object)")
  return record


def check_data_record(data_dir: pathlib.Path, workdir: pathlib.Path) -> dict[str, str]:
  """Refuses a work directory whose stages were built from another version of the dataset.

  The stages (Word2Vec, the concept layer, the checkpoints) are cached in the work directory
  and reused by the next run; a dataset edited in place since would silently get stale ones.
  The digests of the dataset's files (:func:`data_digests`) are kept in ``DATA_RECORD``; when
  they differ and a stage exists, raises ConfigError with one line naming the changed file.
  Otherwise (re)writes the record (process 0) and returns the digests.
  """
  now = data_digests(data_dir)
  path = workdir / DATA_RECORD
  if path.exists():
    try:
      before = read_data_record(workdir) or {}
    except ValueError:  # unreadable: every file counts as changed
      before = {}
    changed = [k for k in now if before.get(k) != now[k]]
    built = [d for d in _DATA_STAGES if (workdir / d).exists()]
    if changed and built:
      first = changed[0]
      images = first == "image files"
      head = f"{data_dir}: the image files of the posts" if images else str(data_dir / first)
      also = f" (and {', '.join(changed[1:])})" if len(changed) > 1 else ""
      why = ("an image's size or modification time differs: edited since, another dataset, or a "
             "copy that did not keep the files' times (cp -a and rsync -a keep them)" if images
             else "edited since, or another dataset")
      raise ConfigError([
          f"{head}{also}: not as when the stages in {workdir} ({', '.join(built)}) were built "
          f"({why}); use a new --workdir, or delete those to rebuild them"])
  if is_main():
    atomic_write_text(path, json.dumps(now, indent=2, sort_keys=True))
  return now


def word2vec_stage(cfg: Config, dataset: format_lib.Dataset, workdir: pathlib.Path) -> text_lib.TextEmbedder:
  """Trains (or reloads) Word2Vec on the captions plus the concept names."""
  path = workdir / "word2vec"
  if not path.exists():
    captions = [p.caption for p in dataset.posts] + [p.caption for p in dataset.labeled_posts]
    model = text_lib.train_word2vec(captions, dataset.concepts, dim=cfg.w2v_dim, seed=cfg.seed,
                                    epochs=cfg.w2v_epochs)
    if is_main():
      text_lib.TextEmbedder(model.wv).save(path)   # atomic: a temporary directory, renamed
    sharding.sync("word2vec")
  embedder = text_lib.TextEmbedder.load(path)
  cos = text_lib.mean_concept_cosine(embedder.embed_concepts(dataset.concepts))
  if cos > text_lib.UNTRAINED_COSINE:
    logging.warning("Word2Vec barely trained: the concept embeddings' mean cosine is %.3f, so the "
                    "semantic attention (after eq. 2) hardly changes z' from the normalised h; raise "
                    "--w2v_epochs (now %d) and retrain from a new --workdir", cos, cfg.w2v_epochs)
  return embedder


def cnn_kwargs(cfg: Config) -> dict[str, Any]:
  return {"channels": tuple(cfg.cnn_channels), "pools": tuple(cfg.cnn_pools), "fc": cfg.cnn_fc}


def input_threads(cfg: Config) -> int:
  """The image stages' decoding threads: ``--input_threads``, or for 0 ``auto_threads()``."""
  return cfg.input_threads or input_pipeline.auto_threads()


def image_decode_error(dataset: format_lib.Dataset,
                       e: input_pipeline.ImageDecodeError) -> format_lib.DatasetError:
  """The DatasetError (one ``FILE:LINE`` line) for an image a batch could not decode."""
  return format_lib.DatasetError(
      [format_lib.image_error(dataset, e.post_id, e.row, e.reason)])


def concept_source_problem(cfg: Config, dataset: format_lib.Dataset,
                           workdir: pathlib.Path) -> str | None:
  """Why the concept stage cannot get the posts' concepts h, or None.

  Checked right after the dataset is loaded, before Word2Vec and the TFDS build, so that a
  dataset without ``labeled_posts.jsonl`` (or, with ``--use_gt_concepts``, a post without
  ``concepts``) stops in one line before any work. None when h was computed by an earlier run.
  """
  if (workdir / "concepts" / "h.npy").exists():
    return None
  if cfg.use_gt_concepts:
    missing = next((p for p in dataset.posts if p.concepts is None), None)
    if missing is None:
      return None
    line = format_lib.record_line(dataset.root / format_lib.POSTS_FILE, missing.id)
    return (f'{dataset.root / format_lib.POSTS_FILE}:{line}: field "concepts": missing, which '
            f"--use_gt_concepts needs for every post (post {missing.id!r})")
  if not dataset.labeled_posts:
    return (f"{dataset.root / format_lib.LABELED_POSTS_FILE}:0: no labeled post; the file is needed "
            f"to train the concept generator (or pass --use_gt_concepts when posts carry "
            f"`concepts`)")
  return None


def concept_stage(cfg: Config, dataset: format_lib.Dataset, sources: dict[str, Any],
                  workdir: pathlib.Path, log: trainer.TrainLog, mesh) -> tuple[np.ndarray, dict]:
  """The multi-hot h of every post: ground truth (``use_gt_concepts``) or the trained generator.

  The caller has checked :func:`concept_source_problem` (``prepare_concepts`` does, before any
  work): the posts carry concepts, or there are labeled posts (and so a ``labeled`` source).
  """
  path = workdir / "concepts" / "h.npy"
  meta_path = workdir / "concepts" / "concept_generator.json"
  if path.exists():
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return np.load(path), meta
  vocab = dataset.concept_index()
  if cfg.use_gt_concepts:
    h = concepts_lib.multi_hot([p.concepts for p in dataset.posts], vocab)
    meta = {"source": "ground truth"}
  else:
    labels = concepts_lib.multi_hot([p.concepts for p in dataset.labeled_posts], vocab)
    stage_cfg = concepts_lib.ImageStageConfig(
        epochs=cfg.cg_epochs, batch_size=cfg.cg_batch_size, learning_rate=cfg.cg_learning_rate,
        lr_decay=cfg.cg_lr_decay, image_size=cfg.image_size, augment=cfg.augment, seed=cfg.seed,
        input_threads=input_threads(cfg))
    h, metrics = concepts_lib.train_concept_generator(
        labeled_source=sources["labeled"], labels=labels, posts_source=sources["posts"],
        n_posts=len(dataset.posts), cfg=stage_cfg, model_kwargs=cnn_kwargs(cfg),
        held_out=cfg.cg_held_out, threshold=cfg.cg_threshold, min_k=cfg.cg_min_k,
        max_k=cfg.cg_max_k, ckpt_dir=workdir / "checkpoints" / "concept_generator", log=log,
        mesh=mesh)
    meta = {"source": "concept generator", "held_out": metrics}
    if any(p.concepts is not None for p in dataset.posts):  # Agreement with known ground truth.
      known = [i for i, p in enumerate(dataset.posts) if p.concepts is not None]
      gt = concepts_lib.multi_hot([dataset.posts[i].concepts for i in known], vocab)
      from camera_jax.models import concept_generator as cg_lib
      meta["posts_vs_ground_truth"] = {k: float(v) for k, v in
                                       cg_lib.multilabel_metrics(h[known], gt).items()}
  if is_main():  # h.npy last: it marks the stage done (a run killed before it reruns the stage)
    strict_json.write(meta_path, meta, indent=2, sort_keys=True)
    save_npy(path, h.astype(bool))
  return h.astype(bool), meta


def cosmic_stage(cfg: Config, dataset: format_lib.Dataset, sources: dict[str, Any],
                 embedder: text_lib.TextEmbedder, h: np.ndarray, workdir: pathlib.Path,
                 log: trainer.TrainLog, mesh) -> tuple[np.ndarray, np.ndarray, dict]:
  """z' of every post (semantic attention) and the trained, standardised concept matrix U_C."""
  cdir = workdir / "concepts"
  t, has_text = embedder.embed_captions([p.caption for p in dataset.posts])
  l = embedder.embed_concepts(dataset.concepts)
  z_prime = concepts_lib.semantic_distributions(t, has_text, l, h, mode=cfg.zprime_mode,
                                                semantic=cfg.semantic)
  if (cdir / "U_C.npy").exists():
    meta_path = cdir / "cosmic.json"
    return z_prime, np.load(cdir / "U_C.npy"), (json.loads(meta_path.read_text()) if meta_path.exists() else {})
  stage_cfg = concepts_lib.ImageStageConfig(
      epochs=cfg.cosmic_epochs, batch_size=cfg.cosmic_batch_size,
      learning_rate=cfg.cosmic_learning_rate, lr_decay=cfg.cosmic_lr_decay, l1=cfg.cosmic_l1,
      image_size=cfg.image_size, augment=cfg.cosmic_augment, seed=cfg.seed,
      input_threads=input_threads(cfg))
  u_c, metrics = concepts_lib.train_cosmic(
      posts_source=sources["posts"], z_prime=z_prime, cfg=stage_cfg,
      model_kwargs={**cnn_kwargs(cfg), "d_u": cfg.d_u, "logit_scale": cfg.cosmic_logit_scale},
      held_out=0.1, ckpt_dir=workdir / "checkpoints" / "cosmic", log=log, mesh=mesh)
  if is_main():
    save_npy(cdir / "z_prime.npy", z_prime)
    atomic_write_text(cdir / "concepts.txt", "".join(c + "\n" for c in dataset.concepts))
    strict_json.write(cdir / "cosmic.json", {"held_out": metrics}, indent=2)
    save_npy(cdir / "U_C.npy", u_c.astype(np.float32))
  return z_prime, u_c, {"held_out": metrics}


def account_stage(cfg: Config, dataset: format_lib.Dataset, z_prime: np.ndarray,
                  workdir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """(w_a, z_prime_sum) of every account: eq. 5 and its input, the z' summed over the account's
  history posts (:func:`history_mask`); saved with the ids (``concepts/w_a.npy``,
  ``concepts/z_prime_sum.npy``, ``concepts/accounts.txt``)."""
  post_account, keep = history_posts(cfg, dataset)
  sums = concepts_lib.account_distributions(z_prime[keep], post_account[keep],
                                            len(dataset.accounts))
  w_a = np.asarray(camera_lib.historical_distribution(sums), np.float32)
  if is_main():
    save_npy(workdir / "concepts" / "w_a.npy", w_a)
    save_npy(workdir / "concepts" / "z_prime_sum.npy", sums)
    atomic_write_text(workdir / "concepts" / "accounts.txt",
                      "".join(a.id + "\n" for a in dataset.accounts))
  return w_a, sums


def load_account_sums(concepts_dir: pathlib.Path) -> np.ndarray:
  """A run's z' sums (:func:`account_stage`), the input of :func:`build_tables`.

  A run made before ``z_prime_sum.npy`` was saved gives ``log w_a`` instead: a per-row shift of
  the sums, which ranks and masks the same but for weights that underflowed to 0 (-inf here).
  """
  path = pathlib.Path(concepts_dir) / "z_prime_sum.npy"
  if path.exists():
    return np.load(path)
  with np.errstate(divide="ignore"):
    return np.log(np.load(pathlib.Path(concepts_dir) / "w_a.npy"))


def history_posts(cfg: Config, dataset: format_lib.Dataset) -> tuple[np.ndarray, np.ndarray]:
  """(post_account int64 [P]: each post's account row, keep bool [P]: :func:`history_mask`):
  what the per-account sums over history posts index with."""
  acc_index = dataset.account_index()
  post_account = np.array([acc_index[p.account] for p in dataset.posts], np.int64)
  return post_account, history_mask(cfg, dataset)


def history_mask(cfg: Config, dataset: format_lib.Dataset) -> np.ndarray:
  """bool [P]: the posts the account features are built from (``cfg.history``).

  ``all``: every post (no label is read). ``unsponsored``: every post but those named by a
  cooperation (``engagement.history_post_mask``).
  """
  if cfg.history == "unsponsored":
    return engagement_lib.history_post_mask(dataset)
  return np.ones(len(dataset.posts), bool)


def account_features(dataset: format_lib.Dataset, cfg: Config | None = None
                     ) -> dict[str, np.ndarray]:
  """Raw and scaled engagement/follower features of every account (eq. 10).

  The engagement statistics average over the history posts of ``cfg`` (:func:`history_mask`;
  every post when ``cfg`` is None).
  """
  posts = None if cfg is None else history_mask(cfg, dataset)
  feats = engagement_lib.account_engagement(dataset, posts)
  feats["engagement_scaled"] = np.asarray(engagement_lib.scale_engagement(feats["mean_engagement"]), np.float32)
  feats["followers_scaled"] = np.asarray(engagement_lib.scale_followers(feats["followers"]), np.float32)
  return feats


def top_concept_table(z_prime_sum: np.ndarray, k: int, shown: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The accounts' top-k concepts from their z' sums: ids int32, w_a weights float32 and the
  support mask bool, each [..., k] (``camera.top_concepts`` and ``camera.supported_concepts``,
  given ``shown`` [..., n] from :func:`account_shown` where known)."""
  idx, w = camera_lib.top_concepts(z_prime_sum, k)
  return (np.asarray(idx, np.int32), np.asarray(w, np.float32),
          np.asarray(camera_lib.supported_concepts(z_prime_sum, idx, shown), bool))


#: The top-k support mask the ranker trained with (``concepts/top_mask.npy``); a run made before
#: it was saved used the row-minimum rule (``camera.supported_concepts`` without ``shown``).
TOP_MASK_FILE = "top_mask.npy"


def account_shown(cfg: Config, dataset: format_lib.Dataset, h: np.ndarray) -> np.ndarray:
  """bool [A, n]: the concepts some history post (:func:`history_mask`) of each account shows
  (its h summed over those posts > 0): the support of the top-k mask (``camera.supported_concepts``)."""
  post_account, keep = history_posts(cfg, dataset)
  counts = concepts_lib.account_distributions(np.asarray(h)[keep].astype(np.float32),
                                              post_account[keep], len(dataset.accounts))
  return counts > 0


def build_tables(cfg: Config, z_prime_sum: np.ndarray, u_c: np.ndarray,
                 feats: dict[str, np.ndarray], shown: np.ndarray | None = None) -> ranker_lib.Tables:
  """The ranker's per-account tables: top-k concepts, their w_a weights and support mask (from
  the z' sums of :func:`account_stage`), scaled engagement and followers, and U_C."""
  idx, w, mask = top_concept_table(z_prime_sum, cfg.top_k, shown)
  return ranker_lib.Tables(top_idx=idx, top_w=w, top_mask=mask,
                           engagement=feats["engagement_scaled"],
                           followers=feats["followers_scaled"],
                           concepts=np.asarray(u_c, np.float32))


def loss_hparams(cfg: Config) -> tuple[tuple[str, Any], ...]:
  """The settings the run hands to ``losses.get_loss``: --margin and --temperature when set (the
  loss takes those it accepts; unset, it keeps its own defaults), and --loss_hparams.

  A setting given both ways (``--margin=3 --loss_hparams=margin=2``) is refused by
  :func:`check_config` before a job starts; a run made before that check keeps what it trained
  with (--loss_hparams wins), so that it still loads.
  """
  from camera_jax import losses as losses_lib
  out = _loss_flag_settings(cfg)
  out.update(losses_lib.parse_hparams(cfg.loss, cfg.loss_hparams))
  return tuple(sorted(out.items()))


def _loss_flag_settings(cfg: Config) -> dict[str, float]:
  """--margin and --temperature, those that are set."""
  return {k: v for k, v in (("margin", cfg.margin), ("temperature", cfg.temperature))
          if v is not None}


def _loss_flags_given_twice(cfg: Config) -> str | None:
  """The keyword that --loss_hparams sets and --margin or --temperature sets too, if any."""
  from camera_jax import losses as losses_lib
  both = sorted(set(_loss_flag_settings(cfg))
                & set(losses_lib.parse_hparams(cfg.loss, cfg.loss_hparams)))
  return both[0] if both else None


def ranker_config(cfg: Config, *, scoring: bool = False) -> ranker_lib.RankerConfig:
  """The ranker's settings; ``scoring``: for restoring and scoring only, which need no loss (a
  run trained with a loss that is no longer registered can still be evaluated)."""
  return ranker_lib.RankerConfig(
      epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
      representation_lr_scale=cfg.representation_lr_scale,
      lr_decay=cfg.lr_decay, dropout=cfg.dropout, init_scale=cfg.init_scale, l1=cfg.l1,
      psi_features=tuple(cfg.psi_features), gamma_features=tuple(cfg.gamma_features),
      d_score=cfg.d_score, attention_scale=cfg.attention_scale, history_norm=cfg.history_norm,
      use_interaction=cfg.use_interaction, num_negatives=cfg.num_negatives, loss=cfg.loss,
      loss_hparams=() if scoring else loss_hparams(cfg),
      endorsement=cfg.endorsement, eval_chunk=cfg.eval_chunk, seed=cfg.seed,
      matmul_dtype=cfg.matmul_dtype)


def training_positives(dataset: format_lib.Dataset, feats: dict[str, np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Unique (brand row, influencer row) positives of the training brands and their observed E(p~)."""
  acc = dataset.account_index()
  post_index = dataset.post_index()
  train = set(dataset.split.train)
  seen: dict[tuple[int, int], float] = {}
  for c in dataset.cooperations:
    if c.brand not in train:
      continue
    key = (acc[c.brand], acc[c.influencer])
    if key in seen:
      continue
    post = dataset.posts[post_index[c.post]]
    rate = engagement_lib.engagement_rate(post.likes, post.comments, feats["followers"][key[1]])
    seen[key] = float(engagement_lib.scale_engagement(rate))
  pairs = np.array(sorted(seen), np.int64).reshape(-1, 2)
  ed = np.array([seen[tuple(p)] for p in pairs], np.float32)
  return pairs, ed


def test_pairs(dataset: format_lib.Dataset) -> dict[str, np.ndarray]:
  """Every (test brand, candidate) row pair with its label; labels are never model inputs."""
  acc = dataset.account_index()
  positives = dataset.positives()
  brands = [acc[b] for b in dataset.split.test]
  cands = np.array([acc[m] for m in dataset.split.candidates], np.int64)
  b = np.repeat(np.array(brands, np.int64), len(cands))
  m = np.tile(cands, len(brands))
  ids = [a.id for a in dataset.accounts]
  labels = np.array([ids[mi] in positives.get(ids[bi], ()) for bi, mi in zip(b, m)], np.int8)
  return {"brand": b, "influencer": m, "label": labels}


def test_set_counts(dataset: format_lib.Dataset, pairs: dict[str, np.ndarray]) -> dict[str, Any]:
  """metrics.json's account of the test ``pairs`` (:func:`test_pairs` of ``dataset``), with the
  warnings it calls for, which are also logged.

  Returns ``n_test_pairs``, ``n_test_positives``, ``n_test_brands``,
  ``n_test_positives_not_candidates`` (cooperations of a test brand with an influencer that is
  not a candidate: no test pair holds them, so no metric counts them) and ``warnings``: one line
  each for that, for a split with no test brand or no candidate, and for test pairs none of which
  is positive (every metric null); empty otherwise.
  """
  positives = dataset.positives()
  candidates = set(dataset.split.candidates)
  outside = sorted((b, m) for b in dataset.split.test for m in positives.get(b, ()) if m not in candidates)
  n_positives = int(pairs["label"].sum())
  warnings = []
  if not dataset.split.test:
    warnings.append("no test brand in the split: no test pair is scored and every metric is null")
  elif not candidates:
    warnings.append("no candidate in the split: no test pair is scored and every metric is null")
  elif not n_positives:
    warnings.append(f"no test brand ({len(dataset.split.test)}) cooperated with a candidate: no "
                    "test pair is positive and every metric is null")
  if outside:
    b, m = outside[0]
    warnings.append(f"{len(outside)} cooperation(s) of a test brand with an influencer that is not a "
                    f"candidate (e.g. {b!r} with {m!r}) are in no test pair: no metric counts them")
  for line in warnings:
    logging.warning("test set: %s", line)
  return {"n_test_pairs": int(len(pairs["label"])), "n_test_positives": n_positives,
          "n_test_brands": len(dataset.split.test), "n_test_positives_not_candidates": len(outside),
          "warnings": warnings}


def ranker_loss_record(cfg: Config) -> dict[str, Any]:
  """The ranking loss ``cfg`` trains with: its name and every setting, the loss's own defaults
  included (``losses.settings_of``), as JSON values (a default that is not a JSON number,
  string, boolean or null is written as its ``repr``).

  >>> ranker_loss_record(Config(loss="hinge"))
  {'name': 'hinge', 'settings': {'margin': 1.0, 'squared': False}}
  """
  from camera_jax import losses as losses_lib
  settings = losses_lib.settings_of(cfg.loss, **dict(loss_hparams(cfg)))
  return {"name": cfg.loss, "settings": {
      k: v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)
      for k, v in settings.items()}}


#: In a work directory: :func:`ranker_loss_record` of the run that trained its ranker.
RANKER_LOSS_RECORD = "ranker_loss.json"


def check_ranker_loss(cfg: Config, workdir: pathlib.Path, *, write: bool = False) -> None:
  """Refuses a ranker trained with other loss settings; with ``write``, records them.

  A work directory knows its ranker by its flags (:func:`check_settings`), but a loss's own
  defaults live in its code: after an edit of a default, the same flags would restore a ranker
  trained with the old one. So the run that starts the ranker (``checkpoints/ranker``) of
  ``workdir`` writes :func:`ranker_loss_record` to ``workdir/RANKER_LOSS_RECORD`` just before it
  trains (``write=True``), and a later run whose record differs while the ranker's checkpoints
  exist raises ConfigError in one line (checked before any work). (An edit of a loss's formula
  changes no setting and is not seen.) A ranker trained before such records existed is left
  without one.
  """
  now = json.loads(json.dumps(ranker_loss_record(cfg)))
  path = workdir / RANKER_LOSS_RECORD
  ckpt_dir = workdir / _RANKER_STAGE
  before = read_ranker_loss(workdir)
  if _exists(workdir, _RANKER_STAGE):   # as check_settings: a ranker stopped in epoch 1 has nothing to protect
    if before is not None and before != now:
      raise ConfigError([
          f"{path}: the ranker in {ckpt_dir} was trained with loss {before.get('name')} "
          f"{_settings_text(before)}; {cfg.loss} now gives {_settings_text(now)} (its code "
          f"changed since?); use a new --workdir, or delete {ckpt_dir} to train it again"])
    return
  if write and is_main():
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(now, indent=2, sort_keys=True) + "\n")


def _settings_text(record: dict[str, Any]) -> str:
  settings = record.get("settings")
  if not isinstance(settings, dict) or not settings:
    return "(no settings)"
  return "(" + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) + ")"


def read_ranker_loss(workdir: pathlib.Path) -> dict[str, Any] | None:
  """The :func:`check_ranker_loss` record of ``workdir``; None when there is none (or it cannot
  be read: a record is only ever written whole)."""
  try:
    record = json.loads((workdir / RANKER_LOSS_RECORD).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def write_metrics(path: pathlib.Path, result: dict[str, Any]) -> None:
  """Writes metrics.json: sorted keys, every NaN as null (:mod:`camera_jax.strict_json`), atomically."""
  strict_json.write(path, result, indent=2, sort_keys=True)


def evaluate_methods(cfg: Config, dataset: format_lib.Dataset, pairs: dict[str, np.ndarray],
                     method_scores: dict[str, np.ndarray]) -> dict[str, Any]:
  """metrics.json content: every method's metrics, and CAMERA's per brand category."""
  ids = np.array([a.id for a in dataset.accounts])
  cats = np.array([a.category for a in dataset.accounts])
  out: dict[str, Any] = {"methods": {}, "per_category": {}}
  for name, scores in method_scores.items():
    res = metrics_lib.evaluate(ids[pairs["brand"]], ids[pairs["influencer"]], scores,
                               pairs["label"], influencer_category=cats[pairs["influencer"]])
    out["methods"][name] = _metric_values(res)
  if "CAMERA" in method_scores:
    brand_cat = cats[pairs["brand"]]
    for cat in sorted(set(brand_cat)):
      sel = brand_cat == cat
      res = metrics_lib.evaluate(ids[pairs["brand"][sel]], ids[pairs["influencer"][sel]],
                                 method_scores["CAMERA"][sel], pairs["label"][sel],
                                 influencer_category=cats[pairs["influencer"][sel]])
      out["per_category"][str(cat)] = _metric_values(res)
  return out


def _metric_values(res: dict[str, Any]) -> dict[str, float | int]:
  """Plain Python numbers for metrics.json: the counts (``n_brands``, ...) as ints."""
  return {k: int(v) if k.startswith("n_") else float(v) for k, v in res.items()}


def baseline_features(feats: dict[str, np.ndarray], w_a: np.ndarray) -> dict[str, np.ndarray]:
  return {"followers": feats["followers"], "mean_engagement": feats["mean_engagement"],
          "post_engagement_std": feats["post_engagement_std"], "n_posts": feats["n_posts"],
          "w_a": w_a}


def format_table(metrics: dict[str, Any]) -> str:
  """A plain-text table of every method's metrics."""
  header = f"{'method':<12}" + "".join(f"{k:>11}" for k in METRIC_KEYS)
  lines = [header, "-" * len(header)]
  for name, vals in metrics["methods"].items():
    cells = "".join(f"{vals.get(k, float('nan')):>11.4f}" if k != "medr" else
                    f"{vals.get(k, float('nan')):>11.1f}" for k in METRIC_KEYS)
    lines.append(f"{name:<12}{cells}")
  return "\n".join(lines)


def write_scores(path: pathlib.Path, dataset: format_lib.Dataset, pairs: dict[str, np.ndarray],
                 scores: np.ndarray) -> None:
  """scores.csv: brand,influencer,score,label (one row per scored test pair)."""
  ids = [a.id for a in dataset.accounts]
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["brand", "influencer", "score", "label"])
  for b, m, s, y in zip(pairs["brand"], pairs["influencer"], scores, pairs["label"]):
    writer.writerow([ids[b], ids[m], repr(float(s)), int(y)])
  atomic_write_text(path, buf.getvalue())


def ranker_inputs(cfg: Config, dataset: format_lib.Dataset, z_prime_sum: np.ndarray, u_c: np.ndarray,
                  feats: dict[str, np.ndarray], shown: np.ndarray | None = None) -> dict[str, Any]:
  """The data arguments of ``ranker.train_ranker``: tables, positives, ed_observed and
  candidates, the negatives' pool (:func:`negative_pool`; ``shown``: :func:`account_shown`, for
  the top-k support mask)."""
  positives, ed_obs = training_positives(dataset, feats)
  return {"tables": build_tables(cfg, z_prime_sum, u_c, feats, shown), "positives": positives,
          "ed_observed": ed_obs, "candidates": negative_pool(dataset)}


@dataclasses.dataclass
class Prepared:
  """Everything the ranker needs, after the concept layer."""

  dataset: format_lib.Dataset
  embedder: text_lib.TextEmbedder
  h: np.ndarray
  z_prime: np.ndarray
  u_c: np.ndarray
  w_a: np.ndarray
  z_prime_sum: np.ndarray
  feats: dict[str, np.ndarray]
  concept_metrics: dict[str, Any]


def prepare_concepts(cfg: Config, workdir: pathlib.Path, log: trainer.TrainLog, mesh) -> Prepared:
  """Stages up to the account representations (data, Word2Vec, h, COSMIC, w_a)."""
  t0 = time.perf_counter()
  data_dir = resolve_data(cfg, workdir)
  dataset = load_dataset(cfg, data_dir)
  problem = concept_source_problem(cfg, dataset, workdir)
  if problem is not None:
    raise ConfigError([problem])
  digests = check_data_record(data_dir, workdir)
  sharding.sync("data-record")
  logging.info("dataset: %s", format_lib.summary(dataset))
  embedder = word2vec_stage(cfg, dataset, workdir)
  sources = open_sources(data_dir, workdir / "tfds", digests["image files"])
  sources = decoded_sources(cfg, sources, workdir / "tfds", digests["image files"])
  try:
    h, cg_meta = concept_stage(cfg, dataset, sources, workdir, log, mesh)
    z_prime, u_c, cosmic_meta = cosmic_stage(cfg, dataset, sources, embedder, h, workdir, log,
                                             mesh)
  except input_pipeline.ImageDecodeError as e:  # Possible with --check_images=false.
    raise image_decode_error(dataset, e) from None
  w_a, z_prime_sum = account_stage(cfg, dataset, z_prime, workdir)
  feats = account_features(dataset, cfg)
  logging.info("concept layer ready in %.1f s", time.perf_counter() - t0)
  return Prepared(dataset, embedder, h, z_prime, u_c, w_a, z_prime_sum, feats,
                  {"concept_generator": cg_meta, "cosmic": cosmic_meta})


#: Result-changing settings used only by the ranker (and the account stage, recomputed by every
#: run). Every other result-changing setting shapes the concept layer (or the synthetic data).
RANKER_FIELDS = frozenset({
    "epochs", "batch_size", "learning_rate", "representation_lr_scale", "lr_decay", "dropout",
    "margin", "temperature", "init_scale", "l1", "top_k", "psi_features", "gamma_features",
    "d_score", "attention_scale", "history_norm", "num_negatives", "loss", "loss_hparams",
    "endorsement", "history", "use_interaction", "matmul_dtype"})
_RANKER_STAGE = "checkpoints/ranker"
#: The flags that choose the ranker's loss and its settings (compared by meaning: _same_loss).
_LOSS_FIELDS = frozenset({"loss", "margin", "temperature", "loss_hparams"})
#: The first stage each concept-layer setting shapes; a stage's outputs, and the stages it feeds.
_STAGE_FIELDS = {
    "word2vec": {"w2v_dim", "w2v_epochs"},
    "concept_generator": {"cnn_channels", "cnn_pools", "cnn_fc", "use_gt_concepts", "cg_epochs",
                          "cg_batch_size", "cg_learning_rate", "cg_lr_decay", "cg_held_out",
                          "cg_threshold", "cg_min_k", "cg_max_k", "augment", "image_size"},
    "cosmic": {"d_u", "cosmic_epochs", "cosmic_batch_size", "cosmic_learning_rate",
               "cosmic_lr_decay", "cosmic_l1", "zprime_mode", "semantic", "cosmic_logit_scale",
               "cosmic_augment"},
}
_STAGE_OUTPUTS = {
    "data": ("data",),
    "word2vec": ("word2vec",),
    "concept_generator": ("concepts/h.npy", "checkpoints/concept_generator"),
    "cosmic": ("concepts/U_C.npy", "checkpoints/cosmic"),
}
_DOWNSTREAM = {"data": ("data", "word2vec", "concept_generator", "cosmic"),
               "word2vec": ("word2vec", "cosmic"),
               "concept_generator": ("concept_generator", "cosmic"),
               "cosmic": ("cosmic",)}


#: Written when a stage stops on a NaN or inf (``trainer.NonFiniteError``): {"stage": ...}.
#: While it is there, that stage's learning rate may go down (train_and_evaluate removes it when
#: the run finishes), as the error's advice says.
NONFINITE_RECORD = "nonfinite.json"
_STAGE_DONE = {"concept_generator": "concepts/h.npy", "cosmic": "concepts/U_C.npy"}
_LEARNING_RATES = {"concept_generator": "cg_learning_rate", "cosmic": "cosmic_learning_rate",
                   "ranker": "learning_rate"}


def _lowered_after_nonfinite(workdir: pathlib.Path, before: Config, cfg: Config) -> str | None:
  """The learning-rate field that may change: the one of the stage a NaN stopped
  (:data:`NONFINITE_RECORD`), when ``cfg`` lowers it; None otherwise."""
  try:
    stage = json.loads((workdir / NONFINITE_RECORD).read_text(encoding="utf-8")).get("stage")
  except (OSError, ValueError, AttributeError):
    return None
  done = _STAGE_DONE.get(stage)
  if done and (workdir / done).exists():  # the stage finished since: its outputs hold the rate
    return None
  field = _LEARNING_RATES.get(stage)
  if field and getattr(cfg, field) < getattr(before, field):
    return field
  return None


def _same_loss(before: Config, cfg: Config) -> bool:
  """Whether two runs train the same loss with the same settings, however their flags spell
  them (``margin=.5`` or ``margin=0.5``, a default given or left out, keys in another order):
  their :func:`ranker_loss_record` are equal. False where either does not parse."""
  try:
    return ranker_loss_record(before) == ranker_loss_record(cfg)
  except ValueError:
    return False


def _exists(workdir: pathlib.Path, rel: str) -> bool:
  """A stage output exists: a file, a directory, but not a checkpoint directory without a
  finished step (a stage stopped in its first epoch has nothing to protect)."""
  path = workdir / rel
  if rel.startswith("checkpoints/"):
    return path.is_dir() and any(c.name.isdigit() for c in path.iterdir())
  return path.exists()


def check_settings(cfg: Config, workdir: pathlib.Path) -> None:
  """Refuses a rerun whose settings differ from those the work directory's stages were built with.

  Each stage reuses (or resumes) its output, so without this a rerun with, say, another --loss
  would restore the finished ranker and report its metrics under the new flags. The settings are
  those of ``workdir/flags.txt``. A setting may not change while an output of the first stage it
  shapes, or of a stage downstream of it, exists (the ranker is downstream of every stage; a
  checkpoint directory without a finished epoch does not count); ``epochs`` may go up, and so
  may the learning rate of a stage that stopped on a NaN or inf go down
  (:data:`NONFINITE_RECORD`). ``data_dir`` is not compared (the dataset's content is, by
  :func:`check_data_record`), nor ``preset`` where either run reads a dataset directory.
  Raises ConfigError in one line.
  """
  path = workdir / "flags.txt"
  if not path.exists():
    return
  try:
    before = config_lib.read_flags(path)
  except (OSError, ValueError) as e:  # a bad value: read_flags names the file, line and flag
    what = (f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})"
            if isinstance(e, (OSError, UnicodeError)) else str(e))
    raise ConfigError([f"{what}; it records the settings the stages in {workdir} were built "
                       "with: fix it, or use a new --workdir"]) from None
  lowered = _lowered_after_nonfinite(workdir, before, cfg)
  changed = [k for k in config_lib.differences(before, cfg) if k != "data_dir"
             and not (k == "preset" and (cfg.data_dir or before.data_dir))
             and not (k == "epochs" and cfg.epochs > before.epochs) and k != lowered]
  if set(changed) & _LOSS_FIELDS and _same_loss(before, cfg):
    changed = [k for k in changed if k not in _LOSS_FIELDS]   # the same loss, spelt otherwise
  if not changed:
    return
  blocked: list[str] = []
  for k in changed:
    if k in RANKER_FIELDS:
      continue
    first = next((s for s, fields in _STAGE_FIELDS.items() if k in fields), "data")
    for stage in _DOWNSTREAM[first]:
      for rel in _STAGE_OUTPUTS[stage]:
        if rel == "data" and cfg.data_dir:
          continue
        if rel not in blocked and _exists(workdir, rel):
          blocked.append(rel)
  if _exists(workdir, _RANKER_STAGE):
    blocked.append(_RANKER_STAGE)
  if not blocked:
    return
  what = ", ".join(f"{k} {_flag_value(getattr(before, k))} -> {_flag_value(getattr(cfg, k))}"
                   for k in changed)
  raise ConfigError([
      f"{path}: the stages in {workdir} ({', '.join(blocked)}) were built with other settings "
      f"({what}); use a new --workdir, or delete those to rebuild them"])


def _flag_value(v: Any) -> str:
  if v is None:
    return "unset"
  if isinstance(v, tuple):
    return ",".join(map(str, v)) or "(empty)"
  return str(v).lower() if isinstance(v, bool) else (str(v) or "(empty)")


def train_and_evaluate(cfg: Config, workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs the whole method and returns the content of metrics.json.

  Raises ConfigError (before any work) when ``check_config(cfg)`` finds problems, or when the
  work directory's stages were built with other settings (:func:`check_settings`).
  """
  errors = check_config(cfg)
  if errors:
    raise ConfigError(errors)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  check_settings(cfg, workdir)
  check_ranker_loss(cfg, workdir)
  sharding.sync("settings")  # every process read the earlier flags.txt before it is rewritten
  t_start = time.perf_counter()
  log = trainer.TrainLog(workdir / "train_log.jsonl", enabled=is_main())
  flags_path = workdir / "flags.txt"
  earlier_flags = flags_path.read_text() if flags_path.exists() else None
  outputs_before = _concept_outputs(workdir)
  if is_main():
    atomic_write_text(flags_path, config_lib.flags_file(cfg, workdir))
  mesh = sharding.make_mesh()
  try:
    prep = prepare_concepts(cfg, workdir, log, mesh)
    mask_file = workdir / "concepts" / TOP_MASK_FILE
    # A ranker checkpoint without the mask file: trained before the file existed, with the
    # row-minimum rule (as load_run assumes); keep that mask rather than record another.
    legacy = not mask_file.exists() and _exists(workdir, _RANKER_STAGE)
    inputs = ranker_inputs(cfg, prep.dataset, prep.z_prime_sum, prep.u_c, prep.feats,
                           None if legacy else account_shown(cfg, prep.dataset, prep.h))
    tables = inputs["tables"]
    if is_main() and not legacy:  # the mask the ranker trains with: load_run reads it back
      save_npy(mask_file, tables.top_mask)
    check_ranker_loss(cfg, workdir, write=True)
    params = ranker_lib.train_ranker(cfg=ranker_config(cfg), **inputs,
                                     ckpt_dir=workdir / "checkpoints" / "ranker", log=log,
                                     mesh=mesh)
  except trainer.NonFiniteError as e:
    if is_main() and e.stage in _LEARNING_RATES:
      atomic_write_text(workdir / NONFINITE_RECORD, json.dumps({"stage": e.stage}))
    raise
  except (ckpt_lib.CheckpointMismatchError, ConfigError, format_lib.DatasetError):
    # The run's checkpoints keep their settings: put back the flags.txt that describes them, so
    # that evaluate.py and a rerun with --flagfile=DIR/flags.txt still restore them -- unless a
    # stage of this run rewrote the concept layer, which the new flags describe. A run that
    # found no flags.txt leaves none of its own behind: its settings built nothing (a checkpoint
    # that did not fit them would otherwise be blamed on them by the next run, and
    # paper_tables.py would hold them against a corrected rerun).
    if is_main() and _concept_outputs(workdir) == outputs_before:
      if earlier_flags is not None:
        atomic_write_text(flags_path, earlier_flags)
      else:  # no record of the stages' settings before: leave none rather than this run's
        flags_path.unlink(missing_ok=True)
    raise
  if is_main():
    (workdir / NONFINITE_RECORD).unlink(missing_ok=True)  # every stage finished
  result = evaluate_run(cfg, prep, tables, params, workdir)
  result["seconds"] = time.perf_counter() - t_start
  return result


#: Concept-layer files that every run rewrites (the account stage): compared by content.
_REWRITTEN_EACH_RUN = ("concepts/w_a.npy", "concepts/z_prime_sum.npy", "concepts/accounts.txt",
                       "concepts/" + TOP_MASK_FILE)


def _concept_outputs(workdir: pathlib.Path) -> dict[str, Any]:
  """What the concept layer's outputs (word2vec/, concepts/) hold: a content digest of the
  files every run rewrites, (size, mtime) of the others, which only a retrained stage writes."""
  out: dict[str, Any] = {}
  for sub in ("word2vec", "concepts"):
    for path in sorted((workdir / sub).rglob("*")) if (workdir / sub).is_dir() else []:
      if not path.is_file():
        continue
      name = path.relative_to(workdir).as_posix()
      if name in _REWRITTEN_EACH_RUN:
        out[name] = file_sha256(path)
      else:
        st = path.stat()
        out[name] = (st.st_size, st.st_mtime_ns)
  return out


def evaluate_run(cfg: Config, prep: Prepared, tables: ranker_lib.Tables, params: Any,
                 workdir: pathlib.Path) -> dict[str, Any]:
  """Scores the test pairs with CAMERA and the baselines; writes metrics.json and scores.csv."""
  return evaluate_tables(cfg, prep.dataset, tables, params, prep.feats, prep.w_a,
                         prep.concept_metrics, workdir,
                         ranker_loss=read_ranker_loss(workdir))


def evaluate_tables(cfg: Config, dataset: format_lib.Dataset, tables: ranker_lib.Tables,
                    params: Any, feats: dict[str, np.ndarray], w_a: np.ndarray,
                    concept_metrics: dict[str, Any], out_dir: pathlib.Path,
                    ranker_loss: dict[str, Any] | None = None) -> dict[str, Any]:
  """evaluate_run from its pieces: the test pairs of ``dataset`` scored with the account ``tables``.

  ``ranker_loss``: metrics.json's record of the loss the ranker trained with
  (:func:`read_ranker_loss`; null for a ranker trained before such records existed).

  Labels (``dataset``'s cooperations of the test brands) are read only to compute the metrics;
  writes ``out_dir``/metrics.json and ``out_dir``/scores.csv (process 0 only).
  """
  pairs = test_pairs(dataset)
  local_mesh = sharding.make_mesh(jax.local_devices())
  scored = ranker_lib.score_pairs(ranker_config(cfg, scoring=True), params, tables, pairs["brand"],
                                  pairs["influencer"], mesh=local_mesh, keys=("S",))
  method_scores = {"CAMERA": scored["S"]}
  base_feats = baseline_features(feats, w_a)
  rng = np.random.default_rng(cfg.seed)
  for name in cfg.baselines:
    method_scores[name] = np.asarray(baselines_lib.score_baseline(
        name, {"brand": pairs["brand"], "influencer": pairs["influencer"]}, base_feats, rng), np.float64)
  result = evaluate_methods(cfg, dataset, pairs, method_scores)
  result["concept_layer"] = concept_metrics
  result["ranker_loss"] = ranker_loss
  result.update(test_set_counts(dataset, pairs))
  # which labels and split the metrics are of: the report checks them against the run's dataset
  result["labels"] = labels_record(dataset)
  if is_main():
    out_dir = pathlib.Path(out_dir)
    write_scores(out_dir / "scores.csv", dataset, pairs, scored["S"])
    write_metrics(out_dir / "metrics.json", result)
  return result


def labels_record(dataset: format_lib.Dataset) -> dict[str, str]:
  """sha256 of the dataset's cooperations.jsonl and split.json ("missing" when absent)."""
  return file_digests(pathlib.Path(dataset.root), (format_lib.COOPERATIONS_FILE,
                                                   format_lib.SPLIT_FILE))


def saved_concept_metrics(workdir: pathlib.Path) -> dict[str, Any]:
  """The concept layer's held-out metrics saved by a run (concepts/*.json)."""
  out = {}
  for name in ("concept_generator", "cosmic"):
    path = pathlib.Path(workdir) / "concepts" / f"{name}.json"
    out[name] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
  return out


def check_no_training_brand_tested(run: Any) -> None:
  """Raises ValueError (one line) when ``run.dataset``'s test brands include a brand the run's
  ranker trained on: their cooperations were its training positives, so their metrics would be
  leaked.

  The run's training brands are those of the split it trained with: its own dataset's
  (``flags.txt``), whose split.json must still be the one recorded in ``data_digests.json`` (a
  run without that record is compared with its dataset's split as it is now). When the run's
  dataset has moved (a run copied to another machine), a run trained on the default split gets
  it back from its accounts (``accounts.jsonl`` is the run's, ``load_run`` checks) and seed, and
  a run trained on a split.json needs the given dataset's split.json to be that file.
  """
  own_cfg = config_lib.read_flags(run.workdir / "flags.txt")  # load_run replaced its data_dir
  own = pathlib.Path(own_cfg.data_dir) if own_cfg.data_dir else run.workdir / "data"
  record = read_data_record(run.workdir) or {}  # load_run refused an unreadable one
  trained_with = record.get(format_lib.SPLIT_FILE)
  given = run.dataset.root / format_lib.SPLIT_FILE
  if own.is_dir():
    split_file = own / format_lib.SPLIT_FILE
    now = file_sha256(split_file) if split_file.exists() else "missing"
    if trained_with is not None and trained_with != now:
      raise ValueError(f"{split_file}: not the split the run trained with (its sha256 differs "
                       f"from {run.workdir / DATA_RECORD}'s), so the run's training brands are "
                       "unknown and a test brand among them would give leaked metrics; restore "
                       "it, and put another split in a copy of the dataset (--data_dir)")
    same = own.resolve() == run.dataset.root.resolve()
    trained = (run.dataset if same else format_lib.load(own, seed=own_cfg.seed,
                                                        check_images=False)).split.train
  elif trained_with == "missing":  # moved; trained on the default split of its accounts
    trained = format_lib.default_split(run.dataset.accounts, own_cfg.seed).train
  else:  # moved; trained on a split.json: the given one must be that file
    given_sha = file_sha256(given) if given.exists() else "missing"
    if trained_with is None or given_sha != trained_with:
      raise ValueError(f"{own}: the run's own dataset is gone and {given} is not the split the "
                       f"run trained with ({run.workdir / DATA_RECORD}), so its training brands "
                       "are unknown; rescore with the run's dataset, or restore it")
    trained = run.dataset.split.train
  leaked = [b for b in run.dataset.split.test if b in set(trained)]
  if leaked:
    source = given if given.exists() else run.dataset.root
    raise ValueError(f"{source}: {len(leaked)} test brand(s) (e.g. {leaked[0]!r}) were training "
                     "brands of the run: their cooperations trained the ranker, so their metrics "
                     "would be leaked")


def rescore(workdir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
            out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """Rescores the test pairs of ``data_dir`` (default: the run's own data) with a finished run.

  Uses the run's saved concept layer (``concepts/w_a.npy``) and its latest ranker checkpoint;
  ``data_dir`` must hold the run's accounts (``concepts/accounts.txt``, same order; see
  ``camera_jax.run.load_run``); its cooperations and split may differ.  Rewrites metrics.json and
  scores.csv in ``out_dir`` (default: the work directory) and returns metrics.json's content.
  """
  from camera_jax import run as run_lib  # run imports this module
  run = run_lib.load_run(workdir, data_dir)
  check_no_training_brand_tested(run)
  feats = account_features(run.dataset, run.config)
  out = pathlib.Path(out_dir) if out_dir else run.workdir
  return evaluate_tables(run.config, run.dataset, run.tables, run.params, feats, run.w_a,
                         saved_concept_metrics(run.workdir), out,
                         ranker_loss=read_ranker_loss(run.workdir))
