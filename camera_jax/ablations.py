"""The paper's comparison (IV-E): CAMERA, its ablations and the baselines, each selectable by name.

Methods (:data:`METHODS`), all scored on the same test pairs (``pipeline.test_pairs``: every test
brand x every candidate), from the same per-account features, with the same leak-free rule (no
label is an input; the endorsement input of every test pair is the label-free E(m) estimate):

* ``CAMERA``: a full pipeline run (``pipeline.train_and_evaluate``) in ``SEED_DIR/camera``.
* ``RAND``, ``POP``, ``ENG``, ``MIV``, ``CONTENT``: the label-free baselines of
  ``camera_jax.baselines`` (RAND and MIV the paper's; POP, ENG and CONTENT not in the paper), from the CAMERA run's dataset, engagement features and w_a.
* ``C-w/o-SI``: ``semantic=False`` (z' = the normalised multi-hot h, no semantic attention), which
  changes z', hence COSMIC's U_C (retrained), w_a and the ranker. The concept generator's h and
  Word2Vec are those of the CAMERA run (copied: the ablation changes nothing upstream of z').
* ``C-w/o-MR``: ``use_interaction=False`` (S = S_con, no S_ed / S_in); only the ranker is
  retrained, on the CAMERA run's concept layer (h, z', U_C, Word2Vec copied).
* ``Hp+MR``: multi-modal history pooling + CAMERA's ranking module
  (``camera_jax.models.history_pooling``), on the CAMERA run's Word2Vec caption embeddings and
  COSMIC visual embeddings v2.

Work directory of :func:`run_paper_tables` (``experiments/paper_tables.py``)::

  WORKDIR/paper_tables.json        the base config (every field but seed); a rerun must match
  WORKDIR/seed_N/camera/           a full pipeline run (data/, tfds/, word2vec/, concepts/, ...)
  WORKDIR/seed_N/wo_si/            pipeline run, semantic=false, data and h from camera/
  WORKDIR/seed_N/wo_mr/            pipeline run, use_interaction=false, concept layer from camera/
  WORKDIR/seed_N/hp_mr/            features.npy (x_a), checkpoints/ranker, scores.csv, metrics.json
  WORKDIR/seed_N/results.json      every method's metrics, CAMERA per category, per-brand values
  WORKDIR/table2.*, table3.*, significance.*   (camera_jax.tables)

Every variant directory holds ``flags.txt`` (its resolved config), ``scores.csv`` and
``metrics.json``; a variant whose ``scores.csv`` exists is not rerun, an interrupted one resumes
from its checkpoints (the pipeline's caching), and a directory made with other flags is refused.
Seeds change everything seeded: the synthetic dataset (generated from the seed), the split, the
initialisation, the data order and the negatives.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import shutil
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import optax

from camera_jax import atomic
from camera_jax import baselines as baselines_lib
from camera_jax import config as config_lib
from camera_jax import metrics as metrics_lib
from camera_jax import pipeline
from camera_jax import strict_json
from camera_jax import tables as tables_lib
from camera_jax.config import Config
from camera_jax.data import format as format_lib
from camera_jax.data import input_pipeline
from camera_jax.data import text as text_lib
from camera_jax.models import cosmic as cosmic_lib
from camera_jax.models import history_pooling as hp_lib
from camera_jax.training import checkpoint as ckpt_lib
from camera_jax.training import concepts as concepts_lib
from camera_jax.training import ranker as ranker_lib
from camera_jax.training import sharding
from camera_jax.training import trainer

__all__ = ["METHODS", "BASELINE_METHODS", "TRAINED_METHODS", "VARIANT_DIRS", "resolve_methods",
           "variant_config", "run_seed", "collect_seed", "seed_results", "run_paper_tables",
           "init_workdir", "ConfigMismatchError"]

#: Every method, in table order.
METHODS = ("CAMERA", "Hp+MR", "C-w/o-SI", "C-w/o-MR", "CONTENT", "MIV", "POP", "ENG", "RAND")
#: The label-free baselines (camera_jax.baselines), scored without training.
BASELINE_METHODS = ("RAND", "POP", "ENG", "MIV", "CONTENT")
#: The methods that train a model, and their directory under WORKDIR/seed_N.
VARIANT_DIRS = {"CAMERA": "camera", "C-w/o-SI": "wo_si", "C-w/o-MR": "wo_mr", "Hp+MR": "hp_mr"}
TRAINED_METHODS = tuple(VARIANT_DIRS)
#: The metrics kept per brand in results.json (those of the significance tests, and more).
PER_BRAND_KEYS = ("mrr", "recall@10", "recall@50", "map", "auc", "rank_first")
#: The concept-layer files a variant takes over from the CAMERA run.
_SHARED_CONCEPTS = {
    "C-w/o-SI": ("h.npy", "concept_generator.json"),
    "C-w/o-MR": ("h.npy", "concept_generator.json", "z_prime.npy", "U_C.npy", "cosmic.json",
                 "concepts.txt"),
}


class ConfigMismatchError(ValueError):
  """A cached directory was made with other settings than the ones asked for."""


def resolve_methods(names: Sequence[str] | None) -> tuple[str, ...]:
  """Canonical method names (case-insensitive input) in table order; CAMERA is always included.

  Raises ValueError naming the unknown method and the known ones, or when ``names`` holds only
  empty names (``--methods=,``; no names at all is every method).
  """
  if not names:
    return METHODS
  if not any(str(n).strip() for n in names):
    raise ValueError(f"no method named in {','.join(map(str, names))!r}; known: {', '.join(METHODS)}")
  by_key = {m.lower(): m for m in METHODS}
  chosen = {"CAMERA"}
  for name in names:
    key = str(name).strip().lower()
    if not key:
      continue
    if key not in by_key:
      raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    chosen.add(by_key[key])
  return tuple(m for m in METHODS if m in chosen)


def variant_config(cfg: Config, method: str, data_dir: str | os.PathLike) -> Config:
  """The config of a trained method's run; ``cfg`` is the seed's CAMERA config.

  The variants read the CAMERA run's dataset (``data_dir``), evaluate no baselines and write no
  report; C-w/o-SI sets ``semantic=False``, C-w/o-MR ``use_interaction=False``.
  """
  if method == "CAMERA":
    return cfg
  if method not in VARIANT_DIRS:
    raise ValueError(f"{method!r} is not a trained method ({', '.join(TRAINED_METHODS)})")
  out = cfg.replace(data_dir=str(data_dir), baselines=(), report=False)
  if method == "C-w/o-SI":
    out = out.replace(semantic=False)
  elif method == "C-w/o-MR":
    out = out.replace(use_interaction=False)
  return out


def _check_flags(workdir: pathlib.Path, cfg: Config, inner_data: bool = False) -> None:
  """Refuses a variant directory made with other settings. ``inner_data``: ``cfg.data_dir`` is
  the seed's own ``camera/data`` (a synthetic preset), so a saved ``.../camera/data`` matches
  wherever the work directory has been moved or copied to since."""
  path = workdir / "flags.txt"
  if path.exists():
    saved = config_lib.read_flags(path)
    if inner_data and pathlib.Path(saved.data_dir).parts[-2:] == ("camera", "data"):
      saved = saved.replace(data_dir=cfg.data_dir)
    diff = config_lib.differences(saved, cfg)
    if diff:
      raise ConfigMismatchError(
          f"{workdir} was made with other settings ({', '.join(diff)}); use another --workdir")


def _write_flags(workdir: pathlib.Path, cfg: Config) -> None:
  atomic.write_text(workdir / "flags.txt", config_lib.flags_file(cfg, workdir))


def _done(workdir: pathlib.Path) -> bool:
  return (workdir / "scores.csv").exists() and (workdir / "metrics.json").exists()


def _copy_path(src: pathlib.Path, dst: pathlib.Path) -> None:
  """Copies a file or directory atomically (temporary name, then rename); skips existing dst."""
  if dst.exists() or not src.exists():
    return
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = atomic.temp_path(dst)          # a fresh name: two runs never share a temporary copy
  if src.is_dir():
    shutil.copytree(src, tmp)
  else:
    shutil.copy2(src, tmp)
  os.replace(tmp, dst)


def _share_with_camera(method: str, camera_dir: pathlib.Path, out_dir: pathlib.Path) -> None:
  """Seeds a variant directory with the CAMERA run's Word2Vec, TFDS build and concept files."""
  out_dir.mkdir(parents=True, exist_ok=True)
  _copy_path(camera_dir / "word2vec", out_dir / "word2vec")
  tfds = out_dir / "tfds"
  if not tfds.exists() and not tfds.is_symlink() and (camera_dir / "tfds").exists():
    os.symlink(os.path.relpath(camera_dir / "tfds", out_dir), tfds)
  for name in _SHARED_CONCEPTS.get(method, ()):
    _copy_path(camera_dir / "concepts" / name, out_dir / "concepts" / name)


