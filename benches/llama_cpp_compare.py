#!/usr/bin/env python3
"""llama.cpp and tandem side by side on this machine's CPU (issue 18); run by
`benches/llama_cpp.sh run` after `benches/llama_cpp.sh build`.

  python3 benches/llama_cpp_compare.py --llama-bin target/peers/llama.cpp-build/bin \
      [--tandem target/release/tandem] [--model GGUF] [--threads 2] [--pairs 2] [--seed 1800]

The same GGUF (default: tandem's embedded SmolLM2-135M-Instruct Q4_1) and thread count for
both, each measure A B A B (llama.cpp first), nothing else running:

- prefill 512 and 2,048 tokens: `llama-bench -p N -n 0 -r 3` (pp: a warm-up run, then the mean
  of 3) vs `tandem bench-model --prefill N --reps 3` (the same: a first run, then the mean of 3,
  each a prompt of its own);
- decode, batch 1: `llama-bench -p 0 -n 128` (tg128) vs `tandem bench-model --batch 1 --context 0
  --steps 128`;
- decode, batch 32 and 64: `llama-batched-bench -npp 128 -ntg 128 -npl 32,64` (S_TG) vs
  `tandem bench-model --batch 32,64 --context 128 --steps 128`;
- serving: `llama-server -np 32 -c 16384` vs `tandem serve`, the same client (`tandem bench`,
  64 prompts of 64 tokens → 32, ignore_eos), all at once, then Poisson at 80% of llama-server's
  all-at-once request rate; every run new prompts (its own seed: cold, no prefix cache hits).

Prints one markdown table (medians over the pairs; ratio = tandem / llama.cpp, or for latencies
llama.cpp / tandem, so > 1 means tandem is better) with the CPU model. Standard library only.
"""
import argparse, json, os, re, statistics, subprocess, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../scripts"))
from testkit import free_port  # noqa: E402


def cpu_model():
    """The CPU's name, family/model and widest integer dot-product units: VM names are often
    generic ("AMD EPYC"), and which kernels both programs run depends on the extensions."""
    info = {}
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    flags = set(info.get("flags", "").split())
    if "amx_int8" in flags:
        isa = "AMX, AVX-512 VNNI"
    elif "avx512_vnni" in flags:
        isa = "AVX-512 VNNI"
    elif "avx512f" in flags:
        isa = "AVX-512 without VNNI"
    elif "avx2" in flags:
        isa = "AVX2" + (" + AVX-VNNI" if "avx_vnni" in flags else ", no AVX-512")
    else:
        isa = "no AVX2"
    name = info.get("model name", "unknown CPU")
    return f"{name} (family {info.get('cpu family', '?')} model {info.get('model', '?')}; {isa})"


