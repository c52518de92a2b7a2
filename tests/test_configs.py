"""The shipped flagfiles parse into valid configs with the settings their comments promise."""

import subprocess
import sys

import pytest
from absl import flags

from camera_jax import config as config_lib
from camera_jax import losses
from camera_jax import pipeline

from conftest import REPO as ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import _flags  # noqa: E402  (experiments/ is not a package)


def _parse(flagfile: str, monkeypatch) -> config_lib.Config:
  monkeypatch.chdir(ROOT)  # nested --flagfile paths are relative to the repository root
  values = flags.FlagValues()
  _flags.define_config_flags(values)
  flags.DEFINE_string("workdir", None, "the entry points' own flag", flag_values=values)
  values(["prog", f"--flagfile={flagfile}"])
  return _flags.config_from_flags(values)


@pytest.mark.parametrize("flagfile", ["camera.flags", "experiments/configs/small.flags",
                                      "experiments/configs/paper.flags"])
def test_flagfiles_give_valid_configs(flagfile, monkeypatch):
  cfg = _parse(flagfile, monkeypatch)
  assert pipeline.check_config(cfg) == []


def test_small_flags_is_camera_flags_plus_its_overrides(monkeypatch):
  tiny = _parse("camera.flags", monkeypatch)
  small = _parse("experiments/configs/small.flags", monkeypatch)
  assert (tiny.preset, tiny.history_norm, tiny.representation_lr_scale) == ("tiny", "none", 1.0)
  assert (small.preset, small.history_norm, small.representation_lr_scale) == ("small", "l2", 0.1)
  assert small.learning_rate == tiny.learning_rate == 1e-3
  assert (small.cg_epochs, small.cosmic_epochs) == (10, 4)
  differ = {f for f in config_lib.Config.__dataclass_fields__
            if getattr(tiny, f) != getattr(small, f)}
  assert differ == {"preset", "cg_epochs", "cosmic_epochs", "w2v_epochs", "history_norm",
                    "representation_lr_scale"}
  assert (tiny.w2v_epochs, small.w2v_epochs) == (100, 10)


def test_paper_flags_keep_the_papers_ranker(monkeypatch):
  cfg = _parse("experiments/configs/paper.flags", monkeypatch)
  assert (cfg.history_norm, cfg.attention_scale, cfg.dropout, cfg.learning_rate, cfg.l1,
          cfg.num_negatives, cfg.epochs) == ("none", "inner", 0.6, 1e-3, 1e-3, 1, 40)
  # COSMIC as the authors train it: L1 0.001, and their x0.99 per 100 steps as a per-epoch decay
  assert (cfg.cosmic_l1, cfg.cosmic_lr_decay, cfg.cosmic_learning_rate) == (1e-3, 0.56, 1e-3)
  # the paper names no augmentation: the authors', the concept generator's images only
  assert (cfg.augment, cfg.cosmic_augment) == (True, False)
  # The paper's margin 7.0 is the triplet loss's own; left unset, so that another --loss keeps
  # its own margin (hinge: 1.0) instead of inheriting 7.0.
  for flagfile in ("camera.flags", "experiments/configs/paper.flags"):
    cfg = _parse(flagfile, monkeypatch)
    assert cfg.margin is None and dict(pipeline.ranker_config(cfg).loss_hparams) == {}
    assert losses.hparams_of(cfg.loss) == {"margin": 7.0}
    assert dict(pipeline.ranker_config(cfg.replace(loss="hinge")).loss_hparams) == {}


def test_ranker_config_carries_every_shared_field():
  """pipeline.ranker_config passes each Config field the RankerConfig has (same name) through."""
  from camera_jax.training import ranker
  cfg = config_lib.Config(history_norm="l2", representation_lr_scale=0.25, learning_rate=2e-3,
                          attention_scale="mean", num_negatives=3, dropout=0.2, seed=7,
                          matmul_dtype="bfloat16")
  rc = pipeline.ranker_config(cfg)
  shared = set(ranker.RankerConfig.__dataclass_fields__) & set(config_lib.Config.__dataclass_fields__)
  assert {"history_norm", "representation_lr_scale", "learning_rate", "matmul_dtype"} <= shared
  for name in shared - {"loss_hparams"}:   # the flag's "k=v,..." text becomes typed pairs
    assert getattr(rc, name) == getattr(cfg, name), name
  assert rc.loss_hparams == pipeline.loss_hparams(cfg)


