"""The configuration of a run: every hyper-parameter of every stage, with the paper's defaults.

``experiments/train.py`` maps absl flags one-to-one onto these fields (same names), so
``--epochs=40`` sets ``Config.epochs``.  Library code receives a ``Config``; it never reads flags.
Defaults are the paper's (IV-B) where the paper gives a value, the authors' code where it is silent,
with these exceptions (docs/deviations.md; ``experiments/configs/paper.flags`` sets the paper's and
the authors' values): 64 px images (the authors' 224), and COSMIC without the authors' L1 and
learning-rate decay but with the same image augmentation as the concept generator.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import types
import typing
from typing import Any


@dataclasses.dataclass
class Config:
  """All settings of ``camera_jax.pipeline.train_and_evaluate``."""

  # Data.
  data_dir: str = ""                 # a format-v1 directory; empty: generate a synthetic preset
  preset: str = "tiny"               # synthetic preset when data_dir is empty: tiny|small|paper
  image_size: int = 64               # side of the images fed to both CNNs (the authors': 224; the paper names none)
  seed: int = 0                      # one seed for everything (split, init, data order, negatives)
  check_images: bool = True          # the validator decodes every image (false: images are only stat'ed; a missing one stops the run before any work, an undecodable one when first read, each in one FILE:LINE line)

  # Word2Vec (gensim).
  w2v_dim: int = 100                 # Word2Vec vector size (caption and concept-name embeddings)
  w2v_epochs: int = 10               # Word2Vec training epochs

  # CNN layout shared by the concept generator and COSMIC (the authors' 5-layer CNN).
  cnn_channels: tuple[int, ...] = (32, 64, 64, 128, 128)  # output channels of the five 3x3 convolutions
  cnn_pools: tuple[int, ...] = (3, 1, 2, 1, 2)  # max-pool window (= stride) after each convolution; 1: none
  cnn_fc: int = 1024                 # width of the CNN's fully connected layer (d_v1)

  # Concept generator (paper IV-D; authors: Adam 1e-3, 60 epochs, batch 32, 80/20 split).
  use_gt_concepts: bool = False      # use posts' ground-truth `concepts` as h instead of predicting
  cg_epochs: int = 60                # concept generator training epochs
  cg_batch_size: int = 32            # concept generator images per step
  cg_learning_rate: float = 1e-3     # concept generator Adam learning rate
  cg_lr_decay: float = 1.0           # concept generator learning-rate decay per epoch
  cg_held_out: float = 0.2           # share of labeled posts held out to measure the generator
  cg_threshold: float = 0.5          # h_i = 1 when sigmoid(logit_i) >= threshold ...
  cg_min_k: int = 1                  # ... and at least the top cg_min_k concepts ...
  cg_max_k: int = 10                 # ... and at most the top cg_max_k concepts (paper: ~10 per post)
  augment: bool = True               # light image augmentation in the concept generator's training (the authors')
  input_threads: int = 0             # image-decoding threads per process, batches prepared ahead; 0: one per CPU core (at most 4)
  image_cache_gb: float = 8.0        # keep a split's images decoded on disk (uint8, under tfds/) when that takes at most this many GB; 0: decode every epoch

  # COSMIC (paper III-B; authors: batch 32, 25 epochs, Adam 1e-3, L1 0.001; the defaults keep no
  # L1 and no decay, paper.flags sets the authors').
  d_u: int = 100                     # length of a concept representation u_i (COSMIC's U_C columns)
  cosmic_epochs: int = 25            # COSMIC training epochs
  cosmic_batch_size: int = 32        # COSMIC images per step
  cosmic_learning_rate: float = 1e-3  # COSMIC Adam learning rate
  cosmic_lr_decay: float = 1.0       # COSMIC learning-rate decay per epoch
  cosmic_l1: float = 0.0             # COSMIC L1 penalty weight on the parameters
  zprime_mode: str = "masked"        # masked | faithful (see docs/deviations.md)
  semantic: bool = True              # False: the C-w/o-SI ablation (z' = normalised h)
  cosmic_logit_scale: str = "inner"  # inner (paper eq. 3) | mean (authors)
  cosmic_augment: bool = True        # the same flips and shifts in COSMIC's training (the authors: none)

  # Ranker (paper III-C, III-D, IV-B).
  epochs: int = 40                   # ranker training epochs
  batch_size: int = 8                # ranker triplets per step (paper: 8)
  learning_rate: float = 1e-3        # ranker Adam learning rate
  representation_lr_scale: float = 1.0  # x learning_rate for psi, rho, gamma (the phi keep it)
  lr_decay: float = 0.95             # ranker learning-rate decay per epoch
  dropout: float = 0.6               # drop rate (paper IV-B); the authors keep 0.6, i.e. --dropout=0.4 (docs/deviations.md)
  margin: float | None = None        # the loss's margin; unset: the loss's own default (triplet 7.0, hinge 1.0)
  temperature: float | None = None   # the loss's temperature (infonce, approx_ndcg); unset: its own default
  init_scale: float = 0.1            # uniform(-s, s) init of every ranker weight (paper 0.1)
  l1: float = 1e-3                   # ranker L1 penalty weight on the parameters (paper 0.001)
  top_k: int = 10                    # concepts per account in the BCAM attention (paper 10)
  psi_features: tuple[int, ...] = (1024, 512)  # psi and rho layer widths (paper 1024,512)
  gamma_features: tuple[int, ...] = (1024, 1024, 512)  # gamma layer widths (paper 1024,1024,512)
  d_score: int = 64                  # hidden width of the endorsement and influence MLPs (phi)
  attention_scale: str = "inner"     # inner (paper eq. 7) | mean (authors)
  history_norm: str = "none"         # none (paper eq. 6) | l2: e_h rescaled to norm sqrt(d_u)
  num_negatives: int = 1             # sampled negatives per positive (paper: 1)
  loss: str = "triplet"              # a name of camera_jax.losses.REGISTRY
  loss_hparams: str = ""             # more of the loss's keyword settings: "name=value,..." (losses.parse_hparams)
  endorsement: str = "mean"          # mean: leak-free E(p~) estimate | observed: paper form (training only)
  history: str = "all"               # all: every post is history | unsponsored: drop posts named by cooperations
  use_interaction: bool = True       # False: the C-w/o-MR ablation (S = S_con)
  eval_chunk: int = 0                # pairs scored per jitted call; 0: ranker.auto_eval_chunk (the scores' last float bits depend on it)
  matmul_dtype: str = "float32"      # float32 | bfloat16: psi/rho/gamma on bf16 operands, f32 accumulation

  # Evaluation.
  baselines: tuple[str, ...] = ("RAND", "POP", "ENG", "MIV", "CONTENT")  # baselines scored beside CAMERA: RAND, POP, ENG, MIV, CONTENT
  report: bool = True                # write the HTML report (radar charts, figures) after the run

  # Multi-process (jax.distributed).
  coordinator_address: str = ""      # jax.distributed coordinator host:port; empty: one process
  num_processes: int = 1             # processes of a multi-process run
  process_id: int = 0                # this process's index in a multi-process run

  def replace(self, **changes: Any) -> "Config":
    return dataclasses.replace(self, **changes)

  def to_flags(self) -> str:
    """The config as a flags file (``--name=value`` per line), readable by --flagfile."""
    lines = []
    for k, v in dataclasses.asdict(self).items():
      if v is None:  # unset (e.g. --margin): omitted, so that reading the file back leaves it unset
        continue
      if isinstance(v, tuple):
        v = ",".join(str(x) for x in v)
      elif isinstance(v, bool):
        v = "true" if v else "false"
      lines.append(f"--{k}={v}")
    return "\n".join(lines) + "\n"

  def to_dict(self) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


#: Fields that change no result (how a run is reported, checked, chunked, fed or distributed).
NEUTRAL_FIELDS = frozenset({"report", "check_images", "eval_chunk", "input_threads", "image_cache_gb",
                            "baselines", "coordinator_address", "num_processes", "process_id"})


def differences(a: Config, b: Config) -> list[str]:
  """Names of the result-changing fields (all but :data:`NEUTRAL_FIELDS`) where two configs differ;
  ``data_dir`` is compared as an absolute path (:func:`absolute_paths`).

  >>> differences(Config(), Config(seed=1, report=False, margin=7.0))
  ['margin', 'seed']
  >>> differences(Config(data_dir="d"), Config(data_dir=os.path.abspath("d")))
  []
  """
  da, db = absolute_paths(a).to_dict(), absolute_paths(b).to_dict()
  return sorted(k for k in da if k not in NEUTRAL_FIELDS and da[k] != db.get(k))


def read_flags(path: str | os.PathLike) -> Config:
  """Parses a flags file (``--name=value`` per line, as :meth:`Config.to_flags` writes) into a
  Config; unknown flags are ignored, and a field absent from the file keeps its default.

  ``read_flags`` of a file written by ``to_flags`` gives the same Config back (tested). A value
  that does not parse raises ValueError naming the file, the line and the flag.
  """
  hints = typing.get_type_hints(Config)
  kwargs: dict[str, Any] = {}
  for lineno, line in enumerate(pathlib.Path(path).read_text(encoding="utf-8").splitlines(), 1):
    line = line.strip()
    if not line.startswith("--"):
      continue
    name, eq, value = line[2:].partition("=")
    if name.startswith("no") and name[2:] in hints and not eq:
      name, value = name[2:], "false"
    if name not in hints:
      continue
    hint = hints[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
      hint = next(a for a in args if a is not type(None))  # "T | None": set, so a T
    try:
      if hint is bool:
        kwargs[name] = value.lower() in ("", "true", "1")
      elif hint in (int, float, str):
        kwargs[name] = hint(value)
      else:  # tuple[T, ...]
        kwargs[name] = tuple(typing.get_args(hint)[0](v) for v in value.split(",") if v)
    except ValueError:
      kind = getattr(hint, "__name__", "comma-separated values")
      raise ValueError(f"{path}:{lineno}: --{name}={value}: not a valid {kind}") from None
  return Config(**kwargs)


def flags_file(cfg: Config, workdir: str | os.PathLike) -> str:
  """The text of a run's ``flags.txt``: :meth:`Config.to_flags` with ``data_dir`` made absolute,
  then ``--workdir`` (absolute), so that ``--flagfile=DIR/flags.txt`` resumes the same run on the
  same data from any working directory (relative paths would be read against the new one).

  >>> lines = flags_file(Config(data_dir="data/x"), "runs/a").splitlines()
  >>> f"--data_dir={os.getcwd()}/data/x" in lines, lines[-1] == f"--workdir={os.getcwd()}/runs/a"
  (True, True)
  >>> "--data_dir=" in flags_file(Config(), "/runs/a").splitlines()   # unset stays unset
  True
  """
  return absolute_paths(cfg).to_flags() + f"--workdir={os.path.abspath(workdir)}\n"


def absolute_paths(cfg: Config) -> Config:
  """``cfg`` with a set ``data_dir`` made absolute (against the current directory)."""
  return cfg.replace(data_dir=os.path.abspath(cfg.data_dir)) if cfg.data_dir else cfg


def fields() -> list[dataclasses.Field]:
  """The dataclass fields (used by experiments/train.py to define one flag per field)."""
  return list(dataclasses.fields(Config))
