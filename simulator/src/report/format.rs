//! How numbers read in the report: durations in the unit that reads best,
//! estimates with their 95% half-widths, master counts.

use crate::plan::Estimate;

/// A duration in seconds, in the unit that reads best.
pub fn human(secs: f64) -> String {
    if !secs.is_finite() {
        "∞".into()
    } else if secs > 0.0 && secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7200.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

pub fn human_est(e: &Estimate) -> String {
    if e.half_width.is_finite() && e.half_width > 0.0 {
        format!("{} ± {}", human(e.mean), human(e.half_width))
    } else {
        human(e.mean)
    }
}

pub fn pct_est(e: &Estimate) -> String {
    format!("{:.1}% ± {:.1}", e.mean * 100.0, e.half_width * 100.0)
}

pub fn masters_text(m: Option<u32>, tried: u32) -> String {
    match m {
        Some(1) => "**1 master**".into(),
        Some(m) => format!("**{m} masters**"),
        None => format!("none up to {tried} masters"),
    }
}
