//! Tiny-number tests of the scheduling rules, one per policy, arithmetic in the comments.
//! Most use 4-token blocks so block counts stay small enough to follow by hand.

use std::time::Duration;

use crate::output::{ModelOutput, SchedulerOutput};
use crate::policy::{CapacityPolicyKind, PreemptionCost, PreemptionModeKind, QueuePolicyKind};
use crate::request::{AbortCause, FinishReason, NewRequest, RejectReason, RequestDelta, RequestState, StopCause};
use crate::types::{RequestId, TokenId};
use crate::{Error, Limits, Scheduler, SchedulerConfig};

fn t(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// 4-token blocks, `blocks` of them, budget 8, no prefix caching unless asked.
fn small(blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        block_size: 4,
        num_gpu_blocks: blocks,
        max_num_batched_tokens: 8,
        max_model_len: 64,
        enable_prefix_caching: false,
        ..SchedulerConfig::default()
    }
}

fn req(id: u64, prompt_len: u32, max_tokens: usize, arrival_ms: u64) -> NewRequest {
    NewRequest::new(id, (1..=prompt_len).map(|i| 100 + i).collect(), max_tokens, t(arrival_ms))
}

/// Runs one step, sampling `token` wherever asked; checks invariants before returning.
fn step(s: &mut Scheduler, now_ms: u64, token: TokenId) -> (SchedulerOutput, Vec<RequestDelta>) {
    let out = s.schedule(t(now_ms));
    s.check_invariants().unwrap();
    let model = ModelOutput::sampled(out.seqs.iter().map(|q| q.sample.then_some(token)).collect());
    let deltas = s.update(&out, &model, t(now_ms)).unwrap();
    s.check_invariants().unwrap();
    (out, deltas)
}

fn ids(out: &SchedulerOutput) -> Vec<u64> {
    out.seqs.iter().map(|q| q.id.0).collect()
}

fn fed(out: &SchedulerOutput) -> Vec<usize> {
    out.seqs.iter().map(|q| q.tokens.len()).collect()
}

#[test]
fn prefill_then_decode_under_one_budget() {
    let mut s = Scheduler::new(small(16)).unwrap();
    s.add_request(req(1, 5, 3, 0)).unwrap();
    let (out, deltas) = step(&mut s, 0, 7);
    // Step 0 feeds the whole 5-token prompt (5 <= budget 8) and samples.
    assert_eq!(fed(&out), vec![5]);
    assert_eq!(out.seqs[0].start_pos, 0);
    assert!(out.seqs[0].sample);
    assert_eq!(out.block_table(&out.seqs[0]).len(), 2); // ceil(5/4) = 2 blocks
    assert_eq!(deltas, vec![RequestDelta { id: RequestId(1), token: Some(7), finish: None }]);
    // Step 1 feeds the sampled token at position 5.
    let (out, _) = step(&mut s, 1, 8);
    assert_eq!(out.tokens(&out.seqs[0]), &[7]);
    assert_eq!(out.seqs[0].start_pos, 5);
    // Step 2: the 3rd token ends it on length (max_tokens 3).
    let (_, deltas) = step(&mut s, 2, 9);
    assert_eq!(deltas[0].finish, Some(FinishReason::Length));
    assert_eq!(s.tokens(RequestId(1)), None);
    assert_eq!(s.kv().num_free(), 16, "all blocks back");
    // The executor hears of the finish in the next output.
    let (out, _) = step(&mut s, 3, 0);
    assert_eq!(out.finished, vec![RequestId(1)]);
}

#[test]
fn long_prompt_is_chunked_and_samples_only_at_its_end() {
    let mut s = Scheduler::new(small(16)).unwrap();
    s.add_request(req(1, 10, 2, 0)).unwrap();
    let (out, deltas) = step(&mut s, 0, 7);
    assert_eq!((fed(&out), out.seqs[0].sample), (vec![8], false)); // 8 of 10 (budget 8)
    assert!(deltas.is_empty());
    let (out, deltas) = step(&mut s, 1, 7);
    assert_eq!((fed(&out), out.seqs[0].start_pos, out.seqs[0].sample), (vec![2], 8, true)); // the other 2
    assert_eq!(deltas.len(), 1);
}

#[test]
fn running_requests_are_served_before_admissions() {
    let mut s = Scheduler::new(small(16)).unwrap();
    s.add_request(req(1, 4, 5, 0)).unwrap();
    step(&mut s, 0, 7);
    s.add_request(req(2, 12, 5, 1)).unwrap();
    // Budget 8: request 1 decodes (1 token), request 2 gets the other 7 of its 12.
    let (out, _) = step(&mut s, 1, 7);
    assert_eq!(ids(&out), vec![1, 2]);
    assert_eq!(fed(&out), vec![1, 7]);
    assert_eq!(out.num_batched_tokens, 8);
}

#[test]
fn long_prefill_threshold_shares_a_step_between_prompts() {
    let cfg = SchedulerConfig { long_prefill_token_threshold: 4, ..small(16) };
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(req(1, 10, 2, 0)).unwrap();
    s.add_request(req(2, 10, 2, 0)).unwrap();
    // Each capped at 4: 4 + 4 = 8 = budget.
    let (out, _) = step(&mut s, 0, 7);
    assert_eq!(fed(&out), vec![4, 4]);
}

#[test]
fn partial_prefill_limit_and_batch_size_limit() {
    // Prompts of 10, 3 and 10 tokens, chunks of at most 4 (threshold), budget 16, at most one
    // prompt left part-fed by a step: request 1 gets 4 of 10 (part-fed: the one allowed),
    // request 2's 3 tokens finish it, request 3 would be part-fed too and waits although
    // 4 + 3 + 4 <= 16.
    let cfg = SchedulerConfig {
        max_num_partial_prefills: 1,
        max_num_batched_tokens: 16,
        long_prefill_token_threshold: 4,
        ..small(32)
    };
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(req(1, 10, 2, 0)).unwrap();
    s.add_request(req(2, 3, 2, 0)).unwrap();
    s.add_request(req(3, 10, 2, 0)).unwrap();
    let (out, _) = step(&mut s, 0, 7);
    assert_eq!(ids(&out), vec![1, 2]);
    assert_eq!(fed(&out), vec![4, 3]);
    // Short prompts that finish within the step are not limited: three of 3 tokens, 9 <= 16.
    let cfg = SchedulerConfig { max_num_partial_prefills: 1, max_num_batched_tokens: 16, ..small(32) };
    let mut s = Scheduler::new(cfg).unwrap();
    for i in 1..=3 {
        s.add_request(req(i, 3, 2, 0)).unwrap();
    }
    let (out, _) = step(&mut s, 0, 7);
    assert_eq!(ids(&out), vec![1, 2, 3]);

    let cfg = SchedulerConfig { max_num_seqs: 2, max_num_batched_tokens: 16, ..small(32) };
    let mut s = Scheduler::new(cfg).unwrap();
    for i in 1..=3 {
        s.add_request(req(i, 2, 4, 0)).unwrap();
    }
    let (out, _) = step(&mut s, 0, 7);
    assert_eq!(ids(&out), vec![1, 2], "batch of at most 2");
    assert_eq!(s.num_waiting(), 1);
}

