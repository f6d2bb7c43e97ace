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
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["serve", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().expect("serve prints its address").unwrap();
    let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).expect(&line).to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("ok"), "{resp}");
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
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
    let (code, stdout, stderr) =
        tandem(&["generate", "--prompt", "What is the capital of France?", "--max-tokens", "16"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(stderr.contains("finish stop"), "{stderr}");
    // A stop string cuts the text before it, and the request ends with reason stop.
    let (code, stdout, stderr) = tandem(&["generate", "--prompt", "What is the capital of France?", "--stop", "Paris"]);
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
