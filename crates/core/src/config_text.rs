//! Scheduler settings as text, shared by `tandem serve`, `bench` and `simulate` and by the
//! engine builder: `key=value` overrides (`batching=fixed:4`, `streams=2`, `assignment=smart`,
//! `capacity=static_batch`, …) applied to a [`SchedulerConfig`], and named configurations
//! `NAME:key=value,key=value` for compare mode. Like vLLM's `--scheduler-config` overrides,
//! every value is validated with the config it lands in.

use std::str::FromStr;

use crate::{
    BatchingKind, CapacityPolicyKind, Error, PreemptionModeKind, QueuePolicyKind, SchedulerConfig, StreamAssignment,
};

fn invalid(field: &'static str, problem: String) -> Error {
    Error::InvalidConfig { field, problem }
}

impl FromStr for CapacityPolicyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "max_utilization" => Ok(CapacityPolicyKind::MaxUtilization),
            "guaranteed_no_evict" => Ok(CapacityPolicyKind::GuaranteedNoEvict),
            "static_batch" => Ok(CapacityPolicyKind::StaticBatch),
            _ => Err(invalid(
                "capacity",
                format!("unknown capacity policy `{s}`: max_utilization, guaranteed_no_evict or static_batch"),
            )),
        }
    }
}

impl FromStr for QueuePolicyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.split_once(':') {
            None if s == "fcfs" => Ok(QueuePolicyKind::Fcfs),
            None if s == "priority" => Ok(QueuePolicyKind::Priority { aging_per_sec: 0.0 }),
            Some(("priority", a)) => a
                .parse()
                .map(|aging_per_sec| QueuePolicyKind::Priority { aging_per_sec })
                .map_err(|_| invalid("queue", format!("bad aging rate `{a}`"))),
            _ => Err(invalid("queue", format!("unknown queue policy `{s}`: fcfs, priority or priority:AGING"))),
        }
    }
}

impl FromStr for PreemptionModeKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "recompute" => Ok(PreemptionModeKind::Recompute),
            "swap" => Ok(PreemptionModeKind::Swap),
            "auto" => Ok(PreemptionModeKind::Auto),
            _ => Err(invalid("preemption", format!("unknown preemption mode `{s}`: recompute, swap or auto"))),
        }
    }
}

fn num<T: FromStr>(key: &'static str, v: &str) -> Result<T, Error> {
    v.parse().map_err(|_| invalid(key, format!("needs a number, got `{v}`")))
}

/// `on`/`off` (or `true`/`false`, `1`/`0`).
fn switch(key: &'static str, v: &str) -> Result<bool, Error> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(key, format!("needs on or off, got `{v}`"))),
    }
}

/// The keys [`SchedulerConfig::set`] knows.
pub const KEYS: [&str; 12] = [
    "batching",
    "streams",
    "assignment",
    "min_parallel",
    "fusion",
    "sync",
    "stream_priority",
    "capacity",
    "queue",
    "preemption",
    "max_num_seqs",
    "max_num_batched_tokens",
];

impl SchedulerConfig {
    /// Applies one `key=value` override (not yet validated against the rest: see
    /// [`SchedulerConfig::apply_overrides`]).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        match key {
            "batching" => self.batching = value.parse::<BatchingKind>()?,
            "streams" => self.streams.num_streams = num("streams", value)?,
            "assignment" => self.streams.assignment = value.parse::<StreamAssignment>()?,
            "min_parallel" => self.streams.min_requests_for_parallel = num("min_parallel", value)?,
            "fusion" => self.streams.context_generation_fusion = switch("fusion", value)?,
            "sync" => self.streams.synchronize = switch("sync", value)?,
            "stream_priority" => self.streams.stream_priority = num("stream_priority", value)?,
            "capacity" => self.capacity = value.parse()?,
            "queue" => self.queue = value.parse()?,
            "preemption" => self.preemption = value.parse()?,
            "max_num_seqs" => self.max_num_seqs = num("max_num_seqs", value)?,
            "max_num_batched_tokens" => self.max_num_batched_tokens = num("max_num_batched_tokens", value)?,
            _ => return Err(invalid("key", format!("unknown configuration key `{key}`: one of {}", KEYS.join(", ")))),
        }
        Ok(())
    }

    /// Applies `key=value` overrides (each item of `items`, items comma-separated too), then
    /// validates the result.
    pub fn apply_overrides(&mut self, items: &[String]) -> Result<(), Error> {
        for kv in items.iter().flat_map(|s| s.split(',')).filter(|s| !s.trim().is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| invalid("key", format!("`{kv}` is not key=value")))?;
            self.set(k.trim(), v.trim())?;
        }
        self.validate()
    }
}

/// `NAME:key=value,key=value` (or a bare NAME) applied to `base`.
pub fn named_config(spec: &str, base: &SchedulerConfig) -> Result<(String, SchedulerConfig), Error> {
    let (name, overrides) = spec.split_once(':').unwrap_or((spec, ""));
    let mut cfg = base.clone();
    cfg.apply_overrides(&[overrides.to_string()])
        .map_err(|e| Error::NamedConfig { name: name.to_string(), source: Box::new(e) })?;
    Ok((name.to_string(), cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_and_override_a_base() {
        let base = SchedulerConfig::default();
        let (name, cfg) = named_config("fixed4:batching=fixed:4,streams=2", &base).unwrap();
        assert_eq!(name, "fixed4");
        assert_eq!(cfg.batching.to_string(), "fixed:4");
        assert_eq!(cfg.streams.num_streams, 2);
        assert_eq!(named_config("plain", &base).unwrap().1, base);
        assert!(named_config("x:nonsense=1", &base).is_err());
        assert!(named_config("x:streams", &base).is_err());
        let (_, off) = named_config("p:streams=2,sync=off,fusion=on,stream_priority=-1", &base).unwrap();
        assert!(!off.streams.synchronize && off.streams.context_generation_fusion);
        assert_eq!(off.streams.stream_priority, -1);
        assert!(named_config("x:sync=sideways", &base).is_err());
        let e = named_config("x:streams=two", &base).unwrap_err().to_string();
        assert!(e.contains("configuration `x`") && e.contains("needs a number"), "{e}");
    }

    #[test]
    fn policies_parse_by_name() {
        assert_eq!("static_batch".parse::<CapacityPolicyKind>(), Ok(CapacityPolicyKind::StaticBatch));
        assert_eq!("priority:0.5".parse::<QueuePolicyKind>(), Ok(QueuePolicyKind::Priority { aging_per_sec: 0.5 }));
        assert_eq!("swap".parse::<PreemptionModeKind>(), Ok(PreemptionModeKind::Swap));
        assert!("priority:x".parse::<QueuePolicyKind>().is_err());
        assert!("sometimes".parse::<PreemptionModeKind>().is_err());
    }
}
