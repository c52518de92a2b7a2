"""Tests for camera_jax.data.engagement (paper eq. 10, account means, scalings)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from camera_jax.data import engagement
from camera_jax.data import format as fmt


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture()
def dataset(tmp_path) -> fmt.Dataset:
    """Three accounts with hand-checkable numbers (images are not opened: check_images=False)."""
    (tmp_path / "concepts.txt").write_text("food\nbeach\n", encoding="utf-8")
    _write_jsonl(
        tmp_path / "accounts.jsonl",
        [
            {"id": "b1", "kind": "brand", "category": "Food", "followers": 1000},
            {"id": "m1", "kind": "influencer", "category": "Food", "followers": 200},
            {"id": "m2", "kind": "influencer", "category": "Food", "followers": 50000},
        ],
    )
    posts = [
        ("p1", "b1", 90, 10),  # E = 100 / 1000 = 0.1
        ("p2", "m1", 10, 0),  # E = 10 / 200 = 0.05
        ("p3", "b1", 20, 0),  # E = 20 / 1000 = 0.02
        ("p4", "m1", 25, 5),  # E = 30 / 200 = 0.15
        ("p5", "m2", 0, 0),  # E = 0
        ("p6", "m1", 1, 0),  # E = 1 / 200 = 0.005
    ]
    _write_jsonl(
        tmp_path / "posts.jsonl",
        [
            {"id": pid, "account": acc, "image": f"images/{pid}.jpg", "caption": "", "likes": lk, "comments": cm}
            for pid, acc, lk, cm in posts
        ],
    )
    _write_jsonl(tmp_path / "cooperations.jsonl", [{"brand": "b1", "influencer": "m1", "post": "p2"}])
    return fmt.load(tmp_path, check_images=False)


def test_engagement_rate_hand_values():
    e = engagement.engagement_rate([90, 10, 0], [10, 0, 7], [1000, 200, 7])
    assert e.dtype == np.float64
    np.testing.assert_allclose(e, [0.1, 0.05, 1.0])
    # Broadcasting: one follower count for many posts.
    np.testing.assert_allclose(engagement.engagement_rate(np.array([1, 2]), 0, 4), [0.25, 0.5])
    # A follower count of 0 counts as 1 (finite rate).
    assert engagement.engagement_rate(3, 2, 0) == 5.0


def test_post_engagement(dataset):
    e = engagement.post_engagement(dataset)
    np.testing.assert_allclose(e, [0.1, 0.05, 0.02, 0.15, 0.0, 0.005])


def test_account_engagement(dataset):
    out = engagement.account_engagement(dataset)
    assert set(out) == {"followers", "mean_engagement", "post_engagement_std", "n_posts"}
    np.testing.assert_array_equal(out["followers"], [1000, 200, 50000])
    np.testing.assert_array_equal(out["n_posts"], [2, 3, 1])
    np.testing.assert_allclose(
        out["mean_engagement"], [(0.1 + 0.02) / 2, (0.05 + 0.15 + 0.005) / 3, 0.0]
    )
    # The mean is over each account's posts as listed by posts_of().
    per_post = engagement.post_engagement(dataset)
    for row, account in enumerate(dataset.accounts):
        rows = dataset.posts_of()[account.id]
        assert out["mean_engagement"][row] == pytest.approx(per_post[rows].mean())
    np.testing.assert_allclose(out["post_engagement_std"],
                               [0.04, np.std([0.05, 0.15, 0.005]), 0.0], rtol=1e-12)


def test_account_engagement_over_selected_posts(dataset):
    """Statistics over the selected posts only, the post count (MIV's activity) included."""
    keep = np.array([True, True, False, True, True, True])  # drop b1's 0.02 post (row 2)
    np.testing.assert_array_equal(engagement.account_engagement(dataset)["n_posts"], [2, 3, 1])
    out = engagement.account_engagement(dataset, keep)
    np.testing.assert_array_equal(out["n_posts"], [1, 3, 1])
    np.testing.assert_allclose(out["mean_engagement"], [0.1, (0.05 + 0.15 + 0.005) / 3, 0.0])
    np.testing.assert_allclose(out["post_engagement_std"][0], 0.0)
    none = engagement.account_engagement(dataset, np.zeros(6, bool))
    np.testing.assert_array_equal(none["mean_engagement"], [0.0, 0.0, 0.0])


def test_history_post_mask_drops_exactly_the_sponsored_posts(dataset):
    mask = engagement.history_post_mask(dataset)
    sponsored = {c.post for c in dataset.cooperations}
    assert sponsored
    assert mask.tolist() == [p.id not in sponsored for p in dataset.posts]


def test_account_without_posts_gets_zero(dataset):
    # format.load rejects accounts without posts, so build the case directly.
    extra = fmt.Account("m3", "influencer", "Food", 10)
    ds = fmt.Dataset(
        root=dataset.root,
        concepts=dataset.concepts,
        accounts=dataset.accounts + (extra,),
        posts=dataset.posts,
        cooperations=dataset.cooperations,
        labeled_posts=dataset.labeled_posts,
        split=dataset.split,
    )
    out = engagement.account_engagement(ds)
    assert out["n_posts"][3] == 0
    assert out["mean_engagement"][3] == 0.0
    assert out["followers"][3] == 10


def test_scalings():
    f = engagement.scale_followers([1e4, 1e5, 1e6, 1e3, 1])
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, [0, 1, 2, -1, -4], atol=1e-6)
    s = engagement.scale_engagement(np.array([0.01, 0.1, 0.001, 0.0, 1.0]))
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, np.log10(np.array([0.01, 0.1, 0.001, 0.0, 1.0]) + 1e-4) + 2, rtol=1e-6)
    assert abs(s[0]) < 0.01 and s[3] == pytest.approx(-2.0)
    # Monotone, and the typical ranges land where a sigmoid is responsive.
    grid = np.logspace(3, 7, 50)
    assert np.all(np.diff(engagement.scale_followers(grid)) > 0)
    assert np.all(np.abs(engagement.scale_followers(grid)) <= 3 + 1e-6)
    rates = np.logspace(-4, 0, 50)
    assert np.all(np.diff(engagement.scale_engagement(rates)) > 0)
    assert np.all(np.abs(engagement.scale_engagement(rates)) <= 2.5)
