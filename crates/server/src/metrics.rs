//! `GET /metrics`: the engine's live statistics in the Prometheus/OpenMetrics text format,
//! encoded by `prometheus-client` from a snapshot taken at scrape time (its `Collector`
//! pattern, as an exporter of someone else's counters does).
//!
//! Every family is `tandem:NAME`; the families whose meaning and labels are vLLM's are also
//! served as `vllm:NAME` ([`VLLM_FAMILIES`], the one place that decides it), label `model_name`,
//! so vLLM dashboards, `vllm bench`-style scrapers and model-aware routers (the Gateway API
//! Inference Extension's endpoint picker) read tandem too, plus vLLM's
//! `vllm:cache_config_info{block_size,num_gpu_blocks}` and `vllm:num_preemptions` (all modes):
//! `num_requests_running`/`waiting`, `kv_cache_usage_perc`, `prefix_cache_queries`/`hits`,
//! `num_preemptions`, `prompt_tokens`/`generation_tokens`, `request_success{finished_reason}`,
//! and the histograms `time_to_first_token_seconds`, `inter_token_latency_seconds`,
//! `request_time_per_output_token_seconds`, `e2e_request_latency_seconds`,
//! `request_queue_time_seconds`, `request_prefill_time_seconds`, `request_decode_time_seconds`,
//! `request_prompt_tokens`, `request_generation_tokens`. tandem's own: `stream_utilization`
//! per stream, `batch_size`, `iteration_batch_size`, `iteration_tokens`, `num_requests_swapped`,
//! `request_errors`, `num_steps`; and the process' `process_resident_memory_bytes` and
//! `process_cpu_seconds_total`. With several models (`serve --models`), every loaded model's
//! engine is a `model_name` label value, and the contexts add `context_loaded`,
//! `context_memory_bytes` / `_max_bytes` / `_reserved_bytes`, `context_priority`,
//! `context_running_requests`, `context_device_seconds`, the device's
//! `device_memory_total_bytes` / `_allocated_bytes` / `_reserved_bytes`, and the counters
//! `context_loads`, `context_evictions`, `context_keep_alive_unloads`, `memory_pressure_events`,
//! `context_denied_loads`, `requests_requeued`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tandem_engine::{EngineStats, Histogram, ProcessUsage};

/// The content type of the OpenMetrics exposition (when the scraper's `Accept` asks for it).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format 0.0.4 (the default, as vLLM serves).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The tandem families also served under vLLM's name (`tandem:X` → `vllm:X`): same meaning,
/// same labels.
pub const VLLM_FAMILIES: [&str; 17] = [
    "num_requests_running",
    "num_requests_waiting",
    "kv_cache_usage_perc",
    "prefix_cache_queries",
    "prefix_cache_hits",
    "prompt_tokens",
    "generation_tokens",
    "request_success",
    "time_to_first_token_seconds",
    "inter_token_latency_seconds",
    "request_time_per_output_token_seconds",
    "e2e_request_latency_seconds",
    "request_queue_time_seconds",
    "request_prefill_time_seconds",
    "request_decode_time_seconds",
    "request_prompt_tokens",
    "request_generation_tokens",
];

/// The names a family is served under: its own, and vLLM's when it is one of vLLM's.
fn names(name: &str) -> Vec<String> {
    let mut v = vec![name.to_string()];
    if let Some(base) = name.strip_prefix("tandem:").filter(|b| VLLM_FAMILIES.contains(b)) {
        v.push(format!("vllm:{base}"));
    }
    v
}

/// The OpenMetrics text turned into the Prometheus text format 0.0.4: no `# EOF` or `# UNIT`
/// lines, and a counter's `# HELP`/`# TYPE` name its `_total` samples.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The multi-model part of a scrape: each context and the device's memory.
#[derive(Debug, Clone)]
pub struct ContextMetrics {
    pub contexts: Vec<tandem_engine::ContextStatus>,
    pub memory: tandem_core::contexts::MemoryStats,
    pub requeued: u64,
}