#[test]
fn without_chunking_a_prompt_waits_for_a_step_it_fits_whole() {
    let cfg =
        SchedulerConfig { enable_chunked_prefill: false, max_num_batched_tokens: 16, max_model_len: 16, ..small(32) };
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(req(1, 12, 2, 0)).unwrap();
    s.add_request(req(2, 8, 2, 0)).unwrap();
    // 12 fits; 8 > 16 - 12 = 4 left, so request 2 waits whole.
    let (out, _) = step(&mut s, 0, 7);
    assert_eq!(fed(&out), vec![12]);
    // Step 1: 1 decode + 8 = 9 <= 16.
    let (out, _) = step(&mut s, 1, 7);
    assert_eq!(fed(&out), vec![1, 8]);
}

/// Two 7-token prompts in a 4-block pool of 4-token blocks: 2 + 2 blocks, full.
fn two_in_a_full_pool(cfg: SchedulerConfig) -> Scheduler {
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(req(1, 7, 10, 0)).unwrap();
    s.add_request(req(2, 7, 10, 1)).unwrap();
    let cfg_budget = s.limits().max_num_batched_tokens;
    assert!(cfg_budget >= 14);
    let (out, _) = step(&mut s, 0, 7); // both prefilled: ceil(7/4) = 2 blocks each, 0 free
    assert_eq!(fed(&out), vec![7, 7]);
    let (out, _) = step(&mut s, 1, 7); // 8 tokens each still fit 2 blocks
    assert_eq!(fed(&out), vec![1, 1]);
    assert_eq!(s.kv().num_free(), 0);
    s
}

#[test]
fn max_utilization_preempts_the_latest_arrival_by_recompute() {
    let cfg = SchedulerConfig { max_num_batched_tokens: 16, ..small(4) };
    let mut s = two_in_a_full_pool(cfg);
    // Step 2: request 1 needs a 3rd block (9 tokens), none free → request 2 (latest) is
    // preempted, its 2 blocks freed, request 1 takes one: 4 - 2 (req 1) - 1 = 1 free.
    let (out, _) = step(&mut s, 2, 7);
    assert_eq!(ids(&out), vec![1]);
    assert_eq!(out.preempted, vec![RequestId(2)]);
    assert_eq!(s.state(RequestId(2)), Some(RequestState::Preempted));
    assert_eq!(s.stats().preemptions_recompute, 1);
    assert_eq!(s.kv().num_free(), 1);
    // Nothing is admitted in a step that preempted for KV pressure.
    assert!(out.seqs.iter().all(|q| q.id != RequestId(2)));
    // Once request 1 finishes, request 2 re-prefills prompt + its 2 outputs = 9 tokens.
    s.abort(RequestId(1)).unwrap();
    let (out, _) = step(&mut s, 3, 7);
    assert_eq!((ids(&out), fed(&out), out.seqs[0].start_pos), (vec![2], vec![9], 0));
    assert_eq!(out.seqs[0].num_generated, 2);
}

#[test]
fn swap_mode_lists_copies_out_and_back_in() {
    let cfg = SchedulerConfig {
        max_num_batched_tokens: 16,
        num_host_blocks: 4,
        preemption: PreemptionModeKind::Swap,
        ..small(4)
    };
    let mut s = two_in_a_full_pool(cfg);
    let (out, _) = step(&mut s, 2, 7);
    // Request 2's 2 device blocks are copied to 2 host blocks.
    assert_eq!(out.swap_out.len(), 2);
    let hosts: Vec<_> = out.swap_out.iter().map(|p| p.1).collect();
    assert_eq!(s.state(RequestId(2)), Some(RequestState::Swapped));
    assert_eq!((s.stats().preemptions_swap, s.stats().swapped, s.stats().host_blocks_used), (1, 1, 2));
    s.abort(RequestId(1)).unwrap();
    // Swapped back: 2 blocks copied in; it has computed 7 tokens and known 8, so it decodes 1.
    let (out, _) = step(&mut s, 3, 7);
    assert_eq!(out.swap_in.iter().map(|p| p.0).collect::<Vec<_>>(), hosts);
    assert_eq!((ids(&out), fed(&out), out.seqs[0].start_pos), (vec![2], vec![1], 8));
    assert_eq!(out.block_table(&out.seqs[0])[..2], out.swap_in.iter().map(|p| p.1).collect::<Vec<_>>()[..]);
    // Host blocks come back at the end of the swap-in step.
    assert_eq!(s.stats().host_blocks_used, 0);
}

#[test]
fn auto_mode_picks_per_victim_by_cost() {
    // Swapping 2 blocks of 1000 bytes at 1000 B/s costs 2·2·1000/1000 = 4 s.
    let slow_link =
        PreemptionCost { kv_bytes_per_block: 1000, swap_bytes_per_sec: 1000.0, recompute_tokens_per_sec: 1.0 };
    // Recomputing 8 tokens at 1 tok/s costs 8 s > 4 s: swap.
    let cfg = SchedulerConfig {
        max_num_batched_tokens: 16,
        num_host_blocks: 4,
        preemption: PreemptionModeKind::Auto,
        preemption_cost: slow_link,
        ..small(4)
    };
    let mut s = two_in_a_full_pool(cfg.clone());
    step(&mut s, 2, 7);
    assert_eq!(s.state(RequestId(2)), Some(RequestState::Swapped));
    // At 100 tok/s recompute costs 0.08 s < 4 s: recompute.
    let cheap_prefill = PreemptionCost { recompute_tokens_per_sec: 100.0, ..slow_link };
    let mut s = two_in_a_full_pool(SchedulerConfig { preemption_cost: cheap_prefill, ..cfg });
    step(&mut s, 2, 7);
    assert_eq!(s.state(RequestId(2)), Some(RequestState::Preempted));
}

