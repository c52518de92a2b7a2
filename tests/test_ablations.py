"""Tests of camera_jax.ablations (method selection, variant configs, score alignment) and of the
Hp+MR model (camera_jax.models.history_pooling) trained through the generalised ranker trainer."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camera_jax import ablations
from camera_jax import config as config_lib
from camera_jax.config import Config
from camera_jax.models import history_pooling as hp
from camera_jax.training import ranker as ranker_lib
from camera_jax.training import sharding
from camera_jax.training import trainer


# --------------------------------------------------------------------------- method selection


def test_resolve_methods_is_case_insensitive_in_table_order_and_keeps_camera():
  assert ablations.resolve_methods(None) == ablations.METHODS
  assert ablations.resolve_methods(["rand", "c-w/o-mr", "HP+MR"]) == (
      "CAMERA", "Hp+MR", "C-w/o-MR", "RAND")
  with pytest.raises(ValueError, match="unknown method 'MIR'"):
    ablations.resolve_methods(["MIR"])
  with pytest.raises(ValueError, match="no method named"):   # --methods=,
    ablations.resolve_methods(["", ""])


def test_variant_configs_change_only_the_ablated_switch():
  cfg = Config(seed=3, preset="tiny")
  data = "/some/run/camera/data"
  assert ablations.variant_config(cfg, "CAMERA", data) is cfg
  wo_si = ablations.variant_config(cfg, "C-w/o-SI", data)
  wo_mr = ablations.variant_config(cfg, "C-w/o-MR", data)
  hp_mr = ablations.variant_config(cfg, "Hp+MR", data)
  assert (wo_si.semantic, wo_si.use_interaction) == (False, True)
  assert (wo_mr.semantic, wo_mr.use_interaction) == (True, False)
  assert (hp_mr.semantic, hp_mr.use_interaction) == (True, True)
  for v in (wo_si, wo_mr, hp_mr):
    assert v.data_dir == data and v.seed == 3 and v.baselines == ()
  assert config_lib.differences(cfg, wo_si) == ["data_dir", "semantic"]
  assert config_lib.differences(cfg, cfg.replace(report=False, eval_chunk=7)) == []
  with pytest.raises(ValueError):
    ablations.variant_config(cfg, "RAND", data)


def test_read_scores_aligns_with_pairs_and_refuses_missing_rows(tmp_path):
  ids = np.array(["b0", "b1", "m0", "m1"])
  pairs = {"brand": np.array([0, 0, 1, 1]), "influencer": np.array([2, 3, 2, 3])}
  path = tmp_path / "scores.csv"
  path.write_text("brand,influencer,score,label\nb1,m1,0.4,0\nb0,m0,0.1,1\nb1,m0,0.3,1\n"
                  "b0,m1,0.2,0\n")
  np.testing.assert_array_equal(ablations.read_scores(path, ids, pairs), [0.1, 0.2, 0.3, 0.4])
  path.write_text("brand,influencer,score,label\nb0,m0,0.1,1\n")
  with pytest.raises(ValueError, match="do not cover"):
    ablations.read_scores(path, ids, pairs)


def test_init_workdir_refuses_foreign_or_changed_directories(tmp_path):
  cfg = Config(preset="tiny")
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "file.txt").write_text("x")
  with pytest.raises(ablations.ConfigMismatchError, match="not a paper_tables"):
    ablations.init_workdir(tmp_path / "other", cfg)
  work = ablations.init_workdir(tmp_path / "w", cfg)
  assert json.loads((work / "paper_tables.json").read_text())["config"]["epochs"] == cfg.epochs
  ablations.init_workdir(work, cfg.replace(seed=5))           # another seed: same tables
  with pytest.raises(ablations.ConfigMismatchError, match="epochs"):
    ablations.init_workdir(work, cfg.replace(epochs=cfg.epochs + 1))


def test_a_moved_workdir_keeps_its_variants_but_other_settings_are_refused(tmp_path):
  """A variant's flags.txt records the seed's own camera/data by its absolute path (synthetic
  presets): after `mv` or `cp -a` of the work directory it must still be recognised."""
  old = tmp_path / "old" / "seed_0"
  new = tmp_path / "new" / "seed_0"
  variant = new / "wo_si"
  variant.mkdir(parents=True)
  saved = ablations.variant_config(Config(preset="tiny"), "C-w/o-SI", old / "camera" / "data")
  (variant / "flags.txt").write_text(config_lib.flags_file(saved, variant))
  now = ablations.variant_config(Config(preset="tiny"), "C-w/o-SI", new / "camera" / "data")
  ablations._check_flags(variant, now, inner_data=True)                  # moved: fine
  with pytest.raises(ablations.ConfigMismatchError, match="data_dir"):
    ablations._check_flags(variant, now)                                 # a real --data_dir
  with pytest.raises(ablations.ConfigMismatchError, match="epochs"):
    ablations._check_flags(variant, now.replace(epochs=now.epochs + 1), inner_data=True)


# --------------------------------------------------------------------------- history pooling


def test_mean_pool_and_standardize_on_hand_values():
  values = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [7.0, 7.0]])
  acc = np.array([0, 0, 1, 0])
  np.testing.assert_allclose(hp.mean_pool(values, acc, 3),
                             [[11 / 3, 13 / 3], [10.0, 0.0], [0.0, 0.0]], rtol=1e-6)
  keep = np.array([True, False, True, False])
  np.testing.assert_allclose(hp.mean_pool(values, acc, 3, where=keep),
                             [[1.0, 2.0], [10.0, 0.0], [0.0, 0.0]])
  z = hp.standardize(np.array([[1.0, 5.0], [3.0, 5.0]]))
  np.testing.assert_allclose(z, [[-1.0, 0.0], [1.0, 0.0]])
  x = hp.account_features(t=np.eye(3, 2), has_text=np.array([True, True, False]),
                          v2=np.ones((3, 4)), post_account=np.array([0, 1, 1]), n_accounts=2)
  assert x.shape == (2, 6) and x.dtype == np.float32
  np.testing.assert_allclose(x[:, :2], [[1.0, -1.0], [-1.0, 1.0]])   # text means (1,0), (0,1)
  np.testing.assert_allclose(x[:, 2:], 0.0)                          # constant v2 -> 0


def _toy_batch(b: int, d: int, key=0) -> dict[str, jax.Array]:
  k = jax.random.split(jax.random.PRNGKey(key), 6)
  return {"brand_x": jax.random.normal(k[0], (b, d)), "inf_x": jax.random.normal(k[1], (b, d)),
          "ed_post": jax.random.uniform(k[2], (b,)), "ed_brand": jax.random.uniform(k[3], (b,)),
          "followers": jax.random.uniform(k[4], (b,)), "eng_inf": jax.random.uniform(k[5], (b,))}


def test_history_pooling_ranker_forward_shapes_and_ablated_interaction():
  batch = _toy_batch(5, 6)
  model = hp.HistoryPoolingRanker(gamma=(16, 16, 8), d_score=4, dropout=0.5)
  params = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                      batch, deterministic=True)["params"]
  assert set(params) == {"gamma_mlp", "phi_ed_post", "phi_ed_brand", "phi_followers",
                         "phi_eng_inf"}
  out = model.apply({"params": params}, batch, deterministic=True)
  for k in ("S", "S_con", "S_ed", "S_in"):
    assert out[k].shape == (5,) and out[k].dtype == jnp.float32
  np.testing.assert_allclose(out["S"], out["S_con"] * out["S_ed"] * out["S_in"], rtol=1e-5)
  assert np.all((np.asarray(out["S_ed"]) > 0) & (np.asarray(out["S_ed"]) < 1))
  train = model.apply({"params": params}, batch, deterministic=False,
                      rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(train["S_con"], out["S_con"])            # dropout is active

  plain = hp.HistoryPoolingRanker(gamma=(16, 16, 8), d_score=4, use_interaction=False)
  p2 = plain.init({"params": jax.random.PRNGKey(0)}, batch, deterministic=True)["params"]
  assert set(p2) == {"gamma_mlp"}
  out2 = plain.apply({"params": p2}, batch, deterministic=True)
  np.testing.assert_array_equal(out2["S"], out2["S_con"])
  np.testing.assert_array_equal(out2["S_ed"], np.ones(5))


def test_default_ranker_model_is_camera():
  """The generalised trainer's default is unchanged: CAMERA with pair_inputs."""
  rng = np.random.default_rng(0)
  tables = ranker_lib.Tables(
      top_idx=rng.integers(0, 6, (4, 3)).astype(np.int32), top_w=rng.random((4, 3), np.float32),
      engagement=rng.random(4, np.float32), followers=rng.random(4, np.float32),
      concepts=rng.normal(size=(6, 5)).astype(np.float32))
  cfg = ranker_lib.RankerConfig(psi_features=(8, 4), gamma_features=(8, 8, 4), d_score=4)
  key = jax.random.PRNGKey(0)
  a = ranker_lib.init_params(cfg, tables, key)
  b = ranker_lib.init_params(cfg, tables, key,
                             ranker_lib.RankerModel(ranker_lib.make_model, ranker_lib.pair_inputs))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert "psi" in a and "rho" in a


