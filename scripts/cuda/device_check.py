#!/usr/bin/env python3
"""Issue 19's measurements in one go, on the lent GPU machine (no cargo, no network there):

    scripts/cuda/device_check.sh            # on the GPU machine, with ./tandem-cuda carried
    scripts/cuda/device_check.sh --dry-run  # here: the same stages on --device tensor-cpu, tiny sizes

Stages, each with its own time limit, each recorded (command, seconds, exit code, parsed figures)
in OUT/results.json and a table in OUT/results.md:

1. machine: nvidia-smi's GPU name, driver, memory (NVML's view) — before anything loads;
2. model: `tandem gen-model --preset qwen2.5-0.5b --no-tokenizer` (random weights, byte tokenizer);
3. parity: `tandem parity` — logits against the CPU executor's f32 forward (bf16 tolerance) and
   greedy batch invariance on the device;
4. decode: `tandem bench-model` at batch 1 / 64 / 256 with a 1,024-token context, against the
   HBM roofline (weights once per step plus each sequence's KV, at --hbm-tbs);
5. hf: transformers with seed 004's static batching (`benches/hf_static_batching.py`) and tandem
   (`tandem bench`, in process) on the same workload shape, side by side;
6. streams: one stream against two (each assignment, sync on and off) on the mixed
   prefill/decode workload, with P99 TPOT and stream utilisation.

Only the standard library here; the hf stage needs torch + transformers (skipped, and said so,
where they are missing).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


def run(cmd, limit, env=None):
    """Runs `cmd` (a list) with a time limit; returns (rc, seconds, stdout+stderr)."""
    t = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env)
        return p.returncode, time.monotonic() - t, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, time.monotonic() - t, out + f"\n(timed out after {limit} s)"
    except FileNotFoundError as e:
        return 127, time.monotonic() - t, str(e)


class Results:
    def __init__(self, out: Path):
        self.out = out
        self.stages = []

    def stage(self, name, cmd, limit, parse=None, env=None):
        print(f"== {name}: {' '.join(map(str, cmd))}", flush=True)
        rc, secs, text = run([str(c) for c in cmd], limit, env)
        (self.out / f"{name}.log").write_text(text)
        figures = {}
        if parse is not None and rc == 0:
            try:
                figures = parse(text)
            except Exception as e:  # a parse failure is recorded, not fatal
                figures = {"parse_error": repr(e)}
        s = {"stage": name, "command": " ".join(map(str, cmd)), "rc": rc, "seconds": round(secs, 1), "figures": figures}
        print(f"   rc {rc} in {secs:.1f} s: {json.dumps(figures)[:400]}", flush=True)
        self.stages.append(s)
        self.save()
        return s

    def skip(self, name, why):
        print(f"== {name}: skipped ({why})", flush=True)
        self.stages.append({"stage": name, "skipped": why})
        self.save()

    def save(self):
        (self.out / "results.json").write_text(json.dumps({"stages": self.stages}, indent=2))


def last_json(text):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line")


def parse_bench_model(text):
    f = {"prefill": {}, "decode": {}}
    for m in re.finditer(r"prefill\s+(\d+) tokens: [\d.]+ s → (\d+) tokens/s", text):
        f["prefill"][m.group(1)] = int(m.group(2))
    for m in re.finditer(r"decode batch\s+(\d+) \(context (\d+)\): ([\d.]+) ms/step → (\d+) tokens/s", text):
        f["decode"][m.group(1)] = {"context": int(m.group(2)), "ms_per_step": float(m.group(3)), "tok_s": int(m.group(4))}
    f["executor"] = text.splitlines()[0] if text else ""
    return f


def model_shape(model_dir: Path):
    c = json.loads((model_dir / "config.json").read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    kv_bytes_per_token = c["num_hidden_layers"] * 2 * c["num_key_value_heads"] * head_dim * 2  # bf16 K and V
    return c, kv_bytes_per_token


def weight_bytes_bf16(model_dir: Path):
    """bf16 bytes of the weights a decode step reads (tied embeddings: the LM head once)."""
    total = 0
    for f in model_dir.glob("*.safetensors"):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                elems = 1
                for d in v["shape"]:
                    elems *= d
                total += elems * 2
    return total


def roofline(decode, weights, kv_tok, tbs, steps):
    """Each timed step reads the weights once and every sequence's KV (context + the steps so far)."""
    rows = {}
    for b, d in decode.items():
        b = int(b)
        ctx = d["context"] + steps / 2
        step_bytes = weights + b * ctx * kv_tok
        bound = b / (step_bytes / (tbs * 1e12))
        rows[b] = {"tok_s": d["tok_s"], "roofline_tok_s": round(bound), "fraction": round(d["tok_s"] / bound, 3)}
    return rows


