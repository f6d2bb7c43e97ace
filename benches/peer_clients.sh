#!/usr/bin/env bash
# vLLM's and guidellm's own benchmark clients against `tandem serve` (issue 15): both must run
# to completion with no model or tokenizer flag of their own (they read `/v1/models`; `root`
# is a directory the tokenizer loads from). Client checks, not a speed comparison.
#
#   benches/peer_clients.sh [PORT] [SEED]
#
# Installs the clients once into venvs under target/peers/ (several GiB: not part of CI).
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:-8011}
seed=${2:-1501}
tandem=${TANDEM:-target/release/tandem}
venvs=target/peers
VLLM_VERSION=0.33.0
GUIDELLM_VERSION=0.8.1
[ -x "$venvs/vllm/bin/vllm" ] || { python3 -m venv "$venvs/vllm" && "$venvs/vllm/bin/pip" install -q "vllm==$VLLM_VERSION"; }
[ -x "$venvs/guidellm/bin/guidellm" ] || { python3 -m venv "$venvs/guidellm" && "$venvs/guidellm/bin/pip" install -q "guidellm==$GUIDELLM_VERSION"; }
[ -x "$tandem" ] || cargo build --release -p tandem

"$tandem" serve --port "$port" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
url=http://127.0.0.1:$port
for _ in $(seq 120); do curl -sf "$url/ready" >/dev/null && break; sleep 1; done
root=$(curl -s "$url/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["root"])')

random=(--dataset-name random --random-input-len 128 --random-output-len 64 --num-prompts 64 --max-concurrency 16)
"$venvs/vllm/bin/vllm" bench serve --backend openai --base-url "$url" "${random[@]}" --seed "$seed"
"$venvs/vllm/bin/vllm" bench serve --backend openai-chat --endpoint /v1/chat/completions --base-url "$url" \
  "${random[@]}" --seed $((seed + 1))
"$venvs/guidellm/bin/guidellm" run --backend "kind=openai_http,target=$url" \
  --tokenizer "kind=huggingface_auto,model=$root" --profile kind=concurrent,streams=8 \
  --constraint kind=max_requests,count=48 --data kind=synthetic_text,prompt_tokens=128,output_tokens=64 \
  --seed "kind=static,value=$((seed + 3))" --output "kind=json,path=$venvs/guidellm.json" --disable-progress
