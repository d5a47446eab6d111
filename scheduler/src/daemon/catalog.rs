//! Catalogs: the canonical hash that says whether a catalog changed, the
//! exported resources in it, and the last good catalog of each node on disk.
//!
//! Every compile produces a new `version` and `catalog_uuid`, and Puppet
//! does not promise the order of resources, edges or classes, so comparing
//! catalogs byte for byte would call every compile a change. The canonical
//! hash drops the per-compile noise and sorts what has no meaningful order.
//!
//! Catalogs hold secrets: files are written mode 0600 in a 0700 directory,
//! atomically (a node never reads half a catalog), and only after the
//! compile succeeded, so the last good catalog survives any failure.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::certname::Certname;
use crate::private_file::{self, Staged};

/// A compiled catalog, checked and hashed.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The catalog JSON as Puppet Server returned it (the `catalog` object).
    pub json: Vec<u8>,
    /// Canonical hash (hex SHA-256).
    pub hash: String,
    /// Resources the node exports.
    pub exports: Vec<Export>,
    /// The same, whole (tags and parameters), for matching collectors.
    pub exported: Vec<Exported>,
    /// Resources in the catalog.
    pub resources: usize,
    /// Classes declared (without the node definition's name).
    pub classes: Vec<String>,
    /// Resource types used, sorted, once each.
    pub types: Vec<String>,
    /// Type and title of every resource that is not exported.
    pub titles: Vec<(String, String)>,
    /// String parameters that may name a template (they hold a `/`), per
    /// `class::param` (a class's title) or `type::param` (every resource
    /// of a defined type), lower case: what `template($param)` rendered.
    pub template_names: HashMap<String, Vec<String>>,
    /// The node it is for (`name`).
    pub name: String,
    /// The environment it was compiled in (what the node classifier
    /// decided), if the catalog says.
    pub environment: Option<String>,
}

/// An exported resource, whole: what a collector's query looks at.
#[derive(Clone, Debug, PartialEq)]
pub struct Exported {
    /// Resource type, e.g. `File`.
    pub kind: String,
    /// Title.
    pub title: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Parameters.
    pub parameters: serde_json::Map<String, Value>,
    /// SHA-256 of the canonical parameters (as in [`Export`]).
    pub parameters_hash: String,
}

/// An exported resource: type, title and a hash of its parameters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Export {
    /// Resource type, e.g. `File`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Title.
    pub title: String,
    /// SHA-256 of the canonical parameters.
    pub parameters_hash: String,
}

/// Why a compile's output is not a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Not JSON at all.
    #[error("the compile's output is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// JSON, but not shaped like a Puppet catalog.
    #[error("the compile's output is not a Puppet catalog: {0}")]
    NotACatalog(&'static str),
}

