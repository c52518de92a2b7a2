"""Tests of camera_jax.explain.report: a self-contained HTML report from a fake run and work directory."""

from __future__ import annotations

import html.parser
import json
import pathlib
import sys
import urllib.parse

import pytest
from PIL import Image

from camera_jax.explain import report

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_recommend import make_run  # noqa: E402  (the shared fake run)


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.h2: list[str] = []
        self.articles = 0
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.links.append(("img", a["src"]))
        if tag == "a":
            self.links.append(("a", a["href"]))
        if tag == "article":
            self.articles += 1
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data.strip())


def _workdir(run) -> pathlib.Path:
    wd = run.workdir
    wd.mkdir(parents=True, exist_ok=True)
    metrics = {
        "methods": {"CAMERA": {"auc": 0.81, "cauc": 0.7, "recall@10": 0.3, "recall@50": 0.6, "mrr": 0.25, "map": 0.2, "medr": 12.0, "n_brands": 7.0},
                    "RAND<script>": {"auc": 0.5, "cauc": 0.5, "recall@10": 0.1, "recall@50": 0.3, "mrr": 0.05, "map": 0.04, "medr": 40.0, "n_brands": 7.0}},
        "per_category": {"food": {"auc": 0.9, "medr": 3.0}, "accessory": {"auc": 0.7, "medr": 9.0}},
        "concept_layer": {"cosmic": {"final_loss": 0.25, "epochs": 3, "curve": [1.0, 0.5]}},
        "n_test_pairs": 40, "n_test_positives": 4,
        "warnings": ["1 cooperation(s) of a test brand with an influencer that is not a candidate <x>"],
    }  # fmt: skip
    metrics["methods"] = dict(reversed(list(metrics["methods"].items())))  # CAMERA last in the file
    (wd / "metrics.json").write_text(json.dumps(metrics))
    log = [{"stage": s, "epoch": e, "loss": 1.0 / (e + 1), "lr": 0.1} for s in ("cosmic", "ranker") for e in range(3)]
    (wd / "train_log.jsonl").write_text("\n".join(map(json.dumps, log)) + "\nnot json\n")
    (wd / "flags.txt").write_text("--seed=0\n--preset=<tiny>\n")
    return wd


def _check_links(index: pathlib.Path, page: _Page) -> None:
    out = index.parent.resolve()
    for kind, url in page.links:
        parts = urllib.parse.urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
        if kind == "a" and url.startswith("#"):
            assert url[1:] in page.ids, url
            continue
        assert not url.startswith("/") and ".." not in pathlib.PurePosixPath(parts.path).parts, url
        target = (index.parent / urllib.parse.unquote(parts.path)).resolve()
        assert target.is_file(), url
        assert out in target.parents, url  # inside report/


def test_report_is_self_contained_and_complete(tmp_path):
    run = make_run(tmp_path)
    missing = next(p for p in run.dataset.posts if p.id == "infl_foodie_p0")
    (run.dataset.root / missing.image).unlink()  # a missing image is shown as such
    wd = _workdir(run)
    index = report.write_report(run, n_cases=3, seed=0)
    assert index == wd / "report" / "index.html"
    text = index.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    page.close()
    assert page.h2 == ["Run", "Metrics", "Training", "Case studies"]
    assert {"run", "metrics", "training", "cases", "case1", "case2"} <= page.ids
    assert "script" not in page.tags and "link" not in page.tags  # no JS, no external CSS
    _check_links(index, page)

    # Two test brands -> two cases; each: brand history + 2 influencers x (history, w_b, w_m).
    assert page.articles == 2
    charts = [u for k, u in page.links if k == "img" and u.startswith("charts/")]
    assert len(charts) == 14 and all(u.endswith(".png") for u in charts)
    svgs = [u for k, u in page.links if k == "a" and u.endswith(".svg")]
    assert len(svgs) == 14
    thumbs = [u for k, u in page.links if k == "img" and u.startswith("images/")]
    assert thumbs
    for u in thumbs:
        with Image.open(index.parent / u) as im:
            assert max(im.size) <= 200
    assert "image unavailable" in text
    assert [u for k, u in page.links if k == "img" and u.startswith("figures/")] == ["figures/loss.png"]
    assert "1 unreadable line(s)" in text

    # Everything from the data is escaped; metric tables and scores are there.
    assert "<b>#food</b>" not in text and "&lt;b&gt;#food&lt;/b&gt;" in text
    assert "RAND&lt;script&gt;" in text and "--preset=&lt;tiny&gt;" in text
    assert "<td><b>0.8100</b></td>" in text and "<td><b>12</b></td>" in text  # best AUC, lowest MedR
    assert text.index("<td>CAMERA</td>") < text.index("<td>RAND&lt;script&gt;</td>")  # CAMERA listed first
    assert "40 scored test pairs, 4 positives, n_brands = 7." in text  # a constant count column moves here
    assert "<th>n_brands</th>" not in text.split("Per brand category")[0]
    assert '<p class="warning">Test set: 1 cooperation(s) of a test brand with an influencer that is not a candidate &lt;x&gt;</p>' in text
    assert "<summary>Concept layer" in text and "<td>final_loss</td><td>0.2500</td>" in text
    assert "<td>curve</td>" not in text  # lists are left out
    assert "High-ranked influencer: infl_foodie" in text  # the restaurant's best match
    assert "known partner" in text and "rank <b>1</b> / 4" in text