def test_matmul_dtype_is_checked():
  assert pipeline.check_config(config_lib.Config(matmul_dtype="bfloat16")) == []
  assert pipeline.check_config(config_lib.Config(matmul_dtype="fp8")) == [
      "--matmul_dtype=fp8: must be one of float32, bfloat16"]


def test_unset_loss_flags_keep_each_losss_own_defaults_and_loss_hparams_reach_the_loss(
    monkeypatch):
  """--margin/--temperature left unset do not override a loss's defaults; --loss_hparams sets
  any other keyword of the chosen loss; flags.txt (to_flags) reads back to the same config."""
  import jax.numpy as jnp

  from camera_jax import losses

  def value(cfg):
    fn = losses.get_loss(cfg.loss, **dict(pipeline.ranker_config(cfg).loss_hparams))
    return float(fn(jnp.array([0.0]), jnp.array([[0.0]]), jnp.array([[True]])))

  # equal scores: hinge gives its margin (squared: margin^2), triplet its margin
  assert value(config_lib.Config(loss="hinge")) == 1.0                 # hinge's own 1.0
  assert value(config_lib.Config(loss="triplet")) == 7.0               # triplet's own 7.0
  assert value(config_lib.Config(loss="hinge", margin=3.0)) == 3.0
  sq = config_lib.Config(loss="hinge", margin=3.0, loss_hparams="squared=true")
  assert pipeline.ranker_config(sq).loss_hparams == (("margin", 3.0), ("squared", True))
  assert value(sq) == 9.0
  assert pipeline.check_config(config_lib.Config(loss="triplet", loss_hparams="squared=true")) == [
      "--loss_hparams=squared=true: 'squared=true': loss 'triplet' has no hyper-parameter "
      "'squared' (it has: margin)"]
  assert pipeline.check_config(config_lib.Config(loss="hinge", loss_hparams="margin=x")) == [
      "--loss_hparams=margin=x: 'margin=x': margin must be float, like its default 1.0"]
  # --loss_hparams may set margin or temperature, but not one its own flag sets too
  assert value(config_lib.Config(loss="hinge", loss_hparams="margin=2.0")) == 2.0
  assert pipeline.check_config(config_lib.Config(loss="hinge", margin=3.0, loss_hparams="margin=2.0")) == [
      "--loss_hparams=margin=2.0: margin is also set by --margin=3.0; set it once"]
  assert pipeline.check_config(config_lib.Config(loss="infonce", temperature=0.5,
                                                 loss_hparams="temperature=0.5")) == [
      "--loss_hparams=temperature=0.5: temperature is also set by --temperature=0.5; set it once"]
  # ... which a run made before that check still loads with: --loss_hparams won
  both = config_lib.Config(loss="hinge", margin=3.0, loss_hparams="margin=2.0")
  assert pipeline.ranker_config(both).loss_hparams == (("margin", 2.0),) and value(both) == 2.0
  # the record of the loss a ranker trains with: every setting, the loss's own defaults included
  assert pipeline.ranker_loss_record(config_lib.Config(loss="hinge")) == {
      "name": "hinge", "settings": {"margin": 1.0, "squared": False}}
  assert pipeline.ranker_loss_record(sq) == {"name": "hinge", "settings": {"margin": 3.0, "squared": True}}
  assert pipeline.ranker_loss_record(config_lib.Config(loss="bpr", margin=3.0)) == {"name": "bpr", "settings": {}}


  # a setting the loss cannot train with is refused before any work, whichever flag set it
  assert pipeline.check_config(config_lib.Config(loss="infonce", temperature=0.0)) == [
      "--loss=infonce with temperature=0.0: temperature must be > 0 and finite, got 0.0"]
  assert pipeline.check_config(config_lib.Config(loss="approx_ndcg", loss_hparams="temperature=-1")) == [
      "--loss=approx_ndcg with temperature=-1.0: temperature must be > 0 and finite, got -1.0"]
  assert pipeline.check_config(config_lib.Config(loss="infonce", loss_hparams="temperature=inf")) == [
      "--loss=infonce with temperature=inf: temperature must be > 0 and finite, got inf"]  # every gradient 0
  assert pipeline.check_config(config_lib.Config(loss="hinge", margin=1e39)) == [  # inf in float32
      "--loss=hinge with margin=1e+39: the loss or its gradient is not finite on a test batch"]
  assert pipeline.check_config(config_lib.Config(loss="bpr", margin=float("nan"))) == [  # not bpr's,
      "--margin=nan: must be a finite number"]        # but flags.txt keeps it (nan != nan on resume)
  assert pipeline.check_config(config_lib.Config(loss="triplet", temperature=0.0)) == []  # not triplet's

  # the flags file round trip: an unset margin stays unset, loss_hparams comes back verbatim
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    path = f"{d}/flags.txt"
    open(path, "w").write(sq.to_flags())
    assert "--temperature" not in sq.to_flags()
    assert _parse(path, monkeypatch) == sq
    unset = config_lib.Config(loss="hinge")
    open(path, "w").write(unset.to_flags())
    back = _parse(path, monkeypatch)
    assert back == unset and back.margin is None and back.temperature is None