#[test]
fn guaranteed_no_evict_reserves_to_completion() {
    // 4 blocks of 4 tokens. A: 4 + 8 = 12 tokens → 3 blocks. B: 4 + 4 = 8 → 2 blocks. 3 + 2 > 4.
    let cfg = SchedulerConfig { capacity: CapacityPolicyKind::GuaranteedNoEvict, ..small(4) };
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(req(1, 4, 8, 0)).unwrap();
    s.add_request(req(2, 4, 4, 0)).unwrap();
    let (out, _) = step(&mut s, 0, 7);
    assert_eq!(ids(&out), vec![1], "B's first chunk fits, but not its whole life");
    // Under MaxUtilization both start (1 + 1 blocks now).
    let mut s = Scheduler::new(small(4)).unwrap();
    s.add_request(req(1, 4, 8, 0)).unwrap();
    s.add_request(req(2, 4, 4, 0)).unwrap();
    assert_eq!(ids(&step(&mut s, 0, 7).0), vec![1, 2]);
    // A request that could never fit is refused up front: 4 + 20 = 24 tokens → 6 > 4 blocks.
    let cfg = SchedulerConfig { capacity: CapacityPolicyKind::GuaranteedNoEvict, ..small(4) };
    let mut s = Scheduler::new(cfg).unwrap();
    assert_eq!(
        s.add_request(req(3, 4, 20, 0)),
        Err(Error::NeverFits { id: RequestId(3), blocks_needed: 6, pool_blocks: 4 })
    );
}

#[test]
fn guaranteed_no_evict_never_preempts_under_pressure() {
    let cfg =
        SchedulerConfig { capacity: CapacityPolicyKind::GuaranteedNoEvict, max_num_batched_tokens: 16, ..small(4) };
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(req(1, 7, 9, 0)).unwrap(); // 16 tokens → 4 blocks: the whole pool
    s.add_request(req(2, 1, 1, 0)).unwrap();
    for ms in 0..9 {
        let (out, _) = step(&mut s, ms, 7);
        assert!(out.preempted.is_empty());
        assert!(ids(&out).iter().all(|&i| i == 1), "B waits until A is done");
    }
    assert_eq!(s.state(RequestId(1)), None, "A finished: 9 tokens");
    assert_eq!(ids(&step(&mut s, 10, 7).0), vec![2]);
}

#[test]
fn static_batch_forms_a_new_batch_only_when_the_last_is_done() {
    let cfg = SchedulerConfig { capacity: CapacityPolicyKind::StaticBatch, ..small(16) };
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(req(1, 2, 3, 0)).unwrap();
    s.add_request(req(2, 2, 3, 0)).unwrap();
    assert_eq!(ids(&step(&mut s, 0, 7).0), vec![1, 2], "one batch of two");
    s.add_request(req(3, 2, 1, 1)).unwrap();
    assert_eq!(ids(&step(&mut s, 1, 7).0), vec![1, 2], "room, but the batch is running");
    assert_eq!(ids(&step(&mut s, 2, 7).0), vec![1, 2]); // third token: both finish
    assert_eq!(ids(&step(&mut s, 3, 7).0), vec![3]);
}

#[test]
fn fcfs_serves_by_arrival_and_priority_by_priority() {
    let cfg = SchedulerConfig { max_num_seqs: 1, ..small(16) };
    let mut s = Scheduler::new(cfg.clone()).unwrap();
    let mut low = req(1, 2, 1, 0);
    low.priority = 0;
    let mut high = req(2, 2, 1, 5);
    high.priority = 9;
    s.add_request(low.clone()).unwrap();
    s.add_request(high.clone()).unwrap();
    assert_eq!(ids(&step(&mut s, 10, 7).0), vec![1], "FCFS: earliest first");

    let cfg = SchedulerConfig { queue: QueuePolicyKind::Priority { aging_per_sec: 0.0 }, ..cfg };
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(low).unwrap();
    s.add_request(high).unwrap();
    assert_eq!(ids(&step(&mut s, 10, 7).0), vec![2], "priority: most urgent first");
}

#[test]
fn aging_lets_an_old_low_priority_request_go_first() {
    // aging 1/s: low (prio 0, t=0 s) has rank 0; high (prio 5, t=10 s) has rank -5 + 10 = 5.
    let cfg = SchedulerConfig { max_num_seqs: 1, queue: QueuePolicyKind::Priority { aging_per_sec: 1.0 }, ..small(16) };
    let mut s = Scheduler::new(cfg).unwrap();
    let low = req(1, 2, 1, 0);
    let mut high = req(2, 2, 1, 10_000);
    high.priority = 5;
    s.add_request(high).unwrap();
    s.add_request(low).unwrap();
    assert_eq!(ids(&step(&mut s, 10_000, 7).0), vec![1]);
}

#[test]
fn a_higher_priority_arrival_preempts_a_lower_priority_runner() {
    let cfg = SchedulerConfig { max_num_seqs: 1, queue: QueuePolicyKind::Priority { aging_per_sec: 0.0 }, ..small(16) };
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(req(1, 2, 10, 0)).unwrap();
    step(&mut s, 0, 7);
    let mut urgent = req(2, 2, 1, 1);
    urgent.priority = 1;
    s.add_request(urgent).unwrap();
    let (out, _) = step(&mut s, 1, 7);
    assert_eq!((ids(&out), out.preempted.clone()), (vec![2], vec![RequestId(1)]));
    // An equal-priority arrival does not preempt.
    let mut same = req(3, 2, 1, 2);
    same.priority = 0;
    s.add_request(same).unwrap();
    let (out, _) = step(&mut s, 2, 7); // request 1 resumes (it outranks 3: earlier)
    assert_eq!((ids(&out), out.preempted.len()), (vec![1], 0));
}

