//! The code an analysis saw, and what a deploy changed in it.
//!
//! A [`Snapshot`] holds a content hash (SHA-256) of every file of an
//! environment's code, the environment directory and each module on its
//! module path plus the global Hiera files, with what each file *gives*
//! the code: the classes, defined types and functions a manifest defines,
//! the template a template file is, the function a Ruby file defines, the
//! module Hiera layer a data file feeds, the resource type under
//! `lib/puppet/type`. [`Snapshot::diff`] turns two snapshots into a
//! [`Change`]: the names a deploy touched, which nodes' catalogs reach
//! (see [`super::reach`]), or why it cannot be bounded (site manifests,
//! node definitions, environment or global Hiera, `environment.conf`, a
//! type alias, Ruby under `lib/` other than functions and types, a file
//! that does not parse, a file pcq does not know, a module that moved on
//! the module path): then every node of the environment recompiles.
//!
//! The hashes are taken *before* the analysis reads the code: a file that
//! changes while it runs differs at the next deploy, so what the analysis
//! saw is never newer than what the snapshot says.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::raw::Raw;

/// Directories deeper than this are not walked (a symlink loop).
const MAX_DEPTH: usize = 32;

/// The start of the hash of a file or directory that could not be read.
const UNREADABLE: &str = "unreadable: ";

/// One file of the code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Hex SHA-256 of the content (`unreadable: ...` when it could not be
    /// read: any later read differs).
    pub sha256: String,
    /// What it gives the code (see the module's header): `class:x`,
    /// `define:x`, `function:x`, `template:m/p`, `module_hiera:m`,
    /// `type:x`, `files:m`, `inert`, or an unbounded kind (`global`,
    /// `unparsable`, `alias:x`, `lib`, `unknown`).
    pub gives: Vec<String>,
}

/// An environment's code as one analysis saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Files by path.
    pub files: BTreeMap<String, FileEntry>,
    /// Module name to the directory that wins on the module path.
    pub modules: BTreeMap<String, String>,
}

/// How a file changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// New.
    Added,
    /// Gone.
    Removed,
    /// Different content.
    Changed,
}

/// A file a deploy changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFile {
    /// Path.
    pub path: String,
    /// How.
    pub status: Status,
    /// What it gave before and gives now.
    pub gives: Vec<String>,
}

/// What a deploy changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Every changed file.
    pub files: Vec<ChangedFile>,
    /// Why every node must recompile (empty: the change is bounded).
    pub unbounded: Vec<String>,
    /// Bounded names touched (`class:x`, `template:m/p`, ...).
    pub names: BTreeSet<String>,
    /// A class, defined type, function, type alias or resource type was
    /// added or removed: code asking `defined()` may decide otherwise.
    pub definitions_moved: bool,
}

impl Change {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.unbounded.is_empty()
    }

    /// Something besides inert files changed (documentation, tests...).
    pub fn touches_code(&self) -> bool {
        !self.names.is_empty() || !self.unbounded.is_empty() || self.definitions_moved
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Added => "added",
            Status::Removed => "removed",
            Status::Changed => "changed",
        })
    }
}

impl Snapshot {
    /// Content hashes of every file under `roots` (directories starting
    /// with `.` skipped), and of the `earlier` snapshot's files outside
    /// them (global Hiera, module directories environment.conf names),
    /// taken before the analysis reads them.
    pub fn hash_roots(roots: &[PathBuf], earlier: Option<&Snapshot>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for root in roots {
            walk(root, 0, &mut out);
        }
        for path in earlier.into_iter().flat_map(|s| s.files.keys()) {
            let p = Path::new(path);
            if !roots.iter().any(|r| p.starts_with(r)) && !out.contains_key(path) {
                out.insert(path.clone(), hash_file(p));
            }
        }
        out
    }

