//! [`ModelRegistry`]: several models on one device, each in its own context — its own
//! scheduler, executor, engine thread and stream — loaded on first use, unloaded after
//! `keep_alive`, evicted by tier when memory is short (Ollama's model lifecycle with seed 003's
//! QoS tiers). The decisions are `tandem_core::contexts::DeviceMemory`'s; this module does the
//! loading and stopping, and keeps the contexts' steps interleaved by compute share through one
//! [`FairDevice`].
//!
//! A request holds a [`ModelLease`] while it runs, so the pool knows which contexts are busy.
//! When a busy BestEffort context is evicted its engine is halted and
//! [`ServedModel::was_evicted`] turns true: the request's owner re-acquires the model (which
//! reloads it) and resubmits what is left — the request is requeued, not lost.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tandem_core::contexts::{ContextSpec, ContextView, DeviceMemory, MemoryStats, PressureHook};
use tandem_core::BatchingKind;
use tandem_executor::text::TextTokenizer;

use crate::error::EngineError;
use crate::gate::{FairDevice, GateHandle};
use crate::Engine;

/// A loaded model: its engine and what the server needs to talk to it.
pub struct ServedModel {
    pub name: String,
    /// vLLM's `root`: where clients can load this model's tokenizer from (a directory path),
    /// else the name. Requests may name the model by it too.
    pub root: String,
    pub engine: Engine,
    pub tokenizer: TextTokenizer,
    /// Longest prompt + output accepted.
    pub max_model_len: usize,
    /// One line saying what runs (for logs).
    pub describe: String,
    evicted: AtomicBool,
    /// Structured output's grammar compiler for this tokenizer, built on first use.
    grammars: std::sync::OnceLock<Result<Arc<crate::Grammars>, String>>,
}

impl ServedModel {
    pub fn new(name: String, engine: Engine, tokenizer: TextTokenizer, max_model_len: usize, describe: String) -> Self {
        let grammars = std::sync::OnceLock::new();
        let root = name.clone();
        Self { name, root, engine, tokenizer, max_model_len, describe, evicted: AtomicBool::new(false), grammars }
    }

    /// The same, with `root` for `/v1/models` (see [`crate::build::ModelSource::tokenizer_root`]).
    pub fn with_root(mut self, root: String) -> Self {
        self.root = root;
        self
    }

    /// Whether a request's `model` names this one (by name or by root).
    pub fn answers_to(&self, model: &str) -> bool {
        model == self.name || model == self.root
    }

    /// The grammar compiler for this model's tokenizer (built once, ~0.1 s for a 49k vocabulary).
    pub fn grammars(&self) -> Result<Arc<crate::Grammars>, EngineError> {
        self.grammars
            .get_or_init(|| crate::Grammars::new(&self.tokenizer).map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(EngineError::Grammar)
    }

    /// Whether the registry evicted this instance (its engine is stopping; acquire the model
    /// again to reach the reloaded one).
    pub fn was_evicted(&self) -> bool {
        self.evicted.load(Ordering::SeqCst)
    }
}

/// Loads one context's model with `bytes` of memory (weights + KV cache), its engine stepping
/// through `gate`.
pub trait ModelLoader: Send + Sync {
    fn load(&self, spec: &ContextSpec, bytes: u64, gate: GateHandle) -> Result<ServedModel, crate::BuildError>;
}

/// A model in use by one request; dropping it tells the pool the request ended.
pub struct ModelLease {
    model: Arc<ServedModel>,
    registry: Option<Arc<ModelRegistry>>,
    /// This lease's number (for events); 0 when unmanaged.
    id: u64,
}

/// Completes when every request a model was running at [`ModelRegistry::record_event`] has
/// ended (seed 003's `record_event` / `wait_event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEvent {
    pub model: String,
    pending: BTreeSet<u64>,
}

/// Which leases are live (for events).
#[derive(Debug, Default)]
struct LeaseBook {
    next: u64,
    live: BTreeMap<u64, String>,
}

impl ModelLease {
    /// A lease on a model no registry manages (a single-model server).
    pub fn unmanaged(model: Arc<ServedModel>) -> Self {
        Self { model, registry: None, id: 0 }
    }

    pub fn model(&self) -> &Arc<ServedModel> {
        &self.model
    }

    /// Whether a registry manages the model (so it can be evicted and reloaded).
    pub fn is_managed(&self) -> bool {
        self.registry.is_some()
    }

    /// A new lease on the same model, for a request its eviction cut: the registry reloads it
    /// (blocking) and counts the requeue. `None` for an unmanaged model.
    pub fn reacquire(&self) -> Result<Option<ModelLease>, EngineError> {
        let Some(r) = &self.registry else { return Ok(None) };
        r.note_requeue();
        r.acquire(&self.model.name).map(Some)
    }
}

