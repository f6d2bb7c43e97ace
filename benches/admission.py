#!/usr/bin/env python3
"""Admission by predicted wait at twice the server's capacity (issue 17).

  python3 benches/admission.py [--tandem target/release/tandem] [--deadline-ms 3000] [--seconds 60] [--seed 1700]

1. Starts `tandem serve --ttft-deadline-ms D` on a free port (the embedded model).
2. Capacity: 24 requests at once (cold prompts of ~200 tokens, 24 output tokens, ignore_eos);
   completed requests / elapsed = C req/s.
3. Open loop: Poisson arrivals at 2 C for the given seconds, every prompt new (cold). Each
   request streams; a 429 is retried (below).
4. Reports: accepted, refused, accepted requests whose client-side TTFT exceeded the deadline
   (target 0, retries included), and for each 429 its `retry-after-ms` against the actual
   wait, measured by retrying: the refused client sends the same request again from half its
   Retry-After on, each probe 8% later than the one before (or at the Retry-After the last
   probe was given, if sooner: a place is held only until then), until it is admitted (or 3 x its
   Retry-After + 5 s have passed); the actual wait is from the refusal to midway between the
   last refused probe and the admitted one. The server holds a refused request's place until its
   Retry-After (plus a grace), so fresh arrivals of the wait do not take it; a client that
   came back only at the Retry-After would be admitted then if the wait was not longer.

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

        def client(b):
            status, headers, ttft, t0, t1 = request(port, b)
            rec = {"status": status, "sent": t0, "done": t1, "ttft": ttft, "deadline_ms": b["ttft_deadline_ms"]}
            if status == 429:
                rec["retry_after_ms"] = float(headers.get("retry-after-ms", "nan"))
                rec["excess_tokens"] = int(headers.get("x-tandem-excess-tokens", "-1"))
                # The same request again from half the Retry-After on, each probe 8% later
                # than the one before (at least 50 ms): the admitted one brackets the actual
                # wait with the refused one before it, to within 8%, at a few probes a client.
                ra = rec["retry_after_ms"] / 1000
                give_up = t1 + 3 * ra + 5
                after, before, tries = ra / 2, 0.0, 0
                while True:
                    time.sleep(max(0.0, t1 + after - time.monotonic()))
                    tries += 1
                    s2, h2, ttft2, r0, _ = request(port, b)
                    if s2 != 429:
                        actual = (r0 - t1 + before) / 2 if before else r0 - t1
                        rec.update(retry_status=s2, retry_sent=r0, retry_ttft=ttft2, tries=tries, actual_s=actual)
                        break
                    if time.monotonic() > give_up:
                        rec.update(retry_status=429, tries=tries)
                        break
                    before = r0 - t1
                    # Never later than the new Retry-After: the server holds a place only
                    # until then, and a client that keeps to it keeps its place.
                    again = float(h2.get("retry-after-ms", "1000")) / 1000
                    after = max(min(after * 1.08, before + again), before + 0.05)
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
    finally:
        server.terminate()
        server.wait(timeout=60)
    accepted = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] == 429]
    other = [r for r in results if r["status"] not in (200, 429)]
    misses = [r for r in accepted if r["ttft"] is None or r["ttft"] > r["deadline_ms"] / 1000]
    errors, within = [], 0
    for r in refused:
        if "actual_s" not in r:
            continue
        predicted, actual = r["retry_after_ms"] / 1000, max(r["actual_s"], 1e-3)
        ratio = predicted / actual
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
    tries = sorted(r["tries"] for r in refused if r.get("retry_status") == 200)
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
        "retried_and_admitted": retried_ok, "admitted_at_first_try": first_retry_ok,
        "retries_missing_deadline": retry_misses, "retry_tries_p50": pct(tries, 0.5),
    }
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"summary": summary, "refusals": errors}, f, indent=1)
    print("| " + " | ".join(summary) + " |")
    print("|" + "---|" * len(summary))
    print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in summary.values()) + " |")


if __name__ == "__main__":
    main()
