//! The system load, for the gate of the master pcq runs on.
//!
//! Linux: `/proc/loadavg` gives the one-minute average and, in its fourth
//! field, the processes runnable right now (what GNU parallel reads; the
//! gate also corrects the lagging average for starts it does not show yet).
//! Elsewhere: sysinfo's load average.

use crate::core::LoadSample;

/// Reads the load now.
pub fn sample() -> LoadSample {
    if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
        if let Some(s) = parse_loadavg(&text) {
            return s;
        }
    }
    LoadSample {
        load1: sysinfo::System::load_average().map_or(0.0, |a| a.one),
        runnable: None,
    }
}

/// Parses `/proc/loadavg` ("0.52 0.58 0.59 3/467 12345"). The reader
/// itself is one of the runnable processes; it is not counted.
fn parse_loadavg(text: &str) -> Option<LoadSample> {
    let mut fields = text.split_whitespace();
    let load1 = fields.next()?.parse::<f64>().ok()?;
    let runnable = fields
        .nth(2)
        .and_then(|f| f.split('/').next())
        .and_then(|r| r.parse::<f64>().ok())
        .map(|r| (r - 1.0).max(0.0));
    Some(LoadSample { load1, runnable })
}

/// CPU cores of this host.
pub fn cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(1))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_loadavg() {
        let s = parse_loadavg("0.52 0.58 0.59 3/467 12345\n").expect("parses");
        assert_eq!(s.load1, 0.52);
        assert_eq!(s.runnable, Some(2.0));
        assert!(parse_loadavg("garbage").is_none());
        assert!(sample().load1 >= 0.0);
    }
}
