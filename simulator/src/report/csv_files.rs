//! The report's CSV files: `points.csv`, every point (policy, nodes,
//! masters) with its means and 95% half-widths, and `runs.csv`, every
//! replication.

use std::path::Path;

use crate::plan::PlanResult;

/// Writes `points.csv`.
pub fn write_points_csv(path: &Path, plan: &PlanResult) -> std::io::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    let metrics = [
        "staleness_applied_p50",
        "staleness_applied_p95",
        "staleness_applied_p99",
        "staleness_compiled_p95",
        "queue_wait_p95",
        "failed_runs",
        "oldest_age_max",
        "utilization",
        "compiles_per_hour",
        "wasted",
        "node_cpu_per_node_day",
        "file_wait_p95",
    ];
    let mut header = vec![
        "policy".to_string(),
        "nodes".into(),
        "masters".into(),
        "replications".into(),
        "meets_slos".into(),
    ];
    for m in metrics {
        header.push(format!("{m}_mean"));
        header.push(format!("{m}_ci95"));
    }
    w.write_record(&header)?;
    for p in &plan.points {
        let st = &p.stats;
        let values = [
            st.staleness_applied_p50,
            st.staleness_applied_p95,
            st.staleness_applied_p99,
            st.staleness_compiled_p95,
            st.queue_wait_p95,
            st.failed_runs,
            st.oldest_age_max,
            st.utilization,
            st.compiles_per_hour,
            st.wasted,
            st.node_cpu_per_node_day,
            st.file_wait_p95,
        ];
        let mut row = vec![
            p.policy.name().to_string(),
            p.nodes.to_string(),
            p.masters.to_string(),
            p.runs.len().to_string(),
            p.meets_all().to_string(),
        ];
        for v in values {
            row.push(format!("{:.6}", v.mean));
            row.push(format!("{:.6}", v.half_width));
        }
        w.write_record(&row)?;
    }
    w.flush()
}

/// Writes `runs.csv`.
pub fn write_runs_csv(path: &Path, plan: &PlanResult) -> std::io::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record([
        "policy",
        "nodes",
        "masters",
        "seed",
        "staleness_applied_p95",
        "staleness_compiled_p95",
        "queue_wait_p95",
        "failed_runs",
        "utilization",
        "compiles",
        "wasted_ratio",
        "node_cpu_per_node_day",
        "oldest_age_max",
        "events",
    ])?;
    for p in &plan.points {
        for r in &p.runs {
            w.write_record([
                r.policy.name().to_string(),
                r.nodes.to_string(),
                r.masters.to_string(),
                r.seed.to_string(),
                format!("{:.3}", r.staleness_applied.p95),
                format!("{:.3}", r.staleness_compiled.p95),
                format!("{:.3}", r.queue_wait.p95),
                format!("{:.6}", r.failed_runs.ratio),
                format!("{:.6}", r.utilization),
                r.compiles.total.to_string(),
                format!("{:.6}", r.compiles.wasted_ratio),
                format!("{:.3}", r.node_cpu_per_node_day),
                format!("{:.3}", r.oldest_age.max),
                r.events.to_string(),
            ])?;
        }
    }
    w.flush()
}