#[test]
fn abort_frees_blocks_at_once_and_reports_the_finish() {
    let mut s = Scheduler::new(small(16)).unwrap();
    s.add_request(req(1, 9, 10, 0)).unwrap();
    s.add_request(req(2, 2, 10, 0)).unwrap();
    step(&mut s, 0, 7);
    assert_eq!(s.kv().num_free(), 16 - 2); // 8 of 9 tokens fed: 2 blocks; request 2 got no budget
    let d = s.abort(RequestId(1)).unwrap();
    assert_eq!(d.finish, Some(FinishReason::Aborted(AbortCause::Client)));
    assert_eq!(s.kv().num_free(), 16);
    assert_eq!(s.abort(RequestId(1)), Err(Error::UnknownRequest(RequestId(1))));
    s.abort(RequestId(2)).unwrap(); // a waiting one
    s.check_invariants().unwrap();
    let (out, _) = step(&mut s, 1, 7);
    assert_eq!(out.finished, vec![RequestId(1), RequestId(2)]);
    assert!(s.is_idle());
}

#[test]
fn an_update_for_an_aborted_request_is_ignored() {
    let mut s = Scheduler::new(small(16)).unwrap();
    s.add_request(req(1, 2, 10, 0)).unwrap();
    let out = s.schedule(t(0));
    s.abort(RequestId(1)).unwrap();
    s.add_request(req(1, 3, 10, 0)).unwrap(); // same id, same slot, new request
    let deltas = s.update(&out, &ModelOutput::sampled(vec![Some(5)]), t(0)).unwrap();
    assert!(deltas.is_empty());
    assert_eq!(s.tokens(RequestId(1)).unwrap().len(), 3, "the new request is untouched");
    s.check_invariants().unwrap();
}

#[test]
fn bad_requests_are_typed_errors() {
    let mut s = Scheduler::new(small(4)).unwrap();
    assert_eq!(s.add_request(req(1, 0, 1, 0)), Err(Error::EmptyPrompt(RequestId(1))));
    assert_eq!(s.add_request(req(1, 2, 0, 0)), Err(Error::ZeroMaxTokens(RequestId(1))));
    // 64 tokens leave no room in a 64-token model.
    assert!(matches!(s.add_request(req(1, 64, 1, 0)), Err(Error::PromptTooLong { .. })));
    // 20 + 1 tokens need 6 blocks; the pool has 4.
    assert_eq!(
        s.add_request(req(1, 20, 1, 0)),
        Err(Error::NeverFits { id: RequestId(1), blocks_needed: 6, pool_blocks: 4 })
    );
    s.add_request(req(1, 2, 1, 0)).unwrap();
    assert_eq!(s.add_request(req(1, 2, 1, 0)), Err(Error::DuplicateRequest(RequestId(1))));
    assert!(Scheduler::new(SchedulerConfig { max_num_seqs: 0, ..small(4) }).is_err());
    assert!(s
        .set_limits(Limits { max_num_seqs: 0, max_num_batched_tokens: 8, long_prefill_token_threshold: 0 })
        .is_err());
    assert!(
        s.set_limits(Limits { max_num_seqs: 4, max_num_batched_tokens: 2, long_prefill_token_threshold: 0 }).is_err(),
        "budget below one block"
    );
    s.check_invariants().unwrap();
}

#[test]
fn deadlines_reject_waiting_and_abort_running_requests() {
    let cfg = SchedulerConfig { max_num_seqs: 1, ..small(16) };
    let mut s = Scheduler::new(cfg).unwrap();
    let mut a = req(1, 2, 100, 0);
    a.deadline = Some(t(50));
    let mut b = req(2, 2, 1, 0);
    b.deadline = Some(t(20));
    s.add_request(a).unwrap();
    s.add_request(b).unwrap();
    step(&mut s, 0, 7); // a runs, b waits (batch of 1)
    let (_, deltas) = step(&mut s, 20, 7);
    assert!(deltas.contains(&RequestDelta {
        id: RequestId(2),
        token: None,
        finish: Some(FinishReason::Rejected(RejectReason::DeadlineExceeded))
    }));
    let (out, deltas) = step(&mut s, 50, 7);
    assert!(out.seqs.is_empty());
    assert_eq!(deltas[0].finish, Some(FinishReason::Aborted(AbortCause::Deadline)));
    assert!(s.is_idle());
    assert_eq!(s.kv().num_free(), 16);
}

#[test]
fn min_tokens_bans_eos_and_stop_tokens_until_reached() {
    // EOS 0, stop token 7, min_tokens 2: the first two samples carry the ban [0, 7] and an EOS
    // sampled anyway (an executor that ignored the ban) does not end the request; the third
    // sample carries no ban, and EOS ends it.
    let cfg = SchedulerConfig { eos_token_ids: vec![0], ..small(16) };
    let mut s = Scheduler::new(cfg).unwrap();
    let mut r = req(1, 2, 10, 0);
    r.params.min_tokens = 2;
    r.params.stop_token_ids = vec![7];
    s.add_request(r).unwrap();
    for n in 0..2 {
        let (out, deltas) = step(&mut s, n, 0);
        assert_eq!(out.banned(&out.seqs[0]), &[0, 7], "sample {n}");
        assert_eq!(deltas[0].finish, None, "sample {n}: below min_tokens");
    }
    let (out, deltas) = step(&mut s, 2, 0);
    assert!(out.banned(&out.seqs[0]).is_empty());
    assert_eq!(deltas[0].finish, Some(FinishReason::Stopped(StopCause::Eos(0))));
    // With ignore_eos only the stop tokens are banned.
    let mut s = Scheduler::new(SchedulerConfig { eos_token_ids: vec![0], ..small(16) }).unwrap();
    let mut r = req(2, 2, 10, 0);
    (r.params.min_tokens, r.params.ignore_eos, r.params.stop_token_ids) = (1, true, vec![7]);
    s.add_request(r).unwrap();
    let (out, _) = step(&mut s, 0, 5);
    assert_eq!(out.banned(&out.seqs[0]), &[7]);
}

