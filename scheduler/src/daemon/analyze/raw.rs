//! The analyzer's report, as `pcq_analyze.rb` prints it: per class,
//! defined type, template and function (a *unit*), the fact paths read and
//! the widenings, plus every collector and every file it could not parse.
//! Plain data; [`super::analysis`] turns it into answers per node.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::collect::Query;

/// Where a fact is read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FactRef {
    /// Dotted fact path.
    pub path: String,
    /// File.
    pub file: String,
    /// Line (0 if unknown).
    pub line: u32,
}

/// Why some code may read any fact.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Widening {
    /// What the analysis could not bound.
    pub cause: String,
    /// File.
    pub file: String,
    /// Line.
    pub line: u32,
}

/// One class, defined type, template, function, or the global code.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Unit {
    /// Facts read directly.
    #[serde(default)]
    pub facts: Vec<FactRef>,
    /// Widenings to any fact.
    #[serde(default)]
    pub all: Vec<Widening>,
    /// Code the analysis cannot follow (a function or template named at
    /// run time, a Hiera backend it does not read, an unparsable file):
    /// any code, for deploys. Each is also in `all`.
    #[serde(default)]
    pub opens: Vec<Widening>,
    /// (ERB template files) variables of the scope the template runs in:
    /// each is a fact unless the caller binds its name.
    #[serde(default)]
    pub vars: Vec<FactRef>,
    /// (Classes, defined types) per `template()` call, the names bound
    /// where it is called: parameters, and locals assigned on every path
    /// before it.
    #[serde(default)]
    pub bound: Vec<Vec<String>>,
    /// Templates named by a parameter of a class or defined type: which
    /// ones a node renders is the parameter's value in its catalog.
    #[serde(default)]
    pub template_params: Vec<TemplateParam>,
    /// Templates rendered by name.
    #[serde(default)]
    pub templates: Vec<String>,
    /// Functions called.
    #[serde(default)]
    pub functions: Vec<String>,
    /// An ERB template whose name is computed at run time (then every
    /// ERB template's reads count).
    #[serde(default)]
    pub any_template: Option<String>,
    /// The same for an EPP template.
    #[serde(default)]
    pub any_epp: Option<String>,
    /// Templates named by a computed string with a known start
    /// (`"apache/mod/${name}.erb"`): every template under it counts.
    #[serde(default)]
    pub template_prefixes: Vec<String>,
}

/// A `template($param)` or `epp($param)` call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TemplateParam {
    /// `class::param` or `define::param`, lower case.
    pub param: String,
    /// An `epp()` call (else `template()`).
    #[serde(default)]
    pub epp: bool,
}

/// A collector of exported resources.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Collector {
    /// `class`, `define` or `global` (node-level code).
    pub kind: String,
    /// The class or defined type it is in.
    pub name: String,
    /// The collected resource type, as written (`Haproxy::Balancermember`).
    #[serde(rename = "type")]
    pub kind_of_resource: String,
    /// The query.
    pub query: Query,
    /// File.
    pub file: String,
    /// Line.
    pub line: u32,
}

/// A file the parser refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParseError {
    /// File.
    pub file: String,
    /// Message.
    pub message: String,
}

/// What the analyzer reports for an environment.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Raw {
    /// Classes by lower-case name.
    pub classes: HashMap<String, Unit>,
    /// Defined types by lower-case name.
    pub defines: HashMap<String, Unit>,
    /// Templates by `module/path`.
    pub templates: HashMap<String, Unit>,
    /// Functions by lower-case name.
    pub functions: HashMap<String, Unit>,
    /// Each module's Hiera layer (read by the module's classes and
    /// defined types, and by any code that calls `lookup()`).
    #[serde(default)]
    pub module_hiera: HashMap<String, Unit>,
    /// Node-level code, site manifests, Hiera: read for every node.
    pub global: Unit,
    /// Collectors.
    pub collectors: Vec<Collector>,
    /// Unparsable files (they widen).
    pub errors: Vec<ParseError>,
    /// Files read.
    pub files: usize,
    /// Modules found.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Functions Puppet ships (and the gems on its Ruby's load path); empty
    /// when the analyzer did not say (then an unknown function is taken as
    /// reading nothing).
    #[serde(default)]
    pub builtins: Vec<String>,
    /// Per file read, what it gives the code: `class:x`, `define:x`,
    /// `function:x`, `template:module/path`, `module_hiera:module`,
    /// `alias:x` (a type alias), `global` (read for every node) or
    /// `unparsable` (see [`super::snapshot`]).
    #[serde(default)]
    pub provides: HashMap<String, Vec<String>>,
    /// The environment's module path, in order.
    #[serde(default)]
    pub modulepath: Vec<String>,
    /// `[directory, name]` of each module, the one that wins on the module
    /// path.
    #[serde(default)]
    pub module_dirs: Vec<(String, String)>,
    /// Resource types Puppet ships (lower case); empty when the analyzer
    /// did not say. Modules' types are in `provides` (`type:x`).
    #[serde(default)]
    pub builtin_types: Vec<String>,
    /// Seconds the analyzer took.
    #[serde(default)]
    pub seconds: f64,
}
