//! Prometheus metrics (`GET /metrics`, text format).
//!
//! Queue gauges (depth and oldest age per lane, in flight, the reason the
//! gate holds starts back, cycle time) are refreshed from the core at each
//! scrape; counters and the compile-duration histogram are updated as
//! things happen.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::RwLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::core::{Blocked, Lane, MasterId, Stats};

/// Labels `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// What happened.
    pub result: String,
}

/// Labels `lane`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    /// urgent, deploy, cycle.
    pub lane: String,
}

/// Labels `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// Labels `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// changed, unchanged, failed, timed_out, interrupted, deferred.
    pub outcome: String,
}

/// Labels `channel` and `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifyLabel {
    /// command or webhook.
    pub channel: String,
    /// sent or failed.
    pub result: String,
}

/// Labels `environment`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnvironmentLabel {
    /// A Puppet environment.
    pub environment: String,
}

/// Labels `master`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MasterLabel {
    /// The master's name.
    pub master: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// Every metric pcq exports.
pub struct Metrics {
    registry: Registry,
    nodes: Gauge,
    lane_depth: Family<LaneLabel, Gauge>,
    lane_oldest: Family<LaneLabel, FGauge>,
    in_flight: Gauge,
    blocked: Family<ReasonLabel, Gauge>,
    cycle_time: FGauge,
    waiting_for_facts: Gauge,
    /// Compiles started, by reason.
    pub starts: Family<ReasonLabel, Counter>,
    /// Compile durations, by outcome.
    pub compile_seconds: Family<OutcomeLabel, Histogram>,
    /// Catalogs compiled: changed or unchanged.
    pub catalogs: Family<ResultLabel, Counter>,
    /// Notifications, by channel and result.
    pub notifications: Family<NotifyLabel, Counter>,
    /// Facts uploads: changed, unchanged.
    pub facts_uploads: Family<ResultLabel, Counter>,
    /// CA listings by result: plausible, implausible (absences ignored).
    pub ca_listings: Family<ResultLabel, Counter>,
    /// Masters reachable (1) or not (0).
    pub master_up: Family<MasterLabel, Gauge>,
    /// Each master's JRuby pool (read at start) and pcq's share of it.
    pub master_jrubies: Family<MasterLabel, Gauge>,
    /// Compiles pcq runs at once on each master at most.
    pub master_max_concurrency: Family<MasterLabel, Gauge>,
    master_in_flight: Family<MasterLabel, Gauge>,
    master_load: Family<MasterLabel, FGauge>,
    master_jrubies_free: Family<MasterLabel, Gauge>,
    master_status_read: Family<MasterLabel, Gauge>,
    /// Master names by core id, for the per-master gauges of the core's
    /// snapshot.
    master_names: RwLock<HashMap<MasterId, String>>,
    /// Analyses by result: ok, failed.
    pub analyses: Family<ResultLabel, Counter>,
    analysis_failed: Family<EnvironmentLabel, Gauge>,
    code_unannounced: Family<EnvironmentLabel, Gauge>,
    analysis_running: Family<EnvironmentLabel, FGauge>,
    /// API connections open.
    pub connections: Gauge,
    /// API connections closed, by reason.
    pub connections_closed: Family<ResultLabel, Counter>,
    /// Times the accept loop found `api.max_connections` open.
    pub connection_cap_reached: Counter,
    /// Failed accepts (no file descriptor left, say).
    pub accept_errors: Counter,
    /// CRL refreshes, by result.
    pub crl_refreshes: Family<ResultLabel, Counter>,
    /// Seconds since the CRL in force was last confirmed current.
    pub crl_age: FGauge,
    /// Seconds until the CRL in force passes its next update.
    pub crl_expires_in: FGauge,
    /// Deploys decided: narrowed, every_node.
    pub deploys: Family<ResultLabel, Counter>,
    /// Nodes per deploy: moved, spared.
    pub deploy_nodes: Family<ResultLabel, Counter>,
    /// The epoch this pcq leads in (0: SQLite, alone on its state).
    pub leader_epoch: Gauge,
    /// When this pcq took the lead (Unix seconds).
    pub leader_since: FGauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pcq");
        let nodes = Gauge::default();
        registry.register("nodes", "Nodes known", nodes.clone());
        let lane_depth = Family::<LaneLabel, Gauge>::default();
        registry.register("lane_depth", "Nodes queued per lane", lane_depth.clone());
        let lane_oldest = Family::<LaneLabel, FGauge>::default();
        registry.register(
            "lane_oldest_age_seconds",
            "How long the oldest ready job of each lane has waited",
            lane_oldest.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("in_flight", "Compiles running", in_flight.clone());
        let blocked = Family::<ReasonLabel, Gauge>::default();
        registry.register(
            "gate_blocked",
            "1 for the reason the last poll started nothing (empty, paced, down, concurrency, load, rate)",
            blocked.clone(),
        );
        let cycle_time = FGauge::default();
        registry.register(
            "cycle_time_seconds",
            "Time to compile every node once at the recent finish rate (NaN until compiles have finished)",
            cycle_time.clone(),
        );
        let starts = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "compiles_started",
            "Compiles started, by reason",
            starts.clone(),
        );
        let compile_seconds = Family::<OutcomeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.1, 2.0, 14))
        });
        registry.register(
            "compile_duration_seconds",
            "Compile durations, by outcome",
            compile_seconds.clone(),
        );
        let catalogs = Family::<ResultLabel, Counter>::default();
        registry.register(
            "catalogs",
            "Catalogs: result changed, unchanged, unstored (the file could not be written: the old catalog stays and the next compile tries again), lost (found at start not to hold the catalog its recorded hash names, nor another whole catalog of the node: forgotten, compiled again), or adopted (found at start to hold another whole catalog of the node, after a crash between file and store: kept under its own hash, compiled again)",
            catalogs.clone(),
        );
        let notifications = Family::<NotifyLabel, Counter>::default();
        registry.register(
            "notifications",
            "Notifications of changed catalogs",
            notifications.clone(),
        );
        let facts_uploads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "facts_uploads",
            "Facts uploads by result: changed (a fact the catalog reads changed: bumped), unused (only facts the catalog does not read changed), unchanged, handed_in (taken by a standby for the leader)",
            facts_uploads.clone(),
        );
        let ca_listings = Family::<ResultLabel, Counter>::default();
        registry.register(
            "ca_listings",
            "CA certificate listings by result: plausible, implausible (empty, or lacking more than ca.max_removal_share of the known nodes: nobody removed), failed (no listing: the CA did not answer, or TLS failed; the log says why)",
            ca_listings.clone(),
        );
        let master_up = Family::<MasterLabel, Gauge>::default();
        registry.register(
            "master_up",
            "1 while a master is reachable",
            master_up.clone(),
        );
        let master_jrubies = Family::<MasterLabel, Gauge>::default();
        registry.register(
            "master_jrubies",
            "A master's JRuby pool size (max-active-instances), read from its status API at start; absent when it could not be read",
            master_jrubies.clone(),
        );
        let master_max_concurrency = Family::<MasterLabel, Gauge>::default();
        registry.register(
            "master_max_concurrency",
            "Compiles pcq runs at once on a master at most: the JRubies it leaves to file requests are the pool less this",
            master_max_concurrency.clone(),
        );
        let master_in_flight = Family::<MasterLabel, Gauge>::default();
        registry.register(
            "master_in_flight",
            "Compiles pcq runs on a master now (its JRubies in pcq's use)",
            master_in_flight.clone(),
        );
        let master_load = Family::<MasterLabel, FGauge>::default();
        registry.register(
            "master_load_per_core",
            "The load gate's estimate of a master's load per core (the one-minute load average, corrected for starts it does not show yet); 0 where no load is read",
            master_load.clone(),
        );
        let master_jrubies_free = Family::<MasterLabel, Gauge>::default();
        registry.register(
            "master_jrubies_free",
            "JRubies free for pcq on a master by the pool gate's count: its status API's last reading (free instances less reserve_for_files), less pcq's starts and plus its ends since; absent where the pool is not read",
            master_jrubies_free.clone(),
        );
        let master_status_read = Family::<MasterLabel, Gauge>::default();
        registry.register(
            "master_status_read",
            "1 while a master's status API answers pcq's polls (its pool and CPU feed the gate), 0 while it does not (the gate falls back to concurrency and the local load)",
            master_status_read.clone(),
        );
        let analyses = Family::<ResultLabel, Counter>::default();
        registry.register(
            "analyses",
            "Analyses of an environment's code by result: ok, failed (its nodes recompile on every fact change until an analysis succeeds; the log says why)",
            analyses.clone(),
        );
        let analysis_failed = Family::<EnvironmentLabel, Gauge>::default();
        registry.register(
            "analysis_failed",
            "1 while the last analysis of an environment failed: its nodes recompile on every fact change and its deploys move every node",
            analysis_failed.clone(),
        );
        let code_unannounced = Family::<EnvironmentLabel, Gauge>::default();
        registry.register(
            "code_unannounced",
            "1 from when an analysis finds an environment's code changed since its last deploy with no deploy announced (a deploy hook missing: catalogs may lag the code) until the next deploy (which moves every node)",
            code_unannounced.clone(),
        );
        let analysis_running = Family::<EnvironmentLabel, FGauge>::default();
        registry.register(
            "analysis_running_seconds",
            "How long the analysis under way in an environment has run (0: none); meanwhile its nodes have no answer and its deploys wait",
            analysis_running.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "api_connections",
            "API connections open",
            connections.clone(),
        );
        let connections_closed = Family::<ResultLabel, Counter>::default();
        registry.register(
            "api_connections_closed",
            "API connections closed, by result: client (the client closed), client_timeout (silent for api.client_timeout), max_age, crl_changed, handshake_refused, handshake_timeout",
            connections_closed.clone(),
        );
        let connection_cap_reached = Counter::default();
        registry.register(
            "api_connection_cap_reached",
            "Times the API found api.max_connections open and stopped accepting until one closed",
            connection_cap_reached.clone(),
        );
        let accept_errors = Counter::default();
        registry.register(
            "api_accept_errors",
            "Failed accepts of API connections (no file descriptor left, say); each pauses accepting",
            accept_errors.clone(),
        );
        let crl_refreshes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "crl_refreshes",
            "CRL refreshes by result: loaded (a newer valid CRL is in force), unchanged, failed (no answer), invalid (not a CRL signed by Puppet's CA), older (older than the CRL in force); only loaded and unchanged confirm the CRL current",
            crl_refreshes.clone(),
        );
        let crl_age = FGauge::default();
        registry.register(
            "crl_age_seconds",
            "Seconds since the CRL in force was last confirmed current by a refresh",
            crl_age.clone(),
        );
        let crl_expires_in = FGauge::default();
        registry.register(
            "crl_expires_in_seconds",
            "Seconds until the CRL in force passes its next update (negative: expired, every client refused)",
            crl_expires_in.clone(),
        );
        let deploys = Family::<ResultLabel, Counter>::default();
        registry.register(
            "deploys",
            "Deploys by result: narrowed (only the nodes whose catalogs reach the changed code move), every_node (the change could not be bounded, the analysis failed, or no earlier deploy left a snapshot of the code; the log and pcq deploy say why)",
            deploys.clone(),
        );
        let deploy_nodes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "deploy_nodes",
            "Nodes deploys decided on, by result: moved (to recompile), spared (their catalogs do not reach the changed code)",
            deploy_nodes.clone(),
        );
        let leader_epoch = Gauge::default();
        registry.register(
            "leader_epoch",
            "The epoch this pcq leads the queue in: raised by each new leader on a shared (PostgreSQL) store; 0 with SQLite",
            leader_epoch.clone(),
        );
        let leader_since = FGauge::default();
        registry.register(
            "leader_since_seconds",
            "When this pcq took the lead (Unix time)",
            leader_since.clone(),
        );
        let waiting_for_facts = Gauge::default();
        registry.register(
            "nodes_waiting_for_facts",
            "Nodes the CA signed that have not uploaded facts yet (not scheduled until they do)",
            waiting_for_facts.clone(),
        );
        let metrics = Metrics {
            registry,
            nodes,
            lane_depth,
            lane_oldest,
            in_flight,
            blocked,
            cycle_time,
            waiting_for_facts,
            starts,
            compile_seconds,
            catalogs,
            notifications,
            facts_uploads,
            ca_listings,
            master_up,
            master_jrubies,
            master_max_concurrency,
            master_in_flight,
            master_load,
            master_jrubies_free,
            master_status_read,
            master_names: RwLock::new(HashMap::new()),
            analyses,
            analysis_failed,
            code_unannounced,
            analysis_running,
            connections,
            connections_closed,
            connection_cap_reached,
            accept_errors,
            crl_refreshes,
            crl_age,
            crl_expires_in,
            deploys,
            deploy_nodes,
            leader_epoch,
            leader_since,
        };
        metrics.every_series_from_the_start();
        metrics
    }

    /// Creates every known label set at zero, so dashboards and `rate()`
    /// see each series from the first scrape, and none appears later;
    /// gauges not known yet say NaN.
    fn every_series_from_the_start(&self) {
        use crate::core::{Outcome, Reason};
        for r in Reason::ALL {
            drop(self.starts.get_or_create(&ReasonLabel {
                reason: r.name().into(),
            }));
        }
        for o in Outcome::ALL {
            drop(self.compile_seconds.get_or_create(&OutcomeLabel {
                outcome: o.name().into(),
            }));
        }
        let results: [(&Family<ResultLabel, Counter>, &[&str]); 8] = [
            (
                &self.catalogs,
                &["changed", "unchanged", "unstored", "lost", "adopted"],
            ),
            (
                &self.facts_uploads,
                &["changed", "unused", "unchanged", "rejected", "unavailable"],
            ),
            (&self.analyses, &["ok", "failed"]),
            (&self.ca_listings, &["plausible", "implausible", "failed"]),
            (
                &self.connections_closed,
                &[
                    "client",
                    "client_timeout",
                    "max_age",
                    "crl_changed",
                    "handshake_refused",
                    "handshake_timeout",
                ],
            ),
            (
                &self.crl_refreshes,
                &["loaded", "unchanged", "failed", "invalid", "older"],
            ),
            (&self.deploys, &["narrowed", "every_node"]),
            (&self.deploy_nodes, &["moved", "spared"]),
        ];
        for (family, labels) in results {
            for l in labels {
                drop(family.get_or_create(&ResultLabel {
                    result: (*l).into(),
                }));
            }
        }
        for channel in ["command", "webhook"] {
            for result in ["sent", "failed"] {
                drop(self.notifications.get_or_create(&NotifyLabel {
                    channel: channel.into(),
                    result: result.into(),
                }));
            }
        }
        self.cycle_time.set(f64::NAN);
        self.crl_age.set(f64::NAN);
        self.crl_expires_in.set(f64::NAN);
    }

    /// Nodes waiting for their first facts.
    pub fn set_waiting_for_facts(&self, n: usize) {
        self.waiting_for_facts.set(n as i64);
    }

    /// Copies the core's snapshot into the gauges.
    pub fn update(&self, stats: &Stats) {
        self.nodes.set(stats.nodes as i64);
        for lane in Lane::ALL {
            let label = LaneLabel {
                lane: lane.name().into(),
            };
            let s = stats.lane(lane);
            self.lane_depth.get_or_create(&label).set(s.depth as i64);
            self.lane_oldest
                .get_or_create(&label)
                .set(s.oldest_age.as_secs_f64());
        }
        self.in_flight.set(stats.in_flight as i64);
        for b in Blocked::ALL {
            self.blocked
                .get_or_create(&ReasonLabel {
                    reason: b.name().into(),
                })
                .set(i64::from(b == stats.blocked));
        }
        self.cycle_time
            .set(stats.cycle_time.map_or(f64::NAN, |d| d.as_secs_f64()));
        let Ok(names) = self.master_names.read() else {
            return;
        };
        for m in &stats.masters {
            let Some(name) = names.get(&m.id) else {
                continue;
            };
            let label = MasterLabel {
                master: name.clone(),
            };
            self.master_in_flight
                .get_or_create(&label)
                .set(i64::from(m.in_flight));
            self.master_load.get_or_create(&label).set(m.load_per_core);
            match m.pool_free {
                Some(free) => {
                    self.master_jrubies_free
                        .get_or_create(&label)
                        .set(i64::from(free));
                }
                None => {
                    self.master_jrubies_free.remove(&label);
                }
            }
        }
    }

    /// Whether a master's status API answered the last poll.
    pub fn set_master_status_read(&self, master: &str, read: bool) {
        self.master_status_read
            .get_or_create(&MasterLabel {
                master: master.to_string(),
            })
            .set(i64::from(read));
    }

    /// Every environment's analysis: whether the last one that ended
    /// failed (a retry under way does not clear it), and how long the one
    /// under way has run.
    pub fn set_analyses(&self, environments: &[(String, AnalysisState)]) {
        for (environment, state) in environments {
            let label = EnvironmentLabel {
                environment: environment.clone(),
            };
            self.analysis_failed
                .get_or_create(&label)
                .set(i64::from(state.failed));
            self.analysis_running
                .get_or_create(&label)
                .set(state.running.map_or(0.0, |d| d.as_secs_f64()));
        }
    }

    /// Says whether `environment`'s code changed with no deploy announced.
    pub fn set_code_unannounced(&self, environment: &str, unannounced: bool) {
        self.code_unannounced
            .get_or_create(&EnvironmentLabel {
                environment: environment.to_string(),
            })
            .set(i64::from(unannounced));
    }

    /// The text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }

    /// Counts a compile start by its reason.
    pub fn started(&self, reason: &str) {
        self.starts
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Records how long a compile took, by its outcome.
    pub fn compiled(&self, outcome: &str, seconds: f64) {
        self.compile_seconds
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .observe(seconds);
    }

    /// Says whether a master answers (`pcq_master_up`).
    pub fn set_master_up(&self, master: &str, up: bool) {
        self.master_up
            .get_or_create(&MasterLabel {
                master: master.to_string(),
            })
            .set(i64::from(up));
    }

    /// A master's id, concurrency in force and pool, when known.
    pub fn set_master_pool(
        &self,
        id: MasterId,
        master: &str,
        max_concurrency: u32,
        jrubies: Option<u32>,
    ) {
        if let Ok(mut names) = self.master_names.write() {
            names.insert(id, master.to_string());
        }
        let label = MasterLabel {
            master: master.to_string(),
        };
        self.master_in_flight.get_or_create(&label).set(0);
        self.master_load.get_or_create(&label).set(0.0);
        self.master_max_concurrency
            .get_or_create(&label)
            .set(i64::from(max_concurrency));
        if let Some(j) = jrubies {
            self.master_jrubies.get_or_create(&label).set(i64::from(j));
        }
    }

    /// Counts one of a one-label counter family.
    pub fn count(family: &Family<ResultLabel, Counter>, label: &str) {
        Metrics::count_by(family, label, 1);
    }

    /// Adds `n` to the counter of `label`.
    pub fn count_by(family: &Family<ResultLabel, Counter>, label: &str, n: u64) {
        family
            .get_or_create(&ResultLabel {
                result: label.into(),
            })
            .inc_by(n);
    }
}

