//! Raw HTTP/1.1 for the server tests: what is tested is the bytes on the wire.

#![allow(dead_code)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one request to `addr`; returns (status, body).
pub async fn http_to(addr: &str, method: &str, path: &str, body: &str, extra_headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A server that answers early (413 on an oversized body) may close before the whole body
    // is written: the write then fails with a broken pipe, and the answer is still there to read.
    let _ = s.write_all(req.as_bytes()).await;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    (status, body)
}

/// The usage chunk of an SSE stream (`stream_options.include_usage`).
pub fn usage_chunk(sse: &str) -> serde_json::Value {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .expect("a usage chunk")
}

/// The JSON object in a (possibly chunked) body: between the first '{' and the last '}'.
pub fn json(body: &str) -> serde_json::Value {
    let (a, b) = (body.find('{').unwrap(), body.rfind('}').unwrap());
    serde_json::from_str(&body[a..=b]).unwrap()
}