def camera_data_dir(cfg: Config, camera_dir: pathlib.Path) -> pathlib.Path:
  """The dataset of a seed: ``cfg.data_dir``, or the synthetic preset inside the CAMERA run."""
  return pathlib.Path(cfg.data_dir) if cfg.data_dir else camera_dir / "data"


# --------------------------------------------------------------------------- Hp+MR


def cosmic_post_embeddings(cfg: Config, camera_dir: pathlib.Path, posts_source: Any, n_posts: int,
                           n_concepts: int, mesh: jax.sharding.Mesh) -> np.ndarray:
  """v2 of every post (eq. 2) from the CAMERA run's latest COSMIC checkpoint: [P, d_u] float32."""
  model = cosmic_lib.COSMIC(num_concepts=n_concepts, **pipeline.cnn_kwargs(cfg), d_u=cfg.d_u,
                            logit_scale=cfg.cosmic_logit_scale)
  with ckpt_lib.Checkpointer(camera_dir / "checkpoints" / "cosmic") as ckpt:
    restored, _ = ckpt.restore()
  state = trainer.TrainState.create(apply_fn=model.apply, params=restored["params"],
                                    tx=optax.identity(), batch_stats=restored["batch_stats"])
  return concepts_lib.predict_all(
      model_outputs=lambda o: o["v2"], state=state, source=posts_source, indices=None,
      n_rows=n_posts, width=cfg.d_u, batch_size=cfg.cosmic_batch_size,
      image_size=cfg.image_size, mesh=mesh, input_threads=pipeline.input_threads(cfg))


