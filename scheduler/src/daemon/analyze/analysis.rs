//! An analysed environment, answering per node: the catalog lists the
//! node's classes and the defined types it uses, so the node can read the
//! facts those read, plus what node-level code and Hiera read. Anything
//! the analysis cannot bound widens, never narrows.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::daemon::facts::Ignore;

use super::collect::Query;
use super::raw::{FactRef, Raw, TemplateParam, Unit};
use super::reach::Reach;
use super::resolve::{self, Kind, Resolver};
use super::ruby::{self, AnalyzeError};
use super::snapshot::Snapshot;
use super::used::UsedFacts;

/// What a node's catalog depends on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeDeps {
    /// Facts it can read.
    pub facts: Arc<UsedFacts>,
    /// Identifies `facts`: equal sets, equal fingerprints.
    pub fingerprint: u64,
    /// Exported resources it collects: (lower-case type, query).
    pub collects: Vec<(String, Query)>,
    /// Classes in the catalog the analysis does not know (code outside
    /// the analysed module path): they make every fact count.
    pub unknown_classes: Vec<String>,
    /// Why every fact counts, when it does: the first widening reached.
    pub widened_by: Option<String>,
    /// The code it reaches (what a deploy must change to move it).
    pub code: Arc<Reach>,
}

/// A `template($param)` of a class or defined type in a node's catalog,
/// with the template names the catalog gives the parameter (None: no
/// catalog).
struct ParamTemplates<'a> {
    caller: &'a Unit,
    param: &'a TemplateParam,
    names: Option<Vec<String>>,
}

/// An analysed environment, with per-node answers cached by class set.
#[derive(Debug)]
pub struct Analysis {
    /// What the analyzer said.
    pub raw: Raw,
    global: UsedFacts,
    classes: HashMap<String, UsedFacts>,
    defines: HashMap<String, UsedFacts>,
    /// Templates, without their variables (the caller's).
    templates: HashMap<String, UsedFacts>,
    /// Why a class, defined type or the node-level code reads any fact.
    why: HashMap<(Kind, String), String>,
    collected: BTreeSet<String>,
    cache: Mutex<HashMap<Vec<String>, Arc<NodeDeps>>>,
    ignore: Option<Arc<Ignore>>,
    /// The code this analysis read (None: it could not be taken).
    pub snapshot: Option<Arc<Snapshot>>,
    /// Resource types the modules define (lower case).
    module_types: HashSet<String>,
}

impl Analysis {
    /// Analyses `envdir` with its `modules` and the extra module
    /// directories (Puppet's basemodulepath); `hiera` are global
    /// `hiera.yaml` files (read for every node).
    pub fn run(
        ruby: &str,
        envdir: &Path,
        modulepath: &[PathBuf],
        hiera: &[PathBuf],
    ) -> Result<Analysis, AnalyzeError> {
        Ok(Analysis::new(ruby::run(ruby, envdir, modulepath, hiera)?))
    }

    /// [`Analysis::run`], with a [`Snapshot`] of the code: hashed before
    /// the analyzer reads it, so that what the analysis saw is never newer
    /// than what the snapshot says.
    /// `earlier`: the last snapshot, whose files outside the environment
    /// and module path are hashed first too.
    pub fn run_with_snapshot(
        ruby: &str,
        envdir: &Path,
        modulepath: &[PathBuf],
        hiera: &[PathBuf],
        earlier: Option<&Snapshot>,
    ) -> Result<Analysis, AnalyzeError> {
        let mut roots = vec![envdir.to_path_buf()];
        roots.extend(modulepath.iter().cloned());
        let hashes = Snapshot::hash_roots(&roots, earlier);
        let analysis = Analysis::run(ruby, envdir, modulepath, hiera)?;
        let snapshot = Snapshot::new(envdir, hashes, &roots, &analysis.raw);
        Ok(analysis.with_snapshot(snapshot))
    }