#[test]
fn logit_bias_goes_with_every_sample_only() {
    let mut s = Scheduler::new(small(16)).unwrap();
    let mut r = req(1, 10, 3, 0);
    r.params.logit_bias = vec![(5, -100.0), (9, 2.5)];
    s.add_request(r).unwrap();
    // Budget 8: the first chunk (8 of 10 prompt tokens) samples nothing, so carries no bias.
    let (out, _) = step(&mut s, 0, 7);
    assert!(!out.seqs[0].sample && out.bias(&out.seqs[0]).is_empty());
    let (out, _) = step(&mut s, 1, 7);
    assert!(out.seqs[0].sample);
    assert_eq!(out.bias(&out.seqs[0]), &[(5, -100.0), (9, 2.5)]);
    assert_eq!(out.block_table(&out.seqs[0]).len(), 3, "10 tokens + 1 in 4-token blocks");
}

#[test]
fn stop_conditions_eos_stop_tokens_length_and_pool_cap() {
    let cfg = SchedulerConfig { eos_token_ids: vec![0], ..small(16) };
    let mut s = Scheduler::new(cfg.clone()).unwrap();
    s.add_request(req(1, 2, 10, 0)).unwrap();
    let mut ignoring = req(2, 2, 2, 0);
    ignoring.params.ignore_eos = true;
    s.add_request(ignoring).unwrap();
    let mut stop = req(3, 2, 10, 0);
    stop.params.stop_token_ids = vec![0];
    s.add_request(stop).unwrap();
    let (_, deltas) = step(&mut s, 0, 0);
    let finish = |id| deltas.iter().find(|d| d.id == RequestId(id)).unwrap().finish;
    assert_eq!(finish(1), Some(FinishReason::Stopped(StopCause::Eos(0))));
    assert_eq!(finish(2), None, "ignore_eos");
    assert_eq!(finish(3), Some(FinishReason::Stopped(StopCause::Eos(0))), "EOS is checked first");
    let (_, deltas) = step(&mut s, 1, 0);
    assert_eq!(deltas[0].finish, Some(FinishReason::Length));

    // Pool cap: 2 blocks of 4 = 8 tokens; a 5-token prompt can grow to 8, so 3 outputs.
    let mut s = Scheduler::new(SchedulerConfig { num_gpu_blocks: 2, ..cfg }).unwrap();
    s.add_request(req(1, 5, 100, 0)).unwrap();
    let mut n = 0;
    loop {
        let (_, deltas) = step(&mut s, n, 9);
        n += 1;
        if let Some(f) = deltas[0].finish {
            assert_eq!(f, FinishReason::Length);
            break;
        }
    }
    assert_eq!(n, 3);
}

#[test]
fn prefix_cache_reuses_computed_blocks() {
    let cfg = SchedulerConfig { enable_prefix_caching: true, max_num_batched_tokens: 16, ..small(16) };
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(req(1, 10, 1, 0)).unwrap();
    step(&mut s, 0, 7); // 10 tokens computed: blocks 0 and 1 full (8 tokens) get cached
    s.add_request(req(2, 10, 1, 1)).unwrap();
    let (out, _) = step(&mut s, 1, 7);
    // 8 of 10 prompt tokens found: feed 2 from position 8.
    assert_eq!((fed(&out), out.seqs[0].start_pos), (vec![2], 8));
    let st = s.stats();
    assert_eq!((st.prefix_cache_queries, st.prefix_cache_hits), (20, 8));
    assert!((st.prefix_cache_hit_rate() - 0.4).abs() < 1e-9); // 8 / 20
}

#[test]
fn prefix_cache_events_store_a_chain_once_and_remove_it_on_reuse() {
    use crate::kv::{hash_block, KvEvent};
    // 4 blocks of 4 tokens, budget 16.
    let cfg = SchedulerConfig { enable_prefix_caching: true, max_num_batched_tokens: 16, ..small(4) };
    let mut s = Scheduler::new(cfg).unwrap();
    s.record_kv_events(true);
    s.add_request(req(1, 10, 1, 0)).unwrap();
    step(&mut s, 0, 7); // tokens 101..=110 computed: blocks of 101..=104 and 105..=108 are full
    let b0 = hash_block(None, &[101, 102, 103, 104]);
    let b1 = hash_block(Some(b0), &[105, 106, 107, 108]);
    let stored = KvEvent::Stored { hashes: vec![b0, b1], parent: None, tokens: (101..=108).collect() };
    assert_eq!(s.take_kv_events(), vec![stored]);
    // The same prompt again hits both blocks: nothing new is stored.
    s.add_request(req(2, 10, 1, 1)).unwrap();
    step(&mut s, 1, 7);
    step(&mut s, 2, 7); // request 1's finish is reported; its blocks are free but cached
    assert_eq!(s.take_kv_events(), vec![]);
    // A 15-token prompt of other tokens (+1 to sample) needs all 4 blocks: the two cached ones are
    // reallocated (LRU: request 2 freed its tail first, b1 then b0) and their keys removed.
    let other = NewRequest::new(3, (200..215).collect(), 1, t(3));
    s.add_request(other).unwrap();
    step(&mut s, 3, 7);
    let events = s.take_kv_events();
    assert!(
        matches!(&events[0], KvEvent::Removed { hashes } if hashes.len() == 2 && hashes.contains(&b0) && hashes.contains(&b1)),
        "{events:?}"
    );
    // Its 15 computed tokens fill 3 blocks, stored after that as one chain.
    assert!(
        matches!(&events[1], KvEvent::Stored { hashes, parent: None, tokens } if hashes.len() == 3 && tokens[..] == (200..212).collect::<Vec<u32>>()[..]),
        "{events:?}"
    );
    assert_eq!(events.len(), 2);
}

#[test]
fn a_penalized_request_gets_the_tokens_the_prefix_cache_skipped() {
    let cfg = SchedulerConfig { enable_prefix_caching: true, max_num_batched_tokens: 16, ..small(16) };
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(req(1, 10, 1, 0)).unwrap();
    step(&mut s, 0, 7); // blocks 0 and 1 (tokens 101..=108) cached
    let mut penalized = req(2, 10, 1, 1);
    penalized.params.sampler.repetition_penalty = 1.2;
    s.add_request(penalized).unwrap();
    s.add_request(req(3, 10, 1, 1)).unwrap();
    let (out, _) = step(&mut s, 1, 7);
    // Both skip 8 tokens; only the penalized one carries them (101..=108) as context.
    let context = |i: usize| out.token_ids[out.seqs[i].context.clone()].to_vec();
    assert_eq!((out.seqs[0].start_pos, context(0)), (8, (101..=108).collect::<Vec<u32>>()));
    assert_eq!((out.seqs[1].start_pos, context(1)), (8, vec![]));
    assert_eq!(out.num_batched_tokens, 4, "context is not fed: 2 + 2 tokens");
}