    /// The snapshot of `envdir`: `hashes` (from [`Snapshot::hash_roots`]
    /// over `roots`) completed with the module directories and files the
    /// analysis found elsewhere, each file with what it gives.
    pub fn new(
        envdir: &Path,
        mut hashes: BTreeMap<String, String>,
        roots: &[PathBuf],
        raw: &Raw,
    ) -> Snapshot {
        let under_roots = |p: &Path| roots.iter().any(|r| p.starts_with(r));
        for entry in &raw.modulepath {
            let entry = Path::new(entry);
            if !under_roots(entry) {
                walk(entry, 0, &mut hashes);
            }
        }
        for file in raw.provides.keys() {
            if !hashes.contains_key(file) {
                hashes.insert(file.clone(), hash_file(Path::new(file)));
            }
        }
        let modules: BTreeMap<String, String> = raw
            .module_dirs
            .iter()
            .map(|(dir, name)| (module_name(name), dir.clone()))
            .collect();
        let place = Place {
            envdir,
            modulepath: raw.modulepath.iter().map(PathBuf::from).collect(),
            modules: &modules,
        };
        let files = hashes
            .into_iter()
            .map(|(path, sha256)| {
                let gives = match raw.provides.get(&path) {
                    Some(g) => g.clone(),
                    None => vec![place.classify(Path::new(&path))],
                };
                (path, FileEntry { sha256, gives })
            })
            .collect();
        Snapshot { files, modules }
    }

    /// What changed from `self` (the code every node's catalog reflects)
    /// to `new`.
    pub fn diff(&self, new: &Snapshot) -> Change {
        let mut change = Change::default();
        for (name, dir) in &new.modules {
            if let Some(old) = self.modules.get(name) {
                if old != dir {
                    change
                        .unbounded
                        .push(format!("module {name} now comes from {dir} (was {old})"));
                }
            }
        }
        let paths: BTreeSet<&String> = self.files.keys().chain(new.files.keys()).collect();
        for path in paths {
            let (status, gives) = match (self.files.get(path), new.files.get(path)) {
                (Some(a), Some(b)) if a == b => continue,
                (Some(a), Some(b)) => (Status::Changed, union(&a.gives, &b.gives)),
                (Some(a), None) => (Status::Removed, a.gives.clone()),
                (None, Some(b)) => (Status::Added, b.gives.clone()),
                (None, None) => continue,
            };
            for what in &gives {
                match bounded(what) {
                    Bound::Inert => {}
                    Bound::Name => {
                        change.names.insert(what.clone());
                    }
                    Bound::Every(why) => change.unbounded.push(format!("{path} ({status}): {why}")),
                }
            }
            change.files.push(ChangedFile {
                path: path.clone(),
                status,
                gives,
            });
        }
        change.definitions_moved = self.definitions() != new.definitions();
        // a file (or directory) pcq cannot read may have changed unseen
        if let Some((path, f)) = new
            .files
            .iter()
            .find(|(_, f)| f.sha256.starts_with(UNREADABLE))
        {
            change
                .unbounded
                .push(format!("{path}: pcq cannot read it ({})", f.sha256));
        }
        change
    }

    /// What a deploy would make of each file: how many files give each
    /// kind, and per kind the files whose change moves every node (other
    /// than site manifests and Hiera, which are expected to), a few each.
    pub fn summary(&self) -> String {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        let mut every: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (path, f) in &self.files {
            for g in &f.gives {
                let kind = g.split_once(':').map_or(g.as_str(), |(k, _)| k);
                *kinds.entry(kind).or_default() += 1;
                if let Bound::Every(why) = bounded(g) {
                    if kind != "global" {
                        every
                            .entry(kind)
                            .or_default()
                            .push(format!("{path}: {why}"));
                    }
                }
            }
        }
        let counts: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let mut out = format!(
            "\ncode: {} files ({}); besides site manifests and Hiera, a change to these moves every node:\n",
            self.files.len(),
            counts.join(", "),
        );
        for (kind, files) in &every {
            out += &format!("  {kind}: {} files\n", files.len());
            for f in files.iter().take(5) {
                out += &format!("    {f}\n");
            }
        }
        out
    }

    /// Every class, defined type, function, type alias and resource type.
    fn definitions(&self) -> BTreeSet<&str> {
        self.files
            .values()
            .flat_map(|f| f.gives.iter())
            .filter(|g| {
                ["class:", "define:", "function:", "alias:", "type:"]
                    .iter()
                    .any(|k| g.starts_with(k))
            })
            .map(String::as_str)
            .collect()
    }
}

enum Bound {
    Inert,
    Name,
    Every(String),
}

