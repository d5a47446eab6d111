//! What code a node's catalog reaches, and whether a deploy moves it.
//!
//! A catalog lists its classes and its resources' types. From those the
//! analysis follows, transitively, every template, function and Hiera
//! layer the code may use; together with node-level code that is all the
//! code the catalog can depend on. A deploy's [`Change`] names what it
//! touched; a node whose reach meets none of it compiles to the same
//! catalog and is left alone. Whatever the analysis cannot follow (a class,
//! function or template outside the analysed code) makes the node *open*:
//! it recompiles on every deploy.

use std::collections::{HashSet, VecDeque};

use super::raw::Raw;
use super::resolve::{Kind, LOOKUPS};
use super::snapshot::Change;

/// Functions that read a module's files by path (its `files`, its
/// `metadata.json`, its data or templates as plain files).
const FILE_READERS: [&str; 12] = [
    "file",
    "binary_file",
    "find_file",
    "find_template",
    "load_module_metadata",
    "stdlib::load_module_metadata",
    "loadyaml",
    "stdlib::loadyaml",
    "loadjson",
    "stdlib::loadjson",
    "get_module_path",
    "stdlib::get_module_path",
];

/// The code a catalog reaches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// What it reaches, named as snapshots name what files give
    /// (`class:x`, `define:x`, `template:m/p`, `function:x`,
    /// `module_hiera:m`, `type:x`).
    pub names: HashSet<String>,
    /// Templates named by a computed string with this start.
    pub template_prefixes: Vec<String>,
    /// A template named at run time: any template.
    pub any_template: bool,
    /// Calls `file()` or the like (reads modules' `files`).
    pub reads_files: bool,
    /// Calls `defined()`: adding or removing any definition may move it.
    pub asks_defined: bool,
    /// Calls `lookup()` or the like: any module's Hiera data, a module's
    /// new data included, may move it.
    pub looks_up: bool,
    /// Why it reaches code outside the analysis (then every deploy moves
    /// it).
    pub open: Option<String>,
}

impl Reach {
    /// Follows `starts` through the units they use.
    pub fn walk(raw: &Raw, starts: impl IntoIterator<Item = (Kind, String)>) -> Reach {
        let mut reach = Reach::default();
        let mut seen: HashSet<(Kind, String)> = HashSet::new();
        let mut queue: VecDeque<(Kind, String)> = starts.into_iter().collect();
        while let Some((kind, name)) = queue.pop_front() {
            if !seen.insert((kind, name.clone())) {
                continue;
            }
            if let Some(label) = label(kind, &name) {
                reach.names.insert(label);
            }
            let unit = match kind {
                Kind::Global => Some(&raw.global),
                Kind::Class => raw.classes.get(&name),
                Kind::Define => raw.defines.get(&name),
                Kind::Template => raw.templates.get(&name),
                Kind::Function => raw.functions.get(&name),
                Kind::ModuleHiera => raw.module_hiera.get(&name),
            };
            if matches!(kind, Kind::Class | Kind::Define) {
                let module = name.split("::").next().unwrap_or(&name);
                queue.push_back((Kind::ModuleHiera, module.to_string()));
            }
            if let Some(o) = unit.and_then(|u| u.opens.first()) {
                reach
                    .open
                    .get_or_insert_with(|| format!("{}:{}: {}", o.file, o.line, o.cause));
            }
            let Some(unit) = unit else {
                if matches!(kind, Kind::Class | Kind::Define | Kind::Template) {
                    reach.open.get_or_insert_with(|| {
                        format!("{} {name} is not in the analysed code", kind.noun())
                    });
                }
                continue;
            };
            queue.extend(unit.templates.iter().map(|t| (Kind::Template, t.clone())));
            for prefix in &unit.template_prefixes {
                reach.template_prefixes.push(prefix.clone());
                queue.extend(
                    raw.templates
                        .keys()
                        .filter(|t| t.starts_with(prefix.as_str()))
                        .map(|t| (Kind::Template, t.clone())),
                );
            }
            if unit.any_template.is_some() || unit.any_epp.is_some() {
                reach.any_template = true;
                queue.extend(raw.templates.keys().map(|t| (Kind::Template, t.clone())));
            }
            for f in &unit.functions {
                reach.names.insert(format!("function:{f}"));
                reach.reads_files |= FILE_READERS.contains(&f.as_str());
                reach.asks_defined |= f == "defined";
                if LOOKUPS.contains(&f.as_str()) {
                    reach.looks_up = true;
                    queue.extend(
                        raw.module_hiera
                            .keys()
                            .map(|m| (Kind::ModuleHiera, m.clone())),
                    );
                } else if raw.functions.contains_key(f) {
                    queue.push_back((Kind::Function, f.clone()));
                } else if !raw.builtins.is_empty() && !raw.builtins.contains(f) {
                    reach
                        .open
                        .get_or_insert_with(|| format!("function {f} is not in the analysed code"));
                }
            }
        }
        reach
    }

