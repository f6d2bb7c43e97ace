//! [`DeviceWorker`]: the thread that owns the executor and runs the steps the step loop hands
//! it, in order, one at a time (through the [`GateHandle`] when engines share a device), sending
//! each result back. With streams unsynchronised it hands the executor a channel of stream
//! steps instead ([`Executor::run_streams`]), whose results come back as each stream finishes. Like vLLM's worker process, reduced to a thread: the step loop never
//! touches the executor, so it can schedule step N+1 while the device runs step N.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use tandem_core::{ModelOutput, SchedulerOutput, StreamConfig};
use tandem_executor::{ExecError, Executor, StreamResult};

use crate::error::EngineError;
use crate::gate::GateHandle;

pub(crate) type DeviceResult = Result<ModelOutput, ExecError>;

/// Work for the device thread.
enum Job {
    Step(Arc<SchedulerOutput>),
    Streams(StreamConfig),
    /// Streams without synchronisation: run the steps sent on this channel, each on its own
    /// stream, until it closes.
    Unsynchronised(Receiver<Arc<SchedulerOutput>>),
}

/// The device thread and its two channels.
pub(crate) struct DeviceWorker {
    jobs: Option<Sender<Job>>,
    results: Receiver<StreamResult>,
    thread: Option<JoinHandle<()>>,
    /// While streams run unsynchronised: where their steps go.
    unsynchronised: Option<Sender<Arc<SchedulerOutput>>>,
}

impl DeviceWorker {
    /// Starts the thread with `executor` planning `streams`; a thread that cannot start is an
    /// error, not a silently dead engine.
    pub fn spawn(
        mut executor: Box<dyn Executor>,
        streams: &StreamConfig,
        gate: Option<GateHandle>,
    ) -> Result<Self, EngineError> {
        executor.set_streams(streams);
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (result_tx, results) = mpsc::channel::<StreamResult>();
        let thread = std::thread::Builder::new()
            .name("tandem-device".into())
            .spawn(move || {
                for job in job_rx {
                    match job {
                        Job::Step(out) => {
                            let result = match &gate {
                                Some(g) => g.run(|| executor.execute(&out)),
                                None => executor.execute(&out),
                            };
                            if result_tx.send((out.step, result)).is_err() {
                                break;
                            }
                        }
                        Job::Streams(s) => executor.set_streams(&s),
                        // Sharing the device with other engines, steps take turns at the gate,
                        // one at a time; alone, the executor runs its streams at once.
                        Job::Unsynchronised(steps) => match &gate {
                            Some(g) => {
                                for out in steps {
                                    let result = g.run(|| executor.execute(&out));
                                    if result_tx.send((out.step, result)).is_err() {
                                        break;
                                    }
                                }
                            }
                            None => executor.run_streams(steps, &result_tx),
                        },
                    }
                }
                if let Some(g) = gate {
                    g.leave();
                }
            })
            .map_err(|e| EngineError::Thread { name: "tandem-device", reason: e.to_string() })?;
        Ok(Self { jobs: Some(jobs), results, thread: Some(thread), unsynchronised: None })
    }

    /// Hands a step to the device; false if the thread is gone. A step for a stream
    /// ([`SchedulerOutput::stream`]) goes to the unsynchronised streams, started on first use.
    pub fn run(&mut self, out: Arc<SchedulerOutput>) -> bool {
        if out.stream.is_none() {
            self.end_unsynchronised();
            return self.jobs.as_ref().is_some_and(|j| j.send(Job::Step(out)).is_ok());
        }
        if self.unsynchronised.is_none() {
            let (tx, rx) = mpsc::channel();
            if self.jobs.as_ref().is_none_or(|j| j.send(Job::Unsynchronised(rx)).is_err()) {
                return false;
            }
            self.unsynchronised = Some(tx);
        }
        self.unsynchronised.as_ref().is_some_and(|tx| tx.send(out).is_ok())
    }

    /// Leaves unsynchronised mode: the device finishes the stream steps it has, then takes
    /// jobs in order again.
    fn end_unsynchronised(&mut self) {
        self.unsynchronised = None;
    }

    /// The next result, tagged with its step (steps of one stream, and synchronised steps,
    /// come back in order; different streams' in any order); `None` if the thread is gone.
    pub fn result(&self) -> Option<(u64, DeviceResult)> {
        self.results.recv().ok()
    }

    /// Switches the executor's stream plan before its next step (after the unsynchronised
    /// steps already handed over).
    pub fn set_streams(&mut self, streams: StreamConfig) {
        self.end_unsynchronised();
        if let Some(j) = &self.jobs {
            let _ = j.send(Job::Streams(streams));
        }
    }

    /// Closes the job queue and joins the thread.
    pub fn stop(&mut self) {
        self.end_unsynchronised();
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