/// Whether what a file gives can be bounded to the nodes reaching it.
fn bounded(what: &str) -> Bound {
    let (kind, name) = what.split_once(':').unwrap_or((what, ""));
    match kind {
        "inert" => Bound::Inert,
        // environment.conf's environment_data_provider = function
        "function" if name == "environment::data" => {
            Bound::Every("the environment's data function (environment Hiera)".into())
        }
        "class" | "define" | "function" | "template" | "module_hiera" | "type" | "files" => {
            Bound::Name
        }
        "global" => Bound::Every(
            "read for every node (site manifest, node definition, top-level code, environment or global Hiera, environment.conf)".into(),
        ),
        "unparsable" => Bound::Every("does not parse".into()),
        "alias" => Bound::Every(format!("defines type alias {name}, which any signature may use")),
        "lib" => Bound::Every("Ruby under lib/ other than a function or a resource type".into()),
        _ => Bound::Every("a file pcq does not know".into()),
    }
}

fn union(a: &[String], b: &[String]) -> Vec<String> {
    let mut out = a.to_vec();
    for x in b {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

/// "saz-rsyslog" holds module rsyslog, as the analyzer reads it.
fn module_name(dir_name: &str) -> String {
    match dir_name.split_once('-') {
        Some((_, rest)) => rest.to_string(),
        None => dir_name.to_string(),
    }
}

/// Where a file sits, for files the analyzer did not read.
struct Place<'a> {
    envdir: &'a Path,
    modulepath: Vec<PathBuf>,
    modules: &'a BTreeMap<String, String>,
}

impl Place<'_> {
    fn classify(&self, path: &Path) -> String {
        // the innermost module path entry holding it
        let entry = self
            .modulepath
            .iter()
            .filter(|e| path.starts_with(e))
            .max_by_key(|e| e.components().count());
        if let Some(entry) = entry {
            let rel = path.strip_prefix(entry).unwrap_or(path);
            let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
            let Some(dir_name) = parts.next() else {
                return "unknown".into();
            };
            let name = module_name(&dir_name);
            let dir = entry.join(dir_name.as_ref());
            if self.modules.get(&name).map(PathBuf::from) != Some(dir.clone()) {
                // a module another directory shadows, or a stray file
                return "inert".into();
            }
            let inner: Vec<String> = parts.map(|p| p.into_owned()).collect();
            return module_file(&name, &inner);
        }
        match path.strip_prefix(self.envdir) {
            Ok(rel) => {
                let inner: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                environment_file(&inner)
            }
            Err(_) => "unknown".into(),
        }
    }
}

/// Files no compile reads: documentation, tests, CI and packaging
/// metadata, dot files.
fn inert_name(first: &str, at_top: bool) -> bool {
    const DIRS: [&str; 7] = [
        "spec", "examples", "tests", "docs", "readmes", "tasks", "locales",
    ];
    const PREFIXES: [&str; 12] = [
        "README",
        "CHANGELOG",
        "LICENSE",
        "NOTICE",
        "CONTRIBUTING",
        "MAINTAINERS",
        "HISTORY",
        "REFERENCE",
        "AUTHORS",
        "COPYING",
        "Gemfile",
        "CODEOWNERS",
    ];
    first.starts_with('.')
        || (!at_top && DIRS.contains(&first))
        || (at_top
            && (PREFIXES.iter().any(|p| first.starts_with(p))
                || [
                    "Rakefile",
                    "checksums.json",
                    "Puppetfile",
                    "pdk.yaml",
                    "appveyor.yml",
                    "Jenkinsfile",
                    "Vagrantfile",
                ]
                .contains(&first)
                || first.ends_with(".md")))
}

/// A file of module `name` at `inner` (its path inside the module).
fn module_file(name: &str, inner: &[String]) -> String {
    let first = inner.first().map(String::as_str).unwrap_or("");
    if inner.len() == 1 && inert_name(first, true) {
        return "inert".into();
    }
    if inner.len() > 1 && inert_name(first, false) {
        return "inert".into();
    }
    let rel = inner.join("/");
    match first {
        "manifests" | "functions" | "types" | "plans" if !rel.ends_with(".pp") => "inert".into(),
        // a .pp file the analyzer did not report: it did not parse it
        "manifests" | "functions" | "types" | "plans" => "unparsable".into(),
        "templates" => format!("template:{name}/{}", inner[1..].join("/")),
        "files" => format!("files:{name}"),
        "data" | "hiera.yaml" => format!("module_hiera:{name}"),
        "lib" => lib_file(&inner[1..]),
        _ => "unknown".into(),
    }
}

