//! Scheduler settings as text, shared by `simulate`, `bench` and `serve`: `key=value` overrides
//! (`batching=fixed:4`, `streams=2`, `assignment=smart`, `capacity=static_batch`, …) and named
//! configurations `NAME:key=value,key=value` for compare mode.

use tandem_core::{
    BatchingKind, CapacityPolicyKind, PreemptionModeKind, QueuePolicyKind, SchedulerConfig, StreamAssignment,
};

type CliResult<T> = Result<T, String>;

pub fn parse_capacity(s: &str) -> CliResult<CapacityPolicyKind> {
    match s {
        "max_utilization" => Ok(CapacityPolicyKind::MaxUtilization),
        "guaranteed_no_evict" => Ok(CapacityPolicyKind::GuaranteedNoEvict),
        "static_batch" => Ok(CapacityPolicyKind::StaticBatch),
        _ => Err(format!("unknown capacity policy `{s}`: max_utilization, guaranteed_no_evict or static_batch")),
    }
}

pub fn parse_queue(s: &str) -> CliResult<QueuePolicyKind> {
    match s.split_once(':') {
        None if s == "fcfs" => Ok(QueuePolicyKind::Fcfs),
        None if s == "priority" => Ok(QueuePolicyKind::Priority { aging_per_sec: 0.0 }),
        Some(("priority", a)) => a
            .parse()
            .map(|aging_per_sec| QueuePolicyKind::Priority { aging_per_sec })
            .map_err(|_| format!("bad aging rate `{a}`")),
        _ => Err(format!("unknown queue policy `{s}`: fcfs, priority or priority:AGING")),
    }
}

pub fn parse_preemption(s: &str) -> CliResult<PreemptionModeKind> {
    match s {
        "recompute" => Ok(PreemptionModeKind::Recompute),
        "swap" => Ok(PreemptionModeKind::Swap),
        "auto" => Ok(PreemptionModeKind::Auto),
        _ => Err(format!("unknown preemption mode `{s}`: recompute, swap or auto")),
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> CliResult<T> {
    v.parse().map_err(|_| format!("`{key}` needs a number, got `{v}`"))
}

/// Applies one `key=value` override to a scheduler config.
pub fn apply(cfg: &mut SchedulerConfig, key: &str, value: &str) -> CliResult<()> {
    match key {
        "batching" => cfg.batching = value.parse::<BatchingKind>().map_err(|e| e.to_string())?,
        "streams" => cfg.streams.num_streams = parse_num(key, value)?,
        "assignment" => cfg.streams.assignment = value.parse::<StreamAssignment>().map_err(|e| e.to_string())?,
        "min_parallel" => cfg.streams.min_requests_for_parallel = parse_num(key, value)?,
        "fusion" => cfg.streams.context_generation_fusion = parse_num(key, value)?,
        "capacity" => cfg.capacity = parse_capacity(value)?,
        "queue" => cfg.queue = parse_queue(value)?,
        "preemption" => cfg.preemption = parse_preemption(value)?,
        "max_num_seqs" => cfg.max_num_seqs = parse_num(key, value)?,
        "max_num_batched_tokens" => cfg.max_num_batched_tokens = parse_num(key, value)?,
        _ => return Err(format!("unknown configuration key `{key}`")),
    }
    Ok(())
}

/// Applies `key=value` overrides (each item of `items`) to `cfg`.
pub fn apply_all(cfg: &mut SchedulerConfig, items: &[String]) -> CliResult<()> {
    for kv in items.iter().flat_map(|s| s.split(',')).filter(|s| !s.trim().is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("`{kv}` is not key=value"))?;
        apply(cfg, k.trim(), v.trim())?;
    }
    cfg.validate().map_err(|e| e.to_string())
}

/// `NAME:key=value,key=value` (or a bare NAME) applied to `base`.
pub fn parse_spec(spec: &str, base: &SchedulerConfig) -> CliResult<(String, SchedulerConfig)> {
    let (name, overrides) = spec.split_once(':').unwrap_or((spec, ""));
    let mut cfg = base.clone();
    apply_all(&mut cfg, &[overrides.to_string()]).map_err(|e| format!("configuration `{name}`: {e}"))?;
    Ok((name.to_string(), cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_and_override_a_base() {
        let base = SchedulerConfig::default();
        let (name, cfg) = parse_spec("fixed4:batching=fixed:4,streams=2", &base).unwrap();
        assert_eq!(name, "fixed4");
        assert_eq!(cfg.batching.to_string(), "fixed:4");
        assert_eq!(cfg.streams.num_streams, 2);
        assert_eq!(parse_spec("plain", &base).unwrap().1, base);
        assert!(parse_spec("x:nonsense=1", &base).is_err());
        assert!(parse_spec("x:streams", &base).is_err());
    }
}
