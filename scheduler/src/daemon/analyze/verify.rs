//! `pcq analyze --verify`: the analysis checked against the real compiler.
//!
//! For a node and its facts: compile twice (the catalog must be
//! deterministic), ask the analysis which facts the catalog can read, then
//! change *every other* fact at once and compile again. If the canonical
//! hash moved, the analysis called a fact unused that the code does read:
//! a soundness bug. Bisection then names the fact(s) responsible.
//!
//! `--each` measures precision too: every fact leaf is changed alone, so
//! the facts that move the catalog (the ground truth, a lower bound of
//! what the code reads) can be set against the facts the analysis calls
//! used; the surplus is told apart by where it comes from.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use super::analysis::Analysis;
use super::used::UsedFacts;
use crate::daemon::backend::{Compiler, Failure, Job};
use crate::daemon::catalog;
use crate::daemon::certname::Certname;

/// Compiles at most this many catalogs per node while bisecting.
const MAX_COMPILES: usize = 120;

/// What verifying one node found.
#[derive(Debug)]
pub struct Verdict {
    /// The node.
    pub certname: String,
    /// Classes in its catalog.
    pub classes: usize,
    /// Resources in its catalog.
    pub resources: usize,
    /// Fact leaves in its facts.
    pub leaves: usize,
    /// Fact paths the analysis says the catalog can read.
    pub used: Vec<String>,
    /// Leaves perturbed (the unused ones).
    pub perturbed: usize,
    /// The analysis widened to every fact (nothing to check), and why.
    pub widened: Option<String>,
    /// Unused-but-not-really facts: perturbing them moved the catalog.
    pub unsound: Vec<String>,
    /// Compiles run.
    pub compiles: usize,
}

impl Verdict {
    /// No soundness bug found.
    pub fn sound(&self) -> bool {
        self.unsound.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} classes, {} resources; {} fact values, ",
            self.certname, self.classes, self.resources, self.leaves
        )?;
        if let Some(why) = &self.widened {
            return write!(f, "but every fact counts ({why}): nothing to check");
        }
        write!(
            f,
            "{} of them read by the catalog's code ({} paths listed); ",
            self.leaves - self.perturbed,
            self.used.len()
        )?;
        if self.unsound.is_empty() {
            write!(
                f,
                "the {} others changed at once: catalog unchanged (sound; {} compiles)",
                self.perturbed, self.compiles
            )
        } else {
            write!(
                f,
                "the {} others changed at once: CATALOG MOVED; facts the analysis missed: {} ({} compiles)",
                self.perturbed,
                self.unsound.join(", "),
                self.compiles
            )
        }
    }
}

/// Why a node could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The baseline compile failed.
    #[error("{0}: the compile with the given facts failed: {1}")]
    Compile(String, Failure),
    /// The output was not a catalog.
    #[error("{0}: {1}")]
    Catalog(String, catalog::CatalogError),
    /// Two compiles of the same facts differ: nothing can be compared.
    #[error("{0}: two compiles of the same facts give different catalogs ({1} vs {2}); the code is not deterministic")]
    Nondeterministic(String, String, String),
}

/// Compiles one node with given facts, counting.
struct Runner<'a> {
    compiler: &'a dyn Compiler,
    certname: &'a Certname,
    environment: &'a str,
    compiles: usize,
}

impl<'a> Runner<'a> {
    fn new(compiler: &'a dyn Compiler, certname: &'a Certname, environment: &'a str) -> Self {
        Runner {
            compiler,
            certname,
            environment,
            compiles: 0,
        }
    }

    /// The catalog of the given facts, compiled twice: it must be
    /// deterministic for any comparison to mean something.
    async fn baseline(
        &mut self,
        facts: &Map<String, Value>,
    ) -> Result<catalog::Compiled, VerifyError> {
        let baseline = self.catalog(facts).await?;
        let again = self.catalog(facts).await?;
        if again.hash != baseline.hash {
            return Err(VerifyError::Nondeterministic(
                self.certname.to_string(),
                baseline.hash,
                again.hash,
            ));
        }
        Ok(baseline)
    }

    async fn catalog(
        &mut self,
        values: &Map<String, Value>,
    ) -> Result<catalog::Compiled, VerifyError> {
        self.compiles += 1;
        let name = self.certname.to_string();
        let job = Job {
            certname: self.certname.clone(),
            environment: self.environment.to_string(),
            facts: values.clone(),
            timeout: Duration::from_secs(300),
            leader_epoch: None,
        };
        let bytes = self
            .compiler
            .compile(job)
            .await
            .map_err(|e| VerifyError::Compile(name.clone(), e))?;
        catalog::read(&bytes).map_err(|e| VerifyError::Catalog(name, e))
    }

    /// Does changing `paths` move the catalog away from `hash`? (A failing
    /// compile counts as moved.)
    async fn moves(&mut self, facts: &Map<String, Value>, paths: &[String], hash: &str) -> bool {
        match self.catalog(&perturb(facts, paths)).await {
            Ok(c) => c.hash != hash,
            Err(_) => true,
        }
    }
}

