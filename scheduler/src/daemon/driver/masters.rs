//! The masters as the driver runs them: each one's backend and core id,
//! whether it answers, and the probe that finds it back.
//!
//! A master that refuses pcq or stops answering (a [`Failure::Server`])
//! is marked down in the core (no starts there; its running compiles may
//! still finish), `pcq_master_up` says so, and a probe asks it every
//! `probe_interval` until it answers; then starts resume.
//!
//! Each master's status API, polled (`master_status`), feeds its gate: the
//! JRubies free for pcq (free less `reserve_for_files`) always, and the
//! JVM's CPU use as the load of a master on another host (a local one's
//! load is this host's `/proc/loadavg`). A status that cannot be read
//! switches the pool limit off (the gate falls back to concurrency and the
//! local load), with a warning and `pcq_master_status_read` 0.
//!
//! [`Failure::Server`]: crate::daemon::backend::Failure::Server

use std::sync::Arc;
use std::time::Duration;

use crate::core::{Core, CoreError, LoadSample, MasterId, MasterSpec, Time};
use crate::daemon::backend::puppetserver::GateStatus;
use crate::daemon::backend::Compiler;
use crate::daemon::metrics::Metrics;
use crate::daemon::reserve;

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
    /// JRubies of its pool left to file requests.
    pub reserve_for_files: u32,
    id: Option<MasterId>,
    probing: bool,
    /// Its status API answered the last poll (`None`: not polled yet).
    status_read: Option<bool>,
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
            reserve_for_files: 0,
            id: None,
            probing: false,
            status_read: None,
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

    /// A poll of master `m`'s status API, for its gate.
    pub fn report_status(
        &mut self,
        core: &mut Core,
        t: Time,
        m: usize,
        reading: Result<GateStatus, String>,
        asked: Time,
    ) {
        let Some(slot) = self.slots.get_mut(m) else {
            return;
        };
        let Some(id) = slot.id else {
            return;
        };
        let read = reading.is_ok();
        match reading {
            Ok(status) => {
                let free = reserve::free_for_pcq(status.free, status.size, slot.reserve_for_files);
                let _ = core.report_pool(t, id, Some(free), asked);
                if let (false, Some(cpu)) = (slot.local, status.cpu_percent) {
                    // Puppet Server's CPU over its last seconds: an
                    // instantaneous reading, in busy cores
                    let busy = (cpu / 100.0).clamp(0.0, 1.0) * f64::from(slot.spec.cores);
                    let sample = LoadSample {
                        load1: 0.0,
                        runnable: Some(busy),
                    };
                    let _ = core.report_load(t, id, sample);
                }
                if slot.status_read == Some(false) {
                    tracing::info!(
                        "master {}: its status API answers again; its pool gates starts",
                        slot.name
                    );
                }
            }
            Err(why) => {
                let _ = core.report_pool(t, id, None, asked);
                if !slot.local {
                    // its last CPU reading is stale: no load known
                    let unknown = LoadSample {
                        load1: 0.0,
                        runnable: None,
                    };
                    let _ = core.report_load(t, id, unknown);
                }
                if slot.status_read != Some(false) {
                    tracing::warn!(
                        "master {}: its status API cannot be read ({why}); starts there are \
                         gated on max_concurrency{} alone until it can (auth.conf must let \
                         pcq read /status/v1/services: see the README)",
                        slot.name,
                        if slot.local {
                            " and this host's load"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        slot.status_read = Some(read);
        self.metrics.set_master_status_read(&slot.name, read);
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
