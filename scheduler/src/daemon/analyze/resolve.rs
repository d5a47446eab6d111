//! Resolving units transitively: a class reads what it reads itself plus
//! what its templates, functions and Hiera layers read, memoised, with
//! cycles cut; and why a unit reads "any fact" when it does.
//!
//! An ERB template's variables (`@name`) are the calling scope's: a class
//! or defined type that binds `name` (a parameter, a local assigned on
//! every path before each `template()` call) reads its own value, not a
//! fact. So a template's own resolution leaves its variables out, and the
//! caller adds those it does not bind; any other caller (a template, a
//! function, node-level code) adds them all.

use std::collections::{HashMap, HashSet};

use super::raw::{Raw, Unit};
use super::used::UsedFacts;

/// Functions that read Hiera: code calling them may read any module's data.
pub const LOOKUPS: [&str; 5] = [
    "lookup",
    "hiera",
    "hiera_array",
    "hiera_hash",
    "hiera_include",
];

/// Which table of [`Raw`] a unit is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Node-level code and global Hiera.
    Global,
    /// A class.
    Class,
    /// A defined type.
    Define,
    /// An ERB or EPP template.
    Template,
    /// A function (Puppet or Ruby).
    Function,
    /// A module's own Hiera data.
    ModuleHiera,
}

/// Resolves units transitively (templates, functions, Hiera layers),
/// memoised, cycles cut.
pub struct Resolver<'a> {
    /// The analyzer's report.
    pub raw: &'a Raw,
    /// Units resolved so far.
    pub memo: HashMap<(Kind, String), UsedFacts>,
    /// Units being resolved (a cycle stops here).
    pub visiting: HashSet<(Kind, String)>,
    /// Why a unit reads any fact: its own widening, or the unit it got it
    /// from.
    pub why: HashMap<(Kind, String), String>,
}

impl<'a> Resolver<'a> {
    fn lookup(raw: &'a Raw, kind: Kind, name: &str) -> Option<&'a Unit> {
        match kind {
            Kind::Global => Some(&raw.global),
            Kind::Class => raw.classes.get(name),
            Kind::Define => raw.defines.get(name),
            Kind::Template => raw.templates.get(name),
            Kind::Function => raw.functions.get(name),
            Kind::ModuleHiera => raw.module_hiera.get(name),
        }
    }

    /// What a unit reads, with everything it pulls in.
    pub fn unit(&mut self, kind: Kind, name: &str) -> UsedFacts {
        let key = (kind, name.to_string());
        if let Some(done) = self.memo.get(&key) {
            return done.clone();
        }
        if !self.visiting.insert(key.clone()) {
            return UsedFacts::default(); // a cycle: its members are being summed already
        }
        let raw = self.raw;
        let mut set = UsedFacts::default();
        let mut subs: Vec<(Kind, &str)> = Vec::new();
        let unit = Self::lookup(raw, kind, name);
        let bound = match unit {
            Some(u) if matches!(kind, Kind::Class | Kind::Define) => bound(u),
            _ => None,
        };
        if let Some(u) = unit {
            if kind != Kind::Template {
                for v in &u.vars {
                    set.insert(&v.path);
                }
            }
            if let Some(w) = u.all.first() {
                set.all = true;
                self.why
                    .insert(key.clone(), format!("{}:{}: {}", w.file, w.line, w.cause));
            }
            for f in &u.facts {
                set.insert(&f.path);
            }
            subs.extend(u.templates.iter().map(|t| (Kind::Template, t.as_str())));
            // a template named by a literal the analysis has no file for (an
            // absolute path, another module path): it may read anything
            if let Some(t) = u.templates.iter().find(|t| !raw.templates.contains_key(*t)) {
                if !set.all {
                    set.all = true;
                    self.why.insert(
                        key.clone(),
                        format!("template {t} is not among the analysed templates"),
                    );
                }
            }
            for prefix in &u.template_prefixes {
                subs.extend(
                    raw.templates
                        .keys()
                        .filter(|t| t.starts_with(prefix.as_str()))
                        .map(|t| (Kind::Template, t.as_str())),
                );
            }
            for (any, epp) in [(&u.any_template, false), (&u.any_epp, true)] {
                if any.is_some() {
                    subs.extend(
                        raw.templates
                            .keys()
                            .filter(|t| t.ends_with(".epp") == epp)
                            .map(|t| (Kind::Template, t.as_str())),
                    );
                }
            }
            for f in &u.functions {
                if LOOKUPS.contains(&f.as_str()) {
                    subs.extend(
                        raw.module_hiera
                            .keys()
                            .map(|m| (Kind::ModuleHiera, m.as_str())),
                    );
                } else if raw.functions.contains_key(f) {
                    subs.push((Kind::Function, f.as_str()));
                } else if !raw.builtins.is_empty() && !raw.builtins.contains(f) && !set.all {
                    // a function from code the analysis did not read
                    set.all = true;
                    self.why.insert(
                        key.clone(),
                        format!("function {f} is not in the analysed code"),
                    );
                }
            }
        }
        if matches!(kind, Kind::Class | Kind::Define) {
            // automatic parameter lookup reads the module's own Hiera layer
            subs.push((Kind::ModuleHiera, name.split("::").next().unwrap_or(name)));
        }
        for (sub_kind, sub_name) in subs {
            if sub_kind == Kind::Template {
                if let Some(t) = raw.templates.get(sub_name) {
                    template_vars(&mut set, t, bound.as_ref());
                }
            }
            let sub = self.unit(sub_kind, sub_name);
            if sub.all && !set.all {
                let why = self
                    .why
                    .get(&(sub_kind, sub_name.to_string()))
                    .cloned()
                    .unwrap_or_default();
                self.why.insert(
                    key.clone(),
                    format!("{} {sub_name}: {why}", sub_kind.noun()),
                );
            }
            set.extend(&sub);
        }
        self.visiting.remove(&key);
        self.memo.insert(key, set.clone());
        set
    }
}

/// The names a class or defined type binds at every one of its
/// `template()` calls (None: it makes none).
pub fn bound(unit: &Unit) -> Option<HashSet<&str>> {
    unit.bound.split_first().map(|(first, rest)| {
        first
            .iter()
            .map(String::as_str)
            .filter(|n| rest.iter().all(|b| b.iter().any(|m| m == n)))
            .collect()
    })
}

/// Adds an ERB template's variables to `set`, less the names its caller
/// binds (`bound`; None: any variable may be a fact).
pub fn template_vars(set: &mut UsedFacts, template: &Unit, bound: Option<&HashSet<&str>>) {
    for v in &template.vars {
        let head = v.path.split('.').next().unwrap_or("");
        if !bound.is_some_and(|b| b.contains(head)) {
            set.insert(&v.path);
        }
    }
}

impl Kind {
    /// The unit kind in words, for reports.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Global => "node-level code",
            Kind::Class => "class",
            Kind::Define => "defined type",
            Kind::Template => "template",
            Kind::Function => "function",
            Kind::ModuleHiera => "Hiera data of module",
        }
    }
}
