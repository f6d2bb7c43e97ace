#!/usr/bin/env python3
"""tandem replicas behind SGLang's router: cache-aware vs round-robin on a shared-prefix
workload, A B A B in one invocation, and the router's added latency (issue 16).

  python3 benches/router_prefix.py --smg target/py-router/bin/smg [--tandem target/release/tandem] [--seed 1600]
  python3 benches/router_prefix.py --replicas 8 --replica-args "--device sim --sim-model llama3-8b --sim-profile a100" \
      --kv-memory-mb 448 --groups 32 --num-prompts 256 --rate 16 --seed 1700

By default two replicas of the real default model on this machine's CPU; `--replicas N
--replica-args "--device sim ..."` runs N simulated replicas instead (the roofline-modelled
device in real time: no weights, so many fit on a laptop).

Each replica gets a KV cache that holds about half the workload's prefixes (--kv-memory-mb), so
a policy that sends a prefix group to one replica keeps it cached there, and one that spreads
the groups evicts them. Per run: `tandem bench --dataset shared-prefix` through the router (cold:
every run has prefixes of its own; text prompts, as SGLang's router takes only text — it refuses
token-id prompts, so `tandem bench`, which sends token ids, cannot go through it), the replicas'
prefix-cache hit rate over the run (from their /metrics), mean and P50 TTFT (first streamed
text, client side). Then the router's overhead: sequential one-token requests direct to a
replica vs through the router, alternating, P50 of each. Standard library only.
"""
import argparse, http.client, json, os, random, shlex, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../scripts"))
from testkit import free_port  # noqa: E402


def get(port, path, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    return r.status, body


def wait(port, path, ok=lambda s, b: s == 200):
    for _ in range(600):
        try:
            if ok(*get(port, path, timeout=2)):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"{port}{path} never became ready")


def prefix_counters(port):
    _, text = get(port, "/metrics")
    q = h = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:prefix_cache_queries_total"):
            q += float(line.rpartition(" ")[2])
        elif line.startswith("vllm:prefix_cache_hits_total"):
            h += float(line.rpartition(" ")[2])
    return q, h


WORDS = "apple river stone cloud light garden music paper window silver forest ocean yellow quiet morning story".split()


def words(rng, n):
    return " ".join(rng.choice(WORDS) + str(rng.randrange(10**6)) for _ in range(n))


MODEL = "SmolLM2-135M-Instruct"  # replaced by what the first replica serves


def streamed_ttft(port, prompt, max_tokens):
    """One streamed completion: seconds to the first text chunk (None on an error)."""
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens,
                       "ignore_eos": True, "temperature": 0, "stream": True})
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    ttft, buf = None, b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        if ttft is None and b'"text":"' in buf:
            ttft = time.perf_counter() - t
    c.close()
    return ttft if r.status == 200 and b"[DONE]" in buf else None


def timed_completion(port, prompt):
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0})
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    c.close()
    assert r.status == 200, r.status
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tandem", default="target/release/tandem")
    ap.add_argument("--smg", default="target/py-router/bin/smg")
    ap.add_argument("--seed", type=int, default=1600)
    ap.add_argument("--kv-memory-mb", type=int, default=160)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--prefix-len", type=int, default=512)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--overhead-requests", type=int, default=40)
    ap.add_argument("--overhead-only", action="store_true", help="skip the policy comparison")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--replica-args", default="", help="more `tandem serve` flags for every replica")
    a = ap.parse_args()
    global MODEL
    procs, out = [], tempfile.mkdtemp(prefix="tandem-router-bench-")
    try:
        replicas = []
        for _ in range(a.replicas):
            port = free_port()
            procs.append(subprocess.Popen([a.tandem, "serve", "--port", str(port), "--kv-memory-mb", str(a.kv_memory_mb),
                                           *shlex.split(a.replica_args)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            replicas.append(port)
        for p in replicas:
            wait(p, "/ready")
        MODEL = json.loads(get(replicas[0], "/v1/models")[1])["data"][0]["id"]
        rows = []

        def router(policy):
            port, prom = free_port(), free_port()
            proc = subprocess.Popen([a.smg, "launch", "--host", "127.0.0.1", "--port", str(port), "--prometheus-port", str(prom),
                                     "--policy", policy, "--worker-urls", *[f"http://127.0.0.1:{p}" for p in replicas]],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait(port, "/v1/models", lambda s, b: s == 200 and json.loads(b)["data"][0]["id"] != "unknown")
            return proc, port

        policies = [] if a.overhead_only else ["cache_aware", "round_robin", "cache_aware", "round_robin"]
        for run, policy in enumerate(policies):
            proc, port = router(policy)
            before = [prefix_counters(p) for p in replicas]
            rng = random.Random(a.seed + run)
            # ~4 tokens a word: prefix_len / 4 words per group prefix; 8-word suffixes.
            prefixes = [words(rng, a.prefix_len // 4) for _ in range(a.groups)]
            prompts = [rng.choice(prefixes) + " " + words(rng, 8) for _ in range(a.num_prompts)]
            ttfts, threads, lock = [], [], threading.Lock()

            def one(prompt):
                t = streamed_ttft(port, prompt, 16)
                with lock:
                    ttfts.append(t)

            for prompt in prompts:
                th = threading.Thread(target=one, args=(prompt,))
                th.start()
                threads.append(th)
                time.sleep(rng.expovariate(a.rate))
            [th.join() for th in threads]
            after = [prefix_counters(p) for p in replicas]
            q = sum(x[0] - y[0] for x, y in zip(after, before))
            h = sum(x[1] - y[1] for x, y in zip(after, before))
            ok = sorted(t for t in ttfts if t is not None)
            rows.append({"run": run + 1, "policy": policy, "hit_rate": h / q if q else 0.0,
                         "mean_ttft_ms": 1000 * statistics.mean(ok) if ok else float("nan"),
                         "p50_ttft_ms": 1000 * statistics.median(ok) if ok else float("nan"),
                         "completed": len(ok), "failed": len(ttfts) - len(ok)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            proc.terminate()
            proc.wait()
        # The router's added latency: alternate direct and routed one-token requests.
        proc, port = router("cache_aware")
        direct, routed = [], []
        for i in range(a.overhead_requests):
            prompt = f"Latency probe {a.seed} {i}: hello"
            direct.append(timed_completion(replicas[0], prompt + " direct"))
            routed.append(timed_completion(port, prompt + " routed"))
        proc.terminate()
        proc.wait()
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    print("| run | policy | prefix-cache hit rate | mean TTFT ms | P50 TTFT ms | completed / failed |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['run']} | {r['policy']} | {r['hit_rate']:.3f} | {r['mean_ttft_ms']:.1f} | {r['p50_ttft_ms']:.1f} | {r['completed']} / {r['failed']} |")
    mean = lambda pol, k: statistics.mean(r[k] for r in rows if r["policy"] == pol)
    if rows:
        print(f"\ncache_aware / round_robin hit rate: {mean('cache_aware', 'hit_rate') / max(mean('round_robin', 'hit_rate'), 1e-9):.2f}x; "
              f"mean TTFT: {100 * (1 - mean('cache_aware', 'mean_ttft_ms') / mean('round_robin', 'mean_ttft_ms')):.1f}% lower")
    d50, r50 = statistics.median(direct), statistics.median(routed)
    print(f"router overhead, {a.overhead_requests} one-token requests: direct P50 {1000 * d50:.2f} ms, "
          f"routed P50 {1000 * r50:.2f} ms, added {1000 * (r50 - d50):.2f} ms")


if __name__ == "__main__":
    main()