def test_hp_mr_trains_with_the_ranker_trainer_and_its_loss_goes_down(tmp_path):
  """A toy where each brand's positives have features close to the brand's."""
  rng = np.random.default_rng(0)
  n_brands, n_inf, d = 4, 24, 8
  brand_x = rng.normal(size=(n_brands, d))
  inf_x = rng.normal(size=(n_inf, d))
  positives = []
  for b in range(n_brands):
    for j in range(4):
      m = b * 4 + j
      inf_x[m] = brand_x[b] + 0.3 * rng.normal(size=d)
      positives.append((b, n_brands + m))
  feats = np.concatenate([brand_x, inf_x]).astype(np.float32)
  a = len(feats)
  tables = hp.HpTables(features=feats, engagement=rng.random(a, np.float32),
                       followers=rng.random(a, np.float32))
  positives = np.array(positives, np.int64)
  cfg = ranker_lib.RankerConfig(epochs=20, batch_size=4, learning_rate=1e-2, lr_decay=0.85,
                                dropout=0.0, l1=0.0, gamma_features=(32, 32, 16), d_score=8,
                                loss_hparams=(("margin", 1.0),), seed=0)
  log = trainer.TrainLog(tmp_path / "log.jsonl")
  mesh = sharding.make_mesh()
  params = ranker_lib.train_ranker(
      cfg=cfg, tables=tables, positives=positives,
      ed_observed=np.zeros(len(positives), np.float32),
      candidates=np.arange(n_brands, a), ckpt_dir=None, log=log, mesh=mesh, stage="hp_mr",
      model=hp.HP_MODEL)
  losses = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
  assert len(losses) == 20 and losses[0] > 0.9
  assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
  # The trained model ranks each brand's positives above its other candidates.
  brand = np.repeat(np.arange(n_brands), n_inf)
  infl = np.tile(np.arange(n_brands, a), n_brands)
  s = ranker_lib.score_pairs(cfg, params, tables.device(mesh), brand, infl, mesh=mesh,
                             score_fn=ranker_lib.make_score_fn(cfg, hp.HP_MODEL), keys=("S",))["S"]
  s = s.reshape(n_brands, n_inf)
  correct = []
  for b in range(n_brands):
    pos = s[b, b * 4:(b + 1) * 4]
    neg = np.delete(s[b], np.arange(b * 4, (b + 1) * 4))
    correct.append(np.mean(pos[:, None] > neg[None, :]))
  assert np.mean(correct) > 0.8                     # AUC averaged over brands (chance: 0.5)