def test_a_loss_default_that_is_not_a_json_value_is_recorded_as_its_repr(monkeypatch):
  monkeypatch.setattr(losses, "settings_of", lambda name, **kw: {"act": abs, "margin": 1.0})
  assert pipeline.ranker_loss_record(config_lib.Config()) == {
      "name": "triplet", "settings": {"act": "<built-in function abs>", "margin": 1.0}}


def test_a_ranker_trained_with_other_loss_settings_is_refused(tmp_path):
  """The record beside the ranker's checkpoints catches what flags.txt cannot: a loss whose own
  default changed in the code since the ranker trained (here played by another --margin)."""
  ckpt = tmp_path / "checkpoints" / "ranker"
  record = tmp_path / pipeline.RANKER_LOSS_RECORD
  hinge = config_lib.Config(loss="hinge")
  pipeline.check_ranker_loss(hinge, tmp_path)                  # no ranker, no record: nothing
  assert not record.exists()
  pipeline.check_ranker_loss(hinge, tmp_path, write=True)      # the ranker is about to train
  assert pipeline.read_ranker_loss(tmp_path) == {"name": "hinge", "settings": {"margin": 1.0, "squared": False}}
  ckpt.mkdir(parents=True)                                     # the ranker starts (orbax's dir)
  pipeline.check_ranker_loss(hinge.replace(margin=2.0), tmp_path)  # stopped in epoch 1: nothing to protect
  (ckpt / "1").mkdir()                                         # the ranker finished an epoch
  pipeline.check_ranker_loss(hinge, tmp_path)                  # the same settings: fine
  with pytest.raises(pipeline.ConfigError) as e:
    pipeline.check_ranker_loss(hinge.replace(margin=2.0), tmp_path)
  assert e.value.errors == [
      f"{record}: the ranker in {ckpt} was trained with loss hinge (margin=1.0, squared=False); "
      f"hinge now gives (margin=2.0, squared=False) (its code changed since?); use a new "
      f"--workdir, or delete {ckpt} to train it again"]
  (ckpt / "1").rmdir()
  ckpt.rmdir()                                                 # deleted to train it again
  pipeline.check_ranker_loss(hinge.replace(margin=2.0), tmp_path, write=True)
  assert pipeline.read_ranker_loss(tmp_path)["settings"]["margin"] == 2.0
  record.unlink()                                              # a ranker from before the records
  (ckpt / "1").mkdir(parents=True)
  pipeline.check_ranker_loss(hinge, tmp_path, write=True)     # not written over its checkpoints
  assert pipeline.read_ranker_loss(tmp_path) is None

