#!/bin/bash
# The device call behind docs/performance.md's GPU figures: the throughput benchmark (with speed variants, a
# profile of the library's train step and its optimised HLO) on one GPU, results under $OUT.
# Run from the repository root; .whl/ holds the wheels the GPU image lacks (ml_collections).
set -u
OUT=${OUT:-/tmp/vgg_jax_gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv \
  >"$OUT/gpu.txt" 2>&1
export PYTHONUNBUFFERED=1
# The pmapped train step compiles as jit__fun, inference as jit_apply.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_dump_to=/tmp/xla_dump --xla_dump_hlo_as_text
  --xla_dump_hlo_module_re=.*(fun|apply).*"
python3 -m benchmarks.throughput --out "$OUT" --profile /tmp/vgg_profile "$@" 2>&1 | tee "$OUT/log.txt"
python3 -m benchmarks.profile_summary /tmp/vgg_profile --top 40 >"$OUT/profile.txt" 2>&1
# LPIPS against the lpips package on the same GPU (its wheel in .whl/, as the image lacks it).
if python3 -c "import lpips" 2>/dev/null; then LPIPS_TORCH=""; else LPIPS_TORCH="--skip-torch"; fi
XLA_FLAGS= python3 -m benchmarks.lpips_speed $LPIPS_TORCH --json "$OUT/lpips.json" 2>&1 \
  | tee "$OUT/lpips.txt"
# The train step's peak memory on the GPU, with and without remat (XLA:CPU's analysis shows
# no saving from remat, so only a GPU can say what it buys), VGG16 at two batches per device.
for REMAT in "" "--remat"; do
  XLA_FLAGS= python3 -m benchmarks.train_memory --dtype bfloat16 --batch-sizes 64,256 $REMAT 2>&1 \
    | tee -a "$OUT/train_memory.txt"
done
cp "$(find /tmp/vgg_profile -name '*.trace.json.gz' | head -1)" "$OUT/trace.json.gz"
tar czf "$OUT/hlo.tgz" -C /tmp/xla_dump $(cd /tmp/xla_dump && ls | grep "after_optimizations.txt$")
ls -la "$OUT"
