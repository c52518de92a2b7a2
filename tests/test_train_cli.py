"""``python experiments/train.py`` as a user runs it: clean one-line errors, --flagfile round trip."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

from conftest import REPO

_LINE = re.compile(r"^\S+:\d+: \S")  # FILE:LINE: message


def train(*args: str, timeout: int = 300, cwd: str | os.PathLike = REPO) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, os.path.join(REPO, "experiments", "train.py"), *args],
                        cwd=cwd, capture_output=True, text=True, timeout=timeout)


def problem_lines(stderr: str) -> list[str]:
  """stderr without absl's log lines (I/W + date prefix)."""
  return [l for l in stderr.splitlines() if l.strip() and not re.match(r"^[IWE]\d{4} ", l)]


def test_a_broken_dataset_fails_with_file_line_errors(tiny_data, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(tiny_data, broken, ignore=shutil.ignore_patterns("images"))
  os.symlink(pathlib.Path(tiny_data, "images").resolve(), broken / "images")
  posts = (broken / "posts.jsonl").read_text().splitlines()
  first = json.loads(posts[0])
  first["likes"] = "many"
  posts[0] = json.dumps(first)
  posts[2] = posts[2][: len(posts[2]) // 2]  # truncated JSON
  (broken / "posts.jsonl").write_text("\n".join(posts) + "\n")
  with open(broken / "cooperations.jsonl", "a") as f:
    f.write(json.dumps({"brand": "brand_nobody", "influencer": "influencer_0000",
                        "post": "influencer_0000_p00"}) + "\n")
  work = tmp_path / "work"
  proc = train(f"--data_dir={broken}", f"--workdir={work}", "--image_size=32")
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  lines = problem_lines(proc.stderr)
  assert len(lines) >= 3 and all(_LINE.match(l) for l in lines), lines
  assert any(l.startswith("posts.jsonl:1:") and "likes" in l for l in lines), lines
  assert any(l.startswith("posts.jsonl:3: malformed JSON") for l in lines), lines
  assert any(l.startswith("cooperations.jsonl:") and "brand_nobody" in l for l in lines), lines
  assert not work.exists()  # stopped before any work


def test_a_corrupt_image_fails_with_one_line_from_a_single_decoding_pass(tiny_data, tmp_path):
  """train.py checks the form alone; the pipeline's load decodes every image once, before any
  stage, and reports a corrupt one as the validator would."""
  data = tmp_path / "data"
  shutil.copytree(tiny_data, data)
  first = json.loads((data / "posts.jsonl").read_text().splitlines()[0])
  (data / first["image"]).write_bytes(b"not an image")
  work = tmp_path / "work"
  proc = train(f"--data_dir={data}", f"--workdir={work}", "--image_size=32")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  lines = problem_lines(proc.stderr)
  assert len(lines) == 1 and lines[0].startswith("posts.jsonl:1: ") and "image" in lines[0], lines
  left = sorted(p.name for p in work.iterdir()) if work.exists() else []
  assert not {"flags.txt", "data_digests.json", "word2vec", "concepts", "checkpoints"} & set(left)


def test_a_missing_dataset_fails_with_one_line(tmp_path):
  missing, work = tmp_path / "nope", tmp_path / "work"
  proc = train(f"--data_dir={missing}", f"--workdir={work}")
  assert proc.returncode == 1
  assert problem_lines(proc.stderr) == [f"{missing}: dataset directory does not exist"]
  assert "Traceback" not in proc.stderr and not work.exists()


def test_a_workdir_that_cannot_be_created_fails_with_one_line(tmp_path):
  (tmp_path / "file").write_text("x")
  work = tmp_path / "file" / "sub"
  proc = train(f"--workdir={work}")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert problem_lines(proc.stderr) == [f"{work}: cannot create --workdir (Not a directory)"]


def test_an_unknown_loss_fails_with_one_line_before_any_work(tmp_path):
  from camera_jax import losses

  work = tmp_path / "work"
  proc = train("--loss=unknown", f"--workdir={work}")
  assert proc.returncode == 1
  assert problem_lines(proc.stderr) == [
      f"--loss=unknown: unknown loss; available: {', '.join(sorted(losses.REGISTRY))}"]
  assert "Traceback" not in proc.stderr and not work.exists()


def test_a_stray_argument_is_refused_before_any_work(tmp_path):
  """"--use_interaction false" sets the flag to true and leaves "false" over: refused, or the
  run would train the full model under the ablation's name."""
  work = tmp_path / "work"
  proc = train("--use_interaction", "false", f"--workdir={work}")
  assert proc.returncode == 1
  assert problem_lines(proc.stderr) == [
      "unexpected arguments: false (write a boolean flag as --name=false)"]
  assert not work.exists()


def test_bad_settings_are_each_one_line(tmp_path):
  proc = train("--batch_size=0", "--zprime_mode=sideways", "--baselines=RAND,NOPE", "--seed=-1",
               f"--workdir={tmp_path / 'work'}")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert not (tmp_path / "work").exists()   # stopped before any work
  lines = problem_lines(proc.stderr)
  assert len(lines) == 4, lines
  assert any(l.startswith("--seed=-1: must be >= 0") for l in lines)
  assert any(l.startswith("--batch_size=0:") for l in lines)
  assert any(l.startswith("--zprime_mode=sideways: must be one of masked, faithful") for l in lines)
  assert any(l.startswith("--baselines=RAND,NOPE: unknown NOPE") for l in lines)


def test_a_list_flag_that_is_not_integers_is_refused_while_parsing(tmp_path):
  proc = train("--cnn_channels=32,x", f"--workdir={tmp_path / 'work'}")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert "--cnn_channels takes comma-separated integers" in proc.stderr
  assert not (tmp_path / "work").exists()


def test_flags_txt_round_trips_through_flagfile(tiny_run, tmp_path):
  """A finished run's flags.txt fed back with --flagfile resumes the same run: nothing is
  retrained, the metrics come back the same and flags.txt is written back unchanged but for
  --workdir, which it records as an absolute path (here given relative, from another directory)."""
  workdir, result = tiny_run
  copy = tmp_path / "work"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("report"))
  proc = train(f"--flagfile={workdir / 'flags.txt'}", "--workdir=work", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "work directory: work" in proc.stdout
  original = (workdir / "flags.txt").read_text().splitlines()
  rewritten = (copy / "flags.txt").read_text().splitlines()
  assert rewritten == [l if not l.startswith("--workdir=") else f"--workdir={copy}" for l in original]
  metrics = json.loads((copy / "metrics.json").read_text())
  assert metrics["methods"] == result["methods"]
  assert (copy / "train_log.jsonl").read_text() == (workdir / "train_log.jsonl").read_text()


def test_the_flags_txt_of_a_copied_run_does_not_resume_the_original(tiny_run, tmp_path):
  """cp -a of a run keeps its flags.txt, which names the original --workdir: fed back alone it
  would resume (and rewrite) the original, so it is refused in one line before any work."""
  workdir, _ = tiny_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("report"))
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  proc = train(f"--flagfile={copy / 'flags.txt'}", cwd=tmp_path)
  assert proc.returncode == 1
  assert problem_lines(proc.stderr) == [
      f"{copy / 'flags.txt'}: records --workdir={workdir.resolve()}, but lies in {copy} (a copied "
      f"run?); pass --workdir={copy} to resume the copy"]
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


def test_a_failed_report_is_one_line_and_exit_1_after_a_complete_run(tiny_run, tmp_path):
  """The report is written after the run: when it fails (here ``report`` is a file, so its
  folder cannot be made) the run's outputs stand, the results are printed, and one line says
  what failed and how to retry; the exit status is 1."""
  workdir, result = tiny_run
  copy = tmp_path / "work"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("report"))
  (copy / "report").write_text("not a folder")
  proc = train(f"--flagfile={workdir / 'flags.txt'}", f"--workdir={copy}", "--report")
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  failed = problem_lines(proc.stderr)
  assert len(failed) == 1 and failed[0].startswith("report failed:"), proc.stderr[-3000:]
  assert f"python experiments/report.py --workdir={copy}" in failed[0]
  assert "finished in" in proc.stdout
  assert json.loads((copy / "metrics.json").read_text())["methods"] == result["methods"]
  # report.py says the same in one line.
  proc = subprocess.run([sys.executable, "experiments/report.py", f"--workdir={copy}"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert len(problem_lines(proc.stderr)) == 1, proc.stderr[-3000:]


def test_help_lists_every_config_flag_with_its_comment():
  from camera_jax import config as config_lib
  proc = subprocess.run([sys.executable, "experiments/train.py", "--help"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  text = proc.stdout + proc.stderr   # (absl's --help exits with status 1)
  for field in config_lib.fields():
    assert re.search(rf"--(\[no\])?{field.name}:", text), field.name
  assert "see camera_jax/config.py" not in text   # every field has its own help line
  assert re.search(r"--loss_hparams: more of the loss's keyword settings", text)
  from camera_jax import losses      # --loss lists the registered names
  assert (f"a name of camera_jax.losses.REGISTRY: {', '.join(sorted(losses.REGISTRY))}"
          in " ".join(text.split()))   # (absl wraps the help text)
