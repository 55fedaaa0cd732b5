#!/usr/bin/env bash
# What a GPU machine runs first, in one go and within a short lease (about 10 minutes on an H100
# or H200), writing everything under $OUT (default: runs/gpu_check):
#   1. the machine: nvidia-smi, torch and CUDA versions;
#   2. the GPU tests: the trainer, the fast (compiled) step, several-GPU training where present;
#   3. the `paper-mini` profile through notebooks 00-11 on the GPU with the compiled step
#      (inductor): the paper's path end to end, in miniature;
#   4. the paper GAN's training step: images/s and memory, fp32 and bf16, plain and compiled
#      (benchmarks/train_step.py), the figures the project's GPU time estimates need.
# Each step's output goes to $OUT/<step>.log and a step that fails does not stop the others;
# the summary at the end says which passed. DRY_RUN=1 prints the steps without running them
# (the test suite checks this on the CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"

steps=(
  "machine|nvidia-smi; $PYTHON -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'"
  "gpu_tests|$PYTHON -m pytest -q tests/test_counterfactual.py tests/test_fast_step.py tests/test_distributed.py"
  "paper_mini|$PYTHON -m coinlib.cli reproduce --profile paper-mini --run-dir $OUT/paper-mini"
  "train_step|$PYTHON benchmarks/train_step.py --profile paper --precision both --fast --batch-sizes 16"
)

status=0
summary=()
for step in "${steps[@]}"; do
  name=${step%%|*}
  command=${step#*|}
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    echo "$name: $command"
    continue
  fi
  start=$(date +%s)
  if bash -c "$command" >"$OUT/$name.log" 2>&1; then result=passed; else result=FAILED; status=1; fi
  summary+=("$name: $result in $(( $(date +%s) - start )) s (log: $OUT/$name.log)")
  echo "${summary[-1]}"
done
if [[ ${DRY_RUN:-0} != 1 ]]; then
  printf '%s\n' "${summary[@]}" > "$OUT/summary.txt"
fi
exit $status