/// Checks and hashes a catalog. Accepts both the bare catalog and Puppet
/// Server's v4 answer `{"catalog": {...}}`.
pub fn read(bytes: &[u8]) -> Result<Compiled, CatalogError> {
    let value: Value = serde_json::from_slice(bytes).map_err(CatalogError::NotJson)?;
    let catalog = match value {
        Value::Object(mut m) if m.contains_key("catalog") => m
            .remove("catalog")
            .ok_or(CatalogError::NotACatalog("no catalog"))?,
        other => other,
    };
    let Value::Object(map) = &catalog else {
        return Err(CatalogError::NotACatalog("not a JSON object"));
    };
    let Some(Value::Array(resources)) = map.get("resources") else {
        return Err(CatalogError::NotACatalog("no resources array"));
    };
    let Some(name) = map.get("name").and_then(Value::as_str).map(String::from) else {
        return Err(CatalogError::NotACatalog("no name"));
    };
    let environment = map
        .get("environment")
        .and_then(Value::as_str)
        .map(String::from);
    let mut exported = Vec::new();
    let mut titles = Vec::new();
    let mut types = std::collections::BTreeSet::new();
    let mut nodes = std::collections::HashSet::new();
    let mut template_names: HashMap<String, Vec<String>> = HashMap::new();
    for r in resources {
        let kind = r.get("type").and_then(Value::as_str).unwrap_or("");
        let title = r.get("title").map(title_text).unwrap_or_default();
        types.insert(kind.to_string());
        if let Some(Value::Object(params)) = r.get("parameters") {
            let owner = if kind == "Class" { &title } else { kind }.to_lowercase();
            for (p, v) in params {
                let strings = match v {
                    Value::String(s) => vec![s.as_str()],
                    Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                for s in strings.into_iter().filter(|s| s.contains('/')) {
                    template_names
                        .entry(format!("{owner}::{}", p.to_lowercase()))
                        .or_default()
                        .push(s.to_string());
                }
            }
        }
        if kind == "Node" {
            nodes.insert(title.to_lowercase());
        }
        if r.get("exported").and_then(Value::as_bool) == Some(true) {
            let parameters = match r.get("parameters") {
                Some(Value::Object(m)) => m.clone(),
                _ => serde_json::Map::new(),
            };
            let tags = match r.get("tags") {
                Some(Value::Array(t)) => t
                    .iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect(),
                _ => Vec::new(),
            };
            exported.push(Exported {
                kind: kind.to_string(),
                title,
                tags,
                parameters_hash: hash_value(r.get("parameters").unwrap_or(&Value::Null)),
                parameters,
            });
        } else {
            titles.push((kind.to_string(), title));
        }
    }
    exported.sort_by(|a, b| {
        (&a.kind, &a.title, &a.parameters_hash).cmp(&(&b.kind, &b.title, &b.parameters_hash))
    });
    let exports = exported
        .iter()
        .map(|e| Export {
            kind: e.kind.clone(),
            title: e.title.clone(),
            parameters_hash: e.parameters_hash.clone(),
        })
        .collect();
    let classes = match map.get("classes") {
        Some(Value::Array(c)) => c
            .iter()
            .filter_map(Value::as_str)
            .filter(|c| !nodes.contains(&c.to_lowercase()))
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    };
    let count = resources.len();
    let hash = canonical_hash(&catalog);
    Ok(Compiled {
        json: serde_json::to_vec(&catalog).unwrap_or_default(),
        hash,
        exports,
        exported,
        resources: count,
        classes,
        types: types.into_iter().collect(),
        titles,
        template_names,
        name,
        environment,
    })
}

fn title_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn hash_value(v: &Value) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(v).unwrap_or_default()))
}

/// SHA-256 of the catalog without `version` and `catalog_uuid`, with
/// resources, edges, classes and tags sorted.
pub fn canonical_hash(catalog: &Value) -> String {
    let mut c = catalog.clone();
    if let Value::Object(map) = &mut c {
        map.remove("version");
        map.remove("catalog_uuid");
        for key in ["resources", "edges", "classes", "tags"] {
            if let Some(Value::Array(items)) = map.get_mut(key) {
                if key == "resources" {
                    for r in items.iter_mut() {
                        if let Some(Value::Array(tags)) = r.get_mut("tags") {
                            sort_values(tags);
                        }
                    }
                }
                sort_values(items);
            }
        }
    }
    // serde_json's maps are sorted by key, so this text is canonical.
    hash_value(&c)
}

fn sort_values(items: &mut [Value]) {
    items.sort_by_cached_key(|v| serde_json::to_string(v).unwrap_or_default());
}

/// The last good catalog of each node, one file each.
#[derive(Clone, Debug)]
pub struct CatalogFiles {
    dir: PathBuf,
}