#[test]
fn update_rejects_wrong_step_or_misaligned_output() {
    let mut s = Scheduler::new(small(16)).unwrap();
    s.add_request(req(1, 2, 3, 0)).unwrap();
    let out = s.schedule(t(0));
    let bad = ModelOutput::sampled(vec![None]); // sample was asked
    assert!(matches!(s.update(&out, &bad, t(0)), Err(Error::OutputMismatch { .. })));
    let mut other = out.clone();
    other.step = 7;
    assert!(matches!(s.update(&other, &ModelOutput::sampled(vec![Some(1)]), t(0)), Err(Error::StepOutOfOrder { .. })));
    // The right answer still works after the refusals.
    assert_eq!(s.update(&out, &ModelOutput::sampled(vec![Some(1)]), t(0)).unwrap().len(), 1);
    assert!(matches!(s.update(&out, &ModelOutput::sampled(vec![Some(1)]), t(0)), Err(Error::StepOutOfOrder { .. })));
}

#[test]
fn steps_in_flight_pipeline_prefill_chunks_and_placeholder_decodes() {
    let mut s = Scheduler::new(small(16)).unwrap();
    s.add_request(req(1, 12, 3, 0)).unwrap();
    let a = s.schedule(t(0)); // tokens 0..8, no sample
    let b = s.schedule(t(0)); // tokens 8..12 and sample, before `a` is answered
    assert_eq!((fed(&a), fed(&b), b.seqs[0].start_pos, b.seqs[0].sample), (vec![8], vec![4], 8, true));
    // b's token is still on the device: c decodes it by placeholder at position 12.
    let c = s.schedule(t(0));
    assert_eq!((fed(&c), c.seqs[0].start_pos, c.seqs[0].feeds_last_sample), (vec![1], 12, true));
    assert_eq!(c.tokens(&c.seqs[0]), &[crate::PLACEHOLDER_TOKEN]);
    assert_eq!(c.seqs[0].num_generated, 1, "c samples the second output token");
    // Two samples pending: nothing more until an update.
    let d = s.schedule(t(0));
    assert!(d.seqs.is_empty());
    s.check_invariants().unwrap();
    assert!(s.update(&a, &ModelOutput::sampled(vec![None]), t(0)).unwrap().is_empty());
    assert_eq!(s.update(&b, &ModelOutput::sampled(vec![Some(3)]), t(0)).unwrap()[0].token, Some(3));
    assert_eq!(s.tokens(RequestId(1)).unwrap().len(), 13);
    assert_eq!(s.update(&c, &ModelOutput::sampled(vec![Some(4)]), t(0)).unwrap()[0].token, Some(4));
    s.update(&d, &ModelOutput::default(), t(0)).unwrap();
    // 12 + 2 = 14 known, max_len 15: one more decode, no placeholder now.
    let (e, deltas) = step(&mut s, 1, 5);
    assert_eq!((e.tokens(&e.seqs[0]), deltas[0].finish), (&[4][..], Some(FinishReason::Length)));
    assert_eq!(s.stats().placeholder_tokens, 1);
}

#[test]
fn a_placeholder_is_not_scheduled_when_the_pending_token_ends_the_request() {
    let mut s = Scheduler::new(small(16)).unwrap();
    s.add_request(req(1, 4, 1, 0)).unwrap(); // max_tokens 1: the prefill's token is the last
    let a = s.schedule(t(0));
    assert!(a.seqs[0].sample);
    assert!(s.schedule(t(0)).seqs.is_empty());
}

#[test]
fn a_failed_step_aborts_its_requests_and_the_scheduler_goes_on() {
    let mut s = Scheduler::new(small(16)).unwrap();
    s.add_request(req(1, 4, 5, 0)).unwrap();
    s.add_request(req(2, 4, 5, 0)).unwrap();
    let out = s.schedule(t(0));
    let deltas = s.fail_step(&out, t(0)).unwrap();
    assert_eq!(deltas.len(), 2);
    assert!(deltas.iter().all(|d| d.finish == Some(FinishReason::Aborted(AbortCause::ExecutorError))));
    assert_eq!(s.kv().num_free(), 16);
    s.add_request(req(3, 4, 1, 1)).unwrap();
    let (_, deltas) = step(&mut s, 1, 7);
    assert_eq!(deltas[0].finish, Some(FinishReason::Length));
}

#[test]
fn set_limits_takes_effect_next_step() {
    let mut s = Scheduler::new(small(32)).unwrap();
    for i in 1..=4 {
        s.add_request(req(i, 2, 5, 0)).unwrap();
    }
    s.set_limits(Limits { max_num_seqs: 2, max_num_batched_tokens: 8, long_prefill_token_threshold: 0 }).unwrap();
    assert_eq!(ids(&step(&mut s, 0, 7).0), vec![1, 2]);
    s.set_limits(Limits { max_num_seqs: 4, max_num_batched_tokens: 8, long_prefill_token_threshold: 0 }).unwrap();
    assert_eq!(ids(&step(&mut s, 1, 7).0), vec![1, 2, 3, 4]);
}

mod batching {
    use super::*;
    use crate::output::StepTiming;
    use crate::policy::BatchingKind;

    fn drive_until_idle(s: &mut Scheduler, mut now: u64) -> Vec<Vec<u64>> {
        let mut steps = Vec::new();
        while !s.is_idle() {
            let (out, _) = step(s, now, 7);
            steps.push(ids(&out));
            now += 1;
            assert!(now < 10_000, "stuck");
        }
        steps
    }