def hp_account_features(cfg: Config, dataset: format_lib.Dataset, data_dir: pathlib.Path,
                        camera_dir: pathlib.Path, mesh: jax.sharding.Mesh,
                        image_key: str | None = None) -> np.ndarray:
  """Hp+MR's x_a of every account from the CAMERA run's Word2Vec and COSMIC: [A, d_t + d_u].

  ``image_key``: the data's TFDS fingerprint when already known (the "image files" entry of
  :func:`pipeline.data_digests`); None computes it. The posts' images are read from the CAMERA
  run's decoded file where it has one.
  """
  from camera_jax.data import tfds_builder  # imports tensorflow_datasets: only when needed

  embedder = text_lib.TextEmbedder.load(camera_dir / "word2vec")
  t, has_text = embedder.embed_captions([p.caption for p in dataset.posts])
  key = image_key or tfds_builder.fingerprint(data_dir)
  sources = input_pipeline.prepare(data_dir, camera_dir / "tfds", key)
  sources = pipeline.decoded_sources(cfg, sources, camera_dir / "tfds", key)
  try:
    v2 = cosmic_post_embeddings(cfg, camera_dir, sources["posts"], len(dataset.posts),
                                len(dataset.concepts), mesh)
  except input_pipeline.ImageDecodeError as e:
    raise pipeline.image_decode_error(dataset, e) from None
  post_account, keep = pipeline.history_posts(cfg, dataset)  # the posts of CAMERA's w_a
  return hp_lib.account_features(t[keep], has_text[keep], v2[keep], post_account[keep],
                                 len(dataset.accounts))


