//! What the driver is given besides the core and the stored state: the
//! store, the catalog files, the notifier and metrics, the intake rules,
//! and what catalogs depend on.

use std::collections::HashSet;
use std::sync::Arc;

use crate::daemon::config::Exports as ExportsConfig;
use crate::daemon::dependencies::Dependencies;
use crate::daemon::last_good::LastGood;
use crate::daemon::metrics::Metrics;
use crate::daemon::notify::Notifier;
use crate::daemon::store::{Lease, StoreHandle};

use super::intake::Absence;

/// What the driver needs besides the core.
pub struct Parts {
    /// The store.
    pub store: StoreHandle,
    /// The last good catalogs.
    pub catalogs: LastGood,
    /// Notifications.
    pub notifier: Notifier,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Nodes join when their facts arrive (no CA polling).
    pub join_on_facts: bool,
    /// Certnames never scheduled.
    pub exclude: HashSet<String>,
    /// When a node the CA stops listing may leave.
    pub absence: Absence,
    /// Environment of nodes that never gave one.
    pub default_environment: String,
    /// What catalogs depend on.
    pub deps: Arc<Dependencies>,
    /// Exported resources.
    pub exports: ExportsConfig,
    /// The leader's lease, with a shared store: no compile starts while
    /// it does not hold (`None`: this daemon alone, always leading).
    pub lease: Option<Arc<Lease>>,
    /// This pcq as the leader of a shared store (`None`: SQLite, alone).
    pub leader: Option<super::view::LeaderView>,
}
