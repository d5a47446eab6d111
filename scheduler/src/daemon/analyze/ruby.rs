//! Running the analyzer: `pcq_analyze.rb` on Puppet's own Ruby and
//! parser, with the script on stdin (nothing to install beside pcq).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::raw::Raw;

/// The analyzer script, run with Puppet's Ruby.
const SCRIPT: &str = include_str!("pcq_analyze.rb");

/// Why the analysis could not run.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// Running Ruby failed.
    #[error("running {ruby}: {why}")]
    Run {
        /// The Ruby used.
        ruby: String,
        /// Why.
        why: String,
    },
    /// The analyzer printed something else than its JSON.
    #[error("reading the analysis: {0}")]
    Output(String),
}

/// The Ruby that has Puppet: Puppet's own packages first, then the system's.
pub fn default_ruby() -> String {
    let aio = "/opt/puppetlabs/puppet/bin/ruby";
    if Path::new(aio).exists() {
        aio.into()
    } else {
        "ruby".into()
    }
}

/// Runs the analyzer over `envdir` with its `modules` and the extra module
/// directories (Puppet's basemodulepath).
/// `hiera` are global `hiera.yaml` files (read for every node).
pub fn run(
    ruby: &str,
    envdir: &Path,
    modulepath: &[PathBuf],
    hiera: &[PathBuf],
) -> Result<Raw, AnalyzeError> {
    let err = |why: String| AnalyzeError::Run {
        ruby: ruby.to_string(),
        why,
    };
    let mut child = Command::new(ruby)
        .arg("-")
        .arg(envdir)
        .args(modulepath)
        .args(hiera.iter().map(|h| {
            let mut arg = std::ffi::OsString::from("--hiera=");
            arg.push(h);
            arg
        }))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(SCRIPT.as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse(&out.stdout)
}

/// Reads the analyzer's JSON.
pub fn parse(bytes: &[u8]) -> Result<Raw, AnalyzeError> {
    serde_json::from_slice(bytes).map_err(|e| AnalyzeError::Output(e.to_string()))
}