/// A Ruby file under a module's `lib`.
fn lib_file(inner: &[String]) -> String {
    let parts: Vec<&str> = inner.iter().map(String::as_str).collect();
    match parts.as_slice() {
        // custom facts run on the agent; their values reach pcq as facts
        ["facter", ..] => "inert".into(),
        ["puppet", "type", file] if file.ends_with(".rb") => {
            format!("type:{}", file.trim_end_matches(".rb").to_lowercase())
        }
        ["puppet", "functions", rest @ ..] if !rest.is_empty() => {
            format!(
                "function:{}",
                rest.join("::").trim_end_matches(".rb").to_lowercase()
            )
        }
        ["puppet", "parser", "functions", file] => {
            format!("function:{}", file.trim_end_matches(".rb").to_lowercase())
        }
        _ => "lib".into(),
    }
}

/// A file of the environment directory, outside its modules.
fn environment_file(inner: &[String]) -> String {
    let first = inner.first().map(String::as_str).unwrap_or("");
    if inner.len() == 1 && (inert_name(first, true) || first == ".r10k-deploy.json") {
        return "inert".into();
    }
    if inner.len() > 1 && first.starts_with('.') {
        return "inert".into();
    }
    match first {
        "environment.conf" | "hiera.yaml" | "manifests" | "data" => "global".into(),
        "lib" => match lib_file(&inner[1..]).as_str() {
            "inert" => "inert".into(),
            _ => "lib".into(),
        },
        _ => "unknown".into(),
    }
}

fn walk(dir: &Path, depth: usize, out: &mut BTreeMap<String, String>) {
    if depth > MAX_DEPTH {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // (a module path entry that does not exist holds nothing)
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            out.insert(
                dir.to_string_lossy().into_owned(),
                format!("{UNREADABLE}{e}"),
            );
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // follows symlinks: Puppet reads through them
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if !entry.file_name().to_string_lossy().starts_with('.') {
                walk(&path, depth + 1, out);
            }
        } else if meta.is_file() {
            out.insert(path.to_string_lossy().into_owned(), hash_file(&path));
        }
    }
}

