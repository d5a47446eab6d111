//! The capacity report `pcq-sim plan` writes: `report.md` (recommendation
//! first), SVG plots, `points.csv` (every point with its intervals) and
//! `runs.csv` (every replication).
//!
//! The output depends only on the scenario and its seeds, never on the
//! machine or the clock, so CI can regenerate it and `git diff` shows what a
//! change to the scheduling core did to the advice. Every part goes over
//! the policies the plan swept, in the order of the list in `policy`.

mod csv_files;
mod format;
mod markdown;
mod plots;
mod verdict;

use std::path::Path;

use crate::plan::PlanResult;
use crate::scenario::Scenario;

pub use format::human;

/// Writes every file of the report into `dir` (created if missing).
pub fn write(dir: &Path, scenario: &Scenario, plan: &PlanResult) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let plots = plots::write_plots(dir, scenario, plan);
    std::fs::write(
        dir.join("report.md"),
        markdown::markdown(scenario, plan, &plots),
    )?;
    csv_files::write_points_csv(&dir.join("points.csv"), plan)?;
    csv_files::write_runs_csv(&dir.join("runs.csv"), plan)?;
    Ok(())
}
