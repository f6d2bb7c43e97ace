"""Structured output's cost (issue 15): output tokens/s of 32 concurrent chat requests, every one
constrained by a JSON schema, against the same requests unconstrained, side by side in one run
(A B A B), each run with prompts of its own; plus the engine's mask time per step.

    target/py-openai/bin/python benches/structured.py target/release/tandem [ROUNDS]

Every request generates exactly 128 tokens (`ignore_eos`; a constrained answer that completes
its object is held to EOS by the mask, which is still computed for every token), so the two
kinds do the same decoding work and differ only by the grammar.
"""

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import openai

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 8},
        "city": {"type": "string", "maxLength": 40},
    },
    "required": ["name", "age", "hobbies", "city"],
    "additionalProperties": False,
}
N, MAX_TOKENS = 32, 128


def start(binary):
    proc = subprocess.Popen([binary, "serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    base = "http://" + line.split("http://", 1)[1].split()[0].rstrip("/").split("/")[0]
    return proc, base


def stats(base):
    with urllib.request.urlopen(base + "/v1/stats") as r:
        return json.load(r)


async def one_run(client, model, run, constrained):
    extra = {"ignore_eos": True}
    kwargs = {}
    if constrained:
        kwargs["response_format"] = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}

    async def ask(i):
        r = await client.chat.completions.create(
            model=model, max_tokens=MAX_TOKENS, temperature=0, extra_body=extra, **kwargs,
            messages=[{"role": "user", "content": f"Describe person number {run * N + i} of a town as JSON."}],
        )
        return r.usage.completion_tokens

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(ask(i) for i in range(N))))
    return tokens / (time.perf_counter() - t0)


async def main():
    binary = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    proc, base = start(binary)
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=600)
    model = (await client.models.list()).data[0].id
    results = {False: [], True: []}
    run = 0
    try:
        for _ in range(rounds):
            for constrained in (False, True):
                before = stats(base)
                tps = await one_run(client, model, run, constrained)
                after = stats(base)
                masks = after["grammar_masks"] - before["grammar_masks"]
                mask_ms = after["grammar_mask_ms"] - before["grammar_mask_ms"]
                steps = after["steps"] - before["steps"]
                results[constrained].append(tps)
                print(f"run {run}: {'json_schema' if constrained else 'unconstrained'}: {tps:.1f} output tok/s; "
                      f"{masks} masks, {mask_ms:.1f} ms ({mask_ms / max(masks, 1) * 1000:.0f} us each, "
                      f"{mask_ms / max(steps, 1):.2f} ms per step over {steps} steps)")
                run += 1
    finally:
        proc.terminate()
        proc.wait()
    a, b = (sum(results[k]) / len(results[k]) for k in (False, True))
    print(f"unconstrained {a:.1f} tok/s, json_schema {b:.1f} tok/s: {100 * (b / a - 1):+.1f}%")


if __name__ == "__main__":
    asyncio.run(main())
