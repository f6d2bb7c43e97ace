#!/usr/bin/env bash
# Seed 000/001 on the real CPU executor (issue 14): Simple (1 stream) vs Parallel (2 streams)
# with each assignment, synchronised and not, plus single-stream chunk budgets, side by side in
# one invocation, A B A B (--repeat 2), every run with fresh prompts (cold by default).
#
#   benches/streams_mixed.sh [OUT_DIR] [SEED]
#
# Workload "mixed": 32 short requests (64-token prompts, 256 output tokens) sent at once, then 6
# requests with 1,024-2,048-token prompts (32 output tokens) arriving at 0.25 req/s while the
# short ones decode. Control "decode": 32 requests of 64 prompt / 128 output tokens at once.
# Goodput SLO: TTFT <= 3 s, TPOT <= 250 ms.
set -euo pipefail
out=${1:-bench-results/streams}
seed=${2:-1400}
tandem=${TANDEM:-target/release/tandem}
common=(--no-progress --repeat 2 --goodput "ttft:3000 tpot:250")

"$tandem" bench "${common[@]}" --seed "$seed" --out "$out/mixed" \
  --dataset mixed --background 32 --input-len 64 --background-output-len 256 \
  --num-prompts 6 --long-len uniform:1024:2048 --output-len 32 --request-rate 0.25 \
  --compare simple:streams=1 \
  --compare simple-b64:streams=1,max_num_batched_tokens=64 \
  --compare simple-b128:streams=1,max_num_batched_tokens=128 \
  --compare simple-b256:streams=1,max_num_batched_tokens=256 \
  --compare rr-on:streams=2,assignment=round_robin \
  --compare smart-on:streams=2,assignment=smart \
  --compare balanced-on:streams=2,assignment=balanced \
  --compare rr-off:streams=2,assignment=round_robin,sync=off \
  --compare smart-off:streams=2,assignment=smart,sync=off \
  --compare balanced-off:streams=2,assignment=balanced,sync=off

"$tandem" bench "${common[@]}" --seed "$((seed + 100))" --out "$out/decode" \
  --dataset random --num-prompts 32 --input-len 64 --output-len 128 \
  --compare simple:streams=1 \
  --compare rr-on:streams=2,assignment=round_robin \
  --compare smart-on:streams=2,assignment=smart \
  --compare balanced-on:streams=2,assignment=balanced \
  --compare rr-off:streams=2,assignment=round_robin,sync=off \
  --compare smart-off:streams=2,assignment=smart,sync=off \
  --compare balanced-off:streams=2,assignment=balanced,sync=off

# The simulator on the same workloads (modelled, cpu-2c profile), for its prediction error.
sims=()
for cfg in "simple:streams=1" "simple-b64:streams=1,max_num_batched_tokens=64" \
           "simple-b128:streams=1,max_num_batched_tokens=128" "simple-b256:streams=1,max_num_batched_tokens=256" \
           "rr-on:streams=2,assignment=round_robin" "smart-on:streams=2,assignment=smart" \
           "balanced-on:streams=2,assignment=balanced" "rr-off:streams=2,assignment=round_robin,sync=off" \
           "smart-off:streams=2,assignment=smart,sync=off" "balanced-off:streams=2,assignment=balanced,sync=off"; do
  sims+=(--compare "$cfg")
done
"$tandem" simulate --model smollm2-135m --device cpu-2c --max-num-batched-tokens 512 --max-num-seqs 64 --seed "$seed" \
  --background 32 --background-prompt-len 64 --background-output-len 256 \
  --requests 6 --prompt-len uniform:1024:2048 --output-len fixed:32 --rate 0.25 \
  "${sims[@]}" --json "$out/sim-mixed.json" | tee "$out/sim-mixed.txt"
"$tandem" simulate --model smollm2-135m --device cpu-2c --max-num-batched-tokens 512 --max-num-seqs 64 --seed "$seed" \
  --requests 32 --prompt-len fixed:64 --output-len fixed:128 \
  "${sims[@]}" --json "$out/sim-decode.json" | tee "$out/sim-decode.txt"
