//! Execution streams on the CPU: one lane per stream, each a rayon thread pool with its own
//! share of the cores, so a step's micro-batches run **at the same time**, each one's matmul and
//! attention kernels on its own threads only (seed 000's parallel streams; vLLM's CPU backend
//! and llama.cpp bind a thread group to a sequence set the same way). The lanes share the
//! weights (read-only) and the one paged KV pool through a [`KvView`]: before running
//! micro-batches at once, [`writes_are_disjoint`] checks that no micro-batch writes a block
//! another one reads or writes (the scheduler's invariant; a step that breaks it runs its
//! micro-batches one after another instead, and is counted).
//!
//! With synchronisation on (the only mode built so far) the step ends when every lane has
//! finished. Each lane's busy time is measured on the lane itself.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rayon::{ThreadPool, ThreadPoolBuilder};
use tandem_core::{BlockId, ScheduledSeq, SchedulerOutput};

use super::kv_cache::KvView;
use crate::model::{LlamaModel, SeqSlice};
use crate::step_io::Packed;
use crate::ExecError;

/// Logits per sample row.
type Logits = Vec<Vec<f32>>;
/// A step run apart: logits, and each lane's busy time.
type RanApart = Result<(Logits, Vec<Duration>), ExecError>;
/// One lane's micro-batch: its logits and busy time.
type LaneRun = (Result<Logits, ExecError>, Duration);

/// The lanes of the CPU executor (none with one stream: the global pool runs fused steps).
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    pub(crate) pools: Vec<ThreadPool>,
    /// Steps whose micro-batches overlapped in the KV pool and so ran one after another.
    pub serialized_steps: u64,
    priority: i32,
}

/// Cores per lane: an equal share of `cores` over `streams`, the remainder to the first lanes,
/// at least one each.
pub(crate) fn cores_per_lane(cores: usize, streams: usize) -> Vec<usize> {
    let streams = streams.max(1);
    (0..streams).map(|i| (cores / streams + usize::from(i < cores % streams)).max(1)).collect()
}

/// The OS niceness of each lane's threads for `stream_priority` (CUDA's sign: negative is
/// higher): streams `[0, ⌈n/2⌉)` are the prefill streams of `smart`, the rest its decode
/// streams. Below zero the decode streams are favoured — the prefill lanes run at niceness
/// `|priority|` — above zero the prefill streams are (the decode lanes at `priority`); zero
/// leaves every lane at the default. Only ever lowers a lane (raising needs privileges),
/// capped at 19, Linux's lowest.
pub(crate) fn lane_niceness(streams: usize, priority: i32) -> Vec<i32> {
    let split = streams.div_ceil(2);
    let nice = priority.unsigned_abs().min(19) as i32;
    (0..streams)
        .map(|i| match (priority.signum(), i < split) {
            (-1, true) | (1, false) => nice,
            _ => 0,
        })
        .collect()
}

/// Lowers the calling thread's scheduling priority to `nice` (Linux: per thread).
fn set_thread_niceness(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        // SAFETY: plain syscalls on the calling thread's own id.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The calling thread's niceness (Linux; 0 elsewhere).
#[cfg(test)]
pub(crate) fn thread_niceness() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::getpriority(libc::PRIO_PROCESS, tid)
    }
    #[cfg(not(target_os = "linux"))]
    0
}

