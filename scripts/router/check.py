"""tandem replicas behind SGLang's Model Gateway (`smg`, from `pip install sglang-router`).

    python check.py TANDEM_BIN SMG_BIN

Starts two `tandem serve` replicas of a generated tiny model and the router in front of them
(cache-aware policy), all on ports chosen at run time, then checks through the router: the
model list, chat and completions, streaming; a client that hangs up at the router aborts the
request in its replica (no request left running, no KV block held, read from the replicas'
/metrics); and after one replica is killed, every request sent afterwards completes (the
router fails over). Exits non-zero on the first failure.
"""
import http.client, json, os, shutil, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from testkit import check, free_port  # noqa: E402

TANDEM, SMG = sys.argv[1], sys.argv[2]
procs = []


def request(port, method, path, body=None, timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read().decode()
    c.close()
    return r.status, data


def metrics(port):
    _, text = request(port, "GET", "/metrics")
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name.split("{")[0]] = values.get(name.split("{")[0], 0.0) + float(value)
    return values


def aborted(port):
    """Requests the replica ended because their client went away."""
    _, text = request(port, "GET", "/metrics")
    return sum(float(l.rpartition(" ")[2]) for l in text.splitlines()
               if l.startswith("vllm:request_success_total{") and 'finished_reason="abort"' in l)


def serve(model_dir):
    port = free_port()
    p = subprocess.Popen([TANDEM, "serve", "--model", model_dir, "--port", str(port), "--kv-memory-mb", "64"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    for _ in range(300):
        try:
            if request(port, "GET", "/ready", timeout=2)[0] == 200:
                return p, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"replica on {port} did not start")


def main():
    tmp = tempfile.mkdtemp(prefix="tandem-router-")
    model = os.path.join(tmp, "tiny")
    subprocess.run([TANDEM, "gen-model", "--preset", "tiny", "--out", model], check=True, stdout=subprocess.DEVNULL)
    (a, port_a), (b, port_b) = serve(model), serve(model)
    router_port, prom_port = free_port(), free_port()
    router = subprocess.Popen(
        [SMG, "launch", "--host", "127.0.0.1", "--port", str(router_port), "--prometheus-port", str(prom_port),
         "--policy", "cache_aware", "--worker-urls", f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}",
         "--health-check-interval-secs", "1", "--health-failure-threshold", "1",
         # Retries spanning more than a health-check interval: a request routed to the dead
         # replica before the check marks it down is retried until the check has.
         "--retry-max-retries", "8", "--retry-initial-backoff-ms", "100", "--retry-max-backoff-ms", "1000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(router)
    for _ in range(300):
        try:
            status, body = request(router_port, "GET", "/v1/models", timeout=2)
            if status == 200 and json.loads(body)["data"]:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    status, body = request(router_port, "GET", "/v1/models")
    ids = [m["id"] for m in json.loads(body)["data"]]
    check(status == 200 and "tiny" in ids, f"the router lists the replicas' model: {ids}")

    chat = {"model": "tiny", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 6,
            "ignore_eos": True, "temperature": 0}
    status, body = request(router_port, "POST", "/v1/chat/completions", chat)
    check(status == 200 and json.loads(body)["usage"]["completion_tokens"] == 6, f"chat through the router: {body[:200]}")
    status, body = request(router_port, "POST", "/v1/completions",
                           {"model": "tiny", "prompt": "Once upon", "max_tokens": 5, "ignore_eos": True})
    check(status == 200 and json.loads(body)["usage"]["completion_tokens"] == 5, f"completion through the router: {body[:200]}")
    status, body = request(router_port, "POST", "/v1/chat/completions", dict(chat, stream=True))
    check(status == 200 and "data: [DONE]" in body and body.count("chat.completion.chunk") >= 6,
          "a streamed chat through the router ends with [DONE]")
    # The replica's own 400 (the router checks types, not the context length) comes back whole.
    status, body = request(router_port, "POST", "/v1/completions",
                           {"model": "tiny", "prompt": "word " * 5000, "max_tokens": 4})
    err = json.loads(body).get("error", {}) if body.startswith("{") else {}
    check(status == 400 and "context" in err.get("message", ""), f"a replica's error passes through intact: {status} {body[:200]}")

    # A client hangs up at the router mid-stream: its replica aborts the request and frees its blocks.
    s = socket.create_connection(("127.0.0.1", router_port))
    before = aborted(port_a) + aborted(port_b)
    long = json.dumps({"model": "tiny", "prompt": "Tell a long story", "max_tokens": 2000, "ignore_eos": True,
                       "stream": True})
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(long)}\r\n\r\n{long}".encode())
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(4096)
    running = sum(metrics(p).get("vllm:num_requests_running", 0) for p in (port_a, port_b))
    check(running >= 1, f"the long stream is running in a replica ({running})")
    s.close()
    freed = False
    for _ in range(200):
        m = [metrics(p) for p in (port_a, port_b)]
        if all(x.get("vllm:num_requests_running", 0) == 0 and x.get("vllm:kv_cache_usage_perc", 0) == 0 for x in m):
            freed = True
            break
        time.sleep(0.05)
    check(freed and aborted(port_a) + aborted(port_b) == before + 1,
          "the hang-up at the router aborted the request in its replica and freed its KV blocks")

    # One replica dies; every request sent afterwards completes through the other.
    a.kill()
    a.wait()
    done = 0
    for i in range(12):
        status, body = request(router_port, "POST", "/v1/completions",
                               {"model": "tiny", "prompt": f"request {i} after the kill", "max_tokens": 3, "ignore_eos": True})
        done += status == 200
    check(done == 12, f"after a replica was killed, {done} of 12 requests completed")
    shutil.rmtree(tmp, ignore_errors=True)
    print("sglang router: all checks passed")


try:
    main()
finally:
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
