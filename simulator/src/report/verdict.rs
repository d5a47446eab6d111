//! The verdict: the paragraph under the recommendation table, one per fleet
//! size. It compares the first policy of the list (pcq's queue) with each
//! other policy: in masters needed, then in figures at the master count
//! recommended for each; and states what the queue's fact filtering and
//! narrowed deploys save.
//!
//! It goes over the whole list, not only the policies the plan swept: a
//! policy left out of the plan meets the SLOs "with none of the counts
//! tried".

use std::fmt::Write as _;

use super::format::human;
use crate::plan::{PlanResult, Point};
use crate::policy::{Policy, Prose};
use crate::scenario::Scenario;

/// The verdict for `nodes` nodes.
pub fn verdict(s: &Scenario, plan: &PlanResult, nodes: u32) -> String {
    let needs: Vec<Needs> = Policy::ALL
        .iter()
        .map(|&p| Needs {
            prose: &p.description().prose,
            masters: plan.recommended(p, nodes),
        })
        .collect();
    let mut out = format!("For {nodes} nodes: ");
    if needs.iter().all(|n| n.masters.is_none()) {
        out.push_str(&nothing_meets(s, plan, nodes));
    } else {
        out.push_str(&masters_needed(&needs));
    }
    out.push_str(&freshness(s, plan, nodes));
    out.push_str(&figures(s, plan, nodes));
    if let Some(f) = plan.filtering.iter().find(|f| f.nodes == nodes) {
        let saved = f.without.mean - f.with.mean;
        let _ = write!(
            out,
            " {:.1}% of fact changes touch a fact some catalog reads; filtering out the rest \
             (pcq's analysis of the code), the queue with {} master(s) compiles {:.0} catalogs an \
             hour, against {:.0} when any fact change recompiles: {:.0} compiles an hour saved \
             ({:.0}%), change-to-applied p95 {} without filtering.",
            f.used_share.mean * 100.0,
            f.masters,
            f.with.mean,
            f.without.mean,
            saved,
            100.0 * saved / f.without.mean.max(1e-9),
            human(f.applied_p95_without.mean),
        );
    }
    if let Some(n) = plan.narrowing.iter().find(|n| n.nodes == nodes) {
        let count = |m: Option<u32>| match m {
            Some(m) => format!("{m} master(s)"),
            None => "more masters than tried".to_string(),
        };
        let saved = n.without.mean - n.with.mean;
        let _ = write!(
            out,
            " Deploys recompile only the nodes whose catalogs reach the changed code \
             (pcq's deploy analysis; the scenario's unbounded deploys move every node): the queue \
             needs {} against {} when every deploy recompiles its whole environment; with {} \
             master(s) it compiles {:.0} catalogs an hour against {:.0}: {:.0} compiles an hour \
             saved ({:.0}%), change-to-applied p95 {} against {}.",
            count(n.masters),
            count(n.masters_without),
            n.at,
            n.with.mean,
            n.without.mean,
            saved,
            100.0 * saved / n.without.mean.max(1e-9),
            human(n.applied_p95_with.mean),
            human(n.applied_p95_without.mean),
        );
    }
    out.push_str("\n\n");
    out
}

/// The queue's and the other policies' points for `nodes`, by master count.
fn points_of(plan: &PlanResult, p: Policy, nodes: u32) -> Vec<&Point> {
    let mut pts: Vec<&Point> = plan
        .points
        .iter()
        .filter(|x| x.policy == p && x.nodes == nodes)
        .collect();
    pts.sort_by_key(|x| x.masters);
    pts
}

/// When a metric no longer moves with the master count: the last three
/// counts tried within 5% of each other.
fn flat(values: &[f64]) -> bool {
    let tail = &values[values.len().saturating_sub(3)..];
    if tail.len() < 3 {
        return false;
    }
    let (lo, hi) = tail
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    hi - lo <= 0.05 * hi.abs().max(1e-9)
}

/// How often nodes apply what the queue compiled, and the scenario key
/// that says it.
fn sync_setting(s: &Scenario) -> String {
    let key = if s.queue.sync_interval.is_some() {
        "queue.sync_interval"
    } else {
        "agents.interval"
    };
    match s.sync_interval() {
        Some(d) => format!("{key} = {}", human(d.as_secs_f64())),
        None => format!("{key} = off"),
    }
}

