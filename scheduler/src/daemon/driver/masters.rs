//! The masters as the driver runs them: each one's backend and core id,
//! whether it answers, and the probe that finds it back.
//!
//! A master that refuses pcq or stops answering (a [`Failure::Server`])
//! is marked down in the core (no starts there; its running compiles may
//! still finish), `pcq_master_up` says so, and a probe asks it every
//! `probe_interval` until it answers; then starts resume.
//!
//! [`Failure::Server`]: crate::daemon::backend::Failure::Server

use std::sync::Arc;
use std::time::Duration;

use crate::core::{Core, CoreError, LoadSample, MasterId, MasterSpec, Time};
use crate::daemon::backend::Compiler;
use crate::daemon::metrics::Metrics;

/// A master as the driver runs it.
pub struct MasterSlot {
    /// Its name.
    pub name: String,
    /// Its backend.
    pub compiler: Arc<dyn Compiler>,
    /// Its core spec.
    pub spec: MasterSpec,
    /// It is this host (load samples apply to it).
    pub local: bool,
    /// How often to probe it when it is down.
    pub probe_interval: Duration,
    /// `spec.cores` was configured, or is this host's count on this host
    /// (false: a remote master given this host's count for want of one).
    pub cores_known: bool,
    /// Its JRuby pool's size, when read at start.
    pub jrubies: Option<u32>,
    id: Option<MasterId>,
    probing: bool,
}

impl MasterSlot {
    /// A master slot, added to the core when the driver starts.
    pub fn new(
        name: String,
        compiler: Arc<dyn Compiler>,
        spec: MasterSpec,
        local: bool,
        probe_interval: Duration,
    ) -> MasterSlot {
        MasterSlot {
            name,
            compiler,
            spec,
            local,
            probe_interval,
            cores_known: true,
            jrubies: None,
            id: None,
            probing: false,
        }
    }

    /// Its id in the core, once added.
    pub fn id(&self) -> Option<MasterId> {
        self.id
    }
}

/// Every master, by the index the driver's compiles carry.
pub struct Masters {
    slots: Vec<MasterSlot>,
    metrics: Arc<Metrics>,
}

impl Masters {
    /// Adds every master to the core, up.
    pub fn add(
        mut slots: Vec<MasterSlot>,
        core: &mut Core,
        metrics: Arc<Metrics>,
        t: Time,
    ) -> Result<Masters, CoreError> {
        for m in &mut slots {
            let id = core.add_master(t, m.spec.clone())?;
            m.id = Some(id);
            metrics.set_master_up(&m.name, true);
            metrics.set_master_pool(id, &m.name, m.spec.gate.max_concurrency, m.jrubies);
        }
        Ok(Masters { slots, metrics })
    }

    /// All of them.
    pub fn all(&self) -> &[MasterSlot] {
        &self.slots
    }

    /// A master by index.
    pub fn get(&self, m: usize) -> Option<&MasterSlot> {
        self.slots.get(m)
    }

    /// The index of the master with this core id.
    pub fn index_of(&self, id: MasterId) -> Option<usize> {
        self.slots.iter().position(|m| m.id == Some(id))
    }

    /// A load reading of this host, for the local masters' gates.
    pub fn report_load(&self, core: &mut Core, t: Time, sample: LoadSample) {
        for id in self.slots.iter().filter(|m| m.local).filter_map(|m| m.id) {
            let _ = core.report_load(t, id, sample);
        }
    }

    /// Master `m` failed a compile: no starts on it from now. Returns the
    /// probe to run until it answers, unless one runs already.
    pub fn down(
        &mut self,
        core: &mut Core,
        t: Time,
        m: usize,
        why: &str,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let slot = self.slots.get_mut(m)?;
        if let Some(id) = slot.id {
            let _ = core.set_master_up(t, id, false);
        }
        self.metrics.set_master_up(&slot.name, false);
        if slot.probing {
            return None;
        }
        slot.probing = true;
        tracing::warn!(
            "master {} unavailable ({why}); pausing its starts and probing every {:?}",
            slot.name,
            slot.probe_interval
        );
        let compiler = slot.compiler.clone();
        let every = slot.probe_interval;
        Some(async move {
            loop {
                tokio::time::sleep(every).await;
                match compiler.probe().await {
                    Ok(()) => return,
                    Err(why) => tracing::debug!("probe: {why}"),
                }
            }
        })
    }

    /// A probe found master `m` answering: starts resume.
    pub fn back(&mut self, core: &mut Core, t: Time, m: usize) {
        let Some(slot) = self.slots.get_mut(m) else {
            return;
        };
        slot.probing = false;
        if let Some(id) = slot.id {
            let _ = core.set_master_up(t, id, true);
        }
        tracing::info!("master {} answers again; starts resume", slot.name);
        self.metrics.set_master_up(&slot.name, true);
    }
}
