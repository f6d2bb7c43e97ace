//! `GET /metrics`: the engine's live statistics in the Prometheus/OpenMetrics text format,
//! encoded by `prometheus-client` from a snapshot taken at scrape time (its `Collector`
//! pattern, as an exporter of someone else's counters does).
//!
//! Family names follow vLLM's (`vllm:` → `tandem:`), with the label `model_name`, so
//! dashboards and `vllm bench`-style scrapers written for vLLM read tandem too:
//! `num_requests_running`/`waiting`, `kv_cache_usage_perc`, `prefix_cache_queries`/`hits`,
//! `num_preemptions`, `prompt_tokens`/`generation_tokens`, `request_success{finished_reason}`,
//! and the histograms `time_to_first_token_seconds`, `inter_token_latency_seconds`,
//! `request_time_per_output_token_seconds`, `e2e_request_latency_seconds`,
//! `request_queue_time_seconds`, `request_prefill_time_seconds`, `request_decode_time_seconds`,
//! `request_prompt_tokens`, `request_generation_tokens`. tandem's own: `stream_utilization`
//! per stream, `batch_size`, `iteration_batch_size`, `iteration_tokens`, `num_requests_swapped`,
//! `request_errors`, `num_steps`; and the process' `process_resident_memory_bytes` and
//! `process_cpu_seconds_total`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tandem_engine::{EngineStats, Histogram, ProcessUsage};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders one scrape.
pub fn render(model_name: &str, stats: EngineStats) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    let snapshot = Snapshot { model: model_name.to_string(), stats, process: ProcessUsage::read() };
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct Snapshot {
    model: String,
    stats: EngineStats,
    process: ProcessUsage,
}

type Fmt = Result<(), std::fmt::Error>;

/// Writes families for one model (label `model_name`).
struct Writer<'a, 'e> {
    enc: DescriptorEncoder<'e>,
    model: &'a str,
}

impl Writer<'_, '_> {
    /// A gauge; counts (`usize`) print as integers, fractions (`f64`) as floats.
    fn gauge<V: EncodeGaugeValue>(&mut self, name: &str, help: &str, v: V) -> Fmt {
        let mut m = self.enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(v).encode(m.encode_family(&[("model_name", self.model)])?)
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) -> Fmt {
        let mut m = self.enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(v).encode(m.encode_family(&[("model_name", self.model)])?)
    }

    /// A counter family with one more label.
    fn counters(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) -> Fmt {
        let mut m = self.enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (l, v) in values {
            ConstCounter::new(*v).encode(m.encode_family(&[("model_name", self.model), (label, l)])?)?;
        }
        Ok(())
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> Fmt {
        let mut m = self.enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
        m.encode_family(&[("model_name", self.model)])?.encode_histogram::<NoLabelSet>(
            h.sum,
            h.count,
            &h.buckets(),
            None,
        )
    }
}

impl Collector for Snapshot {
    fn encode(&self, enc: DescriptorEncoder) -> Fmt {
        let st = &self.stats;
        let sc = &st.scheduler;
        let rq = &st.requests;
        let mut w = Writer { enc, model: &self.model };
        w.gauge("tandem:num_requests_running", "Requests in the running batch.", sc.running)?;
        w.gauge("tandem:num_requests_waiting", "Requests waiting to start or resume.", sc.waiting)?;
        w.gauge("tandem:num_requests_swapped", "Waiting requests whose KV is in the host tier.", sc.swapped)?;
        w.gauge("tandem:kv_cache_usage_perc", "Fraction of KV blocks in use (1 = full).", sc.kv_usage())?;
        w.gauge("tandem:kv_cache_blocks_total", "KV blocks in the device pool.", sc.kv_blocks_total)?;
        w.gauge("tandem:batch_size", "Sequences in the last step.", st.current_batch_size)?;
        w.gauge("tandem:mean_batch_size", "Mean sequences per step since start.", st.mean_batch_size)?;
        {
            let mut m = w.enc.encode_descriptor(
                "tandem:stream_utilization",
                "Per execution stream: busy time / device time since start.",
                None,
                MetricType::Gauge,
            )?;
            for (i, u) in st.stream_utilisation.iter().enumerate() {
                let stream = i.to_string();
                ConstGauge::new(*u).encode(m.encode_family(&[("model_name", w.model), ("stream", &stream)])?)?;
            }
        }
        w.counter(
            "tandem:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            sc.prefix_cache_queries,
        )?;
        w.counter("tandem:prefix_cache_hits", "Prompt tokens found in the prefix cache.", sc.prefix_cache_hits)?;
        w.counters(
            "tandem:num_preemptions",
            "Preemptions, by mode.",
            "mode",
            &[("recompute", sc.preemptions_recompute), ("swap", sc.preemptions_swap)],
        )?;
        w.counter("tandem:prompt_tokens", "Prompt tokens of requests that ran.", rq.prompt_tokens_total)?;
        w.counter("tandem:generation_tokens", "Tokens generated.", rq.generation_tokens_total)?;
        let f = &rq.finished;
        w.counters(
            "tandem:request_success",
            "Requests finished, by reason.",
            "finished_reason",
            &[("stop", f.stop), ("length", f.length), ("abort", f.abort)],
        )?;
        w.counter("tandem:request_errors", "Requests refused by the scheduler or failed by the executor.", f.error)?;
        w.counter("tandem:num_steps", "Engine steps run.", st.steps)?;
        w.histogram("tandem:time_to_first_token_seconds", "Arrival to first token.", &rq.ttft)?;
        w.histogram("tandem:inter_token_latency_seconds", "Gap between consecutive tokens.", &rq.inter_token)?;
        w.histogram(
            "tandem:request_time_per_output_token_seconds",
            "(e2e - TTFT) / (tokens - 1) per request.",
            &rq.tpot,
        )?;
        w.histogram("tandem:e2e_request_latency_seconds", "Arrival to finish.", &rq.e2e)?;
        w.histogram("tandem:request_queue_time_seconds", "Arrival to first scheduled.", &rq.queue_time)?;
        w.histogram("tandem:request_prefill_time_seconds", "First scheduled to first token.", &rq.prefill_time)?;
        w.histogram("tandem:request_decode_time_seconds", "First token to finish.", &rq.decode_time)?;
        w.histogram("tandem:request_prompt_tokens", "Prompt length of requests that ran.", &rq.prompt_len)?;
        w.histogram("tandem:request_generation_tokens", "Tokens generated per request.", &rq.generation_len)?;
        w.histogram("tandem:iteration_tokens", "Tokens fed to the model per step.", &rq.step_tokens)?;
        w.histogram("tandem:iteration_batch_size", "Sequences per step.", &rq.step_batch)?;
        let mut enc = w.enc;
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
        let text = render("m", stats).unwrap();
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
    }
}
