//! A deploy's way from `pcq deploy` to the nodes it moves.
//!
//! A deploy waits for an analysis of the new code that started after it
//! (one already running may have read the code before the deploy wrote
//! it), then [`decide`]s: the new code's snapshot is diffed against the
//! environment's baseline, and only the nodes whose catalogs reach what
//! changed move to the deploy lane. A change that cannot be bounded, a
//! failed analysis or a missing baseline moves every node, as a deploy did
//! before pcq knew better; a node with no analysed catalog always moves.
//! Plain decisions here; the driver does the moving, the metrics and the
//! answer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::core::NodeId;
use crate::daemon::analyze::{Analysis, NodeDeps, Snapshot};

use super::command::Reply;
use super::view::DeployReport;

/// Changed files listed in a report, at most.
const FILES_SHOWN: usize = 50;

/// A deploy waiting for its analysis.
struct Waiting {
    reply: Reply<DeployReport>,
    /// An analysis that started after the deploy is running.
    covered: bool,
}

/// Deploys waiting for their analysis, per environment.
#[derive(Default)]
pub struct Deploys {
    waiting: HashMap<String, Vec<Waiting>>,
}

impl Deploys {
    /// A deploy of `environment` waits; `analysis_started`: an analysis
    /// began for it (false: one was already running, and it waits for the
    /// next).
    pub fn wait(&mut self, environment: &str, reply: Reply<DeployReport>, analysis_started: bool) {
        self.waiting
            .entry(environment.to_string())
            .or_default()
            .push(Waiting {
                reply,
                covered: analysis_started,
            });
    }

    /// An analysis of `environment` ended: the answers of the deploys it
    /// decides, and whether others wait for one more analysis (the caller
    /// starts it, and calls [`Deploys::covered`]).
    pub fn ended(&mut self, environment: &str) -> (Vec<Reply<DeployReport>>, bool) {
        let Some(list) = self.waiting.remove(environment) else {
            return (Vec::new(), false);
        };
        let (done, rest): (Vec<Waiting>, Vec<Waiting>) = list.into_iter().partition(|w| w.covered);
        let more = !rest.is_empty();
        if more {
            self.waiting.insert(environment.to_string(), rest);
        }
        (done.into_iter().map(|w| w.reply).collect(), more)
    }

    /// An analysis of `environment` started: every waiting deploy is
    /// covered by it.
    pub fn covered(&mut self, environment: &str) {
        for w in self.waiting.get_mut(environment).into_iter().flatten() {
            w.covered = true;
        }
    }
}

/// What a deploy moves.
pub struct Decision {
    /// The nodes to move.
    pub moves: HashSet<NodeId>,
    /// The report (`nodes` is filled in by the caller).
    pub report: DeployReport,
    /// The environment's new baseline.
    pub baseline: Option<Arc<Snapshot>>,
    /// Whether the change could not be bounded; None when no change was
    /// known to bound (the first deploy pcq sees, a failed analysis).
    pub unbounded: Option<bool>,
}

/// A node of the environment, as a deploy sees it.
pub struct Member {
    /// The node.
    pub id: NodeId,
    /// What its last catalog depends on (None: not known).
    pub deps: Option<Arc<NodeDeps>>,
    /// A compile of it is running: it may have read the code before or
    /// after the deploy wrote it, and its answer will be read with the new
    /// analysis, so it compiles again.
    pub compiling: bool,
}