    /// Adds the catalog's resource types (lower case).
    pub fn with_types(mut self, types: &[String]) -> Reach {
        self.names
            .extend(types.iter().map(|t| format!("type:{}", t.to_lowercase())));
        self
    }

    /// Why `change` may move this catalog, or None when it cannot.
    pub fn moved_by(&self, change: &Change) -> Option<String> {
        if let Some(why) = change.unbounded.first() {
            return Some(why.clone());
        }
        if let Some(open) = &self.open {
            return Some(format!("reaches code outside the analysis: {open}"));
        }
        if change.definitions_moved && self.asks_defined {
            return Some("calls defined(), and a definition was added or removed".into());
        }
        change.names.iter().find_map(|name| {
            let (kind, what) = name.split_once(':').unwrap_or((name, ""));
            let hit = match kind {
                "files" => self.reads_files,
                "template" => {
                    self.names.contains(name)
                        || self.any_template
                        || self.reads_files
                        || self.template_prefixes.iter().any(|p| what.starts_with(p))
                }
                "module_hiera" => self.names.contains(name) || self.looks_up || self.reads_files,
                _ => self.names.contains(name),
            };
            hit.then(|| match kind {
                "files" => format!(
                    "reads module files (file() or the like), and files of module {what} changed"
                ),
                "module_hiera" => format!("Hiera data of module {what} changed"),
                "type" => format!("resource type {what} changed"),
                _ => format!("{kind} {what} changed"),
            })
        })
    }
}