def test_report_warns_when_metrics_are_of_other_labels(tmp_path):
  """evaluate.py --data_dir rewrites metrics.json for another dataset's cooperations or split:
  the report says its tables do not describe the run's own case studies."""
  from camera_jax import pipeline
  run = make_run(tmp_path)
  wd = _workdir(run)
  warning = "metrics.json was computed on other cooperations or another split"
  metrics = json.loads((wd / "metrics.json").read_text())
  for labels, warned in ((pipeline.labels_record(run.dataset), False),
                         ({**pipeline.labels_record(run.dataset), "split.json": "0" * 64}, True),
                         (None, False)):   # metrics.json written before the record existed
    (wd / "metrics.json").write_text(json.dumps({**metrics, "labels": labels}))
    text = report.write_report(run, n_cases=1, seed=0).read_text(encoding="utf-8")
    assert (warning in text) == warned, labels


def test_report_without_metrics_or_log_and_rewrite(tmp_path):
    run = make_run(tmp_path)
    out = tmp_path / "elsewhere"
    index = report.write_report(run, out, n_cases=1, seed=3)
    text = index.read_text()
    assert index == out / "index.html"
    assert "No readable metrics.json" in text and "No train_log.jsonl" in text
    page = _Page()
    page.feed(text)
    assert page.articles == 1
    _check_links(index, page)
    (out / "charts" / "stale.png").write_bytes(b"x")
    report.write_report(run, out, n_cases=0)
    assert not (out / "charts" / "stale.png").exists()
    assert "No case study asked for" in (out / "index.html").read_text()   # not "no brand"


def test_a_folder_that_is_not_a_report_is_refused_and_left_alone(tmp_path):
    run = make_run(tmp_path)
    site = tmp_path / "site"
    (site / "images").mkdir(parents=True)
    (site / "images" / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not empty and not a report folder"):
        report.write_report(run, site, n_cases=0)
    assert (site / "images" / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in site.iterdir()) == ["images"]
    # a report written before the marker existed (only a report's entries) is rewritten
    old = tmp_path / "old"
    (old / "charts").mkdir(parents=True)
    (old / "index.html").write_text("old")
    assert report.write_report(run, old, n_cases=0).read_text() != "old"
    assert (old / report.MARKER).exists()
    (old / "notes.txt").write_text("mine")  # a marked report folder may hold other files
    report.write_report(run, old, n_cases=0)
    assert (old / "notes.txt").read_text() == "mine"


def test_a_report_that_fails_half_way_leaves_no_index(tmp_path, monkeypatch):
    """index.html is removed before the charts are rewritten and written last (atomically): a
    failed rewrite never leaves a page that points at charts of another run."""
    run = make_run(tmp_path)
    _workdir(run)
    index = report.write_report(run, n_cases=1, seed=0)
    assert index.exists()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report, "metrics_table_html", boom)
    with pytest.raises(OSError, match="disk full"):
        report.write_report(run, n_cases=1, seed=0)
    assert not index.exists()
    assert not [p for p in index.parent.iterdir() if p.name.startswith(".index.html")]


def test_output_directory_problems_are_found_before_any_work(tmp_path, monkeypatch):
    from camera_jax import atomic

    (tmp_path / "file").write_text("x")
    assert atomic.output_dir_problem(tmp_path / "new" / "deeper") is None  # made later
    assert atomic.output_dir_problem(tmp_path) is None
    assert atomic.output_dir_problem(tmp_path / "file") == f"{tmp_path / 'file'} is not a directory"
    assert atomic.output_dir_problem(tmp_path / "file" / "sub") == f"{tmp_path / 'file'} is not a directory"
    assert not list(tmp_path.glob(".probe*")) and not (tmp_path / "new").exists()

    def refuse(*args, **kwargs):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "NamedTemporaryFile", refuse)
    assert atomic.output_dir_problem(tmp_path / "new") == f"cannot write in {tmp_path} (Permission denied)"