/// Where an environment's analysis stands, for [`Metrics::set_analyses`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnalysisState {
    /// The last analysis that ended failed.
    pub failed: bool,
    /// One has run this long.
    pub running: Option<std::time::Duration>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_there_from_the_first_scrape() {
        let text = Metrics::new().encode();
        for series in [
            "pcq_compile_duration_seconds_count{outcome=\"failed\"} 0",
            "pcq_compile_duration_seconds_count{outcome=\"changed\"} 0",
            "pcq_catalogs_total{result=\"changed\"} 0",
            "pcq_facts_uploads_total{result=\"unchanged\"} 0",
            "pcq_compiles_started_total{reason=\"facts\"} 0",
            "pcq_ca_listings_total{result=\"implausible\"} 0",
            "pcq_notifications_total{channel=\"webhook\",result=\"failed\"} 0",
            "pcq_crl_refreshes_total{result=\"invalid\"} 0",
            "pcq_api_connections_closed_total{result=\"client_timeout\"} 0",
            "pcq_nodes_waiting_for_facts 0",
            "pcq_facts_uploads_total{result=\"rejected\"} 0",
            "pcq_facts_uploads_total{result=\"unavailable\"} 0",
            "pcq_analyses_total{result=\"failed\"} 0",
            // unknown, not zero
            "pcq_cycle_time_seconds NaN",
            "pcq_crl_age_seconds NaN",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn per_master_and_per_environment_gauges() {
        let m = Metrics::new();
        m.set_master_pool(MasterId(0), "puppet1", 2, Some(3));
        let mut stats = crate::core::Core::new(crate::core::CoreConfig::default(), 1)
            .expect("core")
            .stats(crate::core::Time::ZERO);
        stats.masters = vec![crate::core::MasterStats {
            id: MasterId(0),
            up: true,
            in_flight: 2,
            max_concurrency: 2,
            cores: 4,
            load_per_core: 0.75,
            pool_free: Some(1),
        }];
        m.update(&stats);
        m.set_analyses(&[
            (
                "production".into(),
                AnalysisState {
                    failed: true,
                    running: Some(std::time::Duration::from_secs(90)),
                },
            ),
            (
                "staging".into(),
                AnalysisState {
                    failed: false,
                    running: None,
                },
            ),
        ]);
        m.set_code_unannounced("staging", true);
        let text = m.encode();
        for series in [
            "pcq_master_in_flight{master=\"puppet1\"} 2",
            "pcq_master_load_per_core{master=\"puppet1\"} 0.75",
            "pcq_master_jrubies{master=\"puppet1\"} 3",
            "pcq_master_jrubies_free{master=\"puppet1\"} 1",
            "pcq_analysis_failed{environment=\"production\"} 1",
            "pcq_analysis_failed{environment=\"staging\"} 0",
            "pcq_analysis_running_seconds{environment=\"production\"} 90.0",
            "pcq_analysis_running_seconds{environment=\"staging\"} 0.0",
            "pcq_code_unannounced{environment=\"staging\"} 1",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }
}
