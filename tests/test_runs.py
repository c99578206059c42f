"""Runs you can trust: run identity, report hygiene, checkpoint integrity, locks.

Each case is one a user met: a finished workdir reused under another config, a
changed runtime field on resume, a stray results.json counted as a seed, a
damaged latest checkpoint, a config error that blocked its own corrected rerun,
two trainers on one workdir.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from ftjax import report, run as run_lib, sweep
from ftjax.engine import checkpoints, training
from ftjax.data.prepared import prepared_builder
from ftjax.models import registry
from tests.test_sweep_report import tiny_sweep_config
from tests.test_train import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("data")
  config = tiny_config(path, "lp")
  prepared_builder(config, registry.get_arch(config.arch))  # made once
  return path


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
  """(config, workdir, results) of one finished 3-epoch LP-FT run, never modified."""
  config = tiny_config(data_dir, "lp_ft", num_epochs=3)
  workdir = tmp_path_factory.mktemp("finished")
  return config, workdir, training.train_and_evaluate(config, workdir)


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
  return dst


def _train_cli(config_file: pathlib.Path, workdir: pathlib.Path, *extra: str):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}
  return subprocess.run([sys.executable, "-m", "ftjax.train", f"--config={config_file}",
                         f"--workdir={workdir}", *extra], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def _config_file(tmp_path, data_dir, strategy, **overrides) -> pathlib.Path:
  path = tmp_path / f"cfg_{strategy}.py"
  path.write_text("from tests.test_train import tiny_config\n\n\n"
                  f"def get_config():\n  return tiny_config({str(data_dir)!r}, "
                  f"{strategy!r}, **{overrides!r})\n")
  return path


def _error_line(proc) -> str:
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


# ------------------------------------------------------------------ identity


def test_finished_workdir_with_another_strategy_is_refused_then_moved_aside(
    finished, data_dir, tmp_path):
  _, workdir, results = finished
  work = _copy(workdir, tmp_path / "run")
  cfg = _config_file(tmp_path, data_dir, "lp", num_epochs=3)
  line = _error_line(_train_cli(cfg, work))
  assert "another identity" in line and "strategy: 'lp_ft' -> 'lp'" in line
  assert "--overwrite" in line
  assert json.loads((work / "results.json").read_text()) == results  # untouched
  proc = _train_cli(cfg, work, "--overwrite")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"moved it to {work}.old-1" in proc.stdout
  assert json.loads((tmp_path / "run.old-1" / "results.json").read_text()) == results
  assert json.loads((work / "results.json").read_text())["strategy"] == "lp"


@pytest.mark.parametrize("field,value", [("lr", 1e-4), ("num_epochs", 2),
                                         ("resize", 40), ("num_workers", 2)])
def test_finished_run_is_not_reused_under_a_changed_field(finished, tmp_path, field, value):
  config, workdir, _ = finished
  work = _copy(workdir, tmp_path / "run")
  changed = tiny_config(config.data_dir, "lp_ft", **{"num_epochs": 3, field: value})
  if field == "resize":  # another prepared dataset: the data fingerprint differs too
    prepared_builder(changed, registry.get_arch(changed.arch))
  with pytest.raises(run_lib.RunMismatch, match=rf"{field}: "):
    training.train_and_evaluate(changed, work)
  # Progress bars cannot change a result: the finished run is returned.
  same = tiny_config(config.data_dir, "lp_ft", num_epochs=3, progress=True, prefetch=1)
  assert training.train_and_evaluate(same, work) == finished[2]


def test_resume_with_another_num_workers_is_refused(data_dir, tmp_path):
  config = tiny_config(data_dir, "lp", num_epochs=2)
  assert training.train_and_evaluate(config, tmp_path, max_epochs_this_call=1) is None
  with pytest.raises(run_lib.RunMismatch, match=r"num_workers: 0 -> 2"):
    training.train_and_evaluate(tiny_config(data_dir, "lp", num_epochs=2, num_workers=2),
                             tmp_path)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["num_workers"] == 0


def test_changed_prepared_data_is_another_identity(finished, tmp_path):
  config, workdir, _ = finished
  work = _copy(workdir, tmp_path / "run")
  data = _copy(pathlib.Path(config.data_dir), tmp_path / "data")
  changed = tiny_config(data, "lp_ft", num_epochs=3)
  _, builder = prepared_builder(changed, registry.get_arch(changed.arch))
  info_path = builder.data_path / "dataset_info.json"
  info = json.loads(info_path.read_text())
  info["description"] = "re-prepared"  # any change of the prepared data's record
  info_path.write_text(json.dumps(info))
  with pytest.raises(run_lib.RunMismatch, match=r"data_fingerprint"):
    training.train_and_evaluate(changed, work)


@pytest.mark.parametrize("field,value,match", [
    ("strategy", "lq", "Unknown strategy 'lq'"), ("arch", "resnet7", "resnet7"),
    ("batch_size", 4096, "fewer than one batch"), ("crop", 64, "config.resize"),
])
def test_config_errors_are_found_before_anything_is_written(data_dir, tmp_path, field,
                                                            value, match):
  with pytest.raises(ValueError, match=match):
    overrides = {"strategy": "lp", field: value}
    training.train_and_evaluate(tiny_config(data_dir, **overrides), tmp_path / "r")
  assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
  # The corrected rerun is not blocked.
  assert training.train_and_evaluate(tiny_config(data_dir, "lp", num_epochs=1),
                                  tmp_path / "r")["epochs_run"] == 1


def test_lp_epochs_zero_is_refused_before_anything_is_written(data_dir, tmp_path):
  config = tiny_config(data_dir, "lp_ft")
  config.strategy_options.lp_epochs = 0
  with pytest.raises(ValueError, match="lp_epochs must be >= 1"):
    training.train_and_evaluate(config, tmp_path / "r")
  assert not (tmp_path / "r" / "config.json").exists()


def test_second_trainer_on_one_workdir_is_one_error_line(data_dir, tmp_path):
  work = tmp_path / "run"
  lock = run_lib.RunLock(work)
  assert lock.acquire()
  try:
    line = _error_line(_train_cli(_config_file(tmp_path, data_dir, "lp"), work))
  finally:
    lock.release()
  assert f"another process (pid {os.getpid()}) is training this run" in line


# ------------------------------------------------------------------ sweep and report


def test_sweep_neither_counts_nor_deletes_runs_of_another_config(tmp_path):
  config = tiny_sweep_config(tmp_path / "data", strategies=("lp",), lrs=(1e-3,),
                             seeds=(0,))
  workdir = tmp_path / "runs"
  first = sweep.run_sweep(config, workdir, progress=False)
  assert first.ok and len(first.ran) == 1
  spec = sweep.grid(config)[0]
  old_results = (spec.directory(workdir) / "results.json").read_text()
  config.base.num_epochs = 2  # another config over the same workdir
  again = sweep.run_sweep(config, workdir, progress=False, max_attempts=1)
  assert not again.already_done and not again.ran
  assert [s for s, _ in again.failed] == [spec]
  assert "num_epochs: 1 -> 2" in again.failed[0][1]
  assert (spec.directory(workdir) / "results.json").read_text() == old_results
  assert sweep.status(spec.directory(workdir),
                      sweep.expected_identity(spec.config(config.base))) == "other"


def test_report_ignores_stray_copies_and_misplaced_runs(finished, tmp_path):
  config, workdir, _ = finished
  root = tmp_path / "runs"
  place = root / run_lib.relative_path(config.dataset, config.arch, config.strategy,
                                       config.lr, config.seed)
  place.parent.mkdir(parents=True)
  _copy(workdir, place)
  _copy(workdir, place.parent / "seed1")                 # a run moved to another seed
  _copy(workdir, root / "elsewhere")                     # outside the layout
  _copy(workdir, place / "old_attempt")                  # a stray copy inside the run
  ignored: dict[str, str] = {}
  records = report.load_results(root, ignored)
  assert [r.path for r in records] == [place]
  rel = place.relative_to(root).as_posix()
  assert set(ignored) == {f"{rel}/old_attempt", rel.replace("seed0", "seed1"), "elsewhere"}
  assert "another run" in ignored[rel.replace("seed0", "seed1")]
  assert "layout" in ignored["elsewhere"]


# ------------------------------------------------------------------ checkpoints


def _largest_file(directory: pathlib.Path) -> pathlib.Path:
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_latest_checkpoint_is_set_aside_and_the_run_ends_identical(
    finished, tmp_path, capfd, damage):
  config, _, straight = finished
  work = tmp_path / "run"
  assert training.train_and_evaluate(config, work, max_epochs_this_call=2) is None
  latest = work / "checkpoints" / "latest"
  assert sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit()) == [1, 2]
  victim = _largest_file(latest / "2")
  data = bytearray(victim.read_bytes())
  if damage == "flip":
    for i in range(0, len(data), max(1, len(data) // 16)):
      data[i] ^= 0xFF
  else:
    data = data[:len(data) // 2]
  victim.write_bytes(bytes(data))
  capfd.readouterr()
  resumed = training.train_and_evaluate(config, work)
  err = capfd.readouterr().err
  assert f"checkpoint {latest / '2'} is damaged" in err
  for key in ("best_epoch", "epochs_run", "validation", "test"):
    assert resumed[key] == straight[key], key
  aside = work / "checkpoints" / "damaged" / "latest-2"
  assert (aside / victim.relative_to(latest / "2")).read_bytes() == bytes(data)


def test_no_intact_checkpoint_restarts_from_scratch_and_says_so(finished, tmp_path, capfd):
  config, _, straight = finished
  work = tmp_path / "run"
  assert training.train_and_evaluate(config, work, max_epochs_this_call=2) is None
  for sums in (work / "checkpoints" / "checksums").glob("latest-*.json"):
    sums.write_text("{}")  # neither checkpoint matches its record any more
  capfd.readouterr()
  resumed = training.train_and_evaluate(config, work)
  err = capfd.readouterr().err
  assert err.count("is damaged") == 2 and "starts from scratch" in err
  assert resumed["test"] == straight["test"]
  lines = (work / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


def test_checksums_follow_the_kept_checkpoints(finished):
  _, workdir, _ = finished
  sums = sorted(p.name for p in (workdir / "checkpoints" / "checksums").iterdir())
  assert sums == ["best-" + str(finished[2]["best_epoch"]) + ".json", "latest-2.json",
                  "latest-3.json"]
  ckpts = checkpoints.RunCheckpoints(workdir)
  try:
    for name in sums:
      series, epoch = name[:-5].split("-")
      expected = json.loads((workdir / "checkpoints" / "checksums" / name).read_text())
      assert checkpoints.file_digests(workdir / "checkpoints" / series / epoch) == expected
  finally:
    ckpts.close()


# ------------------------------------------------------------------ faults mid-run

# `python -m ftjax.train` with a fault at `epoch`: the disk is full when the latest
# checkpoint after it is saved, or the workdir vanishes while it trains.
_FAULTY_TRAIN = """
import errno, os, pathlib, runpy, shutil, sys
from ftjax.engine import checkpoints, experiment
fault, epoch, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[4].partition("=")[2]
real_save, real_loader = checkpoints.RunCheckpoints.save_latest, experiment.epoch_loader

