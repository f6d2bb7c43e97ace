#!/usr/bin/env python3
"""Admission by predicted wait at twice the server's capacity (issue 17).

  python3 benches/admission.py [--tandem target/release/tandem] [--deadline-ms 3000] [--seconds 60] [--seed 1700]

1. Starts `tandem serve --ttft-deadline-ms D` on a free port (the embedded model).
2. Capacity: 24 requests at once (cold prompts of ~200 tokens, 24 output tokens, ignore_eos);
   completed requests / elapsed = C req/s.
3. Open loop: Poisson arrivals at 2 C for the given seconds, every prompt new (cold). Each
   request streams; a 429 is retried once, after its `retry-after-ms`.
4. Reports: accepted, refused, accepted requests whose client-side TTFT exceeded the deadline
   (target 0), and for each 429 its `retry-after-ms` against the actual wait: the time the
   server took, from the refusal, to feed the prompt tokens that were queued ahead of the
   request and had to go before it could start in time (`x-tandem-excess-tokens`; the server's
   fed-token counter read from `GET /v1/admission`, polled every 25 ms: a read that adds no
   load). That is the wait of a request kept at the head of the line; a retry at 2x capacity
   also competes with fresh arrivals, so the retries' outcome is reported too (each refused
   request retries after every Retry-After until admitted, at most 5 times).

Standard library only. Prints a markdown table and writes JSON next to --out.
"""
import argparse, http.client, json, os, random, re, subprocess, sys, threading, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../scripts"))
from testkit import free_port  # noqa: E402

WORDS = "apple river stone cloud light garden music paper window silver forest ocean yellow quiet morning story".split()


def prompt(rng, n_words):
    return " ".join(rng.choice(WORDS) + str(rng.randrange(10**6)) for _ in range(n_words))