/// No count meets the SLOs: "try larger counts" only when more masters
/// still help; when the queue's staleness is flat in the master count,
/// the setting that bounds it.
fn nothing_meets(s: &Scenario, plan: &PlanResult, nodes: u32) -> String {
    let queue: Vec<f64> = points_of(plan, Policy::ALL[0], nodes)
        .iter()
        .map(|x| x.stats.staleness_applied_p95.mean)
        .collect();
    let misses_staleness = s
        .slo
        .staleness_applied_p95
        .is_some_and(|t| queue.last().is_some_and(|v| *v > t.as_secs_f64()));
    if misses_staleness && flat(&queue) {
        return format!(
            "no master count tried meets every SLO, and more masters would not help: the \
             queue's change-to-applied p95 stays at {} whatever the count, bound by how often \
             nodes apply their catalog ({}); shorten that interval, or relax the SLO. ",
            human(queue.last().copied().unwrap_or(0.0)),
            sync_setting(s)
        );
    }
    "no master count tried meets every SLO; try larger counts. ".into()
}

/// The trade-off at the recommended counts, and the queue's master count
/// for the same freshness as the other policy (or why there is none).
fn freshness(s: &Scenario, plan: &PlanResult, nodes: u32) -> String {
    let Some((&first, rest)) = Policy::ALL.split_first() else {
        return String::new();
    };
    let Some(&other) = rest.first() else {
        return String::new();
    };
    let (Some(qm), Some(om)) = (
        plan.recommended(first, nodes),
        plan.recommended(other, nodes),
    ) else {
        return String::new();
    };
    let (Some(q), Some(o)) = (plan.point(first, nodes, qm), plan.point(other, nodes, om)) else {
        return String::new();
    };
    let (qp, op) = (&first.description().prose, &other.description().prose);
    let (qs, os) = (
        q.stats.staleness_applied_p95.mean,
        o.stats.staleness_applied_p95.mean,
    );
    if qs <= os {
        return format!(
            "At those counts {} is also at least as fresh: change-to-applied p95 {} against {}. ",
            qp.subject,
            human(qs),
            human(os)
        );
    }
    let mut out = format!(
        "The trade-off: at those counts nodes are staler with {} (change-to-applied p95 {} \
         against {}). ",
        qp.subject,
        human(qs),
        human(os)
    );
    let queue = points_of(plan, first, nodes);
    match queue
        .iter()
        .find(|x| x.stats.staleness_applied_p95.mean <= os)
    {
        Some(x) => {
            let _ = write!(
                out,
                "For the same freshness as {}, {} {} {} master(s). ",
                op.short,
                qp.subject,
                qp.verb("need"),
                x.masters
            );
        }
        None => {
            let values: Vec<f64> = queue
                .iter()
                .map(|x| x.stats.staleness_applied_p95.mean)
                .collect();
            if flat(&values) {
                let _ = write!(
                    out,
                    "No master count gives {} that freshness: its p95 stays at {} whatever the \
                     count, bound by how often nodes apply their catalog ({}); shorten that \
                     interval for fresher nodes. ",
                    qp.subject,
                    human(values.last().copied().unwrap_or(0.0)),
                    sync_setting(s)
                );
            } else {
                let _ = write!(
                    out,
                    "None of the counts tried gives {} that freshness. ",
                    qp.subject
                );
            }
        }
    }
    out
}

/// A policy's words and the master count recommended for it.
struct Needs {
    prose: &'static Prose,
    masters: Option<u32>,
}

/// The first policy's master count against each other policy's, a sentence
/// each (at least one policy meets the SLOs; [`nothing_meets`] says it
/// otherwise).
fn masters_needed(needs: &[Needs]) -> String {
    let Some((first, others)) = needs.split_first() else {
        return String::new();
    };
    others
        .iter()
        .enumerate()
        .map(|(i, other)| {
            let sentence = compare(first, other);
            if i == 0 {
                sentence // follows "For N nodes: "
            } else {
                capitalized(&sentence)
            }
        })
        .collect()
}

/// One sentence: `a`'s master count against `b`'s.
fn compare(a: &Needs, b: &Needs) -> String {
    let (pa, pb) = (a.prose, b.prose);
    match (a.masters, b.masters) {
        (Some(x), Some(y)) if x < y => format!(
            "{} {} {} fewer master(s) than {} ({x} vs {y}). ",
            pa.subject,
            pa.verb("need"),
            y - x,
            pb.subject
        ),
        (Some(x), Some(y)) if x == y => format!("both need {x} master(s). "),
        (Some(x), Some(y)) => format!(
            "{} {} {y} master(s), {} {x}. ",
            pb.subject,
            pb.verb("need"),
            pa.subject
        ),
        (Some(x), None) => format!(
            "{} {} every SLO with {x} master(s); {} {} them with none of the counts tried. ",
            pa.subject,
            pa.verb("meet"),
            pb.subject,
            pb.verb("meet")
        ),
        (None, Some(y)) => format!(
            "{} {} every SLO with {y} master(s); {} with none of the counts tried. ",
            pb.subject,
            pb.verb("meet"),
            pa.subject
        ),
        (None, None) => format!(
            "neither {} nor {} meets every SLO with the counts tried. ",
            pa.subject, pb.subject
        ),
    }
}