/// Verifies the analysis for `certname` with `facts` through `compiler`.
pub async fn verify(
    analysis: &Analysis,
    compiler: &dyn Compiler,
    certname: &Certname,
    environment: &str,
    facts: &Map<String, Value>,
) -> Result<Verdict, VerifyError> {
    let mut run = Runner::new(compiler, certname, environment);
    let baseline = run.baseline(facts).await?;
    let deps = analysis.for_compiled(&baseline);
    let all = leaves(facts);
    let mut verdict = Verdict {
        certname: certname.to_string(),
        classes: baseline.classes.len(),
        resources: baseline.resources,
        leaves: all.len(),
        used: deps.facts.paths(),
        perturbed: 0,
        widened: deps
            .facts
            .all
            .then(|| deps.widened_by.clone().unwrap_or_default()),
        unsound: Vec::new(),
        compiles: 0,
    };
    if !deps.facts.all {
        let unused = unused(facts, &deps.facts);
        verdict.perturbed = unused.len();
        if run.moves(facts, &unused, &baseline.hash).await {
            // bisect to the responsible facts
            let mut suspects = vec![unused];
            while let Some(set) = suspects.pop() {
                if set.len() == 1 {
                    verdict.unsound.extend(set);
                    continue;
                }
                if run.compiles >= MAX_COMPILES {
                    verdict
                        .unsound
                        .push(format!("(one of {} more; compile budget spent)", set.len()));
                    continue;
                }
                let (a, b) = set.split_at(set.len() / 2);
                let mut found = false;
                for half in [a, b] {
                    if run.moves(facts, half, &baseline.hash).await {
                        suspects.push(half.to_vec());
                        found = true;
                    }
                }
                if !found {
                    // only together do they move it
                    verdict
                        .unsound
                        .push(format!("(together) {}", set.join(" + ")));
                }
            }
            verdict.unsound.sort();
        }
    }
    verdict.compiles = run.compiles;
    Ok(verdict)
}

/// What changing every fact leaf alone found for one node.
#[derive(Debug)]
pub struct Precision {
    /// The node.
    pub certname: String,
    /// Fact leaves in its facts.
    pub leaves: usize,
    /// Leaves whose change moved the catalog (or made the compile fail).
    pub moved: Vec<String>,
    /// Leaves the analysis calls used.
    pub used: Vec<String>,
    /// Moved but not called used: soundness bugs.
    pub missed: Vec<String>,
    /// Used, not moved, under a path the code reads whole (`os` covers
    /// `os.release.full`): (leaf, the path read).
    pub whole: Vec<(String, String)>,
    /// Used, not moved, read by exactly that path: a branch not taken, a
    /// value the catalog does not show.
    pub exact: Vec<String>,
    /// The analysis widened to every fact, and why.
    pub widened: Option<String>,
    /// Compiles run.
    pub compiles: usize,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} fact values; {} move the catalog; the analysis calls {} used",
            self.certname,
            self.leaves,
            self.moved.len(),
            self.used.len()
        )?;
        if let Some(why) = &self.widened {
            write!(f, " (every fact: {why})")?;
        }
        let hit = self.moved.len() - self.missed.len();
        write!(f, "; {hit} of the {} that move", self.moved.len())?;
        if self.missed.is_empty() {
            write!(f, " (sound)")?;
        } else {
            write!(f, "; MISSED: {}", self.missed.join(", "))?;
        }
        if !self.used.is_empty() {
            write!(
                f,
                "; precision {hit}/{} = {:.0}%",
                self.used.len(),
                100.0 * hit as f64 / self.used.len() as f64
            )?;
        }
        let mut heads: Vec<(&str, usize)> = Vec::new();
        for (_, read) in &self.whole {
            match heads.iter_mut().find(|(h, _)| h == read) {
                Some((_, n)) => *n += 1,
                None => heads.push((read, 1)),
            }
        }
        heads.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = heads.iter().map(|(h, n)| format!("{h} {n}")).collect();
        write!(f, "\n  moving the catalog: {}", self.moved.join(", "))?;
        write!(
            f,
            "\n  surplus: {} under hashes read whole ({}); {} read by path, not moving the catalog with these facts ({}) ({} compiles)",
            self.whole.len(),
            shown.join(", "),
            self.exact.len(),
            self.exact.join(", "),
            self.compiles
        )
    }
}

