//! [`DeviceWorker`]: the thread that owns the executor and runs the steps the step loop hands
//! it, in order, one at a time (through the [`GateHandle`] when engines share a device), sending
//! each result back. Like vLLM's worker process, reduced to a thread: the step loop never
//! touches the executor, so it can schedule step N+1 while the device runs step N.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use tandem_core::{ModelOutput, SchedulerOutput, StreamConfig};
use tandem_executor::{ExecError, Executor};

use crate::error::EngineError;
use crate::gate::GateHandle;

pub(crate) type DeviceResult = Result<ModelOutput, ExecError>;

/// Work for the device thread.
enum Job {
    Step(Arc<SchedulerOutput>),
    Streams(StreamConfig),
}

/// The device thread and its two channels.
pub(crate) struct DeviceWorker {
    jobs: Option<Sender<Job>>,
    results: Receiver<DeviceResult>,
    thread: Option<JoinHandle<()>>,
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
        let (result_tx, results) = mpsc::channel::<DeviceResult>();
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
                            if result_tx.send(result).is_err() {
                                break;
                            }
                        }
                        Job::Streams(s) => executor.set_streams(&s),
                    }
                }
                if let Some(g) = gate {
                    g.leave();
                }
            })
            .map_err(|e| EngineError::Thread { name: "tandem-device", reason: e.to_string() })?;
        Ok(Self { jobs: Some(jobs), results, thread: Some(thread) })
    }

    /// Hands a step to the device; false if the thread is gone.
    pub fn run(&self, out: Arc<SchedulerOutput>) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send(Job::Step(out)).is_ok())
    }

    /// The next step's result, in order; `None` if the thread is gone.
    pub fn result(&self) -> Option<DeviceResult> {
        self.results.recv().ok()
    }

    /// Switches the executor's stream plan before its next step.
    pub fn set_streams(&self, streams: StreamConfig) {
        if let Some(j) = &self.jobs {
            let _ = j.send(Job::Streams(streams));
        }
    }

    /// Closes the job queue and joins the thread.
    pub fn stop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
