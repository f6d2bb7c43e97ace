//! `tandem serve --models FILE.toml`: several models sharing this machine's device memory, each
//! in its own context (QoS tier, memory budget, compute share, keep-alive), loaded on first
//! request and routed by the request's `model`.
//!
//! ```toml
//! device_memory_mb = 2048          # what the models may share (weights + KV caches)
//!
//! [[model]]
//! name = "smollm2"                 # what requests put in `model`
//! path = "default"                 # the embedded model, or a .gguf file / HF directory
//! tier = "guaranteed"              # guaranteed | burstable | best-effort
//! max_memory_mb = 700              # weights + KV cache
//! share = 2.0                      # compute share when models contend (default 1)
//! keep_alive_s = 300               # unload after this long idle (default 300)
//!
//! [[model]]
//! name = "tiny"
//! path = "/models/tiny"
//! tier = "burstable"
//! base_memory_mb = 100             # reserved; may borrow up to max_memory_mb
//! max_memory_mb = 400
//! weights = "f32"                  # auto | f32 | q8 | q4 (default auto)
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tandem_core::contexts::{ContextSpec, QosTier, TierRule};
use tandem_engine::build::{kv_bytes_for_tokens, DeviceKind, DeviceLoader, ModelSource, Sizing};
use tandem_engine::ModelRegistry;
use tandem_executor::model::WeightFormat;

const MIB: u64 = 1 << 20;
/// The smallest KV cache a context loads with: room for this many tokens.
const MIN_KV_TOKENS: u64 = 512;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    device_memory_mb: u64,
    #[serde(default)]
    max_num_seqs: Option<usize>,
    #[serde(default)]
    max_num_batched_tokens: Option<usize>,
    model: Vec<ModelEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    name: String,
    #[serde(default = "default_path")]
    path: String,
    tier: String,
    max_memory_mb: u64,
    #[serde(default)]
    base_memory_mb: Option<u64>,
    #[serde(default = "one")]
    share: f64,
    #[serde(default = "five_minutes")]
    keep_alive_s: f64,
    #[serde(default)]
    weights: Option<String>,
}

fn default_path() -> String {
    "default".into()
}

fn one() -> f64 {
    1.0
}

fn five_minutes() -> f64 {
    300.0
}

/// Reads `file` and builds the registry of models on `device` (every context admitted, or an
/// error saying which not).
pub fn registry_from_file(file: &Path, device: DeviceKind) -> Result<Arc<ModelRegistry>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let cfg: FileConfig = toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    if cfg.model.is_empty() {
        return Err(format!("{}: no [[model]] entries", file.display()));
    }
    let base = file.parent().unwrap_or(Path::new("."));
    let mut specs = Vec::new();
    let mut sources = std::collections::HashMap::new();
    for m in &cfg.model {
        let weights: WeightFormat =
            m.weights.as_deref().unwrap_or("auto").parse().map_err(|e: tandem_executor::ExecError| e.to_string())?;
        let path = (m.path != "default").then(|| base.join(&m.path));
        let source = ModelSource::resolve(path.as_deref(), device, weights).map_err(|e| e.to_string())?;
        let spec = context_spec(m, &source).map_err(|e| format!("model `{}`: {e}", m.name))?;
        specs.push(spec);
        sources.insert(m.name.clone(), source);
    }
    let sizing = Sizing {
        max_num_seqs: cfg.max_num_seqs.unwrap_or(64),
        max_num_batched_tokens: cfg.max_num_batched_tokens.unwrap_or(512),
        ..Sizing::default()
    };
    let loader = DeviceLoader::new(sources, sizing);
    ModelRegistry::new(cfg.device_memory_mb * MIB, specs, Box::new(loader), Box::new(TierRule))
        .map_err(|e| e.to_string())
}

fn context_spec(m: &ModelEntry, source: &ModelSource) -> Result<ContextSpec, String> {
    let tier: QosTier = m.tier.parse().map_err(|e: tandem_core::contexts::ContextError| e.to_string())?;
    if tier == QosTier::Burstable && m.base_memory_mb.is_none() {
        return Err("a burstable model needs base_memory_mb".into());
    }
    if !(m.keep_alive_s >= 0.0 && m.keep_alive_s.is_finite()) {
        return Err(format!("keep_alive_s must be a non-negative number, got {}", m.keep_alive_s));
    }
    let (config, weight_bytes) = source.footprint().map_err(|e| e.to_string())?;
    let min_kv_bytes = kv_bytes_for_tokens(&config, source.device, MIN_KV_TOKENS);
    let spec = ContextSpec {
        name: m.name.clone(),
        tier,
        max_bytes: m.max_memory_mb * MIB,
        base_bytes: m.base_memory_mb.unwrap_or(0) * MIB,
        weight_bytes,
        min_kv_bytes,
        share: m.share,
        keep_alive: Duration::from_secs_f64(m.keep_alive_s),
    };
    spec.validate().map_err(|e| e.to_string())?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_say_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("tandem-contexts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |body: &str| {
            let f = dir.join("models.toml");
            std::fs::write(&f, body).unwrap();
            registry_from_file(&f, DeviceKind::Cpu).err().unwrap_or_default()
        };
        assert!(write("device_memory_mb = 10\nmodel = []").contains("no [[model]]"));
        assert!(write("device_memory_mb = 10\nbogus = 1\nmodel = []").contains("bogus"));
        let missing = write(
            "device_memory_mb = 10\n[[model]]\nname = \"a\"\npath = \"nope\"\ntier = \"guaranteed\"\nmax_memory_mb = 5",
        );
        assert!(missing.contains("model `a`") && missing.contains("no such file"), "{missing}");
        let tier = write("device_memory_mb = 10\n[[model]]\nname = \"a\"\ntier = \"gold\"\nmax_memory_mb = 5");
        assert!(tier.contains("unknown QoS tier"), "{tier}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
