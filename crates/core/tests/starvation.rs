//! Priority with aging must not starve: a priority-0 request under a sustained overload of
//! priority-5 arrivals finishes within the bound the aging rate gives, while the same load
//! starves it under strict priority (aging 0) — which shows the test can fail.

use std::time::Duration;

use tandem_core::{ModelOutput, NewRequest, QueuePolicyKind, RequestId, Scheduler, SchedulerConfig};

/// Steps (100 ms each) until request 0 finishes, or `None` within `max_steps`.
fn finish_step_of_low_priority_request(aging_per_sec: f64, max_steps: u64) -> Option<u64> {
    let cfg = SchedulerConfig {
        max_num_seqs: 1,
        queue: QueuePolicyKind::Priority { aging_per_sec },
        ..SchedulerConfig::default()
    };
    let mut s = Scheduler::new(cfg).unwrap();
    let ms = |step: u64| Duration::from_millis(step * 100);
    s.add_request(NewRequest::new(0, vec![1, 2], 2, ms(0))).unwrap();
    for step in 0..max_steps {
        // One priority-5 request per step, each needing 2 steps: twice the service rate.
        let mut r = NewRequest::new(step + 1, vec![3, 4], 2, ms(step));
        r.priority = 5;
        s.add_request(r).unwrap();
        let out = s.schedule(ms(step));
        let model = ModelOutput::sampled(out.seqs.iter().map(|q| q.sample.then_some(9)).collect());
        for d in s.update(&out, &model, ms(step)).unwrap() {
            if d.id == RequestId(0) && d.finish.is_some() {
                return Some(step);
            }
        }
    }
    None
}

#[test]
fn aging_bounds_the_wait_of_a_low_priority_request() {
    // aging 1/s: arrivals later than 0 s + (5 - 0)/1 = 5 s (step 50) rank behind request 0. At most
    // 51 requests (steps 0..=50) go first, 2 steps each: request 0 starts by step ~102, ends 2 later.
    let done = finish_step_of_low_priority_request(1.0, 1_000).expect("aging must prevent starvation");
    assert!(done <= 104, "finished at step {done}, bound 104");
}

#[test]
fn strict_priority_starves_under_the_same_load() {
    assert_eq!(finish_step_of_low_priority_request(0.0, 1_000), None);
}
