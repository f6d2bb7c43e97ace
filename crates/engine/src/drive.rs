//! [`run_workload`]: plays a workload against a running [`Engine`] in real time — each request
//! submitted at its arrival offset, its events timed as they stream back — and returns the
//! per-request timelines. What `tandem simulate --engine` and the benchmark harness use to
//! measure the real serving path (threads, channels, async scheduling) rather than the model.

use std::time::{Duration, Instant};

use tandem_core::NewRequest;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::handle::{RequestEvent, RequestHandle};
use crate::report::RequestRecord;
use crate::workload::WorkloadRequest;

/// Submits `workload` at its arrival times and collects every request's timeline.
/// Requests refused by a full queue are retried after the advised delay.
pub fn run_workload(engine: &Engine, workload: &[WorkloadRequest]) -> Vec<RequestRecord> {
    let start = Instant::now();
    let mut records: Vec<RequestRecord> = workload
        .iter()
        .map(|w| RequestRecord { arrival: w.arrival, prompt_tokens: w.prompt.len(), ..RequestRecord::default() })
        .collect();
    let mut live: Vec<(usize, RequestHandle)> = Vec::new();
    let mut next = 0;
    while next < workload.len() || !live.is_empty() {
        let now = start.elapsed();
        while next < workload.len() && workload[next].arrival <= now {
            let w = &workload[next];
            let mut req = NewRequest::new(next as u64, w.prompt.clone(), w.output_len, Duration::ZERO);
            req.priority = w.priority;
            req.params.ignore_eos = true;
            match engine.submit(req) {
                Ok(h) => {
                    records[next].arrival = start.elapsed();
                    live.push((next, h));
                    next += 1;
                }
                Err(EngineError::QueueFull { .. }) => break, // try again next round
                Err(_) => {
                    records[next].failed = true;
                    next += 1;
                }
            }
        }
        let mut progressed = false;
        live.retain_mut(|(i, h)| loop {
            match h.try_next() {
                Ok(Some(RequestEvent::Token(_))) => {
                    let r = &mut records[*i];
                    r.output_tokens += 1;
                    r.first_token.get_or_insert_with(|| start.elapsed());
                    progressed = true;
                }
                Ok(Some(RequestEvent::Logprobs(_))) => {}
                Ok(Some(RequestEvent::Finished(reason))) => {
                    let r = &mut records[*i];
                    r.finish = Some(start.elapsed());
                    r.failed =
                        !matches!(reason, tandem_core::FinishReason::Stopped(_) | tandem_core::FinishReason::Length);
                    return false;
                }
                Ok(Some(RequestEvent::Failed(_))) | Ok(None) => {
                    records[*i].failed = true;
                    return false;
                }
                Err(_) => return true,
            }
        });
        if !progressed {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    records
}
