"""The records as a progress line, Markdown tables and derived figures."""

from __future__ import annotations

from typing import Any, Sequence



def _fmt(x: Any, spec: str = ".1f", missing: str = "-") -> str:
  return missing if x is None else format(x, spec)


def _phase(r) -> str:
  return f"{r['phase'] + 1}/{r['num_phases']}"


def progress_line(r: dict[str, Any]) -> str:
  if r["stage"] == "data":
    return (f"data {r['dataset']} batch {r['batch']} crop {r['size']} workers {r['workers']}: "
            f"{r['images_per_s']:.1f} images/s")
  if r["stage"] == "e2e":
    return (f"e2e {r['arch']} {r['strategy']} phase {_phase(r)}: "
            f"{r['images_per_s']:.1f} images/s, {r['ms_per_step']:.1f} ms/step")
  line = (f"{r['arch']} {r['strategy']} phase {_phase(r)}: {r['images_per_s']:.1f} images/s, "
          f"{r['ms_per_step']:.1f} ms/step (median {r['ms_per_step_median']:.1f}, "
          f"p10 {r['ms_per_step_p10']:.1f}, p90 {r['ms_per_step_p90']:.1f}), "
          f"compile {r['compile_total_s']:.1f} s")
  if r["flops_per_step"]:
    line += f", {r['flops_per_step'] / 1e9:.2f} GFLOP/step"
  if r.get("rgn_amortised_ms_per_step") is not None:
    line += (f", RGN probe {r['rgn_probe_ms']:.1f} ms/epoch "
             f"(+{r['rgn_amortised_ms_per_step']:.2f} ms/step)")
  if r.get("torch_eager_images_per_s"):
    line += f"; torch eager {r['torch_eager_images_per_s']:.1f} images/s"
  if r.get("torch_compile_images_per_s"):
    line += f", torch.compile {r['torch_compile_images_per_s']:.1f} images/s"
  if r.get("torch_compile_error"):
    line += f", torch.compile failed ({r['torch_compile_error'][:80]})"
  return line