impl Lanes {
    /// Lanes for `streams` streams over this machine's cores, at the niceness
    /// `stream_priority` gives them ([`lane_niceness`]).
    pub fn new(streams: usize, stream_priority: i32) -> Result<Self, ExecError> {
        if streams <= 1 {
            return Ok(Self::default());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let niceness = lane_niceness(streams, stream_priority);
        let pools = cores_per_lane(cores, streams)
            .into_iter()
            .zip(niceness.iter().copied())
            .enumerate()
            .map(|(i, (n, nice))| {
                ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(move |t| format!("tandem-stream{i}-{t}"))
                    .start_handler(move |_| set_thread_niceness(nice))
                    .build()
                    .map_err(|e| ExecError::Device(format!("cannot start stream {i}'s threads: {e}").into()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { pools, serialized_steps: 0, priority: stream_priority })
    }

    /// The `stream_priority` the lanes were started with.
    pub fn priority(&self) -> i32 {
        self.priority
    }

    pub fn len(&self) -> usize {
        self.pools.len()
    }
}

/// The blocks of `s`'s table that its fed positions are written to.
pub(crate) fn written_blocks<'a>(out: &'a SchedulerOutput, s: &ScheduledSeq, block_size: usize) -> &'a [BlockId] {
    let table = out.block_table(s);
    let (first, last) = (s.start_pos / block_size, (s.start_pos + s.tokens.len()).div_ceil(block_size));
    &table[first.min(table.len())..last.min(table.len())]
}

/// Whether no micro-batch of `out` writes a block that another micro-batch's tables hold.
pub(crate) fn writes_are_disjoint(out: &SchedulerOutput, block_size: usize) -> bool {
    let mut seen: Vec<HashSet<BlockId>> = Vec::with_capacity(out.micro_batches.len());
    let mut written: Vec<HashSet<BlockId>> = Vec::with_capacity(out.micro_batches.len());
    for r in &out.micro_batches {
        let (mut all, mut mine) = (HashSet::new(), HashSet::new());
        for s in &out.seqs[r.clone()] {
            all.extend(out.block_table(s).iter().copied());
            mine.extend(written_blocks(out, s, block_size).iter().copied());
        }
        seen.push(all);
        written.push(mine);
    }
    (0..written.len()).all(|i| (0..seen.len()).all(|j| i == j || written[i].is_disjoint(&seen[j])))
}

/// One micro-batch's share of a packed step: its rows, rebased.
struct Part<'a> {
    ids: &'a [u32],
    positions: &'a [usize],
    seqs: Vec<SeqSlice<'a>>,
    sample_rows: Vec<usize>,
}

fn split<'a>(p: &'a Packed<'a>, out: &SchedulerOutput) -> Vec<Part<'a>> {
    out.micro_batches
        .iter()
        .map(|r| {
            let seqs = &p.seqs[r.clone()];
            let row0 = seqs.first().map_or(0, |s| s.start_row);
            let row1 = seqs.last().map_or(row0, |s| s.start_row + s.len);
            Part {
                ids: &p.ids[row0..row1],
                positions: &p.positions[row0..row1],
                seqs: seqs.iter().map(|s| SeqSlice { start_row: s.start_row - row0, ..s.clone() }).collect(),
                sample_rows: p.sample_rows.iter().filter(|&&x| (row0..row1).contains(&x)).map(|x| x - row0).collect(),
            }
        })
        .collect()
}

impl Lanes {
    /// Runs `out`'s micro-batches at once, micro-batch `i` on lane `i`: the logits of every
    /// sample row in order, and each lane's busy time. `None` when the step cannot run apart
    /// (one stream, one micro-batch, or micro-batches sharing a written block).
    pub fn run(
        &mut self,
        model: &LlamaModel,
        view: &KvView<'_>,
        p: &Packed<'_>,
        out: &SchedulerOutput,
    ) -> Option<RanApart> {
        let nonempty = out.micro_batches.iter().filter(|r| !r.is_empty()).count();
        if self.pools.len() < 2 || out.micro_batches.len() > self.pools.len() || nonempty < 2 {
            return None;
        }
        if !writes_are_disjoint(out, view.block_size()) {
            self.serialized_steps += 1;
            return None;
        }
        let parts = split(p, out);
        let run_part = |pool: &ThreadPool, part: &Part<'_>| {
            pool.install(|| {
                let started = Instant::now();
                let r = if part.ids.is_empty() {
                    Ok(Vec::new())
                } else {
                    // SAFETY: the micro-batches write disjoint blocks that no other one reads
                    // (checked above by `writes_are_disjoint`).
                    unsafe { model.forward_on(part.ids, part.positions, &part.seqs, &part.sample_rows, view) }
                };
                (r, started.elapsed())
            })
        };
        let pools = &self.pools;
        let results: Vec<LaneRun> = std::thread::scope(|scope| {
            let others: Vec<_> =
                parts.iter().zip(pools).skip(1).map(|(part, pool)| scope.spawn(move || run_part(pool, part))).collect();
            let mut all = vec![run_part(&pools[0], &parts[0])];
            for h in others {
                all.push(h.join().unwrap_or_else(|_| {
                    (Err(ExecError::Device("a stream's forward panicked".into())), Duration::ZERO)
                }));
            }
            all
        });
        let mut logits = Vec::with_capacity(p.sample_rows.len());
        let mut busy = Vec::with_capacity(results.len());
        for (r, t) in results {
            match r {
                Ok(l) => logits.extend(l),
                Err(e) => return Some(Err(e)),
            }
            busy.push(t);
        }
        Some(Ok((logits, busy)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::RequestId;

    #[test]
    fn stream_priority_lowers_the_other_kind_of_lane() {
        // Two streams: lane 0 prefills, lane 1 decodes. -5 favours decode: prefill at nice 5.
        assert_eq!(lane_niceness(2, -5), vec![5, 0]);
        assert_eq!(lane_niceness(2, 3), vec![0, 3]);
        assert_eq!(lane_niceness(3, -40), vec![19, 19, 0], "capped at 19; ⌈3/2⌉ = 2 prefill lanes");
        assert_eq!(lane_niceness(2, 0), vec![0, 0]);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn lane_threads_run_at_their_niceness() {
        let base = thread_niceness();
        let lanes = Lanes::new(2, -4).unwrap();
        let seen: Vec<i32> = lanes.pools.iter().map(|p| p.install(thread_niceness)).collect();
        // Niceness only goes up from the process's own (tests may run niced already).
        assert_eq!(seen, vec![(base + 4).min(19), base], "prefill lane lowered, decode lane as the process");
    }

    #[test]
    fn cores_are_shared_out_with_at_least_one_per_lane() {
        // 2 cores over 2 streams: one each; 5 over 2: 3 and 2; 2 over 3: one each (oversubscribed).
        assert_eq!(cores_per_lane(2, 2), vec![1, 1]);
        assert_eq!(cores_per_lane(5, 2), vec![3, 2]);
        assert_eq!(cores_per_lane(2, 3), vec![1, 1, 1]);
    }

    fn seq(out: &mut SchedulerOutput, id: u64, start_pos: usize, fed: usize, table: &[u32]) {
        out.push_seq(RequestId(id), std::iter::repeat_n(7, fed), start_pos, table.iter().map(|&b| BlockId(b)), true);
    }

    #[test]
    fn micro_batches_may_share_read_only_prefix_blocks_but_not_written_ones() {
        // 4-token blocks. A feeds positions 8..10 (block 2 of its table [0, 1, 5]); B feeds 8..9
        // (its block 6) and shares A's full prefix blocks 0 and 1: disjoint writes.
        let mut out = SchedulerOutput::default();
        seq(&mut out, 1, 8, 2, &[0, 1, 5]);
        seq(&mut out, 2, 8, 1, &[0, 1, 6]);
        out.micro_batches = vec![0..1, 1..2];
        assert!(writes_are_disjoint(&out, 4));
        // B writing into block 5, which A writes too: not disjoint.
        let mut bad = SchedulerOutput::default();
        seq(&mut bad, 1, 8, 2, &[0, 1, 5]);
        seq(&mut bad, 2, 8, 1, &[0, 1, 5]);
        bad.micro_batches = vec![0..1, 1..2];
        assert!(!writes_are_disjoint(&bad, 4));
        // B prefilling its first block 1 while A reads it as a prefix: not disjoint either.
        let mut reads = SchedulerOutput::default();
        seq(&mut reads, 1, 8, 1, &[0, 1, 5]);
        seq(&mut reads, 2, 4, 4, &[0, 1]);
        reads.micro_batches = vec![0..1, 1..2];
        assert!(!writes_are_disjoint(&reads, 4));
    }
}