def request(port, body):
    """Streams one completion: (status, headers, ttft_s or None, t_sent, t_done)."""
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    headers = {k.lower(): v for k, v in r.getheaders()}
    ttft = None
    if r.status == 200:
        buf = b""
        while True:
            chunk = r.read1(65536)
            if not chunk:
                break
            buf += chunk
            if ttft is None and b'"text":"' in buf and re.search(rb'"text":"[^"]', buf):
                ttft = time.monotonic() - t0
    else:
        r.read()
    c.close()
    return r.status, headers, ttft, t0, time.monotonic()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tandem", default="target/release/tandem")
    ap.add_argument("--deadline-ms", type=float, default=3000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=1700)
    ap.add_argument("--words", type=int, default=60)
    ap.add_argument("--output-len", type=int, default=24)
    ap.add_argument("--long-deadline-ms", type=float, default=0,
                    help="if set, half the requests (at random) carry this longer deadline (batch traffic) "
                         "and the rest the server's --deadline-ms (interactive)")
    ap.add_argument("--out", default="bench-results/admission.json")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    port = free_port()
    server = subprocess.Popen([a.tandem, "serve", "--port", str(port), "--ttft-deadline-ms", str(a.deadline_ms)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        body = lambda: {"prompt": prompt(rng, a.words), "max_tokens": a.output_len, "ignore_eos": True,
                        "stream": True, "temperature": 0}

        def timed_body():
            b = body()
            long = a.long_deadline_ms > 0 and rng.random() < 0.5
            b["ttft_deadline_ms"] = a.long_deadline_ms if long else a.deadline_ms
            return b
        # Capacity, closed loop: a burst, no deadline (so nothing is refused).
        burst = [dict(body(), ttft_deadline_ms=3.6e6) for _ in range(24)]
        t = time.monotonic()
        threads = [threading.Thread(target=request, args=(port, b)) for b in burst]
        [th.start() for th in threads]
        [th.join() for th in threads]
        capacity = len(burst) / (time.monotonic() - t)
        rate = 2 * capacity
        print(f"capacity {capacity:.2f} req/s; offering {rate:.2f} req/s for {a.seconds:.0f} s", file=sys.stderr)
        results, lock = [], threading.Lock()
        tok = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        tok.request("POST", "/tokenize", json.dumps({"prompt": body()["prompt"]}), {"Content-Type": "application/json"})
        prompt_tokens = json.loads(tok.getresponse().read())["count"]
        probes, probing = [], [True]

        def probe():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while probing[0]:
                c.request("GET", f"/v1/admission?prompt_tokens={prompt_tokens}")
                v = json.loads(c.getresponse().read())
                probes.append((time.monotonic(), v.get("predicted_ttft_ms"), v.get("prefill_tokens_fed_total", 0)))
                time.sleep(0.025)

        prober = threading.Thread(target=probe)
        prober.start()

        def client(b):
            status, headers, ttft, t0, t1 = request(port, b)
            rec = {"status": status, "sent": t0, "done": t1, "ttft": ttft, "deadline_ms": b["ttft_deadline_ms"]}
            if status == 429:
                rec["retry_after_ms"] = float(headers.get("retry-after-ms", "nan"))
                rec["excess_tokens"] = int(headers.get("x-tandem-excess-tokens", "-1"))
                wait_ms, tries = rec["retry_after_ms"], 0
                while tries < 5:
                    time.sleep(wait_ms / 1000)
                    tries += 1
                    s2, h2, ttft2, r0, _ = request(port, dict(b, prompt=prompt(rng, a.words)))
                    if s2 != 429:
                        rec.update(retry_status=s2, retry_sent=r0, retry_ttft=ttft2, tries=tries)
                        break
                    wait_ms = float(h2.get("retry-after-ms", "1000"))
                else:
                    rec.update(retry_status=429, tries=tries)
            with lock:
                results.append(rec)

        start = time.monotonic()
        threads = []
        next_at = start
        while next_at < start + a.seconds:
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            th = threading.Thread(target=client, args=(timed_body(),))
            th.start()
            threads.append(th)
            next_at += rng.expovariate(rate)
        [th.join() for th in threads]
        probing[0] = False
        prober.join()
    finally:
        server.terminate()
        server.wait(timeout=60)
    accepted = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] == 429]
    other = [r for r in results if r["status"] not in (200, 429)]
    misses = [r for r in accepted if r["ttft"] is None or r["ttft"] > r["deadline_ms"] / 1000]
    errors, within = [], 0
    for r in refused:
        if r["excess_tokens"] < 0:
            continue
        before = [f for t, _, f in probes if t <= r["done"]]
        if not before:
            continue
        target = before[-1] + r["excess_tokens"]
        # The fed counter moves once a step; the step fed its tokens over its whole length, so
        # the counter is read as rising linearly from its previous change to this one.
        changes = [(probes[0][0], probes[0][2])]
        for t, _, f in probes[1:]:
            if f != changes[-1][1]:
                changes.append((t, f))
        actual = None
        for (t0, f0), (t1, f1) in zip(changes, changes[1:]):
            if f1 >= target and t1 >= r["sent"]:
                at = t0 + (t1 - t0) * (target - f0) / (f1 - f0) if target > f0 else t0
                actual = max(at - r["sent"], 1e-3)
                break
        if actual is None:
            continue
        predicted = r["retry_after_ms"] / 1000
        ratio = predicted / actual if actual > 0 else float("inf")
        errors.append({"predicted_s": predicted, "actual_s": actual, "ratio": ratio, "excess_tokens": r["excess_tokens"]})
        within += abs(ratio - 1) <= 0.25
    # Waits of a step or more (at least a full step budget of tokens to drain): below that the
    # wait ends with the step in flight, which neither side can time finer than a step.
    multi = [e for e in errors if e["excess_tokens"] >= 512]
    multi_within = sum(abs(e["ratio"] - 1) <= 0.25 for e in multi)
    retried_ok = sum(1 for r in refused if r.get("retry_status") == 200)
    first_retry_ok = sum(1 for r in refused if r.get("retry_status") == 200 and r.get("tries") == 1)
    retry_misses = sum(
        1 for r in refused if r.get("retry_status") == 200 and (r["retry_ttft"] or 1e9) > r["deadline_ms"] / 1000)
    ttfts = sorted(r["ttft"] for r in accepted if r["ttft"] is not None)
    pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
    summary = {
        "capacity_rps": capacity, "offered_rps": rate, "seconds": a.seconds, "deadline_ms": a.deadline_ms,
        "long_deadline_ms": a.long_deadline_ms,
        "seed": a.seed, "requests": len(results), "accepted": len(accepted), "refused": len(refused),
        "other_status": len(other), "accepted_missing_deadline": len(misses),
        "ttft_p50_ms": 1000 * pct(ttfts, 0.5), "ttft_p99_ms": 1000 * pct(ttfts, 0.99),
        "ttft_max_ms": 1000 * (ttfts[-1] if ttfts else float("nan")),
        "retry_after_within_25pct": within, "retry_after_compared": len(errors),
        "retry_after_ratio_p50": pct(sorted(e["ratio"] for e in errors), 0.5),
        "retry_after_ratio_p10": pct(sorted(e["ratio"] for e in errors), 0.1),
        "retry_after_ratio_p90": pct(sorted(e["ratio"] for e in errors), 0.9),
        "multi_step_compared": len(multi), "multi_step_within_25pct": multi_within,
        "multi_step_ratio_p50": pct(sorted(e["ratio"] for e in multi), 0.5),
        "multi_step_ratio_p90": pct(sorted(e["ratio"] for e in multi), 0.9),
        "retried_and_admitted": retried_ok, "admitted_at_first_retry": first_retry_ok,
        "retries_missing_deadline": retry_misses, "probes": len(probes),
    }
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"summary": summary, "refusals": errors}, f, indent=1)
    print("| " + " | ".join(summary) + " |")
    print("|" + "---|" * len(summary))
    print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in summary.values()) + " |")


if __name__ == "__main__":
    main()