/// Changes every fact leaf alone (two compiles at a time) and sets what
/// moved the catalog against what the analysis calls used.
pub async fn each(
    analysis: &Analysis,
    compiler: &dyn Compiler,
    certname: &Certname,
    environment: &str,
    facts: &Map<String, Value>,
) -> Result<Precision, VerifyError> {
    let mut run = Runner::new(compiler, certname, environment);
    let baseline = run.baseline(facts).await?;
    let deps = analysis.for_compiled(&baseline);
    let all = leaves(facts);
    let queue = std::sync::Mutex::new(all.clone());
    let moved = std::sync::Mutex::new(Vec::new());
    let worker = || async {
        let mut run = Runner::new(compiler, certname, environment);
        loop {
            let next = queue.lock().ok().and_then(|mut q| q.pop());
            let Some(leaf) = next else { break };
            if run
                .moves(facts, std::slice::from_ref(&leaf), &baseline.hash)
                .await
            {
                if let Ok(mut m) = moved.lock() {
                    m.push(leaf);
                }
            }
        }
        run.compiles
    };
    let (a, b) = tokio::join!(worker(), worker());
    let mut moved = moved.into_inner().unwrap_or_default();
    moved.sort();
    let used_paths = deps.facts.paths();
    let used: Vec<String> = all
        .iter()
        .filter(|l| deps.facts.touches(l))
        .cloned()
        .collect();
    let missed = moved
        .iter()
        .filter(|l| !deps.facts.touches(l))
        .cloned()
        .collect();
    let mut whole = Vec::new();
    let mut exact = Vec::new();
    for leaf in used.iter().filter(|l| !moved.contains(l)) {
        match used_paths
            .iter()
            .find(|p| leaf.starts_with(p.as_str()) && leaf[p.len()..].starts_with('.'))
        {
            Some(p) => whole.push((leaf.clone(), p.clone())),
            None => exact.push(leaf.clone()),
        }
    }
    Ok(Precision {
        certname: certname.to_string(),
        leaves: all.len(),
        moved,
        used,
        missed,
        whole,
        exact,
        widened: deps
            .facts
            .all
            .then(|| deps.widened_by.clone().unwrap_or_default()),
        compiles: run.compiles + a + b,
    })
}

/// Dotted paths of every leaf value (arrays are leaves).
pub fn leaves(facts: &Map<String, Value>) -> Vec<String> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    walk(&format!("{prefix}.{k}"), x, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut out = Vec::new();
    for (k, v) in facts {
        walk(k, v, &mut out);
    }
    out
}

/// `facts` with the values at `paths` changed.
pub fn perturb(facts: &Map<String, Value>, paths: &[String]) -> Map<String, Value> {
    let mut out = facts.clone();
    for p in paths {
        let mut parts = p.split('.');
        let Some(first) = parts.next() else { continue };
        let mut v = out.get_mut(first);
        for part in parts {
            v = match v {
                Some(Value::Object(m)) => m.get_mut(part),
                _ => None,
            };
        }
        if let Some(v) = v {
            *v = changed(v);
        }
    }
    out
}

fn changed(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(format!("{s}-pcq-verify")),
        Value::Bool(b) => Value::Bool(!b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i.wrapping_add(1)),
            None => Value::from(n.as_f64().unwrap_or(0.0) + 0.5),
        },
        Value::Array(a) => {
            let mut a = a.clone();
            a.push(Value::from("pcq-verify"));
            Value::Array(a)
        }
        Value::Null | Value::Object(_) => Value::from("pcq-verify"),
    }
}

/// The leaves `used` does not touch.
pub fn unused(facts: &Map<String, Value>, used: &UsedFacts) -> Vec<String> {
    leaves(facts)
        .into_iter()
        .filter(|p| !used.touches(p))
        .collect()
}

/// The facts in a file given to `--verify`: `puppet facts show` or
/// facter's JSON (the facts themselves), or an upload body (`{"values":
/// ...}`).
pub fn facts_of(json: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(json).map_err(|e| e.to_string())? {
        Value::Object(mut m) => match m.remove("values") {
            Some(Value::Object(v)) => Ok(v),
            Some(_) => Err("\"values\" is not an object".into()),
            None => Ok(m),
        },
        _ => Err("not a JSON object of facts".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn facts_files_are_facter_output_or_an_upload_body() {
        let plain = facts_of(br#"{"os": {"family": "Debian"}}"#).expect("facter");
        assert_eq!(plain["os"]["family"], "Debian");
        let upload = facts_of(br#"{"name": "a", "values": {"role": "web"}}"#).expect("body");
        assert_eq!(upload["role"], "web");
        assert!(facts_of(br#"{"values": 3}"#).is_err());
        assert!(facts_of(b"[1]").is_err());
        assert!(facts_of(b"{").is_err());
    }

    #[test]
    fn perturbs_exactly_the_given_leaves() {
        let facts = match json!({"os": {"family": "Debian", "release": {"major": "12"}}, "n": 4, "ok": true, "ips": ["a"]})
        {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let mut l = leaves(&facts);
        l.sort();
        assert_eq!(l, vec!["ips", "n", "ok", "os.family", "os.release.major"]);
        let used = UsedFacts::from_paths(&["os.family", "n"]);
        let u = unused(&facts, &used);
        let p = perturb(&facts, &u);
        assert_eq!(p["os"]["family"], "Debian");
        assert_eq!(p["n"], 4);
        assert_eq!(p["os"]["release"]["major"], "12-pcq-verify");
        assert_eq!(p["ok"], false);
        assert_eq!(p["ips"], json!(["a", "pcq-verify"]));
    }
}