    #[test]
    fn fixed_reproduces_seed_004_batch_counts() {
        // Seed 004: 30 prompts, batch size 4 → 7 full batches + 1 of 2 = 8 batches.
        let cfg = SchedulerConfig {
            batching: BatchingKind::Fixed { batch_size: 4, max_wait: None },
            max_num_batched_tokens: 16, // 4 prompts * 3 tokens = 12 fit one step
            ..small(256)
        };
        let mut s = Scheduler::new(cfg).unwrap();
        for i in 0..30 {
            s.add_request(req(i, 3, 5, 0)).unwrap();
        }
        s.set_draining(true); // all prompts are in: flush the remainder, as the seed's shutdown does
        let steps = drive_until_idle(&mut s, 0);
        assert_eq!(s.stats().batches_formed, 8);
        // Each batch runs to completion (5 steps) before the next: 8 * 5 = 40 steps.
        assert_eq!(steps.len(), 40);
        assert_eq!(steps[0], vec![0, 1, 2, 3]);
        assert_eq!(steps[5], vec![4, 5, 6, 7]);
        assert_eq!(steps[35], vec![28, 29]);
    }

    #[test]
    fn fixed_without_draining_waits_for_a_full_batch() {
        let cfg = SchedulerConfig {
            batching: BatchingKind::Fixed { batch_size: 4, max_wait: None },
            max_num_batched_tokens: 16,
            ..small(64)
        };
        let mut s = Scheduler::new(cfg).unwrap();
        for i in 0..3 {
            s.add_request(req(i, 3, 2, 0)).unwrap();
        }
        assert!(step(&mut s, 0, 7).0.seqs.is_empty(), "3 < 4");
        s.add_request(req(3, 3, 2, 1)).unwrap();
        assert_eq!(ids(&step(&mut s, 1, 7).0), vec![0, 1, 2, 3]);
    }

    #[test]
    fn size_or_timeout_admits_on_size_or_age() {
        let kind = BatchingKind::SizeOrTimeout { batch_size: 4, timeout: t(50) };
        let mut s = Scheduler::new(SchedulerConfig { batching: kind, ..small(64) }).unwrap();
        for i in 0..3 {
            s.add_request(req(i, 3, 20, 0)).unwrap();
        }
        assert!(step(&mut s, 49, 7).0.seqs.is_empty(), "3 < 4 waiting and 49 ms < 50 ms");
        assert_eq!(ids(&step(&mut s, 50, 7).0), vec![0, 1, 2], "the oldest waited 50 ms");
        s.add_request(req(3, 3, 20, 51)).unwrap();
        // Continuous underneath: the newcomer waits for its own size-or-timeout, not for the batch.
        assert_eq!(ids(&step(&mut s, 60, 7).0), vec![0, 1, 2]);
        assert_eq!(ids(&step(&mut s, 101, 7).0), vec![0, 1, 2, 3]);
    }

    #[test]
    fn coalescing_admits_similar_lengths_together() {
        let kind = BatchingKind::Coalescing { tolerance: 0.25 };
        let cfg =
            SchedulerConfig { batching: kind, max_num_batched_tokens: 64, max_num_partial_prefills: 8, ..small(64) };
        let mut s = Scheduler::new(cfg).unwrap();
        for (i, len) in [10, 40, 11, 12].into_iter().enumerate() {
            s.add_request(req(i as u64, len, 2, i as u64)).unwrap();
        }
        // Anchor 10: 11 and 12 are within 25 %; 40 is not (|40 - 10| = 30 > 2.5).
        assert_eq!(ids(&step(&mut s, 5, 7).0), vec![0, 2, 3]);
        // Next step the 40-token prompt is the head and anchors its own group.
        assert_eq!(ids(&step(&mut s, 6, 7).0), vec![0, 2, 3, 1]);
    }

    #[test]
    fn adaptive_shrinks_the_batch_when_steps_are_slow() {
        let kind = BatchingKind::Adaptive { target_step_time: t(10) };
        let cfg = SchedulerConfig { batching: kind, max_num_seqs: 8, max_num_batched_tokens: 64, ..small(128) };
        let mut s = Scheduler::new(cfg).unwrap();
        for i in 0..8 {
            s.add_request(req(i, 2, 50, 0)).unwrap();
        }
        let out = s.schedule(t(0));
        let slow = ModelOutput {
            sampled: out.seqs.iter().map(|q| q.sample.then_some(7)).collect(),
            timing: StepTiming { device: t(20), ..StepTiming::default() },
            ..ModelOutput::default()
        };
        s.update(&out, &slow, t(0)).unwrap();
        // 20 ms > 10 ms target: 8 * 3/4 = 6 sequences, 64 * 3/4 = 48 tokens.
        let l = s.limits();
        assert_eq!((l.max_num_seqs, l.max_num_batched_tokens), (6, 48));
        assert_eq!(step(&mut s, 1, 7).0.seqs.len(), 6, "the next step serves 6");
    }

    #[test]
    fn presets_switch_limits_at_run_time_and_back() {
        let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
        s.set_batching(BatchingKind::LatencyOptimized).unwrap();
        assert_eq!(
            s.limits(),
            Limits { max_num_seqs: 32, max_num_batched_tokens: 512, long_prefill_token_threshold: 256 }
        );
        s.set_batching(BatchingKind::ThroughputOptimized).unwrap();
        assert_eq!(
            s.limits(),
            Limits { max_num_seqs: 512, max_num_batched_tokens: 8192, long_prefill_token_threshold: 0 }
        );
        s.set_batching(BatchingKind::Continuous).unwrap();
        assert_eq!(
            s.limits(),
            Limits { max_num_seqs: 256, max_num_batched_tokens: 2048, long_prefill_token_threshold: 0 }
        );
        assert!(s.set_batching(BatchingKind::SizeOrTimeout { batch_size: 4, timeout: t(0) }).is_err());
        assert_eq!(s.batching(), BatchingKind::Continuous, "a rejected switch changes nothing");
    }
}

mod streams {
    use super::*;
    use crate::streams::{StreamAssignment, StreamConfig};

