#!/usr/bin/env python3
"""Seed 004's system, the baseline tandem is measured against on a GPU (issue 8): Hugging Face
transformers with naive static batching. Requests are taken in arrival order in fixed batches of
--batch-size; each batch is padded to its longest prompt, generated to the end together
(`model.generate`), and only then is the next batch started — no continuous batching, no paged
KV cache. Every request generates exactly --output-len tokens (min_new_tokens = max_new_tokens,
tandem's ignore_eos), so both systems emit the same number of tokens.

    python3 benches/hf_static_batching.py --model DIR [--device cuda] [--num-prompts 256]
        [--batch-size 32] [--input-len 128] [--output-len 128] [--dtype bfloat16]

DIR is a Hugging Face directory, e.g. `tandem gen-model --preset qwen2.5-0.5b --out DIR` (random
weights are fine for speed). Prints one JSON object: requests, output tokens, wall seconds,
output tokens/s, request/s, mean and P99 end-to-end latency (all requests arrive at time 0).
Needs torch and transformers (installed on the H100 machine; `pip install torch transformers`
elsewhere).
"""

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(a.seed)
    dtype = getattr(torch, a.dtype)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=dtype).to(a.device).eval()
    vocab = model.config.vocab_size
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    # Random token prompts of --input-len (as `tandem bench`'s random dataset), ids away from
    # the special tokens at either end of the vocabulary.
    gen = torch.Generator().manual_seed(a.seed)
    prompts = [torch.randint(100, min(vocab, 30_000), (a.input_len,), generator=gen) for _ in range(a.num_prompts)]

    def run_batch(batch):
        ids = torch.stack(batch).to(a.device)  # equal lengths: no padding needed
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=a.output_len,
                min_new_tokens=a.output_len,
                do_sample=False,
                pad_token_id=pad,
            )
        return out.shape[1] - ids.shape[1]

    # Warm-up (kernel selection, allocator) on one small batch, not timed.
    run_batch(prompts[: min(2, len(prompts))])
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()

    latencies = []
    tokens = 0
    start = time.perf_counter()
    for i in range(0, len(prompts), a.batch_size):
        batch = prompts[i : i + a.batch_size]
        new = run_batch(batch)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        done = time.perf_counter() - start
        tokens += new * len(batch)
        latencies += [done] * len(batch)  # every request of the batch ends with it
    wall = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(
        json.dumps(
            {
                "system": "transformers static batching",
                "device": a.device,
                "batch_size": a.batch_size,
                "requests": len(prompts),
                "output_tokens": tokens,
                "wall_s": wall,
                "output_tokens_per_s": tokens / wall,
                "requests_per_s": len(prompts) / wall,
                "e2e_mean_s": sum(latencies) / len(latencies),
                "e2e_p99_s": p99,
            }
        )
    )


if __name__ == "__main__":
    main()
