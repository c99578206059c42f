"""The throughput benchmark: its records, its report, the PyTorch twin, its errors.

Timings are never asserted (the machine is shared); what must hold whatever
the load is: the fields, their sanity, one record per phase, and that the
PyTorch step computes the same loss as ftjax's from the same weights.
"""

import json
import math

import numpy as np
import pytest

from benchmarks import throughput
from ftjax.models import get_arch
from ftjax.strategies import get_strategy


def _positive(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("smoke")
  returned = throughput.main(["--smoke", "--json", str(out / "records.json"),
                              "--markdown", str(out / "report.md")])
  records = json.loads((out / "records.json").read_text())
  return records, returned, (out / "report.md").read_text()


def test_smoke_records_have_sane_fields(smoke):
  records, returned, _ = smoke
  assert records == json.loads(json.dumps(returned))
  assert [r["strategy"] for r in records if r["phase"] == r["num_phases"] - 1] == list(
      throughput.SMOKE_STRATEGIES)
  for r in records:
    assert r["stage"] == "step" and r["arch"] == "resnet18"
    assert (r["batch"], r["size"], r["steps"], r["dtype"]) == (4, 32, 3, "fp32")
    assert r["platform"] == "cpu" and r["device_count"] >= 1 and r["host_cpu_count"] >= 1
    for key in ("device_kind", "jax_version", "flax_version", "optax_version", "date_utc"):
      assert r[key]
    for key in ("images_per_s", "ms_per_step", "ms_per_step_median", "ms_per_step_p10",
                "ms_per_step_p90", "trace_s", "compile_s", "first_step_s", "compiled_bytes"):
      assert _positive(r[key]), (key, r[key])
    assert r["ms_per_step_p10"] <= r["ms_per_step_median"] <= r["ms_per_step_p90"]
    assert r["images_per_s"] == pytest.approx(r["batch"] / r["ms_per_step"] * 1e3)
    # XLA's CPU cost analysis counts FLOPs; CPUs have no peak (MFU) and no memory_stats.
    assert _positive(r["flops_per_step"]) and _positive(r["tflops_achieved"])
    assert r["peak_tflops"] is None and r["mfu"] is None
    assert r["peak_bytes_in_use"] is None and "cpu" in r["memory_note"]
    assert r["loss_finite"]
    assert 0 < r["trainable_params"] <= r["total_params"]


def test_smoke_times_every_phase_of_g_lf(smoke):
  records, _, _ = smoke
  plan = get_strategy("g_lf", "resnet18").plan
  g_lf = sorted((r for r in records if r["strategy"] == "g_lf"), key=lambda r: r["phase"])
  assert len(g_lf) == len(plan.phases) == g_lf[0]["num_phases"]
  assert [set(r["trainable"]) for r in g_lf] == [set(p.trainable) for p in plan.phases]
  # Each phase differentiates one more block: more FLOPs, not just a new label.
  flops = [r["flops_per_step"] for r in g_lf]
  assert flops == sorted(set(flops))
  ft, lp = (next(r for r in records if r["strategy"] == n) for n in ("ft", "lp"))
  assert ft["flops_per_step"] == g_lf[-1]["flops_per_step"]
  assert lp["flops_per_step"] == g_lf[0]["flops_per_step"] < ft["flops_per_step"]


def test_smoke_auto_rgn_probe_is_timed_and_amortised(smoke):
  records, _, _ = smoke
  (rgn,) = [r for r in records if r["strategy"] == "auto_rgn"]
  assert rgn["rgn_batches"] == get_strategy("auto_rgn", "resnet18").options.rgn_batches
  assert _positive(rgn["rgn_probe_ms"]) and _positive(rgn["rgn_reset_ms"])
  assert rgn["rgn_amortised_ms_per_step"] == pytest.approx(
      rgn["rgn_epoch_ms"] / rgn["steps_per_epoch"])
  assert rgn["ms_per_step_with_rgn"] > rgn["ms_per_step"]
  assert all("rgn_probe_ms" not in r for r in records if r["strategy"] != "auto_rgn")


def test_smoke_markdown_has_one_row_per_configuration(smoke):
  records, _, text = smoke
  rows = [line for line in text.splitlines() if line.startswith("| resnet18 |")]
  assert len(rows) == len(records)
  header = next(line for line in text.splitlines() if line.startswith("| arch |"))
  assert all(row.count("|") == header.count("|") for row in rows)
  assert "LP/FT throughput, resnet18" in text
  assert "Auto-RGN vs FT step time, resnet18" in text
  assert "G-LF, resnet18: 6 phases -> 6 step compiles" in text


def test_compare_torch_reports_eager_throughput_and_equal_first_loss(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  records = throughput.main(["--smoke", "--strategy", "ft", "--compare", "torch",
                             "--steps", "1", "--json", str(tmp_path / "r.json")])
  (r,) = json.loads((tmp_path / "r.json").read_text())
  assert r == json.loads(json.dumps(records[0]))
  assert r["torch_device"] == "cpu" and r["torch_dtype"] == "fp32"
  assert _positive(r["torch_eager_images_per_s"]) and _positive(r["ftjax_over_torch_eager"])
  assert r["ftjax_over_torch_eager"] == pytest.approx(
      r["images_per_s"] / r["torch_eager_images_per_s"])
  # torch.compile is off by default without CUDA.
  assert not r["torch_compile_requested"] and "torch_compile_images_per_s" not in r
  # Same converted weights and batch, float32, train-mode BN, no dropout: the
  # loss before the first update agrees to float32 summation-order noise.
  assert r["first_loss_comparable"]
  assert r["first_loss"] == pytest.approx(r["torch_eager_first_loss"], rel=1e-5)
  assert r["first_loss_rel_diff"] < 1e-5


@pytest.mark.parametrize("strategy,phase", [("lp", 0), ("g_lf", 1), ("lp_ft", 1)])
def test_torch_step_trains_exactly_the_phase_modules(strategy, phase):
  """The ftjax -> torchvision name mapping freezes what the phase freezes."""
  torch = pytest.importorskip("torch")
  from benchmarks import torch_step  # pylint: disable=import-outside-toplevel
  from weights_port import mapping  # pylint: disable=import-outside-toplevel
  model = torch_step.build_model("resnet18", 3)
  s = get_strategy(strategy, "resnet18")
  trainable = s.plan.phases[phase].trainable
  before = torch_step.state_dict_numpy(model)
  rng = np.random.default_rng(0)
  images, labels = torch_step.to_torch_batch(
      rng.normal(size=(2, 32, 32, 3)).astype(np.float32), np.array([0, 2]), "cpu")
  step = torch_step.make_step(model, "resnet18", s, trainable, num_classes=3)
  loss = step(images, labels)
  assert torch.isfinite(loss)
  after = torch_step.state_dict_numpy(model)
  keys = mapping.expected_keys(get_arch("resnet18"), 3)
  for name, _ in model.named_parameters():
    moved = not np.array_equal(before[name], after[name])
    assert moved == (keys[name][1][0] in trainable), name


def test_peak_table_matches_device_kinds():
  assert throughput.peak_tflops("NVIDIA H100 80GB HBM3", "bf16")[0] == 989.4
  assert throughput.peak_tflops("NVIDIA H100 PCIe", "bf16")[0] == 756.0
  assert throughput.peak_tflops("NVIDIA H200", "fp32")[0] == 494.7  # TF32
  assert throughput.peak_tflops("NVIDIA A100-SXM4-80GB", "bf16")[0] == 312.0
  assert throughput.peak_tflops("NVIDIA L40S", "bf16")[0] == 366.0
  assert throughput.peak_tflops("NVIDIA L4", "bf16")[0] == 121.0
  assert throughput.peak_tflops("Tesla V100-SXM2-16GB", "bf16") == (None, None)
  assert throughput.peak_tflops("cpu", "fp32") == (None, None)


@pytest.mark.parametrize("argv,message", [
    (["--arch", "resnet5"], "Unknown architecture 'resnet5'. Valid names: resnet18"),
    (["--strategy", "fft"], "unknown strategy 'fft'; valid names: ft, lp"),
    (["--batch", "0"], "--batch must be >= 1, got 0"),
    (["--size", "16"], "--size must be >= 32"),
    (["--strategy", "g_lf", "--arch", "resnet18", "--phase", "6"], "this plan has 6 phase(s)"),
    (["--phase", "first"], "--phase must be 'last', 'all' or an index"),
])
def test_bad_arguments_are_clear_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    throughput.main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_data_stage_prepares_synthetic_data_and_measures_the_loader(tmp_path):
  records = throughput.main(["--stage", "data", "--data_dir", str(tmp_path), "--arch",
                             "resnet18", "--size", "32", "--resize", "36", "--batch", "4",
                             "--num_train", "24", "--min_images", "8"])
  (r,) = records
  assert r["stage"] == "data" and r["dataset"] == "synthetic"
  assert r["train_images"] > 0 and r["images_timed"] >= 8
  assert _positive(r["images_per_s"])


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "convnext_tiny"])
def test_step_stage_times_the_modern_families(arch):
  """The throughput suite runs the ViT and ConvNeXt steps like the CNNs' (CPU, tiny)."""
  (r,) = throughput.main(["--arch", arch, "--strategy", "ft", "--batch", "2", "--size", "32",
                          "--steps", "1", "--warmup", "1", "--fast-compile"])
  assert r["arch"] == arch and r["loss_finite"] and _positive(r["images_per_s"])
  assert _positive(r["flops_per_step"]) and _positive(r["compiled_bytes"])
  assert 0 < r["trainable_params"] == r["total_params"]


def test_modern_suite_lists_the_modern_families():
  args = throughput.parse_args(["--suite", "modern", "--strategy", "ft"])
  assert args.arch == ["vit_b_16", "vit_base_patch14_dinov2", "convnext_tiny",
                       "efficientnet_b0"]