def run(cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout + out.stderr


def wait_http(port, path, timeout=300):
    import http.client
    end = time.time() + timeout
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server on {port} not ready")


class Peers:
    def __init__(self, a):
        self.a = a
        self.bin = a.llama_bin

    # --- llama.cpp ---
    def llama_bench(self, p, n):
        out = run([f"{self.bin}/llama-bench", "-m", self.a.model, "-p", str(p), "-n", str(n), "-t", str(self.a.threads),
                   "-r", "3", "-o", "json"])
        rows = json.loads(out[out.index("["):out.rindex("]") + 1])
        return rows[0]["avg_ts"]

    def llama_batched(self, batches, ctx_pp=128, tg=128):
        out = run([f"{self.bin}/llama-batched-bench", "-m", self.a.model, "-c", str(max(batches) * (ctx_pp + tg)),
                   "-b", "2048", "-ub", "512", "-npp", str(ctx_pp), "-ntg", str(tg), "-npl", ",".join(map(str, batches)),
                   "-t", str(self.a.threads)])
        got = {}
        for line in out.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 10 and cells[0].isdigit():
                got[int(cells[2])] = float(cells[7])  # B → S_TG t/s
        return got

    # --- tandem ---
    def tandem_model(self, *args):
        return run([self.a.tandem, "bench-model", "--model", self.a.model, *args],
                   env={**os.environ, "RAYON_NUM_THREADS": str(self.a.threads)})

    def tandem_prefill(self, n):
        out = self.tandem_model("--batch", "1", "--steps", "1", "--prefill", str(n), "--reps", "3")
        return float(re.search(r"prefill\s+\d+ tokens: [\d.]+ s → ([\d.]+) tokens/s", out).group(1))

    def tandem_decode(self, batches, context, steps):
        out = self.tandem_model("--batch", ",".join(map(str, batches)), "--context", str(context), "--steps", str(steps),
                                "--prefill", "16")
        got = {}
        for m in re.finditer(r"decode batch\s+(\d+) \(context \d+\): [\d.]+ ms/step → ([\d.]+) tokens/s", out):
            got[int(m.group(1))] = float(m.group(2))
        return got

    # --- serving, one client for both ---
    def serve(self, which):
        port = free_port()
        if which == "llama.cpp":
            cmd = [f"{self.bin}/llama-server", "-m", self.a.model, "--port", str(port), "-np", "32", "-c", "16384",
                   "-t", str(self.a.threads)]
            ready = "/health"
        else:
            cmd = [self.a.tandem, "serve", "--model", self.a.model, "--port", str(port)]
            ready = "/ready"
        env = {**os.environ, "RAYON_NUM_THREADS": str(self.a.threads)}
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_http(port, ready)
        return p, port

    def bench(self, port, rate, seed):
        out = run([self.a.tandem, "bench", "--base-url", f"http://127.0.0.1:{port}/v1", "--num-prompts", "64",
                   "--input-len", "64", "--output-len", "32", "--request-rate", str(rate), "--seed", str(seed),
                   "--no-progress"])
        num = lambda label: float(re.search(re.escape(label) + r":\s+([\d.]+)", out).group(1))
        return {"tok_s": num("Output token throughput (tok/s)"), "req_s": num("Request throughput (req/s)"),
                "p99_ttft": num("P99 TTFT (ms)"), "p99_itl": num("P99 ITL (ms)"),
                "completed": int(num("Successful requests"))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--tandem", default="target/release/tandem")
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/tandem/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1800)
    ap.add_argument("--skip-serving", action="store_true")
    a = ap.parse_args()
    P = Peers(a)
    rows = {}  # measure → {"llama.cpp": [...], "tandem": [...]}, higher is better unless noted

    def add(measure, who, v):
        rows.setdefault(measure, {"llama.cpp": [], "tandem": []})[who].append(v)
        print(f"{measure:40s} {who:10s} {v:10.1f}", file=sys.stderr, flush=True)

    seed = a.seed
    for pair in range(a.pairs):
        for n in (512, 2048):
            add(f"prefill {n} tokens (tok/s)", "llama.cpp", P.llama_bench(n, 0))
            add(f"prefill {n} tokens (tok/s)", "tandem", P.tandem_prefill(n))
        add("decode batch 1, tg128 (tok/s)", "llama.cpp", P.llama_bench(0, 128))
        add("decode batch 1, tg128 (tok/s)", "tandem", P.tandem_decode([1], 0, 128)[1])
        lb = P.llama_batched([32, 64])
        tb = P.tandem_decode([32, 64], 128, 128)
        for b in (32, 64):
            add(f"decode batch {b}, 128+128 (tok/s)", "llama.cpp", lb[b])
            add(f"decode batch {b}, 128+128 (tok/s)", "tandem", tb[b])
        if a.skip_serving:
            continue
        saturation = {}
        for who in ("llama.cpp", "tandem"):
            p, port = P.serve(who)
            try:
                seed += 1
                r = P.bench(port, "inf", seed)
                saturation[who] = r["req_s"]
                add("serving 64×(64→32) all at once (output tok/s)", who, r["tok_s"])
            finally:
                p.terminate()
                p.wait()
        rate = round(0.8 * saturation["llama.cpp"], 2)
        for who in ("llama.cpp", "tandem"):
            p, port = P.serve(who)
            try:
                seed += 1
                r = P.bench(port, rate, seed)
                add(f"serving Poisson {rate} req/s: P99 TTFT (ms, lower better)", who, r["p99_ttft"])
                add(f"serving Poisson {rate} req/s: P99 ITL (ms, lower better)", who, r["p99_itl"])
            finally:
                p.terminate()
                p.wait()
    print(f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, {a.threads} threads each; model {os.path.basename(a.model)}; "
          f"{a.pairs} pairs A B (llama.cpp first), medians.\n")
    print("| measure | llama.cpp | tandem | tandem vs llama.cpp |")
    print("|---|---:|---:|---:|")
    for measure, v in rows.items():
        l, t = statistics.median(v["llama.cpp"]), statistics.median(v["tandem"])
        lower = "lower better" in measure
        ratio = (l / t) if lower else (t / l)
        print(f"| {measure} | {l:,.1f} | {t:,.1f} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