    /// Builds the analysis from the analyzer's JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Analysis, AnalyzeError> {
        Ok(Analysis::new(ruby::parse(bytes)?))
    }

    fn new(raw: Raw) -> Analysis {
        let mut r = Resolver {
            raw: &raw,
            memo: HashMap::new(),
            visiting: HashSet::new(),
            why: HashMap::new(),
        };
        let global = r.unit(Kind::Global, "");
        let classes = raw
            .classes
            .keys()
            .map(|k| (k.clone(), r.unit(Kind::Class, k)))
            .collect();
        let defines = raw
            .defines
            .keys()
            .map(|k| (k.clone(), r.unit(Kind::Define, k)))
            .collect();
        let templates = raw
            .templates
            .keys()
            .map(|k| (k.clone(), r.unit(Kind::Template, k)))
            .collect();
        let why = r.why;
        let module_types = raw
            .provides
            .values()
            .flatten()
            .filter_map(|g| g.strip_prefix("type:"))
            .map(str::to_string)
            .collect();
        let collected = raw
            .collectors
            .iter()
            .map(|c| c.kind_of_resource.to_lowercase())
            .collect();
        Analysis {
            raw,
            global,
            classes,
            defines,
            templates,
            why,
            collected,
            cache: Mutex::new(HashMap::new()),
            ignore: None,
            snapshot: None,
            module_types,
        }
    }

    /// Leaves out of every node's set the facts the operator said never
    /// count (`facts.ignore`).
    pub fn with_ignore(mut self, ignore: Arc<Ignore>) -> Analysis {
        self.ignore = Some(ignore);
        self
    }

    /// With the code it read.
    pub fn with_snapshot(mut self, snapshot: Snapshot) -> Analysis {
        self.snapshot = Some(Arc::new(snapshot));
        self
    }

    /// What a node whose compiled catalog is `c` depends on.
    pub fn for_compiled(&self, c: &crate::daemon::catalog::Compiled) -> Arc<NodeDeps> {
        self.for_catalog(&c.classes, &c.types, Some(&c.template_names))
    }

    /// What a node whose catalog holds `classes` and resources of `types`
    /// depends on; `template_names` are the catalog's parameters that may
    /// name templates (see [`Compiled`](crate::daemon::catalog::Compiled)),
    /// None when there is no catalog (then a template named by a parameter
    /// may be any template). Nodes with the same classes, types and
    /// templates named by parameters share the answer.
    pub fn for_catalog(
        &self,
        classes: &[String],
        types: &[String],
        template_names: Option<&HashMap<String, Vec<String>>>,
    ) -> Arc<NodeDeps> {
        let mut unknown_classes = Vec::new();
        let mut key: Vec<String> = Vec::with_capacity(classes.len());
        for c in classes {
            let c = c.to_lowercase();
            if self.classes.contains_key(&c) {
                key.push(c);
            } else if c != "settings" && c != "main" {
                key.push(format!("unknown:{c}"));
                unknown_classes.push(c);
            }
        }
        key.extend(
            types
                .iter()
                .map(|t| format!("type:{}", t.to_lowercase()))
                .filter(|t| self.defines.contains_key(&t[5..])),
        );
        // templates named by parameters, as this catalog names them
        let mut by_param: Vec<ParamTemplates> = Vec::new();
        for k in &key {
            let unit = match k.strip_prefix("type:") {
                Some(t) => self.raw.defines.get(t),
                None => self.raw.classes.get(k),
            };
            if let Some(u) = unit {
                for param in &u.template_params {
                    let names =
                        template_names.map(|n| n.get(&param.param).cloned().unwrap_or_default());
                    by_param.push(ParamTemplates {
                        caller: u,
                        param,
                        names,
                    });
                }
            }
        }
        key.extend(
            by_param
                .iter()
                .map(|p| format!("param:{}={:?}", p.param.param, p.names)),
        );
        // every resource type: a deploy changing one moves the catalog
        key.extend(types.iter().map(|t| format!("rtype:{}", t.to_lowercase())));
        key.sort();
        key.dedup();
        if let Ok(cache) = self.cache.lock() {
            if let Some(d) = cache.get(&key) {
                return d.clone();
            }
        }
        let mut facts = self.global.clone();
        let mut widened_by = self.why.get(&(Kind::Global, String::new())).cloned();
        let mut owners: HashSet<(&str, &str)> = HashSet::new();
        for k in &key {
            if k.starts_with("rtype:") || k.starts_with("param:") {
                continue;
            }
            if let Some(c) = k.strip_prefix("unknown:") {
                facts.all = true;
                widened_by.get_or_insert_with(|| format!("class {c} is not in the analysed code"));
                continue;
            }
            let (kind, name, set) = match k.strip_prefix("type:") {
                Some(t) => (Kind::Define, t, self.defines.get(t)),
                None => (Kind::Class, k.as_str(), self.classes.get(k)),
            };
            if let Some(set) = set {
                if set.all && widened_by.is_none() {
                    let why = self
                        .why
                        .get(&(kind, name.to_string()))
                        .cloned()
                        .unwrap_or_default();
                    widened_by = Some(format!("{} {name}: {why}", kind.noun()));
                }
                facts.extend(set);
            }
            let owner = if kind == Kind::Define {
                "define"
            } else {
                "class"
            };
            owners.insert((owner, name));
        }
        for p in &by_param {
            self.add_param_templates(p, &mut facts, &mut widened_by);
        }
        let collects = self
            .raw
            .collectors
            .iter()
            .filter(|c| c.kind == "global" || owners.contains(&(c.kind.as_str(), c.name.as_str())))
            .map(|c| (c.kind_of_resource.to_lowercase(), c.query.clone()))
            .collect();
        if let Some(ignore) = &self.ignore {
            facts = facts.without(ignore);
        }
        let code = Arc::new(self.reach(&key, &by_param, types));
        let deps = Arc::new(NodeDeps {
            fingerprint: facts.fingerprint(),
            facts: Arc::new(facts),
            collects,
            unknown_classes,
            widened_by,
            code,
        });
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, deps.clone());
        }
        deps
    }

    /// The code a catalog reaches: node-level code, its classes and defined
    /// types (`key`, as [`Analysis::for_catalog`] builds it), the templates
    /// its parameters name, and its resource types.
    fn reach(&self, key: &[String], by_param: &[ParamTemplates], types: &[String]) -> Reach {
        let mut starts = vec![(Kind::Global, String::new())];
        let mut open = None;
        for k in key {
            if let Some(c) = k.strip_prefix("unknown:") {
                open.get_or_insert_with(|| format!("class {c} is not in the analysed code"));
            } else if let Some(t) = k.strip_prefix("type:") {
                starts.push((Kind::Define, t.to_string()));
            } else if !k.starts_with("param:") && !k.starts_with("rtype:") {
                starts.push((Kind::Class, k.clone()));
            }
        }
        let mut any_template = false;
        for p in by_param {
            match &p.names {
                Some(names) => starts.extend(names.iter().map(|n| (Kind::Template, n.clone()))),
                None => any_template = true,
            }
        }
        if !self.raw.builtin_types.is_empty() {
            // a resource type neither Puppet's, a module's nor a defined
            // type: code outside the analysis
            let known = |t: &str| {
                ["class", "node"].contains(&t)
                    || self.defines.contains_key(t)
                    || self.raw.builtin_types.iter().any(|b| b == t)
                    || self.module_types.contains(t)
            };
            if let Some(t) = types.iter().map(|t| t.to_lowercase()).find(|t| !known(t)) {
                open.get_or_insert_with(|| {
                    format!("resource type {t} is not in the analysed code")
                });
            }
        }
        let mut reach = Reach::walk(&self.raw, starts).with_types(types);
        reach.any_template |= any_template;
        if reach.open.is_none() {
            reach.open = open;
        }
        reach
    }

    /// What the templates a parameter names read (`template($param)`):
    /// the ones the catalog names, or with no catalog any template of that
    /// kind; a name that is not an analysed template widens.
    fn add_param_templates(
        &self,
        p: &ParamTemplates,
        facts: &mut UsedFacts,
        widened_by: &mut Option<String>,
    ) {
        let bound = resolve::bound(p.caller);
        let any: Vec<String>;
        let names = match &p.names {
            Some(n) => n,
            None => {
                any = self
                    .raw
                    .templates
                    .keys()
                    .filter(|t| t.ends_with(".epp") == p.param.epp)
                    .cloned()
                    .collect();
                &any
            }
        };
        for name in names {
            match (self.raw.templates.get(name), self.templates.get(name)) {
                (Some(t), Some(set)) => {
                    resolve::template_vars(facts, t, bound.as_ref());
                    if set.all && widened_by.is_none() {
                        *widened_by = self.why.get(&(Kind::Template, name.clone())).cloned();
                    }
                    facts.extend(set);
                }
                _ => {
                    // an absolute path, a file the analysis did not read
                    facts.all = true;
                    widened_by.get_or_insert_with(|| {
                        format!(
                            "template {name} (from ${}) is not among the analysed templates",
                            p.param.param
                        )
                    });
                }
            }
        }
    }

    /// Resource types some collector collects (lower case).
    pub fn collected_types(&self) -> &BTreeSet<String> {
        &self.collected
    }

    /// The facts a class can read, resolved (templates and functions
    /// included).
    pub fn class(&self, name: &str) -> Option<&UsedFacts> {
        self.classes.get(&name.to_lowercase())
    }

    /// The same for a defined type.
    pub fn define(&self, name: &str) -> Option<&UsedFacts> {
        self.defines.get(&name.to_lowercase())
    }

    /// Facts every node can read (node-level code, Hiera).
    pub fn global(&self) -> &UsedFacts {
        &self.global
    }

    /// The human report of `pcq analyze`: fact paths with their sources,
    /// widenings with their causes, collectors.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let mut section = |title: String, unit: &Unit| {
            if unit.facts.is_empty() && unit.vars.is_empty() {
                return;
            }
            let _ = writeln!(out, "{title}");
            for (refs, note) in [
                (&unit.facts, ""),
                (&unit.vars, " (unless the caller binds it)"),
            ] {
                let mut refs: Vec<&FactRef> = refs.iter().collect();
                refs.sort_by(|a, b| (&a.path, &a.file, a.line).cmp(&(&b.path, &b.file, b.line)));
                for f in refs {
                    let _ = writeln!(out, "  {:<40} {}:{}{note}", f.path, f.file, f.line);
                }
            }
        };
        section(
            "node-level code and Hiera (every node):".into(),
            &self.raw.global,
        );
        for (kind, table) in [
            ("class", &self.raw.classes),
            ("define", &self.raw.defines),
            ("template", &self.raw.templates),
            ("function", &self.raw.functions),
        ] {
            let mut names: Vec<&String> = table.keys().collect();
            names.sort();
            for n in names {
                section(format!("{kind} {n}:"), &table[n]);
            }
        }
        let mut widenings = Vec::new();
        let units = std::iter::once(("global", "", &self.raw.global)).chain(
            [
                ("class", &self.raw.classes),
                ("define", &self.raw.defines),
                ("template", &self.raw.templates),
                ("function", &self.raw.functions),
            ]
            .into_iter()
            .flat_map(|(kind, t)| t.iter().map(move |(n, u)| (kind, n.as_str(), u))),
        );
        for (kind, name, u) in units {
            for w in &u.all {
                widenings.push(format!(
                    "  {kind} {name}: {} at {}:{} -> any fact",
                    w.cause, w.file, w.line
                ));
            }
            if let Some(cause) = &u.any_template {
                widenings.push(format!(
                    "  {kind} {name}: {cause} -> every ERB template's facts"
                ));
            }
            if let Some(cause) = &u.any_epp {
                widenings.push(format!(
                    "  {kind} {name}: {cause} -> every EPP template's facts"
                ));
            }
        }
        widenings.sort();
        let _ = writeln!(out, "widenings ({}):", widenings.len());
        for w in &widenings {
            let _ = writeln!(out, "{w}");
        }
        let _ = writeln!(
            out,
            "collectors of exported resources ({}):",
            self.raw.collectors.len()
        );
        for c in &self.raw.collectors {
            let _ = writeln!(
                out,
                "  {} {} collects {} where {} at {}:{}",
                c.kind, c.name, c.kind_of_resource, c.query, c.file, c.line
            );
        }
        for e in &self.raw.errors {
            let _ = writeln!(out, "unparsable: {}: {} -> any fact", e.file, e.message);
        }
        let distinct: BTreeSet<&str> = std::iter::once(&self.raw.global)
            .chain(self.raw.classes.values())
            .chain(self.raw.defines.values())
            .chain(self.raw.templates.values())
            .chain(self.raw.functions.values())
            .flat_map(|u| u.facts.iter().chain(&u.vars).map(|f| f.path.as_str()))
            .collect();
        let _ = writeln!(
            out,
            "{} files in {} modules, {} classes, {} defined types, {} templates; {} distinct fact paths, {} widenings, {} unparsable; {:.2} s in the parser",
            self.raw.files,
            self.raw.modules.len(),
            self.raw.classes.len(),
            self.raw.defines.len(),
            self.raw.templates.len(),
            distinct.len(),
            widenings.len(),
            self.raw.errors.len(),
            self.raw.seconds
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = r#"{
      "classes": {
        "web": {"facts": [{"path": "os.family", "file": "web.pp", "line": 3}], "all": [], "templates": ["web/a.erb"], "functions": ["helper"]},
        "dyn": {"facts": [], "all": [{"cause": "$facts[$x]", "file": "dyn.pp", "line": 9}]},
        "tpl": {"facts": [], "all": [], "any_template": "template($x)"}
      },
      "defines": {"web::vhost": {"facts": [{"path": "networking.ip", "file": "v.pp", "line": 1}], "all": []}},
      "templates": {"web/a.erb": {"facts": [{"path": "fqdn", "file": "a.erb", "line": 1}], "all": []},
                    "web/b.erb": {"facts": [{"path": "hostname", "file": "b.erb", "line": 1}], "all": []}},
      "functions": {"helper": {"facts": [{"path": "memorysize", "file": "h.rb", "line": 2}], "all": [], "functions": ["helper"]}},
      "global": {"facts": [{"path": "os.release.major", "file": "hiera.yaml", "line": 4}], "all": []},
      "collectors": [{"kind": "class", "name": "lb", "type": "File", "query": {"op": "==", "attr": "tag", "value": "backend"}, "file": "lb.pp", "line": 2}],
      "errors": [], "files": 7
    }"#;

    #[test]
    fn a_node_reads_what_its_classes_templates_and_functions_read() {
        let a = Analysis::from_json(RAW.as_bytes()).expect("json");
        let d = a.for_catalog(
            &["Web".into(), "settings".into()],
            &["File".into(), "Web::Vhost".into()],
            None,
        );
        assert_eq!(
            d.facts.paths(),
            vec![
                "fqdn",
                "memorysize",
                "networking.ip",
                "os.family",
                "os.release.major"
            ]
        );
        assert!(!d.facts.all);
        assert!(d.collects.is_empty());
        let lb = a.for_catalog(&["lb".into()], &[], None);
        assert_eq!(lb.collects.len(), 0, "lb is not a class of the analysis");
        assert!(
            lb.facts.all,
            "a class the analysis does not know makes every fact count"
        );
        assert_eq!(lb.unknown_classes, vec!["lb"]);
        assert_ne!(lb.fingerprint, d.fingerprint);
        assert!(
            a.for_catalog(&["dyn".into()], &[], None).facts.all,
            "a widening widens"
        );
        let tpl = a.for_catalog(&["tpl".into()], &[], None);
        assert!(
            tpl.facts.paths().contains(&"hostname".to_string()),
            "every template's facts"
        );
        // nodes with the same classes share the answer
        assert!(Arc::ptr_eq(
            &d,
            &a.for_catalog(&["web".into()], &["web::vhost".into(), "file".into()], None)
        ));
    }

    #[test]
    fn template_variables_are_the_callers_and_parameters_name_templates_per_catalog() {
        let raw = r#"{
          "classes": {
            "app": {"facts": [], "all": [], "templates": ["app/a.erb"], "functions": [],
                    "bound": [["port", "user"], ["port"]],
                    "template_params": [{"param": "app::tmpl", "epp": false}]}
          },
          "defines": {}, "global": {"facts": [], "all": []},
          "templates": {
            "app/a.erb": {"facts": [{"path": "os.family", "file": "a.erb", "line": 1}], "all": [],
                          "vars": [{"path": "port", "file": "a.erb", "line": 2},
                                   {"path": "user", "file": "a.erb", "line": 3},
                                   {"path": "fqdn", "file": "a.erb", "line": 4}]},
            "app/b.erb": {"facts": [], "all": [], "vars": [{"path": "memorysize", "file": "b.erb", "line": 1}]},
            "app/c.erb": {"facts": [{"path": "kernel", "file": "c.erb", "line": 1}], "all": []}
          },
          "functions": {}, "collectors": [], "errors": [], "files": 4
        }"#;
        let a = Analysis::from_json(raw.as_bytes()).expect("json");
        // `port` is bound at both template() calls, `user` at one only
        let names = HashMap::from([("app::tmpl".to_string(), vec!["app/b.erb".to_string()])]);
        let d = a.for_catalog(&["app".into()], &[], Some(&names));
        assert_eq!(
            d.facts.paths(),
            vec!["fqdn", "memorysize", "os.family", "user"],
            "b.erb by the parameter's value, not c.erb"
        );
        // without a catalog, the parameter may name any ERB template
        let any = a.for_catalog(&["app".into()], &[], None);
        assert!(any.facts.touches("kernel") && !any.facts.all);
        // a name that is not an analysed template widens
        let odd = HashMap::from([("app::tmpl".to_string(), vec!["/etc/x.erb".to_string()])]);
        let w = a.for_catalog(&["app".into()], &[], Some(&odd));
        assert!(w.facts.all);
        assert!(w
            .widened_by
            .clone()
            .unwrap_or_default()
            .contains("/etc/x.erb"));
        // no value in the catalog: no template rendered by the parameter
        let none = a.for_catalog(&["app".into()], &[], Some(&HashMap::new()));
        assert_eq!(none.facts.paths(), vec!["fqdn", "os.family", "user"]);
        assert!(
            !Arc::ptr_eq(&none, &d),
            "answers differ by the templates named"
        );
    }

    #[test]
    fn a_function_that_is_neither_analysed_nor_puppets_own_widens() {
        let raw = r#"{
          "classes": {
            "a": {"facts": [], "all": [], "functions": ["include", "a::known"]},
            "b": {"facts": [], "all": [], "functions": ["mystery"]}
          },
          "defines": {}, "global": {"facts": [], "all": []}, "templates": {},
          "functions": {"a::known": {"facts": [{"path": "os.family", "file": "f.pp", "line": 1}], "all": []}},
          "collectors": [], "errors": [], "files": 2, "builtins": ["each", "include"]
        }"#;
        let a = Analysis::from_json(raw.as_bytes()).expect("json");
        let known = a.for_catalog(&["a".into()], &[], None);
        assert_eq!(known.facts.paths(), vec!["os.family"]);
        let unknown = a.for_catalog(&["b".into()], &[], None);
        assert!(unknown.facts.all);
        assert!(
            unknown
                .widened_by
                .clone()
                .unwrap_or_default()
                .contains("function mystery is not in the analysed code"),
            "{:?}",
            unknown.widened_by
        );
    }

    #[test]
    fn the_report_lists_sources_widenings_and_collectors() {
        let a = Analysis::from_json(RAW.as_bytes()).expect("json");
        let r = a.report();
        assert!(r.contains("class web:\n  os.family"), "{r}");
        assert!(
            r.contains("class dyn: $facts[$x] at dyn.pp:9 -> any fact"),
            "{r}"
        );
        assert!(
            r.contains("class lb collects File where tag == 'backend'"),
            "{r}"
        );
    }
}