impl Deref for ModelLease {
    type Target = ServedModel;
    fn deref(&self) -> &ServedModel {
        &self.model
    }
}

impl Drop for ModelLease {
    fn drop(&mut self) {
        if let Some(r) = &self.registry {
            // An evicted instance's requests were already written off by the eviction.
            if !self.model.was_evicted() {
                let now = r.now();
                r.lock().memory.end_request(&self.model.name, now);
            }
            r.book().live.remove(&self.id);
            r.lease_ended.notify_all();
        }
    }
}

/// One context as `GET /v1/contexts` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextStatus {
    pub view: ContextView,
    /// Idle time since the last request (loaded contexts).
    pub idle: Duration,
    /// Device time its steps have used.
    pub device_time: Duration,
}

struct Inner {
    memory: DeviceMemory,
    served: BTreeMap<String, Arc<ServedModel>>,
}

/// The models of one device.
pub struct ModelRegistry {
    inner: Mutex<Inner>,
    /// One load at a time (others wait, then find the model loaded).
    loading: Mutex<()>,
    loader: Box<dyn ModelLoader>,
    hook: Box<dyn PressureHook>,
    device: Arc<FairDevice>,
    epoch: Instant,
    requeued: AtomicU64,
    leases: Mutex<LeaseBook>,
    lease_ended: Condvar,
    /// Batching strategies switched at run time, by model: kept across unloads so a reload
    /// serves with the strategy the operator chose, not the configured one.
    batching: Mutex<BTreeMap<String, BatchingKind>>,
}

