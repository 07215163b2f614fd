#!/usr/bin/env bash
# The GPU check of issue 13 in one go (< 8 minutes on one H100/H200): REPA-E SiT-XL/2 + f8d4 +
# DINOv2-B + LPIPS + GAN at the paper's 32 images/GPU (eager and compiled), with VAE checkpointing,
# the frozen-VAE REPA step at 64/GPU, the batch sweep of the cost table, and 50-step SDE sampling
# + decode of 256 images (fp32/TF32 as generate.py, bf16, bf16 + NHWC decoder). Every line printed is
# `repae bench` output (s/step, img/s, TFLOP/step, MFU, peak memory); the JSON of each case lands
# in $OUT (default ./gpu-bench).
#
#   bash scripts/gpu_bench.sh                      # on the GPU machine
#   bash scripts/gpu_bench.sh --device cpu --tiny  # dry run of every case on tiny shapes (CI)
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
TINY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    *) echo "usage: $0 [--device cuda|cpu] [--tiny]" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-gpu-bench}"
mkdir -p "$OUT"
REPAE="${REPAE:-.venv/bin/repae}"

if [[ $TINY == 1 ]]; then  # the same cases on the embedded default's shapes: proves the script runs
  OPTS=(--device "$DEVICE" --steps 1 --warmup 0 --config tiny-fmnist)
  OVR=(train.report_to=none)
  XL=(model.preset=SiT-T/1)
  B32=(train.batch_size=8) B64=(train.batch_size=8) SWEEP=(4 8)
  BF16=() PEAK=()
  SOPTS=(--device "$DEVICE" --steps 1 --warmup 0 --config tiny-fmnist --sample 4)
  SOVR=(sample.sampler=euler-maruyama sample.num_steps=2 sample.cfg_scale=1.8 sample.guidance_high=0.65)
else
  OPTS=(--device "$DEVICE" --steps 3 --warmup 2 --flops --config tiny-fmnist)
  OVR=(data.resolution=256 tokenizer.preset=f8d4 "align.encoders=[dinov2-vit-b]" lreg.perceptual=lpips
       model.num_classes=1000 align.depth=8 train.report_to=none)
  XL=(model.preset=SiT-XL/2)
  B32=(train.batch_size=32) B64=(train.batch_size=64) SWEEP=(8 16 32 64)
  BF16=(train.mixed_precision=bf16) PEAK=(--peak-tflops 989)
  # the issue-13 sampling case: 50-step SDE with CFG on [0, 0.65] + decode of 256 images, SiT-XL/2 + f8d4
  SOPTS=(--device "$DEVICE" --steps 1 --warmup 1 --config tiny-fmnist --sample 256)
  SOVR=(data.resolution=256 tokenizer.preset=f8d4 model.num_classes=1000 align.depth=8
        sample.sampler=euler-maruyama sample.num_steps=50 sample.cfg_scale=1.8 sample.guidance_high=0.65)
fi

failed=0
bench() {  # name, then dotted overrides (all flags come first: argparse takes the overrides as one list)
  local name="$1"; shift
  echo "== $name"
  if ! timeout 300 "$REPAE" bench "${OPTS[@]}" "${PEAK[@]}" --json "$OUT/$name.json" "${OVR[@]}" "$@"; then
    echo "!! $name failed (out of memory or error: see above)"; failed=$((failed + 1))
  fi
}

bench repae-xl2-b32-eager "${XL[@]}" "${B32[@]}" "${BF16[@]}" train.recipe=repa-e
bench repae-xl2-b32-ckpt "${XL[@]}" "${B32[@]}" "${BF16[@]}" train.recipe=repa-e train.vae_checkpointing=true
bench repae-xl2-b32-ckpt-nhwc "${XL[@]}" "${B32[@]}" "${BF16[@]}" train.recipe=repa-e train.vae_checkpointing=true \
  train.channels_last=true
if [[ $TINY == 0 ]]; then  # compiling costs ~2 min on a CPU; tests/test_training.py::test_torch_compile_matches_eager covers it
  bench repae-xl2-b32-compile "${XL[@]}" "${B32[@]}" "${BF16[@]}" train.recipe=repa-e train.compile=true
fi
bench repa-xl2-b64 "${XL[@]}" "${B64[@]}" "${BF16[@]}" train.recipe=repa
for b in "${SWEEP[@]}"; do
  bench "repae-xl2-sweep-b$b" "${XL[@]}" "train.batch_size=$b" "${BF16[@]}" train.recipe=repa-e train.vae_checkpointing=true
done
sample_bench() {  # name, then --sample-precision and dotted overrides
  local name="$1"; shift
  echo "== $name"
  if ! timeout 300 "$REPAE" bench "${SOPTS[@]}" --json "$OUT/$name.json" "$@" "${SOVR[@]}" "${XL[@]}"; then
    echo "!! $name failed (out of memory or error: see above)"; failed=$((failed + 1))
  fi
}
sample_bench sample-xl2-sde50-fp32 --sample-precision fp32
sample_bench sample-xl2-sde50-bf16 --sample-precision bf16
sample_bench sample-xl2-sde50-bf16-nhwc --sample-precision bf16 train.channels_last=true
echo "done: $failed case(s) failed; JSON in $OUT/"
# an out-of-memory case is a measurement, not a script failure; exit 1 only if every case failed
[[ $failed -lt $((7 + ${#SWEEP[@]})) ]]