    #[test]
    fn micro_batches_share_one_token_budget() {
        for assignment in [StreamAssignment::RoundRobin, StreamAssignment::Smart, StreamAssignment::Balanced] {
            let cfg = SchedulerConfig {
                streams: StreamConfig::parallel(assignment),
                max_num_batched_tokens: 16,
                ..small(64)
            };
            let mut s = Scheduler::new(cfg).unwrap();
            s.add_request(req(1, 3, 4, 0)).unwrap();
            s.add_request(req(2, 3, 4, 0)).unwrap();
            step(&mut s, 0, 7); // both decoding from now on
            s.add_request(req(3, 30, 4, 1)).unwrap();
            let (out, _) = step(&mut s, 1, 7);
            // 2 decodes + 14 prefill tokens = 16: the budget once, not once per stream.
            assert_eq!(out.num_batched_tokens, 16);
            assert_eq!(out.micro_batches.len(), 2, "{assignment:?}");
            let per_stream: Vec<usize> =
                out.micro_batches.iter().map(|r| out.seqs[r.clone()].iter().map(|q| q.tokens.len()).sum()).collect();
            assert_eq!(per_stream.iter().sum::<usize>(), 16, "{assignment:?}");
            if assignment == StreamAssignment::Smart {
                // Prefill (request 3) on stream 0, the two decodes on stream 1.
                assert_eq!(per_stream, vec![14, 2]);
            }
        }
    }

    /// Answers a sync-off step, sampling `token` wherever asked.
    fn answer(s: &mut Scheduler, out: &SchedulerOutput, token: TokenId) -> Vec<RequestDelta> {
        let model = ModelOutput::sampled(out.seqs.iter().map(|q| q.sample.then_some(token)).collect());
        let d = s.update(out, &model, t(9)).unwrap();
        s.check_invariants().unwrap();
        d
    }

    fn sync_off(assignment: StreamAssignment) -> Scheduler {
        let streams = StreamConfig { synchronize: false, ..StreamConfig::parallel(assignment) };
        Scheduler::new(SchedulerConfig { streams, max_num_batched_tokens: 16, ..small(64) }).unwrap()
    }

    #[test]
    fn sync_off_smart_decodes_on_one_stream_while_a_prefill_runs_on_the_other() {
        let mut s = sync_off(StreamAssignment::Smart);
        s.add_request(req(1, 3, 8, 0)).unwrap();
        s.add_request(req(2, 3, 8, 0)).unwrap();
        // Nothing decodes yet: the prefill stream takes both prompts (3 + 3 = 6 tokens).
        let first = s.schedule_stream(t(0), 0);
        assert_eq!((ids(&first), first.stream, first.micro_batches.len()), (vec![1, 2], Some(0), 1));
        assert_eq!(first.micro_batches[0], 0..2);
        answer(&mut s, &first, 7);
        s.add_request(req(3, 30, 4, 1)).unwrap();
        // Stream 0 takes the long prompt, leaving one token of the 16 for each of the two
        // decodes: a 14-token chunk.
        let prefill = s.schedule_stream(t(1), 0);
        assert_eq!((ids(&prefill), fed(&prefill)), (vec![3], vec![14]));
        let idle = s.schedule_stream(t(1), 0);
        assert!(idle.is_empty(), "a busy stream gets nothing");
        answer(&mut s, &idle, 7); // every step is answered, empty ones too
                                  // Stream 1 decodes both (2 tokens: 14 + 2 = 16 in flight, one budget).
        let decode = s.schedule_stream(t(1), 1);
        assert_eq!((ids(&decode), fed(&decode), decode.micro_batches.len()), (vec![1, 2], vec![1, 1], 2));
        // The decode step comes back first, out of order, and stream 1 decodes again while the
        // prefill is still in flight.
        assert_eq!(answer(&mut s, &decode, 7).len(), 2);
        let again = s.schedule_stream(t(2), 1);
        assert_eq!(ids(&again), vec![1, 2]);
        // Request 3 is in flight: no stream may schedule it, and the budget left is 2.
        assert_eq!(again.num_batched_tokens, 2);
        answer(&mut s, &prefill, 7);
        answer(&mut s, &again, 7);
        // Prefill of request 3 continues on stream 0: 16 tokens less 2 for the decodes.
        let next = s.schedule_stream(t(3), 0);
        assert_eq!((ids(&next), fed(&next)), (vec![3], vec![14]));
    }

    #[test]
    fn sync_off_smart_decode_stream_admits_a_short_prompt_beside_its_decodes() {
        let mut s = sync_off(StreamAssignment::Smart);
        s.add_request(req(1, 3, 8, 0)).unwrap();
        let first = s.schedule_stream(t(0), 0);
        answer(&mut s, &first, 7); // request 1 decodes from now on
        s.add_request(req(2, 30, 4, 1)).unwrap(); // long
        s.add_request(req(3, 3, 4, 2)).unwrap(); // short: ≤ 16 / 8 = 2, at least a block (4)
                                                 // The prefill stream takes the long prompt and leaves 1 (the decode) + 4 (a short
                                                 // prompt) of the 16: an 11-token chunk; the short prompt does not fit after it.
        let prefill = s.schedule_stream(t(2), 0);
        assert_eq!((ids(&prefill), fed(&prefill)), (vec![2], vec![11]));
        // The decode stream decodes request 1 and admits the short prompt whole.
        let decode = s.schedule_stream(t(2), 1);
        assert_eq!((ids(&decode), fed(&decode)), (vec![1, 3], vec![1, 3]));
        answer(&mut s, &decode, 7);
        answer(&mut s, &prefill, 7);
    }

    #[test]
    fn sync_off_round_robin_splits_the_work_over_the_free_streams() {
        let mut s = sync_off(StreamAssignment::RoundRobin);
        for id in 1..=4 {
            s.add_request(req(id, 2, 8, 0)).unwrap();
        }
        // 4 runnable over 2 free streams: 2 each.
        let a = s.schedule_stream(t(0), 0);
        let b = s.schedule_stream(t(0), 1);
        assert_eq!((ids(&a), ids(&b)), (vec![1, 2], vec![3, 4]));
        answer(&mut s, &b, 7);
        answer(&mut s, &a, 7);
    }

    #[test]
    fn a_request_aborted_in_flight_keeps_its_blocks_until_its_step_returns() {
        let mut s = sync_off(StreamAssignment::RoundRobin);
        s.add_request(req(1, 8, 4, 0)).unwrap();
        let out = s.schedule_stream(t(0), 0);
        assert_eq!(s.stats().kv_blocks_used, 2); // 8 tokens in 4-token blocks
        s.abort(RequestId(1)).unwrap();
        s.check_invariants().unwrap();
        // Stream 0 may still be writing them: nobody else can be given them.
        assert_eq!(s.stats().kv_blocks_used, 2);
        answer(&mut s, &out, 7);
        assert_eq!(s.stats().kv_blocks_used, 0);
    }
}