impl CatalogFiles {
    /// Opens (creating, mode 0700) `dir`.
    /// Opens (or makes) the directory, private, and sweeps the staged
    /// files a crash left behind (the caller holds the state lock).
    pub fn open(dir: &Path) -> io::Result<CatalogFiles> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if private_file::is_temporary(&entry.file_name().to_string_lossy()) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(CatalogFiles {
            dir: dir.to_owned(),
        })
    }

    /// Makes the catalogs committed so far durable (fsync of the folder).
    pub fn sync(&self) -> io::Result<()> {
        private_file::sync_dir(&self.dir)
    }

    fn path(&self, certname: &Certname) -> PathBuf {
        self.dir.join(format!("{certname}.json"))
    }

    /// The node's next catalog, written beside the current one; it takes
    /// the current one's place only when committed.
    pub fn stage(&self, certname: &Certname, json: &[u8]) -> io::Result<Staged> {
        private_file::stage(&self.path(certname), json)
    }

    /// The node's catalog, if it has one.
    pub fn read(&self, certname: &Certname) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(certname)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes the node's catalog (node removed).
    pub fn remove(&self, certname: &Certname) -> io::Result<()> {
        match fs::remove_file(self.path(certname)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"{"catalog":{"name":"n1","version":1,"catalog_uuid":"u1","environment":"production","tags":["a","b"],"classes":["x","y"],
      "resources":[{"type":"File","title":"/a","tags":["file","a"],"exported":false,"parameters":{"mode":"0644","ensure":"file"}},
                   {"type":"Host","title":"web","tags":["host"],"exported":true,"parameters":{"ip":"10.0.0.1"}}],
      "edges":[{"source":"Class[x]","target":"File[/a]"},{"source":"Class[y]","target":"Host[web]"}]}}"#;

    #[test]
    fn noise_and_order_do_not_change_the_hash() {
        let a = read(A.as_bytes()).expect("catalog");
        let b = A
            .replace("\"version\":1", "\"version\":2")
            .replace("\"u1\"", "\"u2\"")
            .replace(r#""classes":["x","y"]"#, r#""classes":["y","x"]"#)
            .replace(r#""tags":["file","a"]"#, r#""tags":["a","file"]"#)
            .replace(
                r#"{"source":"Class[x]","target":"File[/a]"},{"source":"Class[y]","target":"Host[web]"}"#,
                r#"{"source":"Class[y]","target":"Host[web]"},{"source":"Class[x]","target":"File[/a]"}"#,
            )
            .replace(r#""parameters":{"mode":"0644","ensure":"file"}"#, r#""parameters":{"ensure":"file","mode":"0644"}"#);
        let b = read(b.as_bytes()).expect("catalog");
        assert_eq!(a.hash, b.hash);
        let c = read(A.replace("0644", "0600").as_bytes()).expect("catalog");
        assert_ne!(a.hash, c.hash, "a parameter change is a change");
    }

    #[test]
    fn resource_order_does_not_change_the_hash() {
        let v: Value = serde_json::from_str(A).expect("json");
        let mut swapped = v.clone();
        if let Some(Value::Array(r)) = swapped.pointer_mut("/catalog/resources") {
            r.reverse();
        }
        assert_eq!(
            canonical_hash(&v["catalog"]),
            canonical_hash(&swapped["catalog"])
        );
    }

    #[test]
    fn exports_are_listed() {
        let a = read(A.as_bytes()).expect("catalog");
        assert_eq!(a.exports.len(), 1);
        assert_eq!(
            (a.exports[0].kind.as_str(), a.exports[0].title.as_str()),
            ("Host", "web")
        );
        assert_eq!(a.resources, 2);
        assert_eq!(a.exported[0].parameters["ip"], "10.0.0.1");
        assert_eq!(a.exported[0].tags, vec!["host"]);
        assert_eq!(a.titles, vec![("File".to_string(), "/a".to_string())]);
        assert_eq!(a.types, vec!["File", "Host"]);
        assert_eq!(a.classes, vec!["x", "y"]);
    }

    #[test]
    fn the_node_definition_is_not_a_class() {
        let with_node = A
            .replace(r#""classes":["x","y"]"#, r#""classes":["settings","web01","x"]"#)
            .replace(
                r#""resources":["#,
                r#""resources":[{"type":"Node","title":"web01","tags":["node"],"exported":false,"parameters":{}},"#,
            );
        let a = read(with_node.as_bytes()).expect("catalog");
        assert_eq!(a.classes, vec!["settings", "x"]);
    }

    #[test]
    fn garbage_is_not_a_catalog() {
        assert!(matches!(
            read(b"<html>500</html>"),
            Err(CatalogError::NotJson(_))
        ));
        assert!(matches!(
            read(b"{\"catalog\": 5}"),
            Err(CatalogError::NotACatalog(_))
        ));
        assert!(matches!(read(b"[1,2]"), Err(CatalogError::NotACatalog(_))));
    }

    #[test]
    fn files_are_private_and_replaced_atomically() {
        let dir = tempfile::tempdir().expect("tmp");
        let files = CatalogFiles::open(&dir.path().join("catalogs")).expect("open");
        let n = Certname::parse("web01.example.com").expect("certname");
        for json in [&b"{\"a\":1}"[..], b"{\"a\":2}"] {
            files
                .stage(&n, json)
                .expect("stage")
                .commit()
                .expect("commit");
        }
        assert_eq!(
            files.read(&n).expect("read").as_deref(),
            Some(&b"{\"a\":2}"[..])
        );
        let mode = fs::metadata(dir.path().join("catalogs/web01.example.com.json"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = fs::metadata(dir.path().join("catalogs"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        let leftover = dir.path().join("catalogs/.web01.example.com.json.7.0.tmp");
        fs::write(&leftover, b"torn").expect("leftover");
        CatalogFiles::open(&dir.path().join("catalogs")).expect("reopen");
        assert!(!leftover.exists(), "a crash's staged file is swept at open");
        assert!(files.read(&n).expect("read").is_some(), "catalogs stay");
        files.remove(&n).expect("remove");
        assert_eq!(files.read(&n).expect("read"), None);
    }
}
