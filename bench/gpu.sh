#!/usr/bin/env bash
# The training and serving benchmarks on a CUDA machine, once, recorded apart from the
# 2-core CPU table (issue 16: "when a GPU is at hand, run the training and serving
# benchmarks there once and record them separately").
#
#   bench/gpu.sh [OUT_DIR]        (default bench/results/gpu; run from the repo root)
#
# Runs with the machine's own python3 (PY to override). Where the packages the
# benchmarks need are missing there, put their wheels in .whl/ (README, "Training and
# serving on a GPU"): they are installed into /tmp/site first. The model is
# .rlhf-loop/models/smollm2-135m-instruct when it is there; else, when only its small
# files are at .gpu/smollm2-small (bench/same_shape_model.py --small-files-to), a model of
# its shapes and tokenizer with random weights is built from them: throughput depends
# on shapes, not weight values (bench/same_shape_model.py says what that changes).
#
# Each benchmark has its own time limit and a failure of one does not stop the next:
# the log says which finished.
set -uo pipefail

out=${1:-bench/results/gpu}
PY=${PY:-python3}
mkdir -p "$out"
log="$out/gpu.log"
: >"$log"
say() { echo "$@" | tee -a "$log"; }

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRL_EXPERIMENTAL_SILENCE=1 PYTHONUNBUFFERED=1
wheels=${GPU_WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
    >>"$log" 2>&1 || { say "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$log"
$PY - <<'EOF' 2>&1 | tee -a "$log"
import os, platform, torch, transformers, trl, peft
print(f"python {platform.python_version()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, trl {trl.__version__}, peft {peft.__version__}, "
      f"cuda {torch.cuda.is_available()} {torch.cuda.get_device_name() if torch.cuda.is_available() else ''}")
EOF

model=.rlhf-loop/models/smollm2-135m-instruct
if [ ! -f "$model/model.safetensors" ] && [ -f .gpu/smollm2-small/config.json ]; then
  model=/tmp/smollm2-same-shape
  $PY -m bench.same_shape_model .gpu/smollm2-small "$model" >>"$log" 2>&1 || { say "model build failed"; exit 1; }
  say "model: SmolLM2-135M-Instruct's config and tokenizer, random weights (bench/same_shape_model.py)"
else
  say "model: $model"
fi

run() {  # run LIMIT_S NAME ARGS...: one benchmark, its output in the log
  local limit=$1 name=$2; shift 2
  say "== $name: $*"
  local started=$SECONDS
  timeout "$limit" $PY -m "$@" 2>&1 | grep -v -e "it/s]" -e "^{'" -e "^\s*$" | tee -a "$log"
  say "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
}

run 120 concurrency bench.policy_server_concurrency --smollm2-dir "$model"
run 300 trainer bench.trainer_throughput --model smollm2 --smollm2-dir "$model" \
  --pairs "${GPU_PAIRS:-512}" --episodes "${GPU_EPISODES:-64}" --batch 8 --rounds "${GPU_ROUNDS:-3}"
run 60 throughput bench.policy_server_throughput --smollm2-dir "$model"
cp bench/results/policy_server_concurrency.json bench/results/trainer_throughput_smollm2.json \
  bench/results/policy_server_throughput.json "$out"/ 2>/dev/null
ls "$out"