fn hash_file(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => hex::encode(Sha256::digest(&bytes)),
        Err(e) => format!("{UNREADABLE}{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sha: &str, gives: &[&str]) -> FileEntry {
        FileEntry {
            sha256: sha.into(),
            gives: gives.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn snapshot(files: &[(&str, FileEntry)]) -> Snapshot {
        Snapshot {
            files: files
                .iter()
                .map(|(p, e)| (p.to_string(), e.clone()))
                .collect(),
            modules: BTreeMap::new(),
        }
    }

    #[test]
    fn a_changed_template_names_the_template_and_nothing_else() {
        let t = "/m/ntp/templates/ntp.conf.erb";
        let old = snapshot(&[
            (t, entry("a", &["template:ntp/ntp.conf.erb"])),
            ("/m/ntp/README.md", entry("r", &["inert"])),
        ]);
        let mut new = old.clone();
        new.files
            .insert(t.into(), entry("b", &["template:ntp/ntp.conf.erb"]));
        new.files
            .insert("/m/ntp/README.md".into(), entry("r2", &["inert"]));
        let c = old.diff(&new);
        assert!(c.unbounded.is_empty(), "{:?}", c.unbounded);
        assert_eq!(
            c.names.iter().collect::<Vec<_>>(),
            vec!["template:ntp/ntp.conf.erb"]
        );
        assert_eq!(c.files.len(), 2, "the README changed too, and is inert");
        assert!(!c.definitions_moved);
        assert!(old.diff(&old).is_empty(), "the same code changes nothing");
    }

    #[test]
    fn what_cannot_be_bounded_says_why() {
        let old = snapshot(&[("/e/manifests/site.pp", entry("a", &["global"]))]);
        let new = snapshot(&[("/e/manifests/site.pp", entry("b", &["global"]))]);
        let c = old.diff(&new);
        assert_eq!(c.unbounded.len(), 1);
        assert!(
            c.unbounded[0].contains("site.pp (changed)"),
            "{:?}",
            c.unbounded
        );
        for (gives, word) in [
            ("unparsable", "does not parse"),
            ("alias:stdlib::port", "type alias"),
            ("lib", "Ruby under lib/"),
            ("whatever", "does not know"),
        ] {
            let c = snapshot(&[]).diff(&snapshot(&[("/x", entry("a", &[gives]))]));
            assert!(c.unbounded[0].contains(word), "{gives}: {:?}", c.unbounded);
        }
    }

    #[test]
    fn a_removed_class_and_an_added_one_move_definitions() {
        let old = snapshot(&[("/m/a/manifests/x.pp", entry("a", &["class:a::x"]))]);
        let new = snapshot(&[("/m/a/manifests/y.pp", entry("b", &["class:a::y"]))]);
        let c = old.diff(&new);
        assert!(c.definitions_moved);
        assert!(c.names.contains("class:a::x") && c.names.contains("class:a::y"));
        let statuses: Vec<Status> = c.files.iter().map(|f| f.status).collect();
        assert_eq!(statuses, vec![Status::Removed, Status::Added]);
    }

    #[test]
    fn a_file_pcq_cannot_read_is_unbounded_even_unchanged() {
        let gone = snapshot(&[(
            "/m/a/lib/puppet/type/x.rb",
            entry("unreadable: denied", &["type:x"]),
        )]);
        let c = gone.diff(&gone);
        assert!(c.unbounded[0].contains("cannot read"), "{:?}", c.unbounded);
    }

    #[test]
    fn a_module_that_moves_on_the_module_path_is_unbounded() {
        let mut old = snapshot(&[]);
        old.modules.insert("ntp".into(), "/base/ntp".into());
        let mut new = old.clone();
        new.modules.insert("ntp".into(), "/env/modules/ntp".into());
        assert!(old.diff(&new).unbounded[0].contains("module ntp now comes from"));
    }

    #[test]
    fn files_the_analyzer_did_not_read_are_placed_by_their_path() {
        let mut modules = BTreeMap::new();
        modules.insert("ntp".to_string(), "/base/ntp".to_string());
        let place = Place {
            envdir: Path::new("/env"),
            modulepath: vec![PathBuf::from("/env/modules"), PathBuf::from("/base")],
            modules: &modules,
        };
        for (path, want) in [
            ("/base/ntp/README.md", "inert"),
            ("/base/ntp/spec/classes/ntp_spec.rb", "inert"),
            ("/base/ntp/.github/workflows/ci.yml", "inert"),
            ("/base/ntp/files/ntp.keys", "files:ntp"),
            ("/base/ntp/lib/facter/ntp.rb", "inert"),
            ("/base/ntp/lib/puppet/type/ntp_key.rb", "type:ntp_key"),
            ("/base/ntp/lib/puppet/provider/ntp_key/ruby.rb", "lib"),
            ("/base/ntp/lib/puppet_x/ntp/x.rb", "lib"),
            ("/base/ntp/data/common.yaml", "module_hiera:ntp"),
            ("/base/ntp/manifests/notes.txt", "inert"),
            ("/base/ntp/manifests/broken.pp", "unparsable"),
            ("/base/ntp/Makefile", "unknown"),
            ("/base/other/manifests/init.pp", "inert"),
            ("/env/environment.conf", "global"),
            ("/env/manifests/site.pp", "global"),
            ("/env/data/common.yaml", "global"),
            ("/env/Puppetfile", "inert"),
            ("/env/.r10k-deploy.json", "inert"),
            ("/env/scripts/deploy.sh", "unknown"),
            ("/elsewhere/x", "unknown"),
        ] {
            assert_eq!(place.classify(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn hashes_follow_content_and_skip_dot_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("m/templates")).expect("mkdir");
        std::fs::create_dir_all(root.join(".git")).expect("mkdir");
        std::fs::write(root.join("m/templates/a.erb"), "one").expect("write");
        std::fs::write(root.join(".git/HEAD"), "ref").expect("write");
        let a = Snapshot::hash_roots(std::slice::from_ref(&root), None);
        assert_eq!(a.len(), 1, "{a:?}");
        std::fs::write(root.join("m/templates/a.erb"), "two").expect("write");
        let b = Snapshot::hash_roots(std::slice::from_ref(&root), None);
        assert_ne!(a, b);
    }
}