/// Decides a deploy of `environment` whose new code was analysed as
/// `analysis` (Err: why not), against `baseline`, for its `members`.
pub fn decide(
    environment: &str,
    baseline: Option<&Snapshot>,
    analysis: Result<&Analysis, &str>,
    members: &[Member],
) -> Decision {
    let new = match analysis {
        Ok(a) => a
            .snapshot
            .clone()
            .ok_or_else(|| "the analysis could not take a snapshot of the code".to_string()),
        Err(e) => Err(format!("the analysis of the new code failed: {e}")),
    };
    let change = match (&new, baseline) {
        (Err(e), _) => Err(e.clone()),
        (Ok(_), None) => Err(format!(
            "no snapshot of the code {environment}'s catalogs were built from (the first deploy pcq sees)"
        )),
        (Ok(new), Some(old)) => Ok(old.diff(new)),
    };
    let mut moves = HashSet::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for m in members {
        let why = match (&change, &m.deps) {
            (Err(e), _) => Some(e.clone()),
            (Ok(c), _) if m.compiling && !c.is_empty() => {
                Some("compiling while the code changed".to_string())
            }
            (Ok(_), None) => Some("no analysed catalog".to_string()),
            (Ok(c), Some(d)) => d.code.moved_by(c),
        };
        if let Some(why) = why {
            moves.insert(m.id);
            *reasons.entry(why).or_default() += 1;
        }
    }
    let mut reasons: Vec<(String, usize)> = reasons.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let (changed_files, changed) = match &change {
        Ok(c) => (
            c.files.len(),
            c.files
                .iter()
                .take(FILES_SHOWN)
                .map(|f| format!("{} {}", f.status, f.path))
                .collect(),
        ),
        Err(_) => (0, Vec::new()),
    };
    let narrowed = match &change {
        Ok(c) => c.unbounded.is_empty(),
        Err(_) => false,
    };
    Decision {
        report: DeployReport {
            environment: environment.to_string(),
            nodes: 0,
            affected: moves.len(),
            members: members.len(),
            narrowed,
            reasons,
            changed_files,
            changed,
        },
        moves,
        baseline: new.ok(),
        unbounded: change.as_ref().ok().map(|c| !c.unbounded.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::analyze::snapshot::FileEntry;
    use crate::daemon::analyze::Reach;

    fn snapshot(sha: &str) -> Snapshot {
        let mut s = Snapshot::default();
        s.files.insert(
            "/m/ntp/templates/ntp.conf.erb".into(),
            FileEntry {
                sha256: sha.into(),
                gives: vec!["template:ntp/ntp.conf.erb".into()],
            },
        );
        s
    }

    fn analysis(sha: &str) -> Analysis {
        Analysis::from_json(b"{\"classes\":{},\"defines\":{},\"templates\":{},\"functions\":{},\"global\":{},\"collectors\":[],\"errors\":[],\"files\":0}")
            .expect("analysis")
            .with_snapshot(snapshot(sha))
    }

    fn node(names: &[&str]) -> Option<Arc<NodeDeps>> {
        Some(Arc::new(NodeDeps {
            code: Arc::new(Reach {
                names: names.iter().map(|n| n.to_string()).collect(),
                ..Reach::default()
            }),
            ..NodeDeps::default()
        }))
    }

    fn id(n: u32) -> NodeId {
        NodeId(n)
    }

    fn member(n: u32, deps: Option<Arc<NodeDeps>>) -> Member {
        Member {
            id: id(n),
            deps,
            compiling: false,
        }
    }

    #[test]
    fn only_nodes_reaching_the_change_move() {
        let mut members = vec![
            member(0, node(&["template:ntp/ntp.conf.erb"])),
            member(1, node(&["class:ssh"])),
            member(2, None),
        ];
        let old = snapshot("a");
        let d = decide("production", Some(&old), Ok(&analysis("b")), &members);
        assert!(d.report.narrowed);
        assert_eq!(d.moves, [id(0), id(2)].into());
        assert_eq!(d.report.affected, 2);
        assert_eq!(d.report.changed_files, 1);
        assert!(d.report.changed[0].starts_with("changed /m/ntp"));
        assert!(d
            .report
            .reasons
            .iter()
            .any(|(r, n)| r.contains("ntp.conf.erb") && *n == 1));
        assert!(d.baseline.is_some());
        let same = decide("production", Some(&old), Ok(&analysis("a")), &members);
        assert_eq!(
            same.moves,
            [id(2)].into(),
            "nothing changed: only the unknown node"
        );
        // a compile running when the code changed may have read either
        members[1].compiling = true;
        let d = decide("production", Some(&old), Ok(&analysis("b")), &members);
        assert_eq!(d.moves, [id(0), id(1), id(2)].into());
        let same = decide("production", Some(&old), Ok(&analysis("a")), &members);
        assert_eq!(
            same.moves,
            [id(2)].into(),
            "nothing changed: it compiles on"
        );
    }

    #[test]
    fn without_a_baseline_or_an_analysis_every_node_moves() {
        let members = vec![member(0, node(&["class:ssh"])), member(1, node(&[]))];
        let first = decide("production", None, Ok(&analysis("a")), &members);
        assert!(!first.report.narrowed);
        assert_eq!(first.moves.len(), 2);
        assert!(first.report.reasons[0].0.contains("first deploy"));
        assert!(first.baseline.is_some(), "it becomes the baseline");
        let failed = decide(
            "production",
            Some(&snapshot("a")),
            Err("ruby died"),
            &members,
        );
        assert_eq!(failed.moves.len(), 2);
        assert!(failed.baseline.is_none());
        assert!(failed.report.reasons[0].0.contains("ruby died"));
    }

    #[test]
    fn a_deploy_waits_for_an_analysis_that_started_after_it() {
        let mut d = Deploys::default();
        let (tx1, _rx1) = tokio::sync::oneshot::channel();
        let (tx2, _rx2) = tokio::sync::oneshot::channel();
        d.wait("production", tx1, true);
        d.wait("production", tx2, false);
        let (done, more) = d.ended("production");
        assert_eq!(done.len(), 1);
        assert!(more, "the second waits for the next analysis");
        d.covered("production");
        let (done, more) = d.ended("production");
        assert_eq!(done.len(), 1);
        assert!(!more);
        assert_eq!(d.ended("production").0.len(), 0);
    }
}
