#!/usr/bin/env bash
# Same-machine A/B for issue 7: is the gap between our FA3 numbers and the anchor file
# (../shared/reference/h100_vllm_bench_serve.md) the pipeline's server or the host?
#   A: the anchor's plain server (`vllm serve` with the anchor's flags only)
#   B: the server exactly as run-arm starts it (attnbench.engines.engine.launch_spec: served name, seed, profiler config)
# Both are measured by vLLM's own client with the anchor's command (second run: c=1 8 prompts 1 warmup; c=32 128
# prompts 32 warmups), one after the other on one GPU, with nvidia-smi sampling clocks and power throughout.
# Runs on the GPU host after `bash tests/gpu/h100.sh install`, in the background (setsid); results in /tmp/ab.
#   bash tests/gpu/anchor_ab.sh start
#   bash tests/gpu/anchor_ab.sh poll SECONDS     # copies /tmp/ab/* to $OUT
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=/tmp/site:$PWD/workflow PATH=/tmp/abin:/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
AB=/tmp/ab
MODEL=$AB/model/model
TOK=$AB/model/tokenizer

bench() {  # $1 label, $2 base url, $3 model name, $4 concurrency, $5 prompts, $6 warmups
  # vLLM's own benchmark, entered the way crosscheck.py enters it (its console script needs package metadata)
  python3 -c 'import sys; from attnbench.measure.crosscheck import VLLM_BENCH; exec(VLLM_BENCH)' --backend openai-chat --endpoint /v1/chat/completions \
    --base-url "$2" --model "$3" --tokenizer $TOK --dataset-name random --random-input-len 45 \
    --random-output-len 512 --ignore-eos --max-concurrency "$4" --num-prompts "$5" --num-warmups "$6" --seed 0 \
    --save-result --result-dir $AB --result-filename "$1-c$4.json" > "$AB/$1-c$4.log" 2>&1
  python3 -c "import json,sys; d=json.load(open('$AB/$1-c$4.json')); print('$1 c=$4', round(d['output_throughput'],1), 'tok/s, median TPOT', round(d['median_tpot_ms'],3), 'ms, median TTFT', round(d['median_ttft_ms'],1), 'ms')"
}

serve_and_bench() {  # $1 label, $2 port, $3 model name, then the server argv
  local label=$1 port=$2 name=$3
  shift 3
  setsid "$@" > "$AB/$label-server.log" 2>&1 &  # its own process group: the stop below reaches EngineCore too
  local pid=$!
  local t0=$(date +%s)
  until python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2> /dev/null; do
    kill -0 $pid 2> /dev/null || { echo "$label: server died"; tail -n 20 "$AB/$label-server.log"; return 1; }
    sleep 2
  done
  echo "$label: ready in $(( $(date +%s) - t0 )) s"
  bench "$label" "http://127.0.0.1:$port" "$name" 1 8 1
  bench "$label" "http://127.0.0.1:$port" "$name" 32 128 32
  kill -TERM -- -$pid
  wait $pid
  # The next server wants 90% of the GPU: wait until this one's processes have let go of it.
  for _ in $(seq 60); do [ -z "$(nvidia-smi --query-compute-apps=pid --format=csv,noheader)" ] && break; sleep 1; done
}

case "${1:-}" in
start)
  mkdir -p $AB
  attnbench make-model --architecture config/models/qwen2.5-7b-instruct.json --model-dir $MODEL --tokenizer-dir $TOK > $AB/make-model.log 2>&1 || exit 1
  B_ARGV=$(python3 - << 'EOF'
import json
from pathlib import Path
from attnbench.config import arm_by_name, load_config
from attnbench.engines.engine import launch_spec
cfg = load_config("config/h100.yaml")
spec = launch_spec(cfg, arm_by_name(cfg, "fa3"), model_dir=Path("/tmp/ab/model/model"),
                   tokenizer_dir=Path("/tmp/ab/model/tokenizer"), host="127.0.0.1", port=8002,
                   trace_dir=Path("/tmp/ab/trace"))
print(json.dumps(spec.argv))
EOF
  ) || exit 1
  echo "$B_ARGV" > $AB/b-argv.json
  setsid nohup bash tests/gpu/anchor_ab.sh run > $AB/drive.log 2>&1 < /dev/null &
  echo started
  ;;
run)
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu,clocks_event_reasons.active \
    --format=csv,noheader,nounits -lms 1000 > $AB/smi.csv &
  smi=$!
  serve_and_bench A 8001 $MODEL python3 -m vllm.entrypoints.cli.main serve $MODEL --tokenizer $TOK \
    --load-format dummy --dtype float16 --max-model-len 5000 --gpu-memory-utilization 0.9 \
    --attention-backend FLASH_ATTN --port 8001
  mapfile -t argv < <(python3 -c "import json; print('\n'.join(json.load(open('$AB/b-argv.json'))))")
  serve_and_bench B 8002 Qwen2.5-7B-Instruct "${argv[@]}"
  kill $smi
  echo DONE
  ;;
poll)
  deadline=$(( $(date +%s) + ${2:-500} ))
  while [ "$(date +%s)" -lt "$deadline" ] && ! grep -q DONE $AB/drive.log 2> /dev/null; do sleep 5; done
  cat $AB/drive.log
  tar czf "$OUT/ab.tgz" -C /tmp ab/drive.log ab/smi.csv ab/b-argv.json $(cd /tmp && ls ab/*.json ab/*.log 2> /dev/null) 2> /dev/null
  ls -la "$OUT"
  ;;
*)
  echo "usage: $0 start|poll SECONDS" >&2
  exit 2
  ;;
esac
