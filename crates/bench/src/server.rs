//! [`ServerProcess`]: a `tandem serve` started for one configuration of a comparison
//! (`tandem bench --compare-file`) on a free port, its URL read from its first line of output,
//! stopped with SIGTERM (its graceful drain) and killed on drop.

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncBufReadExt;

use crate::BenchError;

/// A running `tandem serve` child.
pub struct ServerProcess {
    child: tokio::process::Child,
    /// Its OpenAI base URL, e.g. `http://127.0.0.1:41234/v1`.
    pub base_url: String,
}

impl ServerProcess {
    /// Runs `exe serve --port 0 ARGS` for configuration `name` and waits for its URL.
    pub async fn start(exe: &Path, name: &str, args: &[String]) -> Result<Self, BenchError> {
        let mut child = tokio::process::Command::new(exe)
            .args(["serve", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Server(format!("cannot start {} serve: {e}", exe.display())))?;
        let stdout = child.stdout.take().ok_or_else(|| BenchError::Server("no stdout".into()))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = lines.next_line().await.map_err(|e| BenchError::Server(e.to_string()))?.unwrap_or_default();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .ok_or_else(|| BenchError::Server(format!("configuration `{name}`: serve did not start: {line:?}")))?
            .to_string();
        Ok(Self { child, base_url: url })
    }

    /// SIGTERM, then up to 30 s for the drain, then a kill.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait()).await;
        let _ = self.child.start_kill();
    }
}