/// A unit as snapshots name it.
fn label(kind: Kind, name: &str) -> Option<String> {
    let kind = match kind {
        Kind::Global => return None,
        Kind::Class => "class",
        Kind::Define => "define",
        Kind::Template => "template",
        Kind::Function => "function",
        Kind::ModuleHiera => "module_hiera",
    };
    Some(format!("{kind}:{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::analyze::raw::Unit;

    fn unit(templates: &[&str], functions: &[&str]) -> Unit {
        Unit {
            templates: templates.iter().map(|t| t.to_string()).collect(),
            functions: functions.iter().map(|f| f.to_string()).collect(),
            ..Unit::default()
        }
    }

    fn raw() -> Raw {
        let mut raw = Raw::default();
        raw.classes
            .insert("ntp".into(), unit(&["ntp/ntp.conf.erb"], &["ntp::helper"]));
        raw.classes.insert("ssh".into(), unit(&[], &["lookup"]));
        raw.classes
            .insert("web".into(), unit(&[], &["defined", "file", "sprintf"]));
        raw.templates
            .insert("ntp/ntp.conf.erb".into(), unit(&[], &["fmt_peer"]));
        raw.templates.insert("ssh/sshd.erb".into(), Unit::default());
        raw.functions.insert("ntp::helper".into(), Unit::default());
        raw.functions.insert("fmt_peer".into(), Unit::default());
        raw.module_hiera.insert("ntp".into(), Unit::default());
        raw.module_hiera.insert("ssh".into(), Unit::default());
        raw.builtins = vec![
            "defined".into(),
            "file".into(),
            "sprintf".into(),
            "lookup".into(),
        ];
        raw
    }

    fn change(names: &[&str]) -> Change {
        Change {
            names: names.iter().map(|n| n.to_string()).collect(),
            ..Change::default()
        }
    }

    #[test]
    fn a_class_reaches_its_templates_functions_and_module_data_transitively() {
        let r = Reach::walk(&raw(), [(Kind::Class, "ntp".to_string())]);
        for name in [
            "class:ntp",
            "template:ntp/ntp.conf.erb",
            "function:ntp::helper",
            "function:fmt_peer",
            "module_hiera:ntp",
        ] {
            assert!(r.names.contains(name), "{name}: {:?}", r.names);
        }
        assert!(!r.names.contains("module_hiera:ssh"));
        assert!(r
            .moved_by(&change(&["template:ntp/ntp.conf.erb"]))
            .is_some());
        assert!(r.moved_by(&change(&["function:fmt_peer"])).is_some());
        assert!(r.moved_by(&change(&["template:ssh/sshd.erb"])).is_none());
        assert!(r.moved_by(&change(&["files:ntp"])).is_none(), "no file()");
        assert!(r.moved_by(&Change::default()).is_none());
    }

    #[test]
    fn lookups_reach_every_module_layer_and_builtins_are_watched_by_name() {
        let r = Reach::walk(&raw(), [(Kind::Class, "ssh".to_string())]);
        assert!(r.moved_by(&change(&["module_hiera:ntp"])).is_some());
        let web = Reach::walk(&raw(), [(Kind::Class, "web".to_string())]);
        assert!(web.reads_files && web.asks_defined && web.open.is_none());
        assert!(web.moved_by(&change(&["files:anything"])).is_some());
        assert!(
            web.moved_by(&change(&["function:sprintf"])).is_some(),
            "a module shadowing a built-in function"
        );
        let moved = Change {
            definitions_moved: true,
            names: ["class:unrelated".to_string()].into(),
            ..Change::default()
        };
        assert!(web
            .moved_by(&moved)
            .unwrap_or_default()
            .contains("defined()"));
    }

    #[test]
    fn code_outside_the_analysis_opens_the_node_and_unbounded_changes_move_all() {
        let mut raw = raw();
        raw.classes
            .insert("x".into(), unit(&["/abs/t.erb"], &["gem_fn"]));
        let r = Reach::walk(&raw, [(Kind::Class, "x".to_string())]);
        assert!(r.open.is_some());
        assert!(r.moved_by(&change(&["class:other"])).is_some());
        let ntp = Reach::walk(&raw, [(Kind::Class, "ntp".to_string())]);
        let every = Change {
            unbounded: vec!["site.pp changed".into()],
            ..Change::default()
        };
        assert_eq!(ntp.moved_by(&every).as_deref(), Some("site.pp changed"));
        // code the analyzer could not follow (call($f)) opens its nodes
        let mut called = unit(&[], &[]);
        called.opens.push(crate::daemon::analyze::raw::Widening {
            cause: "call() of a function computed at run time".into(),
            file: "x.pp".into(),
            line: 3,
        });
        raw.classes.insert("dyn".into(), called);
        let r = Reach::walk(&raw, [(Kind::Class, "dyn".to_string())]);
        assert!(
            r.open.as_deref().is_some_and(|o| o.contains("x.pp:3")),
            "{:?}",
            r.open
        );
        // a lookup reaches a module's data the old analysis did not know
        let ssh = Reach::walk(&raw, [(Kind::Class, "ssh".to_string())]);
        assert!(ssh.moved_by(&change(&["module_hiera:brand_new"])).is_some());
        assert!(ntp.moved_by(&change(&["module_hiera:brand_new"])).is_none());
        let typed = ntp.with_types(&["File".into(), "Ntp_key".into()]);
        assert!(typed.moved_by(&change(&["type:ntp_key"])).is_some());
    }
}