def save_latest(self, at, state, loop):
  if at == epoch and fault == "disk_full":
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root / "latest"))
  return real_save(self, at, state, loop)

def epoch_loader(config, source, at, seed=None):
  if at == epoch and fault == "vanished":
    shutil.rmtree(workdir)
  return real_loader(config, source, at, seed)

checkpoints.RunCheckpoints.save_latest = save_latest
experiment.epoch_loader = epoch_loader
sys.argv = ["ftjax.train", *sys.argv[3:]]
runpy.run_module("ftjax.train", run_name="__main__")
"""


def _faulty_train_cli(fault: str, epoch: int, config_file, workdir):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}
  return subprocess.run([sys.executable, "-c", _FAULTY_TRAIN, fault, str(epoch),
                         f"--config={config_file}", f"--workdir={workdir}"], env=env,
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_disk_full_mid_run_is_one_error_line_and_the_rerun_ends_identical(
    finished, data_dir, tmp_path):
  _, _, straight = finished
  config_file = _config_file(tmp_path, data_dir, "lp_ft", num_epochs=3)
  work = tmp_path / "run"
  line = _error_line(_faulty_train_cli("disk_full", 2, config_file, work))
  assert line.startswith(f"error: {work / 'checkpoints' / 'latest'}: No space left")
  assert "the disk is full" in line and "rerun the same command to resume" in line
  # The checkpoint of epoch 1 was kept: the rerun resumes there.
  rerun = _train_cli(config_file, work)
  assert rerun.returncode == 0 and "resuming after epoch 1" in rerun.stdout, rerun.stderr
  resumed = json.loads((work / "results.json").read_text())
  for key in ("best_epoch", "epochs_run", "validation", "test"):
    assert resumed[key] == straight[key], key


def test_vanished_workdir_mid_run_is_one_error_line(data_dir, tmp_path):
  config_file = _config_file(tmp_path, data_dir, "lp", num_epochs=3)
  work = tmp_path / "run"
  line = _error_line(_faulty_train_cli("vanished", 1, config_file, work))
  assert str(work) in line and "vanished" in line
  assert not work.exists()
  # Rerun: a new run from scratch in a new directory.
  assert _train_cli(config_file, work).returncode == 0
  assert (work / "results.json").exists()


def test_damaged_identity_json_is_refused_and_overwrite_keeps_it(finished, data_dir,
                                                                   tmp_path):
  _, workdir, _ = finished
  work = _copy(workdir, tmp_path / "run")
  (work / "identity.json").write_text('{"hash": "12')
  config_file = _config_file(tmp_path, data_dir, "lp_ft", num_epochs=3)
  line = _error_line(_train_cli(config_file, work))
  assert line == (f"error: {work}: its identity.json is unreadable. Use another --workdir, "
                  f"or --overwrite to move the old run aside (it is kept, not deleted).")
  assert (work / "results.json").exists()
  moved = _train_cli(config_file, work, "--overwrite")
  assert moved.returncode == 0, moved.stderr
  assert (tmp_path / "run.old-1" / "identity.json").read_text() == '{"hash": "12'


def test_damaged_config_json_is_named_then_rewritten(finished, data_dir, tmp_path):
  _, workdir, _ = finished
  work = _copy(workdir, tmp_path / "run")
  good = (work / "config.json").read_text()
  (work / "config.json").write_bytes(b"\xff\x00{")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  evaluated = subprocess.run([sys.executable, "-m", "ftjax.evaluate", f"--workdir={work}"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  line = _error_line(evaluated)
  assert line.startswith(f"error: {work / 'config.json'}: damaged") and "rerun" in line.lower()
  # The identity is intact: train rewrites config.json and says so; the run is finished.
  config_file = _config_file(tmp_path, data_dir, "lp_ft", num_epochs=3)
  rerun = _train_cli(config_file, work)
  assert rerun.returncode == 0 and "this run has finished" in rerun.stdout, rerun.stderr
  assert "config.json was missing or damaged; written again" in rerun.stderr
  assert json.loads((work / "config.json").read_text()) == json.loads(good)