impl ModelRegistry {
    /// A registry over `total_bytes` of device memory with the contexts `specs` (each admitted
    /// or the whole call fails with the reason).
    pub fn new(
        total_bytes: u64,
        specs: Vec<ContextSpec>,
        loader: Box<dyn ModelLoader>,
        hook: Box<dyn PressureHook>,
    ) -> Result<Arc<Self>, EngineError> {
        let mut memory = DeviceMemory::new(total_bytes);
        for spec in specs {
            let admission = memory.register(spec.clone())?;
            tracing::info!(model = %spec.name, tier = %spec.tier, priority = admission.priority, "{}", admission.reason);
        }
        Ok(Arc::new(Self {
            inner: Mutex::new(Inner { memory, served: BTreeMap::new() }),
            loading: Mutex::new(()),
            loader,
            hook,
            device: FairDevice::new(),
            epoch: Instant::now(),
            requeued: AtomicU64::new(0),
            leases: Mutex::new(LeaseBook::default()),
            lease_ended: Condvar::new(),
            batching: Mutex::new(BTreeMap::new()),
        }))
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn book(&self) -> MutexGuard<'_, LeaseBook> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An event that completes when every request `model` is running now has ended.
    pub fn record_event(&self, model: &str) -> Result<ContextEvent, EngineError> {
        if self.lock().memory.view(model).is_none() {
            return Err(EngineError::Context(unknown(model)));
        }
        let pending = self.book().live.iter().filter(|(_, m)| *m == model).map(|(id, _)| *id).collect();
        Ok(ContextEvent { model: model.to_string(), pending })
    }

    /// Whether `event` has completed.
    pub fn event_done(&self, event: &ContextEvent) -> bool {
        let book = self.book();
        event.pending.iter().all(|id| !book.live.contains_key(id))
    }

    /// Waits up to `timeout` for `event`; returns whether it completed.
    pub fn wait_event(&self, event: &ContextEvent, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut book = self.book();
        loop {
            if event.pending.iter().all(|id| !book.live.contains_key(id)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            book = self.lease_ended.wait_timeout(book, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Configured model names, in order.
    pub fn names(&self) -> Vec<String> {
        self.lock().memory.views().into_iter().map(|v| v.spec.name).collect()
    }

    /// The loaded instance of `name`, if any (no lease: for stats and control).
    pub fn loaded(&self, name: &str) -> Option<Arc<ServedModel>> {
        self.lock().served.get(name).cloned()
    }

    /// Every loaded model.
    pub fn loaded_models(&self) -> Vec<Arc<ServedModel>> {
        self.lock().served.values().cloned().collect()
    }

    /// A lease on `name`, loading it first if needed (evicting as its tier permits). Blocks
    /// while a model loads: call it off the async runtime.
    pub fn acquire(self: &Arc<Self>, name: &str) -> Result<ModelLease, EngineError> {
        if let Some(lease) = self.try_lease(name)? {
            return Ok(lease);
        }
        let _one_load = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lease) = self.try_lease(name)? {
            return Ok(lease);
        }
        let (spec, plan, victims) = {
            let mut inner = self.lock();
            let spec = inner.memory.view(name).ok_or_else(|| EngineError::Context(unknown(name)))?.spec;
            let plan = inner.memory.plan_load(name, self.hook.as_ref())?;
            let now = self.now();
            inner.memory.apply_load(&plan, now)?;
            let victims: Vec<Arc<ServedModel>> = plan.evict.iter().filter_map(|v| inner.served.remove(v)).collect();
            (spec, plan, victims)
        };
        if plan.under_pressure {
            let stats = self.stats();
            tracing::warn!(
                model = name,
                granted = plan.bytes,
                wanted = spec.max_bytes,
                evicting = ?plan.evict,
                free_after_bytes = stats.free_bytes,
                "memory pressure"
            );
        }
        for v in victims {
            v.evicted.store(true, Ordering::SeqCst);
            v.engine.halt();
            tracing::info!(model = %v.name, for_model = name, "evicted");
        }
        let gate = self.device.handle(name, spec.share);
        let started = Instant::now();
        match self.loader.load(&spec, plan.bytes, gate) {
            Ok(model) => {
                // Held until the model is listed, so a concurrent set_batching is not missed.
                let chosen = self.batching.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(&kind) = chosen.get(name) {
                    if let Err(e) = model.engine.set_batching(kind) {
                        tracing::warn!(model = name, %kind, "cannot restore the batching strategy: {e}");
                    }
                }
                tracing::info!(
                    model = name,
                    bytes = plan.bytes,
                    secs = started.elapsed().as_secs_f64(),
                    "{}",
                    model.describe
                );
                self.lock().served.insert(name.to_string(), Arc::new(model));
                drop(chosen);
                self.try_lease(name)?.ok_or_else(|| EngineError::Load { model: name.into(), reason: "vanished".into() })
            }
            Err(e) => {
                let _ = self.lock().memory.unload(name);
                self.device.remove(name);
                Err(EngineError::Load { model: name.into(), reason: e.to_string() })
            }
        }
    }

    fn try_lease(self: &Arc<Self>, name: &str) -> Result<Option<ModelLease>, EngineError> {
        let now = self.now();
        let mut inner = self.lock();
        if inner.memory.view(name).is_none() {
            return Err(EngineError::Context(unknown(name)));
        }
        let Some(model) = inner.served.get(name).cloned() else { return Ok(None) };
        inner.memory.begin_request(name, now)?;
        drop(inner);
        let mut book = self.book();
        book.next += 1;
        let id = book.next;
        book.live.insert(id, name.to_string());
        Ok(Some(ModelLease { model, registry: Some(Arc::clone(self)), id }))
    }

    /// Switches `name`'s batching strategy: now if it is loaded, and on every later load.
    /// Returns whether it was loaded (applied now).
    pub fn set_batching(&self, name: &str, kind: BatchingKind) -> Result<bool, EngineError> {
        if self.lock().memory.view(name).is_none() {
            return Err(EngineError::Context(unknown(name)));
        }
        // Held across the switch so a load in between cannot miss it.
        let mut chosen = self.batching.lock().unwrap_or_else(|e| e.into_inner());
        chosen.insert(name.to_string(), kind);
        match self.loaded(name) {
            Some(model) => model.engine.set_batching(kind).map(|()| true),
            None => Ok(false),
        }
    }

    /// Unloads contexts idle past their keep-alive; returns their names. Call it periodically.
    pub fn unload_idle(&self) -> Vec<String> {
        let now = self.now();
        let stopped: Vec<Arc<ServedModel>> = {
            let mut inner = self.lock();
            let names = inner.memory.unload_expired(now);
            names.iter().filter_map(|n| inner.served.remove(n)).collect()
        };
        for m in &stopped {
            m.engine.halt();
            self.device.remove(&m.name);
            tracing::info!(model = %m.name, "unloaded after keep_alive");
        }
        stopped.iter().map(|m| m.name.clone()).collect()
    }

    /// Every context's state.
    pub fn contexts(&self) -> Vec<ContextStatus> {
        let now = self.now();
        let used: BTreeMap<String, Duration> = self.device.used().into_iter().collect();
        self.lock()
            .memory
            .views()
            .into_iter()
            .map(|view| ContextStatus {
                idle: if view.loaded_bytes.is_some() { now.saturating_sub(view.last_used) } else { Duration::ZERO },
                device_time: used.get(&view.spec.name).copied().unwrap_or_default(),
                view,
            })
            .collect()
    }

    pub fn stats(&self) -> MemoryStats {
        self.lock().memory.stats()
    }

    /// Counts a request that lost its model to an eviction and was resubmitted.
    pub fn note_requeue(&self) {
        self.requeued.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests requeued after an eviction so far.
    pub fn requeued(&self) -> u64 {
        self.requeued.load(Ordering::Relaxed)
    }
}

fn unknown(name: &str) -> tandem_core::contexts::ContextError {
    tandem_core::contexts::ContextError::Unknown(name.into())
}
