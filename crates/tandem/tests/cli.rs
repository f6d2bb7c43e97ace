//! The `tandem` binary end to end: `simulate` prints a comparison, bad flags are clear errors.

use std::process::Command;

fn tandem(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem")).args(args).output().expect("run tandem");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn simulate_compares_configurations_and_writes_json() {
    let json = std::env::temp_dir().join(format!("tandem-sim-{}.json", std::process::id()));
    let (code, stdout, stderr) = tandem(&[
        "simulate",
        "--requests",
        "200",
        "--preset",
        "simple-vs-parallel",
        "--compare",
        "fixed4:batching=fixed:4",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    for name in
        ["simple", "parallel-rr", "parallel-smart", "parallel-balanced", "fixed4", "change vs simple", "TPOT p99 (ms)"]
    {
        assert!(stdout.contains(name), "missing {name} in\n{stdout}");
    }
    let parsed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = parsed.as_array().unwrap();
    assert_eq!(runs.len(), 5);
    assert!(runs.iter().all(|r| r["completed"] == 200));
    let _ = std::fs::remove_file(json);
}

#[test]
fn simulate_contexts_reports_both_sharing_modes_for_each_model() {
    let (code, stdout, stderr) =
        tandem(&["simulate-contexts", "--requests", "3000,100", "--rates", "600,10", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        let expected = if r["model"] == "qwen2.5-0.5b" { 3000 } else { 100 };
        assert_eq!(r["completed"], expected, "{r}");
        assert!(r["goodput_rps"].as_f64().unwrap() <= r["throughput_rps"].as_f64().unwrap() + 1e-9, "{r}");
    }
    let (code, _, stderr) = tandem(&["simulate-contexts", "--rates", "1"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("one value per model"), "{stderr}");
}

#[test]
fn bad_options_are_clear_errors() {
    for (args, needle) in [
        (vec!["simulate", "--batching", "sometimes"], "unknown batching strategy"),
        (vec!["simulate", "--streams", "0"], "num_streams"),
        (vec!["simulate", "--batching", "size_or_timeout:4:0ms"], "timeout 0"),
        (vec!["simulate", "--compare", "x:streams=two"], "needs a number"),
        (vec!["simulate", "--assignment", "sideways"], "unknown assignment"),
        (vec!["simulate", "--model", "gpt-9"], "unknown model"),
        (vec!["simulate", "--rate", "0"], "--rate must be positive"),
    ] {
        let (code, _, stderr) = tandem(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn serve_answers_on_its_port_and_shuts_down_gracefully_on_sigterm() {
    use std::io::{Read, Write};
    let mut server = Served::start(&[]);
    let addr = server.url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("ok"), "{resp}");
    // A stream in flight when SIGTERM comes runs to its end; meanwhile /ready and new
    // requests answer 503; then the process exits 0.
    let url = server.url.clone();
    let stream = std::thread::spawn(move || {
        let body = r#"{"prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": true, "stream": true}"#;
        raw_http(&url, "POST", "/v1/completions", body)
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let ready = raw_http(&server.url, "GET", "/ready", "");
    assert!(ready.starts_with("HTTP/1.1 503") && ready.contains("draining"), "{ready}");
    let refused = raw_http(&server.url, "POST", "/v1/completions", r#"{"prompt": "hi"}"#);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    let streamed = stream.join().unwrap();
    assert!(streamed.contains("\"finish_reason\":\"length\"") && streamed.contains("[DONE]"), "{streamed}");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[test]
fn simulate_through_the_engine_thread_reports_hidden_cpu() {
    let (code, stdout, stderr) = tandem(&[
        "simulate",
        "--requests",
        "40",
        "--model",
        "smollm2-135m",
        "--rate",
        "400",
        "--engine",
        "--compare",
        "async",
        "--compare",
        "sync",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("async scheduling on") && stdout.contains("async scheduling off"), "{stdout}");
    assert!(stdout.contains("hidden behind the device"), "{stdout}");
}

#[test]
fn generate_answers_with_the_default_model() {
    // Default (4-bit for the default file, whose layers are Q4_1) and exact f32 weights. The
    // bare question is a coin toss for this model when quantized (docs/model.md), so the
    // default run asks for brevity.
    let (code, stdout, stderr) =
        tandem(&["generate", "--prompt", "What is the capital of France? Answer briefly.", "--max-tokens", "16"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(stderr.contains("finish stop") && stderr.contains("q4 weights"), "{stderr}");
    let (code, stdout, stderr) =
        tandem(&["generate", "--weights", "f32", "--prompt", "What is the capital of France?", "--max-tokens", "16"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Paris") && stderr.contains("f32 weights"), "{stdout} / {stderr}");
    // A stop string cuts the text before it, and the request ends with reason stop.
    let (code, stdout, stderr) =
        tandem(&["generate", "--prompt", "What is the capital of France? Answer briefly.", "--stop", "Paris"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("Paris") && stderr.contains("finish stop"), "{stdout} / {stderr}");
}

#[test]
fn generate_reports_bad_models_and_options_clearly() {
    let (code, _, stderr) = tandem(&["generate", "--model", "/no/such/model.gguf", "--prompt", "hi"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/no/such/model.gguf") && stderr.contains("no such file"), "{stderr}");
    let (code, _, stderr) = tandem(&["generate", "--prompt", "hi", "--top-p", "0"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("top_p"), "{stderr}");
}

/// `tandem serve --port 0` started in the background; killed on drop.
struct Served {
    child: std::process::Child,
    url: String,
}

impl Served {
    fn start(extra: &[&str]) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["serve", "--port", "0"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start serve");
        let line = BufReader::new(child.stdout.take().unwrap()).lines().next().unwrap().unwrap();
        let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect(&line).to_string();
        Self { child, url }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to `url`'s host: the raw response.
fn raw_http(url: &str, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    // One request may wait; fixed batches of 4 (flushed after 400 ms) keep the first one
    // waiting, so a second one finds the queue full.
    let server = Served::start(&["--max-queued-requests", "1", "--set", "batching=fixed:4:400ms"]);
    let body = r#"{"prompt": "Hello", "max_tokens": 2}"#;
    let url = server.url.clone();
    let first = std::thread::spawn(move || raw_http(&url, "POST", "/v1/completions", body));
    std::thread::sleep(std::time::Duration::from_millis(150));
    let second = raw_http(&server.url, "POST", "/v1/completions", body);
    assert!(second.starts_with("HTTP/1.1 429"), "{second}");
    assert!(second.to_ascii_lowercase().contains("retry-after: "), "{second}");
    assert!(second.contains("\"error\"") && second.contains("queue"), "{second}");
    let first = first.join().unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "the queued request still runs: {first}");
    // A queue of no requests cannot serve anything: refused at start.
    let (code, _, stderr) = tandem(&["serve", "--port", "0", "--max-queued-requests", "0"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--max-queued-requests must be at least 1"), "{stderr}");
}

#[test]
fn bench_against_a_live_server_writes_plausible_csv_and_json() {
    let server = Served::start(&[]);
    let out = std::env::temp_dir().join(format!("tandem-bench-e2e-{}", std::process::id()));
    let (code, stdout, stderr) = tandem(&[
        "bench",
        "--base-url",
        &server.url,
        "--num-prompts",
        "8",
        "--input-len",
        "16",
        "--output-len",
        "6",
        "--request-rate",
        "20",
        "--goodput",
        "ttft:60000",
        "--seed",
        "3",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    assert!(stdout.contains("Serving Benchmark Result") && stdout.contains("P99 TTFT (ms)"), "{stdout}");

    let csv = std::fs::read_to_string(out.join("requests.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name}"));
    let rows: Vec<Vec<String>> = lines.map(|l| l.split(',').map(String::from).collect()).collect();
    assert_eq!(rows.len(), 8);
    for r in &rows {
        assert_eq!(r[col("status")], "ok", "{r:?}");
        // ignore_eos: exactly the asked 6 tokens; 16 prompt tokens (range ratio 0).
        assert_eq!((r[col("input_tokens")].as_str(), r[col("output_tokens")].as_str()), ("16", "6"));
        let (ttft, latency): (f64, f64) = (r[col("ttft")].parse().unwrap(), r[col("latency")].parse().unwrap());
        assert!(ttft > 0.0 && ttft <= latency, "{r:?}");
        let tpot: f64 = r[col("tpot")].parse().unwrap();
        assert!((tpot - (latency - ttft) / 5.0).abs() < 1e-9, "TPOT = (E2EL − TTFT)/(6 − 1)");
    }

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let s = &json["runs"][0]["summary"];
    assert_eq!((s["completed"].as_u64(), s["total_output_tokens"].as_u64()), (Some(8), Some(48)));
    assert!(s["output_throughput"].as_f64().unwrap() > 0.0);
    // A 60 s TTFT SLO is met by every request: goodput = throughput.
    assert_eq!(s["request_goodput"], s["request_throughput"]);
    let sys = &json["runs"][0]["system"];
    assert!(sys["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "server RSS from /metrics: {sys}");
    assert!(!sys["stream_utilisation"].as_array().unwrap().is_empty(), "{sys}");
    assert!(out.join("latency_cdf.svg").exists());
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn bench_compares_in_process_configurations() {
    let out = std::env::temp_dir().join(format!("tandem-bench-cmp-{}", std::process::id()));
    let (code, stdout, stderr) = tandem(&[
        "bench",
        "--num-prompts",
        "6",
        "--input-len",
        "8",
        "--output-len",
        "3",
        "--compare",
        "continuous:batching=continuous",
        "--compare",
        "fixed2:batching=fixed:2",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    assert!(stdout.contains("change vs continuous") && stdout.contains("fixed2"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("requests.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 12, "6 requests × 2 configurations");
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn serve_with_swap_space_swaps_a_preempted_request_out_and_in_with_the_same_tokens() {
    // 8 MiB of KV holds 11 blocks of 16 tokens (SmolLM2-135M: 30 layers × 2 × 192 floats × 4 B
    // = 46 KB a token, 737 KB a block): a low-priority request growing to 124 tokens (8 blocks)
    // and a high-priority one of ~150 tokens (10 blocks) cannot both fit, so the high one's
    // arrival preempts the low one — by swap, into the 64 MiB host tier — and it resumes after.
    let server =
        Served::start(&["--kv-memory-mb", "8", "--swap-space-mb", "64", "--set", "queue=priority,preemption=swap"]);
    let low = r#"{"prompt": "Once upon a time", "max_tokens": 120, "temperature": 0, "ignore_eos": true}"#;
    let text = |resp: &str| {
        let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"));
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let alone = text(&raw_http(&server.url, "POST", "/v1/completions", low));
    let url = server.url.clone();
    let preempted = std::thread::spawn(move || raw_http(&url, "POST", "/v1/completions", low));
    std::thread::sleep(std::time::Duration::from_millis(400));
    let high = format!(
        r#"{{"prompt": "{}", "max_tokens": 60, "temperature": 0, "ignore_eos": true, "priority": 10}}"#,
        "one two three ".repeat(30)
    );
    let urgent = raw_http(&server.url, "POST", "/v1/completions", &high);
    assert!(urgent.starts_with("HTTP/1.1 200"), "{urgent}");
    let resumed = preempted.join().unwrap();
    assert_eq!(text(&resumed), alone, "swapped out and in: the unpreempted tokens");
    let metrics = raw_http(&server.url, "GET", "/metrics", "");
    let swaps = metrics
        .lines()
        .find(|l| l.starts_with("tandem:num_preemptions_total{") && l.contains("mode=\"swap\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no swap preemption counter: {metrics}"));
    assert!(swaps >= 1.0, "the high-priority arrival swapped the low one out: {swaps}");
}

#[test]
fn serve_on_the_simulated_device_answers_the_api_in_modelled_time() {
    // Llama-3-8B on an A100 profile, no weights: a decode step reads 8.03 G params × 2 B =
    // 16.06 GB at 1.9 TB/s = 8.45 ms (+0.12 ms per step), so 40 tokens take at least 40 × 8.45
    // = 338 ms however fast this machine is — the sleep is the model, not the CPU.
    let server = Served::start(&["--device", "sim", "--sim-model", "llama3-8b", "--sim-profile", "a100"]);
    let models = raw_http(&server.url, "GET", "/v1/models", "");
    assert!(models.contains(r#""id":"llama3-8b""#), "served under the modelled shape's name: {models}");
    let body = r#"{"model": "llama3-8b", "prompt": "Hello there", "max_tokens": 40, "ignore_eos": true}"#;
    let t = std::time::Instant::now();
    let resp = raw_http(&server.url, "POST", "/v1/completions", body);
    let took = t.elapsed();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""completion_tokens":40"#), "{resp}");
    assert!(took >= std::time::Duration::from_millis(338), "40 modelled decode steps in {took:?}");
    let metrics = raw_http(&server.url, "GET", "/metrics", "");
    let generated = metrics
        .lines()
        .find(|l| l.starts_with("vllm:generation_tokens_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_eq!(generated, 40.0, "the same metrics as a real replica");
    let (code, _, stderr) = tandem(&["serve", "--port", "0", "--device", "sim", "--sim-model", "gpt-5"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown simulated model shape `gpt-5`"), "{stderr}");
}