/// Each policy at the master count recommended for it (or the scenario's):
/// the first policy's figures, then those of the others the plan swept.
/// Nothing unless the first and at least one other were swept.
fn figures(s: &Scenario, plan: &PlanResult, nodes: u32) -> String {
    let at = |p: Policy| {
        let masters = plan.recommended(p, nodes).unwrap_or(s.masters.count);
        plan.point(p, nodes, masters)
            .map(|point| (&p.description().prose, point))
    };
    let Some((&first, rest)) = Policy::ALL.split_first() else {
        return String::new();
    };
    let Some((prose, a)) = at(first) else {
        return String::new();
    };
    let others: Vec<(&Prose, &Point)> = rest.iter().filter_map(|&p| at(p)).collect();
    if others.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "With {} master(s) {} {} change-to-applied p95 {}, {:.2}% failed agent runs \
         and {:.0} s of node CPU per node per day",
        a.masters,
        prose.subject,
        prose.verb("give"),
        human(a.stats.staleness_applied_p95.mean),
        a.stats.failed_runs.mean * 100.0,
        a.stats.node_cpu_per_node_day.mean,
    );
    for (other, b) in &others {
        let _ = write!(
            out,
            "; {} with {} master(s): {}, {:.2}% and {:.0} s",
            other.short,
            b.masters,
            human(b.stats.staleness_applied_p95.mean),
            b.stats.failed_runs.mean * 100.0,
            b.stats.node_cpu_per_node_day.mean,
        );
    }
    let _ = write!(
        out,
        ". {} {} {:.0} catalogs an hour",
        capitalized(prose.subject),
        prose.verb("compile"),
        a.stats.compiles_per_hour.mean
    );
    for (other, b) in &others {
        let _ = write!(
            out,
            ", {} {:.0}",
            other.short, b.stats.compiles_per_hour.mean
        );
    }
    out.push('.');
    out
}

/// `text` with its first letter in upper case, to open a sentence.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or(String::new(), |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(list: &[(&'static Prose, Option<u32>)]) -> Vec<Needs> {
        list.iter()
            .map(|&(prose, masters)| Needs { prose, masters })
            .collect()
    }

    #[test]
    fn the_queue_against_on_demand_compiles() {
        let queue = &Policy::Queue.description().prose;
        let on_demand = &Policy::OnDemand.description().prose;
        for (q, o, text) in [
            (Some(1), Some(2), "the queue needs 1 fewer master(s) than on-demand compiles (1 vs 2). "),
            (Some(2), Some(2), "both need 2 master(s). "),
            (Some(3), Some(2), "on-demand compiles need 2 master(s), the queue 3. "),
            (Some(1), None, "the queue meets every SLO with 1 master(s); on-demand compiles meet them with none of the counts tried. "),
            (None, Some(2), "on-demand compiles meet every SLO with 2 master(s); the queue with none of the counts tried. "),
        ] {
            assert_eq!(masters_needed(&needs(&[(queue, q), (on_demand, o)])), text);
        }
    }

    #[test]
    fn each_further_policy_gets_a_sentence_of_its_own() {
        const THIRD: Prose = Prose {
            subject: "the third way",
            plural: false,
            short: "the third way",
        };
        let queue = &Policy::Queue.description().prose;
        let on_demand = &Policy::OnDemand.description().prose;
        assert_eq!(
            masters_needed(&needs(&[
                (queue, None),
                (on_demand, Some(2)),
                (&THIRD, None)
            ])),
            "on-demand compiles meet every SLO with 2 master(s); the queue with none of the \
             counts tried. Neither the queue nor the third way meets every SLO with the counts \
             tried. "
        );
    }

    #[test]
    fn a_metric_is_flat_when_the_last_counts_tried_do_not_move_it() {
        assert!(flat(&[9000.0, 3400.0, 3390.0, 3385.0, 3380.0]));
        assert!(!flat(&[9000.0, 6000.0, 4000.0]));
        assert!(!flat(&[3400.0, 3390.0]), "too few counts to tell");
    }
}