def _table(header: Sequence[str], align: Sequence[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def _gib(n: int | None) -> float | None:
  return None if n is None else n / 2**30


def step_table(records: list[dict[str, Any]]) -> str:
  """One row per timed (arch, strategy, phase)."""
  torch = any("torch_eager_images_per_s" in r for r in records)
  rgn = any(r.get("rgn_amortised_ms_per_step") is not None for r in records)
  header = ["arch", "strategy", "phase", "trainable modules", "batch", "px", "dtype", "images/s",
            "ms/step", "median [p10, p90]", "compile s", "GFLOP/step", "TFLOP/s", "MFU",
            "peak mem GiB", "XLA buffers GiB"]
  if rgn:
    header += ["RGN probe ms/epoch", "+ms/step"]
  if torch:
    header += ["torch eager img/s", "torch.compile img/s", "ftjax/eager", "ftjax/compile",
               "loss rel diff"]
  rows = []
  for r in records:
    row = [r["arch"], r["strategy"], _phase(r), str(len(r["trainable"])),
           str(r["batch"]), str(r["size"]), r["dtype"], _fmt(r["images_per_s"]),
           _fmt(r["ms_per_step"]),
           f"{r['ms_per_step_median']:.1f} [{r['ms_per_step_p10']:.1f}, "
           f"{r['ms_per_step_p90']:.1f}]",
           _fmt(r["compile_total_s"]),
           _fmt(None if r["flops_per_step"] is None else r["flops_per_step"] / 1e9, ".2f"),
           _fmt(r["tflops_achieved"], ".3f"), _fmt(r["mfu"], ".1%"),
           _fmt(_gib(r["peak_bytes_in_use"]), ".2f"), _fmt(_gib(r["compiled_bytes"]), ".2f")]
    if rgn:
      row += [_fmt(r.get("rgn_probe_ms")), _fmt(r.get("rgn_amortised_ms_per_step"), ".2f")]
    if torch:
      row += [_fmt(r.get("torch_eager_images_per_s")),
              _fmt(r.get("torch_compile_images_per_s"),
                   missing="failed" if r.get("torch_compile_error") else "-"),
              _fmt(r.get("ftjax_over_torch_eager"), ".2f"),
              _fmt(r.get("ftjax_over_torch_compile"), ".2f"),
              _fmt(r.get("first_loss_rel_diff"), ".1e")]
    rows.append(row)
  return _table(header, ["l"] * 4 + ["r"] * (len(header) - 4), rows)


def derived_lines(records: list[dict[str, Any]]) -> list[str]:
  """LP/FT and Auto-RGN/FT per arch, compiles of the gradual plans, the bottleneck."""
  steps = [r for r in records if r["stage"] == "step"]
  last = {(r["arch"], r["strategy"]): r for r in steps if r["phase"] == r["num_phases"] - 1}
  lines = []
  for arch in dict.fromkeys(r["arch"] for r in steps):
    ft, lp, rgn = (last.get((arch, n)) for n in ("ft", "lp", "auto_rgn"))
    if ft and lp:
      lines.append(f"LP/FT throughput, {arch}: {lp['images_per_s'] / ft['images_per_s']:.2f}x "
                   f"({lp['images_per_s']:.1f} vs {ft['images_per_s']:.1f} images/s)")
    if ft and rgn and rgn.get("ms_per_step_with_rgn"):
      slowdown = rgn["ms_per_step_with_rgn"] / ft["ms_per_step"]
      lines.append(
          f"Auto-RGN vs FT step time, {arch}: {slowdown:.2f}x "
          f"(step alone {rgn['ms_per_step'] / ft['ms_per_step']:.2f}x; probe + Adam re-creation "
          f"{rgn['rgn_epoch_ms']:.1f} ms per epoch over {rgn['steps_per_epoch']} steps)")
    for name in ("g_lf", "g_fl"):
      timed = sorted((r for r in steps if r["arch"] == arch and r["strategy"] == name),
                     key=lambda r: r["phase"])
      if not timed:
        continue
      n = timed[0]["num_phases"]
      per_phase = ", ".join(f"{r['compile_total_s']:.1f}" for r in timed)
      scope = ("every phase" if len(timed) == n else
               f"phase(s) {', '.join(_phase(r) for r in timed)} timed; --phase all times each")
      lines.append(f"{name.upper().replace('_', '-')}, {arch}: {n} phases -> {n} step compiles "
                   f"in training, one per phase; compile s per timed phase: {per_phase} ({scope})")
  for r in steps:
    if r.get("torch_eager_images_per_s"):
      text = (f"ftjax / torch, {r['arch']} {r['strategy']} phase {_phase(r)}: "
              f"eager {r['ftjax_over_torch_eager']:.2f}x")
      if r.get("ftjax_over_torch_compile"):
        text += f", torch.compile {r['ftjax_over_torch_compile']:.2f}x"
      elif r.get("torch_compile_error"):
        text += ", torch.compile failed"
      elif not r.get("torch_compile_requested"):
        text += ", torch.compile not run (--torch-compile)"
      lines.append(text + f"; first-step loss {r['first_loss']:.6f} vs "
                   f"{r['torch_eager_first_loss']:.6f}")
  data = [r for r in records if r["stage"] == "data"]
  for r in (r for r in records if r["stage"] == "e2e"):
    step_rate = last.get((r["arch"], r["strategy"]), {}).get("images_per_s")
    if data and step_rate:
      data_rate = data[0]["images_per_s"]
      which = "the input pipeline" if data_rate < step_rate else "the train step"
      lines.append(f"Bottleneck, {r['arch']} {r['strategy']}: {which} (data "
                   f"{data_rate:.1f}, step {step_rate:.1f}, end to end "
                   f"{r['images_per_s']:.1f} images/s)")
  return lines


def markdown(records: list[dict[str, Any]]) -> str:
  parts = []
  if records:
    r = records[0]
    parts.append(f"{r['platform']}: {r['device_kind']} ({r['device_count']} device(s), "
                 f"{r['host_cpu_count']} host CPUs), jax {r['jax_version']}, flax "
                 f"{r['flax_version']}, optax {r['optax_version']}, {r['date_utc']}")
  steps = [r for r in records if r["stage"] == "step"]
  if steps:
    parts.append(step_table(steps))
  data = [r for r in records if r["stage"] == "data"]
  if data:
    parts.append(_table(["dataset", "config", "batch", "crop", "workers", "images/s"],
                        ["l", "l", "r", "r", "r", "r"],
                        [[r["dataset"], r["data_config"], str(r["batch"]), str(r["size"]),
                          str(r["workers"]), _fmt(r["images_per_s"])] for r in data]))
  e2e = [r for r in records if r["stage"] == "e2e"]
  if e2e:
    parts.append(_table(["arch", "strategy", "phase", "dataset", "batch", "px", "dtype",
                         "workers", "images/s", "ms/step"], ["l"] * 4 + ["r"] * 6,
                        [[r["arch"], r["strategy"], _phase(r), r["dataset"], str(r["batch"]),
                          str(r["size"]), r["dtype"], str(r["workers"]),
                          _fmt(r["images_per_s"]), _fmt(r["ms_per_step"])] for r in e2e]))
  lines = derived_lines(records)
  if lines:
    parts.append("\n".join(f"- {line}" for line in lines))
  return "\n\n".join(parts) + "\n"
