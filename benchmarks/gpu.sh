#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one call of under 7 minutes.
#
#   benchmarks/gpu.sh [OUT_DIR]          # on a GPU machine, from the repository root
#   FTJAX_GPU_DRY=1 benchmarks/gpu.sh    # the same parts at toy sizes on a CPU (a dry run)
#
# Parts, each time-boxed so that one slow compile cannot eat the others' time:
#   1. device, driver and versions;
#   2. FT in bf16, batch 64, 224 px, for ResNet-50, DenseNet-121, VGG-19 and ViT-B/16, beside
#      the same step in PyTorch (eager AMP, channels_last, and torch.compile);
#   3. LP and Auto-RGN against FT on ResNet-50 (bf16, batch 64, 224 px).
# Every part appends its figures to OUT_DIR/gpu.log as they are measured (one line per
# configuration) and writes OUT_DIR/<part>.json and .md when it finishes.
#
# Python packages the GPU image lacks (tensorflow-datasets, grain, ml_collections,
# array-record, ...) travel as wheels in .whl/ (benchmarks/gpu_wheels.sh downloads them);
# they are installed into /tmp/site when .whl/ is there.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${1:-${OUT:-benchmarks/gpu_out}}
mkdir -p "$out"
log="$out/gpu.log"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

if [[ ${FTJAX_GPU_DRY:-0} == 1 ]]; then
  # Toy sizes: every part and flag runs, in seconds, on a CPU.
  sizes=(--batch 2 --size 32 --steps 2 --warmup 1 --dtype fp32 --fast-compile)
  torch_compile=--no-torch-compile
  box_step=240 box_lp=240
else
  sizes=(--batch 64 --size 224 --steps 20 --warmup 3 --dtype bf16)
  torch_compile=--torch-compile
  box_step=85 box_lp=60
fi

part() {  # part NAME SECONDS ARGS...: one time-boxed benchmark run
  local name=$1 seconds=$2
  shift 2
  echo "== $name (at most ${seconds}s)" | tee -a "$log"
  timeout --signal=TERM --kill-after=5 "$seconds" "$python" -m benchmarks.throughput "$@" \
    --json "$out/$name.json" --markdown "$out/$name.md" 2>>"$out/$name.err" | tee -a "$log"
  local status=${PIPESTATUS[0]}
  [[ $status == 124 ]] && echo "== $name: stopped at its ${seconds}s limit" | tee -a "$log"
  [[ $status != 0 && $status != 124 ]] && echo "== $name: exit $status (see $name.err)" | tee -a "$log"
  return 0
}

{
  echo "== versions ($(date -u +%FT%TZ))"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    || echo "no nvidia-smi"
  "$python" - <<'EOF'
import jax, flax, optax
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "devices", jax.devices())
try:
  import torch, torchvision
  print("torch", torch.__version__, "torchvision", torchvision.__version__,
        "cuda", torch.version.cuda)
except ImportError as e:
  print("torch:", e)
EOF
} 2>&1 | tee -a "$log"

for arch in resnet50 densenet121 vgg19 vit_b_16; do
  part "ft_${arch}" "$box_step" --arch "$arch" --strategy ft "${sizes[@]}" \
    --compare torch "$torch_compile"
done
part lp_rgn_vs_ft_resnet50 "$box_lp" --arch resnet50 --strategy ft lp auto_rgn "${sizes[@]}"
echo "== done: $out" | tee -a "$log"