/// Renders one scrape: every loaded model's engine (label `model_name`), the contexts when
/// several models share the device, and the process.
pub fn render(models: Vec<(String, EngineStats)>, contexts: Option<ContextMetrics>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    let snapshot = Snapshot { models, contexts, process: ProcessUsage::read() };
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct Snapshot {
    models: Vec<(String, EngineStats)>,
    contexts: Option<ContextMetrics>,
    process: ProcessUsage,
}

type Fmt = Result<(), std::fmt::Error>;

/// Writes families with one sample per model (label `model_name`).
struct Writer<'a, 'e> {
    enc: DescriptorEncoder<'e>,
    models: &'a [(String, EngineStats)],
}

impl Writer<'_, '_> {
    /// A gauge; counts (`usize`) print as integers, fractions (`f64`) as floats.
    fn gauge<V: EncodeGaugeValue>(&mut self, name: &str, help: &str, f: impl Fn(&EngineStats) -> V) -> Fmt {
        for name in names(name) {
            let mut m = self.enc.encode_descriptor(&name, help, None, MetricType::Gauge)?;
            for (model, st) in self.models {
                ConstGauge::new(f(st)).encode(m.encode_family(&[("model_name", model.as_str())])?)?;
            }
        }
        Ok(())
    }

    fn counter(&mut self, name: &str, help: &str, f: impl Fn(&EngineStats) -> u64) -> Fmt {
        for name in names(name) {
            let mut m = self.enc.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for (model, st) in self.models {
                ConstCounter::new(f(st)).encode(m.encode_family(&[("model_name", model.as_str())])?)?;
            }
        }
        Ok(())
    }

    /// A counter family with one more label.
    fn counters(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        f: impl Fn(&EngineStats) -> Vec<(&'static str, u64)>,
    ) -> Fmt {
        for name in names(name) {
            let mut m = self.enc.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for (model, st) in self.models {
                for (l, v) in f(st) {
                    ConstCounter::new(v).encode(m.encode_family(&[("model_name", model.as_str()), (label, l)])?)?;
                }
            }
        }
        Ok(())
    }

    fn histogram(&mut self, name: &str, help: &str, f: impl Fn(&EngineStats) -> &Histogram) -> Fmt {
        for name in names(name) {
            let mut m = self.enc.encode_descriptor(&name, help, None, MetricType::Histogram)?;
            for (model, st) in self.models {
                let h = f(st);
                m.encode_family(&[("model_name", model.as_str())])?.encode_histogram::<NoLabelSet>(
                    h.sum,
                    h.count,
                    &h.buckets(),
                    None,
                )?;
            }
        }
        Ok(())
    }
}

/// One gauge (or counter) family over the contexts, label `model_name`.
fn per_context<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    c: &ContextMetrics,
    f: impl Fn(&tandem_engine::ContextStatus) -> V,
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for s in &c.contexts {
        ConstGauge::new(f(s)).encode(m.encode_family(&[("model_name", s.view.spec.name.as_str())])?)?;
    }
    Ok(())
}

fn device_gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Fmt {
    ConstGauge::new(v as i64).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn device_counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Fmt {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

impl Snapshot {
    fn encode_contexts(c: &ContextMetrics, enc: &mut DescriptorEncoder<'_>) -> Fmt {
        per_context(enc, "tandem:context_loaded", "1 when the model's context is loaded.", c, |s| {
            i64::from(s.view.loaded_bytes.is_some())
        })?;
        per_context(enc, "tandem:context_memory_bytes", "Bytes the context holds (weights + KV).", c, |s| {
            s.view.loaded_bytes.unwrap_or(0) as i64
        })?;
        per_context(enc, "tandem:context_memory_max_bytes", "The context's memory budget.", c, |s| {
            s.view.spec.max_bytes as i64
        })?;
        per_context(
            enc,
            "tandem:context_memory_reserved_bytes",
            "Bytes reserved for the context by its tier.",
            c,
            |s| s.view.spec.reserved_bytes() as i64,
        )?;
        per_context(
            enc,
            "tandem:context_priority",
            "QoS priority: guaranteed 2, burstable 1, best-effort 0.",
            c,
            |s| i64::from(s.view.priority),
        )?;
        per_context(enc, "tandem:context_running_requests", "Requests holding the context.", c, |s| {
            s.view.running as i64
        })?;
        per_context(enc, "tandem:context_device_seconds", "Device time the context's steps used.", c, |s| {
            s.device_time.as_secs_f64()
        })?;
        let m = &c.memory;
        device_gauge(enc, "tandem:device_memory_total_bytes", "Memory the contexts share.", m.total_bytes)?;
        device_gauge(
            enc,
            "tandem:device_memory_allocated_bytes",
            "Memory held by loaded contexts.",
            m.allocated_bytes,
        )?;
        device_gauge(enc, "tandem:device_memory_reserved_bytes", "Memory reserved by tiers.", m.reserved_bytes)?;
        device_counter(enc, "tandem:context_loads", "Context loads.", m.loads)?;
        device_counter(enc, "tandem:context_evictions", "Contexts evicted to make room.", m.evictions)?;
        device_counter(
            enc,
            "tandem:context_keep_alive_unloads",
            "Contexts unloaded after keep-alive.",
            m.keep_alive_unloads,
        )?;
        device_counter(
            enc,
            "tandem:memory_pressure_events",
            "Loads that got less than their max or evicted others.",
            m.pressure_events,
        )?;
        device_counter(
            enc,
            "tandem:context_denied_loads",
            "Loads refused for lack of memory or by the pressure hook.",
            m.denied_loads,
        )?;
        device_counter(
            enc,
            "tandem:requests_requeued",
            "Requests resubmitted after their model was evicted.",
            c.requeued,
        )
    }
}

impl Collector for Snapshot {
    fn encode(&self, enc: DescriptorEncoder) -> Fmt {
        let mut w = Writer { enc, models: &self.models };
        w.gauge("tandem:num_requests_running", "Requests in the running batch.", |st| st.scheduler.running)?;
        w.gauge("tandem:num_requests_waiting", "Requests waiting to start or resume.", |st| st.scheduler.waiting)?;
        w.gauge(
            "tandem:admission_places_held",
            "Places held for clients refused for their deadline, until they retry or lapse.",
            |st| st.reservations_held as i64,
        )?;
        w.gauge("tandem:num_requests_swapped", "Waiting requests whose KV is in the host tier.", |st| {
            st.scheduler.swapped
        })?;
        w.gauge("tandem:kv_cache_usage_perc", "Fraction of KV blocks in use (1 = full).", |st| {
            st.scheduler.kv_usage()
        })?;
        w.gauge("tandem:kv_cache_blocks_total", "KV blocks in the device pool.", |st| st.scheduler.kv_blocks_total)?;
        w.gauge("tandem:batch_size", "Sequences in the last step.", |st| st.current_batch_size)?;
        w.gauge("tandem:mean_batch_size", "Mean sequences per step since start.", |st| st.mean_batch_size)?;
        {
            let mut m = w.enc.encode_descriptor(
                "tandem:stream_utilization",
                "Per execution stream: busy time / device time since start.",
                None,
                MetricType::Gauge,
            )?;
            for (model, st) in w.models {
                for (i, u) in st.stream_utilisation.iter().enumerate() {
                    let stream = i.to_string();
                    ConstGauge::new(*u)
                        .encode(m.encode_family(&[("model_name", model.as_str()), ("stream", &stream)])?)?;
                }
            }
        }
        w.counter("tandem:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", |st| {
            st.scheduler.prefix_cache_queries
        })?;
        w.counter("tandem:prefix_cache_hits", "Prompt tokens found in the prefix cache.", |st| {
            st.scheduler.prefix_cache_hits
        })?;
        w.counter(
            "tandem:prefix_cache_rejections",
            "Prefix-cache keys that matched a block computed from other tokens (refused).",
            |st| st.scheduler.prefix_cache_rejections,
        )?;
        w.counters("tandem:num_preemptions", "Preemptions, by mode.", "mode", |st| {
            vec![("recompute", st.scheduler.preemptions_recompute), ("swap", st.scheduler.preemptions_swap)]
        })?;
        w.counter("vllm:num_preemptions", "Preemptions (all modes).", |st| {
            st.scheduler.preemptions_recompute + st.scheduler.preemptions_swap
        })?;
        {
            let mut m = w.enc.encode_descriptor(
                "vllm:cache_config_info",
                "The KV cache's configuration.",
                None,
                MetricType::Gauge,
            )?;
            for (model, st) in w.models {
                let (bs, blocks) = (st.scheduler.block_size.to_string(), st.scheduler.kv_blocks_total.to_string());
                let labels = [("model_name", model.as_str()), ("block_size", &bs), ("num_gpu_blocks", &blocks)];
                ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
            }
        }
        w.counter("tandem:prompt_tokens", "Prompt tokens of requests that ran.", |st| st.requests.prompt_tokens_total)?;
        w.counter("tandem:generation_tokens", "Tokens generated.", |st| st.requests.generation_tokens_total)?;
        w.counters("tandem:request_success", "Requests finished, by reason.", "finished_reason", |st| {
            let f = &st.requests.finished;
            vec![("stop", f.stop), ("length", f.length), ("abort", f.abort)]
        })?;
        w.counter("tandem:request_errors", "Requests refused by the scheduler or failed by the executor.", |st| {
            st.requests.finished.error
        })?;
        w.counter("tandem:num_steps", "Engine steps run.", |st| st.steps)?;
        w.histogram("tandem:time_to_first_token_seconds", "Arrival to first token.", |st| &st.requests.ttft)?;
        w.histogram("tandem:inter_token_latency_seconds", "Gap between consecutive tokens.", |st| {
            &st.requests.inter_token
        })?;
        w.histogram(
            "tandem:request_time_per_output_token_seconds",
            "(e2e - TTFT) / (tokens - 1) per request.",
            |st| &st.requests.tpot,
        )?;
        w.histogram("tandem:e2e_request_latency_seconds", "Arrival to finish.", |st| &st.requests.e2e)?;
        w.histogram("tandem:request_queue_time_seconds", "Arrival to first scheduled.", |st| &st.requests.queue_time)?;
        w.histogram("tandem:request_prefill_time_seconds", "First scheduled to first token.", |st| {
            &st.requests.prefill_time
        })?;
        w.histogram("tandem:request_decode_time_seconds", "First token to finish.", |st| &st.requests.decode_time)?;
        w.histogram("tandem:request_prompt_tokens", "Prompt length of requests that ran.", |st| {
            &st.requests.prompt_len
        })?;
        w.histogram("tandem:request_generation_tokens", "Tokens generated per request.", |st| {
            &st.requests.generation_len
        })?;
        w.histogram("tandem:iteration_tokens", "Tokens fed to the model per step.", |st| &st.requests.step_tokens)?;
        w.histogram("tandem:iteration_batch_size", "Sequences per step.", |st| &st.requests.step_batch)?;
        w.histogram(
            "tandem:predicted_time_to_first_token_seconds",
            "The step model's predicted time to first token (before calibration), of requests admitted with one.",
            |st| &st.requests.predicted_ttft,
        )?;
        w.histogram(
            "tandem:ttft_prediction_ratio",
            "Actual over the step model's predicted time to first token; admission scales predictions by its recent 95th percentile.",
            |st| &st.requests.ttft_prediction_ratio,
        )?;
        w.counters(
            "tandem:admission_refusals",
            "Requests refused at submission (HTTP 429), by reason.",
            "reason",
            |st| vec![("queue_full", st.refused_queue_full), ("deadline", st.refused_deadline)],
        )?;
        let mut enc = w.enc;
        if let Some(c) = &self.contexts {
            Self::encode_contexts(c, &mut enc)?;
        }
        if let Some(rss) = self.process.rss_bytes {
            let m =
                enc.encode_descriptor("process_resident_memory_bytes", "Resident memory.", None, MetricType::Gauge)?;
            ConstGauge::new(rss).encode(m)?;
        }
        if let Some(cpu) = self.process.cpu_time {
            let m =
                enc.encode_descriptor("process_cpu_seconds", "User and system CPU time.", None, MetricType::Counter)?;
            ConstCounter::new(cpu.as_secs_f64()).encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_carry_vllm_names_labels_and_values() {
        let mut stats = EngineStats::default();
        stats.scheduler.running = 3;
        stats.scheduler.kv_blocks_used = 5;
        stats.scheduler.kv_blocks_total = 20;
        stats.scheduler.preemptions_swap = 2;
        stats.stream_utilisation = vec![0.5, 0.25];
        stats.requests.ttft.observe(0.003);
        stats.requests.finished.length = 4;
        let text = render(vec![("m".into(), stats)], None).unwrap();
        assert!(text.contains("tandem:num_requests_running{model_name=\"m\"} 3"), "{text}");
        // 5 of 20 blocks = 0.25.
        assert!(text.contains("tandem:kv_cache_usage_perc{model_name=\"m\"} 0.25"), "{text}");
        assert!(text.contains("tandem:num_preemptions_total{model_name=\"m\",mode=\"swap\"} 2"), "{text}");
        assert!(text.contains("tandem:stream_utilization{model_name=\"m\",stream=\"1\"} 0.25"), "{text}");
        assert!(text.contains("tandem:request_success_total{model_name=\"m\",finished_reason=\"length\"} 4"));
        // 3 ms lands above the 1 ms bucket and in the 5 ms one (cumulative from there on).
        assert!(text.contains("tandem:time_to_first_token_seconds_bucket{le=\"0.001\",model_name=\"m\"} 0"), "{text}");
        assert!(text.contains("tandem:time_to_first_token_seconds_bucket{le=\"0.005\",model_name=\"m\"} 1"), "{text}");
        assert!(text.contains("tandem:time_to_first_token_seconds_bucket{le=\"+Inf\",model_name=\"m\"} 1"), "{text}");
        assert!(text.contains("tandem:time_to_first_token_seconds_count{model_name=\"m\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        // The same figures under vLLM's names, with vLLM's labels.
        assert!(text.contains("vllm:num_requests_running{model_name=\"m\"} 3"), "{text}");
        assert!(text.contains("vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25"), "{text}");
        assert!(text.contains("vllm:num_preemptions_total{model_name=\"m\"} 2"), "{text}");
        assert!(text.contains("vllm:time_to_first_token_seconds_count{model_name=\"m\"} 1"), "{text}");
        assert!(!text.contains("vllm:stream_utilization"), "tandem's own families keep their name only");
        // 20 blocks of (the default) 0 tokens here: the labels carry the pool's configuration.
        assert!(
            text.contains("vllm:cache_config_info{model_name=\"m\",block_size=\"0\",num_gpu_blocks=\"20\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn the_prometheus_text_format_names_counters_by_their_samples() {
        let om = "# HELP a:x Things.\n# TYPE a:x counter\na:x_total{m=\"1\"} 3\n# HELP a:g G.\n# TYPE a:g gauge\n# UNIT a:g seconds\na:g 1.5\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a:x_total Things.\n# TYPE a:x_total counter\na:x_total{m=\"1\"} 3\n# HELP a:g G.\n# TYPE a:g gauge\na:g 1.5\n"
        );
    }
}