def summary_runs(path: Path):
    d = json.loads(path.read_text())
    out = []
    for r in d["runs"]:
        s, sy = r["summary"], r["system"]
        pct = lambda m, q: dict(s[m]["percentiles"]).get(q)  # noqa: E731
        out.append(
            {
                "name": r["name"],
                "output_tok_s": round(s["output_throughput"], 1),
                "completed": s["completed"],
                "failed": s["failed"],
                "p99_tpot_ms": pct("tpot_ms", 99.0),
                "p99_ttft_ms": pct("ttft_ms", 99.0),
                "stream_utilisation": sy.get("stream_utilisation"),
                "gpu_util_mean": sy.get("gpu_util_mean"),
                "gpu_mem_peak_bytes": sy.get("gpu_mem_peak_bytes"),
            }
        )
    return out


def write_markdown(res: Results, a):
    lines = [f"# Device check ({'dry run, ' + a.device if a.dry_run else a.device})", ""]
    lines += ["| stage | rc | seconds | figures |", "|---|---:|---:|---|"]
    for s in res.stages:
        if "skipped" in s:
            lines.append(f"| {s['stage']} | – | – | skipped: {s['skipped']} |")
        else:
            lines.append(f"| {s['stage']} | {s['rc']} | {s['seconds']} | `{json.dumps(s['figures'])[:600]}` |")
    (res.out / "results.md").write_text("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tensor-cpu, tiny model and sizes")
    ap.add_argument("--tandem", default=os.environ.get("TANDEM", "./tandem-cuda"))
    ap.add_argument("--out", default=os.environ.get("OUT_DIR", "bench-results/cuda"))
    ap.add_argument("--hbm-tbs", type=float, default=4.3, help="HBM bandwidth for the roofline, TB/s")
    ap.add_argument("--seed", type=int, default=1900)
    a = ap.parse_args()
    a.device = "tensor-cpu" if a.dry_run else "cuda"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = Results(out)
    t0 = time.monotonic()
    tandem = a.tandem
    model = out / "model"
    dev = ["--device", a.device]

    if a.dry_run:
        preset, batches, context, steps, prefill = "tiny", "1,4", 64, 8, 128
        kv_mb, bench_n, bench_in, bench_out, hf_dev = 256, 16, 32, 16, "cpu"
        parity_lens, mixed = "7,60,257,600", ["--background", "8", "--background-output-len", "32", "--num-prompts", "2", "--long-len", "uniform:128:256", "--output-len", "8", "--request-rate", "4"]
    else:
        preset, batches, context, steps, prefill = "qwen2.5-0.5b", "1,64,256", 1024, 32, 2048
        kv_mb, bench_n, bench_in, bench_out, hf_dev = 16384, 256, 128, 128, "cuda"
        parity_lens, mixed = "7,60,257,600", ["--background", "64", "--background-output-len", "256", "--num-prompts", "6", "--long-len", "uniform:1024:2048", "--output-len", "32", "--request-rate", "2"]

    res.stage(
        "machine",
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu", "--format=csv,noheader"],
        30,
        parse=lambda t: {"nvidia_smi": t.strip()},
    )
    if model.exists() and not (model / "config.json").exists():
        raise SystemExit(f"{model} exists and is not a model directory")
    if not model.exists():
        res.stage("model", [tandem, "gen-model", "--preset", preset, "--no-tokenizer", "--out", model, "--seed", a.seed], 180)
    res.stage(
        "parity",
        [tandem, "parity", *dev, "--model", model, "--prompt-lens", parity_lens, "--steps", 8, "--seed", a.seed],
        150,
        parse=last_json,
    )
    s = res.stage(
        "decode",
        [tandem, "bench-model", *dev, "--model", model, "--batch", batches, "--context", context, "--steps", steps,
         "--prefill", prefill, "--kv-memory-mb", kv_mb],
        180,
        parse=parse_bench_model,
    )
    if s["rc"] == 0 and "decode" in s["figures"]:
        _, kv_tok = model_shape(model)
        w = weight_bytes_bf16(model)
        s["figures"]["roofline"] = {
            "weights_bytes_bf16": w,
            "kv_bytes_per_token": kv_tok,
            "hbm_tbs": a.hbm_tbs,
            "batches": roofline(s["figures"]["decode"], w, kv_tok, a.hbm_tbs, steps),
        }
        res.save()

    workload = ["--num-prompts", bench_n, "--input-len", bench_in, "--output-len", bench_out, "--request-rate", "inf"]
    have_torch = run([sys.executable, "-c", "import torch, transformers"], 60)[0] == 0
    if have_torch:
        res.stage(
            "hf",
            [sys.executable, "benches/hf_static_batching.py", "--model", model, "--device", hf_dev,
             "--num-prompts", bench_n, "--batch-size", 32, "--input-len", bench_in, "--output-len", bench_out,
             "--seed", a.seed, "--dtype", "bfloat16" if not a.dry_run else "float32"],
            240,
            parse=last_json,
        )
    else:
        res.skip("hf", "no torch/transformers in this python3")
    res.stage(
        "tandem-static-workload",
        [tandem, "bench", "--no-progress", *dev, "--model", model, "--kv-memory-mb", kv_mb, *workload,
         "--seed", a.seed + 1, "--out", out / "bench-static"],
        240,
        parse=lambda _: {"runs": summary_runs(out / "bench-static" / "summary.json")},
    )
    res.stage(
        "streams",
        [tandem, "bench", "--no-progress", *dev, "--model", model, "--kv-memory-mb", kv_mb, "--dataset", "mixed", *mixed,
         "--seed", a.seed + 2, "--out", out / "bench-streams",
         "--compare", "simple:streams=1",
         "--compare", "rr-on:streams=2,assignment=round_robin",
         "--compare", "smart-on:streams=2,assignment=smart",
         "--compare", "balanced-on:streams=2,assignment=balanced",
         "--compare", "rr-off:streams=2,assignment=round_robin,sync=off",
         "--compare", "smart-off:streams=2,assignment=smart,sync=off",
         "--compare", "balanced-off:streams=2,assignment=balanced,sync=off"],
        240,
        parse=lambda _: {"runs": summary_runs(out / "bench-streams" / "summary.json")},
    )
    write_markdown(res, a)
    print(f"done in {time.monotonic() - t0:.0f} s: {out / 'results.md'}")
    problems = missing_figures(res, batches)
    if problems:
        print("problems: " + "; ".join(problems), file=sys.stderr)
        sys.exit(1)


def missing_figures(res: Results, batches: str):
    """What a complete run must have produced (the machine stage may fail without a GPU)."""
    by = {s["stage"]: s for s in res.stages}
    problems = [f"{n} exited {s['rc']}" for n, s in by.items() if s.get("rc", 0) != 0 and n != "machine"]
    f = lambda n: by.get(n, {}).get("figures", {})  # noqa: E731
    if not f("parity").get("vs_reference"):
        problems.append("no parity figures")
    decode = f("decode").get("decode", {})
    if sorted(decode, key=int) != batches.split(","):
        problems.append(f"decode batches {sorted(decode)} instead of {batches}")
    if "roofline" not in f("decode"):
        problems.append("no roofline")
    for n, runs in (("tandem-static-workload", 1), ("streams", 7)):
        r = f(n).get("runs", [])
        if len(r) != runs or any(x["failed"] for x in r):
            problems.append(f"{n}: {len(r)} runs of {runs}, failures {[x['failed'] for x in r]}")
    return problems


if __name__ == "__main__":
    main()
