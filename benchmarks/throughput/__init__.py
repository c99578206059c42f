"""Training throughput: the jitted step, the input pipeline, and both together.

Usage: `python -m benchmarks.throughput --help` (benchmarks/throughput/cli.py).
One module per stage: step.py, data.py, e2e.py, torch_compare.py; device.py
(peaks, FLOPs, memory), report.py (tables).

Stages (--stage):
  step  (default) `ftjax.step.make_train_step` of a strategy's phase on a
        random batch already on the device: what the device can do. --phase
        picks the phase: 'last' (default, the steady state), an index, or
        'all' (one compile and one record per phase).
  data  images/s of the training loader (`pipeline.make_loader`) over a
        prepared TFDS dataset; synthetic data is generated when missing.
  e2e   that loader feeding the step, each host batch handed to the step as
        `ftjax.train` does: what training gets.
  all   the three, and which of data and step bounds training.

How the step is timed. The executable comes from `jitted.lower(...).compile()`,
so tracing and compiling are timed on their own and never enter a step time.
After --warmup calls come two measurements of --steps steps each:
  * throughput: all steps dispatched back to back, one `block_until_ready` at
    the end, as the training loop runs (asynchronous dispatch hides the host's
    work); images/s, mean ms/step, TFLOP/s and MFU come from it;
  * spread: every step blocked on by itself; median, p10 and p90 ms/step.
    Each includes one host round trip, so they sit slightly above the mean.
Every step gets its own dropout key, made before the timing starts.

FLOPs per step are XLA's count for the compiled executable (`cost_analysis()`).
MFU = achieved TFLOP/s / the device's dense peak for the compute dtype: the
bf16 tensor-core peak for bf16, and for float32 the TF32 peak on GPUs that
have one (XLA computes float32 convolutions and matmuls in TF32 there by
default). Unknown devices (and CPUs) get no peak, hence no MFU.

Memory. `peak_bytes_in_use` is the device allocator's high-water mark for the
whole process (`device.memory_stats()`; CPUs have none): in a suite it never
goes down, so read it for the largest configuration. `compiled_bytes` is XLA's
static size of the step's buffers (arguments + outputs - donated + temporaries),
per configuration and on every backend.

Auto-RGN: its per-epoch work, the probe (`auto_rgn.make_probe`) and the
optimizer's re-creation (`auto_rgn.start_epoch`), is timed too and spread over
--steps-per-epoch steps.

Everything runs on one device, the first. With --compare torch the same step
runs in PyTorch in this process (see benchmarks/torch_step.py) from the same
converted weights, and the first step's loss of both is recorded as a check.
"""

from benchmarks.throughput.cli import build_parser, main, parse_args
from benchmarks.throughput.device import peak_tflops
from benchmarks.throughput.step import SMOKE_STRATEGIES, Settings, bench_step

__all__ = ["SMOKE_STRATEGIES", "Settings", "bench_step", "build_parser", "main", "parse_args",
           "peak_tflops"]