def test_the_check_before_the_process_group_starts_no_jax_backend():
  """train.py checks its flags before jax.distributed.initialize, which must come before any
  JAX backend starts: check_config(evaluate_loss=False) only traces each loss."""
  code = ("from jax._src import xla_bridge as xb\n"
          "from camera_jax import config, losses, pipeline\n"
          "for name in sorted(losses.REGISTRY):\n"
          "  assert pipeline.check_config(config.Config(loss=name), evaluate_loss=False) == []\n"
          "bad = pipeline.check_config(config.Config(loss='infonce', temperature=0.0), evaluate_loss=False)\n"
          "assert bad == ['--loss=infonce with temperature=0.0: temperature must be > 0 and finite, got 0.0'], bad\n"
          "assert not xb._backends, xb._backends\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_out_of_range_settings_are_one_line_each():
  cfg = config_lib.Config(dropout=1.0, lr_decay=0.0, cosmic_lr_decay=float("nan"), l1=-1e-3,
                          init_scale=0.0, cg_threshold=1.5, cg_min_k=-1, cg_max_k=0,
                          cg_learning_rate=-1.0, image_cache_gb=float("nan"))
  assert pipeline.check_config(cfg) == [
      "--cg_max_k=0: must be >= 1",
      "--image_cache_gb=nan: must be >= 0",
      "--cg_min_k=-1: must be >= 0",
      "--cg_learning_rate=-1.0: must be > 0",
      "--lr_decay=0.0: must be > 0",
      "--cosmic_lr_decay=nan: must be > 0",
      "--init_scale=0.0: must be > 0",
      "--l1=-0.001: must be >= 0",
      "--dropout=1.0: must be in [0, 1)",
      "--cg_threshold=1.5: must be in [0, 1]"]
  # every stage trains at least one epoch (a stage of none saves no checkpoint to restore)
  assert pipeline.check_config(config_lib.Config(epochs=0, cg_epochs=0, cosmic_epochs=0,
                                                 w2v_epochs=0)) == [
      "--epochs=0: must be >= 1", "--cg_epochs=0: must be >= 1", "--cosmic_epochs=0: must be >= 1",
      "--w2v_epochs=0: must be >= 1"]
  # max_k below min_k is valid (max_k wins, models/concept_generator.py)
  assert pipeline.check_config(config_lib.Config(dropout=0.0, cg_min_k=3, cg_max_k=2, l1=0.0)) == []


def test_network_shapes_are_checked_before_any_work():
  ok = config_lib.Config(data_dir="/data", dropout=0.0, l1=0.0)
  assert pipeline.check_config(ok) == []
  check = lambda **kw: pipeline.check_config(ok.replace(**kw))  # noqa: E731
  # pools (3, 1, 2, 1, 2): 11 px reaches a 1 x 1 map before the last pool of 2; 12 is the least
  assert check(image_size=11) == [
      "--image_size=11: the CNN's pools (--cnn_pools=3,1,2,1,2) need images of >= 12 px"]
  assert check(image_size=12) == []
  assert check(cnn_channels=(32,)) == [
      "--cnn_channels=32 --cnn_pools=3,1,2,1,2: one pool per convolution (the same count, >= 1)"]
  assert check(cnn_pools=(3, 0, 2, 1, 2)) == [
      "--cnn_channels=32,64,64,128,128 --cnn_pools=3,0,2,1,2: every channel count and pool must be >= 1"]
  assert check(cnn_fc=0) == ["--cnn_fc=0: must be >= 1"]
  assert check(psi_features=(), gamma_features=(8, 0)) == [
      "--psi_features=: one or more layer widths, each >= 1",
      "--gamma_features=8,0: one or more layer widths, each >= 1"]
  # the synthetic data is drawn at >= 24 px
  assert check(data_dir="", image_size=16) == [
      "--image_size=16: the synthetic data (no --data_dir) is drawn at >= 24 px"]


def test_flags_file_records_absolute_paths(tmp_path, monkeypatch):
  """flags.txt holds data_dir and workdir as absolute paths (resolved against the directory the
  run started in), so --flagfile=DIR/flags.txt from another directory reads the same data and
  resumes the same work directory (that, from another directory: test_train_cli)."""
  monkeypatch.chdir(tmp_path)
  text = config_lib.flags_file(config_lib.Config(data_dir="data", seed=3), "runs/a")
  (tmp_path / "flags.txt").write_text(text)
  back = config_lib.read_flags(tmp_path / "flags.txt")
  assert back == config_lib.Config(data_dir=str(tmp_path / "data"), seed=3)
  assert text.splitlines()[-1] == f"--workdir={tmp_path / 'runs' / 'a'}"
  assert "--data_dir=\n" in config_lib.flags_file(config_lib.Config(), "/w")   # unset stays unset


@pytest.mark.parametrize("flagfile", ["camera.flags", "experiments/configs/paper.flags"])
def test_flags_txt_reads_back_as_the_config_it_was_written_from(flagfile, monkeypatch, tmp_path):
  """flags.txt round trip: a set --margin or --temperature ("float | None" fields) once came
  back as a 1-tuple, which made every cached directory look changed."""
  cfg = _parse(flagfile, monkeypatch)
  others = cfg.replace(margin=7.0, temperature=0.25, cnn_channels=(3, 5), baselines=(),
                       check_images=not cfg.check_images, loss_hparams="gamma=2.0,squared=true")
  for c in (cfg, others, config_lib.Config()):
    path = tmp_path / "flags.txt"
    path.write_text(c.to_flags() + "--workdir=somewhere\n")
    back = config_lib.read_flags(path)
    assert back == c and config_lib.differences(back, c) == []


def test_differences_ignore_only_the_neutral_fields():
  cfg = config_lib.Config()
  assert config_lib.differences(cfg, cfg.replace(report=False, eval_chunk=7, baselines=())) == []
  assert config_lib.differences(cfg, cfg.replace(margin=7.0, seed=2)) == ["margin", "seed"]