def run_hp_mr(cfg: Config, camera_dir: pathlib.Path, out_dir: pathlib.Path) -> dict[str, Any]:
  """Trains and evaluates Hp+MR; writes flags.txt, features.npy, scores.csv and metrics.json.

  ``camera_dir`` is the seed's CAMERA run, checked against the dataset (its data record) by
  :func:`run_seed` before this runs.
  """
  t0 = time.perf_counter()
  out_dir.mkdir(parents=True, exist_ok=True)
  _write_flags(out_dir, cfg)
  mesh = sharding.make_mesh()
  data_dir = pathlib.Path(cfg.data_dir)
  dataset = pipeline.load_dataset(cfg.replace(check_images=False), data_dir)
  feat_path = out_dir / "features.npy"
  if feat_path.exists():
    x_a = np.load(feat_path)
  else:
    record = pipeline.read_data_record(camera_dir)  # checked and rewritten by run_seed
    x_a = hp_account_features(cfg, dataset, data_dir, camera_dir, mesh, record["image files"])
    pipeline.save_npy(feat_path, x_a)
  feats = pipeline.account_features(dataset, cfg)
  tables = hp_lib.HpTables(features=x_a.astype(np.float32), engagement=feats["engagement_scaled"],
                           followers=feats["followers_scaled"])
  positives, ed_obs = pipeline.training_positives(dataset, feats)
  rcfg = pipeline.ranker_config(cfg)
  pipeline.check_ranker_loss(cfg, out_dir, write=True)
  log = trainer.TrainLog(out_dir / "train_log.jsonl")
  params = ranker_lib.train_ranker(cfg=rcfg, tables=tables, positives=positives,
                                   ed_observed=ed_obs, candidates=pipeline.negative_pool(dataset),
                                   ckpt_dir=out_dir / "checkpoints" / "ranker", log=log, mesh=mesh,
                                   stage="hp_mr", model=hp_lib.HP_MODEL)
  pairs = pipeline.test_pairs(dataset)
  local_mesh = sharding.make_mesh(jax.local_devices())
  scored = ranker_lib.score_pairs(rcfg, params, tables.device(local_mesh), pairs["brand"],
                                  pairs["influencer"], mesh=local_mesh,
                                  score_fn=ranker_lib.make_score_fn(rcfg, hp_lib.HP_MODEL),
                                  keys=("S",))
  result = pipeline.evaluate_methods(cfg, dataset, pairs, {"Hp+MR": scored["S"]})
  result.update(pipeline.test_set_counts(dataset, pairs))
  result["ranker_loss"] = pipeline.read_ranker_loss(out_dir)
  result["seconds"] = time.perf_counter() - t0
  pipeline.write_scores(out_dir / "scores.csv", dataset, pairs, scored["S"])
  pipeline.write_metrics(out_dir / "metrics.json", result)
  return result


# --------------------------------------------------------------------------- one seed


def run_seed(cfg: Config, seed_dir: str | os.PathLike, methods: Sequence[str] = METHODS,
             progress: Callable[[str], None] = print) -> dict[str, float]:
  """Trains (or finds cached) every trained method of ``methods`` for one seed.

  ``cfg`` is the seed's CAMERA config (``seed`` already set). Returns the seconds each trained
  method took in this call (0 for a cached one).
  """
  seed_dir = pathlib.Path(seed_dir)
  camera_dir = seed_dir / VARIANT_DIRS["CAMERA"]
  seconds: dict[str, float] = {}
  for method in TRAINED_METHODS:  # CAMERA first: the others reuse its stages.
    if method not in methods and method != "CAMERA":
      continue
    out_dir = seed_dir / VARIANT_DIRS[method]
    vcfg = variant_config(cfg, method, camera_data_dir(cfg, camera_dir))
    _check_flags(out_dir, vcfg, inner_data=method != "CAMERA" and not cfg.data_dir)
    if _done(out_dir):
      seconds[method] = 0.0
      if method == "CAMERA":
        # A cached CAMERA run must come from the dataset as it is now, as train_and_evaluate
        # requires of its own stages: its results and stages feed every other method.
        pipeline.check_data_record(camera_data_dir(cfg, camera_dir), camera_dir)
      continue
    progress(f"seed {cfg.seed}: training {method} in {out_dir}")
    t0 = time.perf_counter()
    if method == "CAMERA":
      pipeline.train_and_evaluate(vcfg, out_dir)
    elif method == "Hp+MR":
      run_hp_mr(vcfg, camera_dir, out_dir)
    else:
      _share_with_camera(method, camera_dir, out_dir)
      pipeline.train_and_evaluate(vcfg, out_dir)
    seconds[method] = time.perf_counter() - t0
    progress(f"seed {cfg.seed}: {method} done in {seconds[method]:.0f} s")
  return seconds


