//! Exit statuses, one meaning for `pcq` and `pcq-sim`, so a script, a
//! cron mail filter or a unit's `SuccessExitStatus` reads them one way.

/// It worked (`pcq sync`: nothing to do, or applied).
pub const OK: u8 = 0;
/// It ran and failed: pcq unreachable or refusing, a daemon that died,
/// a simulation that could not run.
pub const FAILED: u8 = 1;
/// The command line was wrong (clap's own status).
pub const USAGE: u8 = 2;
/// The configuration or scenario file is unreadable or invalid.
pub const CONFIG: u8 = 3;
/// `pcq-sim plan --check`: the scenario's master count misses an SLO (a
/// verdict, not a failure to run).
pub const SLO_MISSED: u8 = 5;
/// `pcq-sim check`: a prediction is further from what was measured than
/// the tolerance (a verdict on the model's inputs, not a failure to run).
pub const PREDICTION_OFF: u8 = 6;
/// `pcq sync`: the catalog could not be applied (or the plugins it needs
/// could not be fetched); the node runs what it ran before.
pub const APPLY: u8 = 4;

/// The status for an error, given its chain (`anyhow::Error::chain`):
/// [`CONFIG`] when a file is at fault, [`FAILED`] otherwise.
pub fn of<'a>(chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>) -> u8 {
    let config = chain
        .into_iter()
        .any(|c| c.downcast_ref::<crate::toml_file::FileError>().is_some());
    if config {
        CONFIG
    } else {
        FAILED
    }
}