def read_scores(path: pathlib.Path, ids: np.ndarray, pairs: Mapping[str, np.ndarray]) -> np.ndarray:
  """A scores.csv aligned with ``pairs`` (account rows); every pair must be present exactly once."""
  table: dict[tuple[str, str], float] = {}
  with open(path, newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      table[(row["brand"], row["influencer"])] = float(row["score"])
  keys = list(zip(ids[pairs["brand"]], ids[pairs["influencer"]]))
  missing = [k for k in keys if k not in table]
  if missing or len(table) != len(keys):
    raise ValueError(f"{path}: scores do not cover the test pairs ({len(missing)} missing, "
                     f"{len(table)} rows for {len(keys)} pairs)")
  return np.array([table[k] for k in keys], np.float64)


def collect_seed(cfg: Config, seed_dir: str | os.PathLike, methods: Sequence[str] = METHODS
                 ) -> dict[str, Any]:
  """Every method's scores on the seed's test pairs.

  Returns dict(brand_ids, influencer_ids, labels, influencer_category, brand_category: [N] arrays,
  scores: {method: float64 [N]}).
  """
  seed_dir = pathlib.Path(seed_dir)
  camera_dir = seed_dir / VARIANT_DIRS["CAMERA"]
  dataset = pipeline.load_dataset(cfg.replace(check_images=False),
                                  camera_data_dir(cfg, camera_dir))
  pairs = pipeline.test_pairs(dataset)
  ids = np.array([a.id for a in dataset.accounts])
  cats = np.array([a.category for a in dataset.accounts])
  scores: dict[str, np.ndarray] = {}
  for method in methods:
    if method in VARIANT_DIRS:
      scores[method] = read_scores(seed_dir / VARIANT_DIRS[method] / "scores.csv", ids, pairs)
  names = [m for m in BASELINE_METHODS if m in methods]
  if names:
    w_a = np.load(camera_dir / "concepts" / "w_a.npy")
    feats = pipeline.baseline_features(pipeline.account_features(dataset, cfg), w_a)
    rng = np.random.default_rng(cfg.seed)  # as pipeline.evaluate_run: one generator, RAND first
    for name in names:
      scores[name] = np.asarray(baselines_lib.score_baseline(
          name, {"brand": pairs["brand"], "influencer": pairs["influencer"]}, feats, rng),
          np.float64)
  return {"brand_ids": ids[pairs["brand"]], "influencer_ids": ids[pairs["influencer"]],
          "labels": pairs["label"], "influencer_category": cats[pairs["influencer"]],
          "brand_category": cats[pairs["brand"]],
          "scores": {m: scores[m] for m in methods if m in scores}}


def _floats(d: Mapping[str, Any]) -> dict[str, float]:
  return {k: float(v) for k, v in d.items()}


def seed_results(collected: Mapping[str, Any]) -> dict[str, Any]:
  """Metrics of every method, CAMERA's per brand category, and per-brand values for bootstraps."""
  b, m, y = collected["brand_ids"], collected["influencer_ids"], collected["labels"]
  icat, bcat = collected["influencer_category"], collected["brand_category"]
  out: dict[str, Any] = {"methods": {}, "per_category": {}, "per_brand": {}}
  for method, s in collected["scores"].items():
    pb = metrics_lib.evaluate_per_brand(b, m, s, y, influencer_category=icat)
    out["methods"][method] = _floats(metrics_lib.aggregate(pb))
    out["per_brand"][method] = {"brand": [str(x) for x in pb["brand"]],
                                **{k: [float(v) for v in pb[k]] for k in PER_BRAND_KEYS}}
  if "CAMERA" in collected["scores"]:
    s = collected["scores"]["CAMERA"]
    for cat in sorted(set(bcat.tolist())):
      sel = bcat == cat
      out["per_category"][str(cat)] = _floats(metrics_lib.evaluate(
          b[sel], m[sel], s[sel], y[sel], influencer_category=icat[sel]))
  return out


# --------------------------------------------------------------------------- the whole job


def init_workdir(workdir: str | os.PathLike, cfg: Config) -> pathlib.Path:
  """Creates (or checks) a paper_tables work directory for the base config ``cfg``.

  Writes ``paper_tables.json`` into a new or empty directory. Raises ConfigMismatchError for a
  non-empty directory without it, or one whose saved config differs from ``cfg`` in a field that
  changes results (the seed aside). An existing pipeline run can then be reused as seed N's CAMERA
  run by copying it to ``WORKDIR/seed_N/camera`` (its flags.txt is checked like any other).
  """
  workdir = pathlib.Path(workdir)
  marker = workdir / "paper_tables.json"
  if marker.exists():
    saved = Config(**{k: (tuple(v) if isinstance(v, list) else v)
                      for k, v in json.loads(marker.read_text())["config"].items()
                      if k in Config.__dataclass_fields__})
    diff = [k for k in config_lib.differences(saved, cfg) if k != "seed"]
    if diff:
      raise ConfigMismatchError(
          f"{workdir} holds tables made with other settings ({', '.join(diff)}); "
          "use another --workdir")
    return workdir
  if workdir.exists() and any(workdir.iterdir()):
    raise ConfigMismatchError(f"{workdir} is not empty and is not a paper_tables work directory")
  workdir.mkdir(parents=True, exist_ok=True)
  strict_json.write(marker, {"config": config_lib.absolute_paths(cfg).to_dict()}, indent=2,
                    sort_keys=True)
  return workdir


def run_paper_tables(cfg: Config, workdir: str | os.PathLike, seeds: Sequence[int],
                     methods: Sequence[str] | None = None, *, n_resamples: int = 1000,
                     alpha: float = 0.05, progress: Callable[[str], None] = print
                     ) -> dict[str, Any]:
  """Trains and evaluates every method over the seeds; writes Tables II, III and significance.

  Args:
    cfg: the base config (its ``seed`` is replaced by each of ``seeds``).
    workdir: the paper_tables work directory (layout in the module docstring).
    seeds: at least one seed, no repeats.
    methods: names of :data:`METHODS` (case-insensitive; default all; CAMERA always runs).
    n_resamples: bootstrap resamples of the significance tests.
    alpha: significance level.
    progress: called with one line per step.

  Returns:
    dict(table2, table3, significance, seconds={seed: {method: s}}, paths={name: path}).
  """
  seeds = [int(s) for s in seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
  methods = resolve_methods(methods)
  workdir = init_workdir(workdir, cfg)
  per_seed: dict[int, dict[str, Any]] = {}
  seconds: dict[int, dict[str, float]] = {}
  for seed in seeds:
    scfg = cfg.replace(seed=seed)
    seed_dir = workdir / f"seed_{seed}"
    seconds[seed] = run_seed(scfg, seed_dir, methods, progress)
    res = seed_results(collect_seed(scfg, seed_dir, methods))
    res["seed"] = seed
    strict_json.write(seed_dir / "results.json", res, indent=1, sort_keys=True)
    per_seed[seed] = res
  # A fixed --data_dir: every seed tests the same brands (cluster bootstrap by brand id).
  written = tables_lib.write_all(workdir, per_seed, methods=methods, n_resamples=n_resamples,
                                 alpha=alpha, same_brands_across_seeds=bool(cfg.data_dir))
  written["seconds"] = seconds
  return written
