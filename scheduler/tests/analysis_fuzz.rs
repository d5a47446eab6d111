//! The facts-used analysis against the real compiler, on code it has never
//! seen. Small modules are generated from a grammar of the ways code reads
//! facts (Puppet expressions, string interpolation, heredocs, `getvar`,
//! `fact()`, ERB and EPP templates inline and in files, Puppet and Ruby
//! functions of both APIs, Hiera data, defined types, lambdas, selectors,
//! `case`, a variable assigned only on some paths), some recognised and
//! some that must widen; each case is compiled through Puppet Server with a
//! base fact set and then with each fact leaf changed in turn. Whenever a
//! change moves the canonical catalog hash, the upload filter (the hash of
//! the facts the analysis says the catalog uses) must move too, or the
//! analysis must have widened to every fact. A case with no widening form
//! must not widen, and every recognised read's fact must be in the set.
//!
//! The cases are reproducible from (seed, case). CI runs [`SEED`] and the
//! regression cases; `PCQ_FUZZ_SEED=<n>` (or `random`) and
//! `PCQ_FUZZ_CASES=<n>` explore further. A failure prints its seed and
//! case: add them to [`REGRESSIONS`].

#![cfg(feature = "e2e")]

#[path = "e2e/harness.rs"]
#[allow(dead_code)] // each test binary uses part of it
mod harness;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scheduler::daemon::analyze::{default_ruby, Analysis};
use scheduler::daemon::backend::puppetserver::PuppetServer;
use scheduler::daemon::backend::{Compiler, Job};
use scheduler::daemon::catalog;
use scheduler::daemon::certname::Certname;
use scheduler::daemon::facts::Ignore;
use scheduler::daemon::tls::PuppetSsl;
use serde_json::{json, Map, Value};

/// The seed CI runs.
const SEED: u64 = 11;
/// Cases CI runs for [`SEED`].
const CASES: usize = 120;
/// (seed, case) pairs that once found a miss.
const REGRESSIONS: &[(u64, usize)] = &[];
/// Compiles in flight (Puppet Server has two JRubies here).
const CONCURRENCY: usize = 3;

/// The fact leaves of the base fact set, as key paths.
const LEAVES: &[&[&str]] = &[
    &["fz_a"],
    &["fz_b"],
    &["fz_c"],
    &["fz_n"],
    &["fz_flag"],
    &["fz_u"],
    &["fz_v"],
    &["hostname"],
    &["fz_s", "x"],
    &["fz_s", "y", "z"],
    &["fz_s", "list"],
    &["fz_dot", "k.v"],
    &["fz_dot", "w"],
    &["os", "family"],
    &["os", "release", "major"],
];

fn base_facts(case: &str) -> Map<String, Value> {
    let v = json!({
        "fuzz_case": case,
        "fz_a": "alpha", "fz_b": "beta", "fz_c": "gamma", "fz_n": 3, "fz_flag": true,
        "fz_u": "you", "fz_v": "vee", "hostname": "fuzzhost",
        "fz_s": {"x": "ex", "y": {"z": "zed"}, "list": ["l0", "l1"]},
        "fz_dot": {"k.v": "dotted", "w": "plain"},
        "os": {"family": "Debian", "release": {"major": "12"}},
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `facts` with the leaf at `keys` changed (strings get a suffix, numbers
/// go up, booleans flip, arrays grow).
fn perturb(facts: &Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    let mut out = facts.clone();
    let mut v = out.get_mut(keys[0]);
    for k in &keys[1..] {
        v = match v {
            Some(Value::Object(m)) => m.get_mut(*k),
            _ => None,
        };
    }
    if let Some(v) = v {
        *v = match v {
            Value::String(s) => Value::String(format!("{s}-pcq-verify")),
            Value::Bool(b) => Value::Bool(!*b),
            Value::Number(n) => Value::from(n.as_i64().unwrap_or(0) + 1),
            Value::Array(a) => {
                let mut a = a.clone();
                a.push(Value::from("pcq-verify"));
                Value::Array(a)
            }
            _ => Value::from("pcq-verify"),
        };
    }
    out
}

/// What a changed leaf looks like in a string (see [`perturb`]); no base
/// value matches it.
const CHANGED: &str = "/pcq-verify|4|false/";

/// One read of a fact in generated code.
#[derive(Default)]
struct Read {
    /// The form, for messages.
    form: String,
    /// The leaf read.
    leaf: &'static [&'static str],
    /// Statements before the expression.
    setup: String,
    /// A Puppet expression whose value shows the fact's.
    expr: String,
    /// Files of the module: (path under the module, text).
    files: Vec<(String, String)>,
    /// A class parameter the read needs: its name, default and value in
    /// Hiera data (YAML).
    param: Option<(String, String, String)>,
    /// The analysis must widen for this read.
    widens: bool,
}

impl Read {
    /// Reads through the ERB template file `ctx.erb` of module `m`.
    fn erb_file(&mut self, m: &str, ctx: &str, text: String) {
        self.files.push((format!("templates/{ctx}.erb"), text));
        self.expr = format!("template('{m}/{ctx}.erb')");
    }

    /// Reads through the 4.x Ruby function `m::ctx`, whose body is `body`.
    fn ruby4_function(&mut self, m: &str, ctx: &str, body: &str) {
        self.files.push((
            format!("lib/puppet/functions/{m}/{ctx}.rb"),
            format!(
                "Puppet::Functions.create_function(:'{m}::{ctx}') do\n  def {ctx}\n    {body}\n  end\nend\n"
            ),
        ));
        self.expr = format!("{m}::{ctx}()");
    }
}

/// One generated case: a module `fuzz<id>` with its class and what it
/// needs.
struct Case {
    id: String,
    module: String,
    class: String,
    files: Vec<(String, String)>,
    hiera: Vec<String>,
    reads: Vec<Read>,
}

impl Case {
    fn widens(&self) -> bool {
        self.reads.iter().any(|r| r.widens)
    }

    fn describe(&self) -> String {
        let mut s = format!("--- class {} ---\n{}\n", self.module, self.class);
        for (p, t) in &self.files {
            let _ = writeln!(s, "--- {p} ---\n{t}");
        }
        for h in &self.hiera {
            let _ = writeln!(s, "--- data: {h}");
        }
        s
    }
}

fn quoted(keys: &[&str], q: char) -> String {
    keys.iter().map(|k| format!("[{q}{k}{q}]")).collect()
}

fn dig_args(keys: &[&str], q: char) -> String {
    keys.iter()
        .map(|k| format!("{q}{k}{q}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A dotted path for getvar() and Hiera, quoting keys that hold a dot.
fn dotted(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| {
            if k.contains('.') {
                format!("\"{k}\"")
            } else {
                k.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Recognised forms over any leaf, and forms that need a top-level one.
const FORMS: &[&str] = &[
    "facts-index",
    "facts-dig",
    "top-scope",
    "bare-top-scope",
    "getvar-facts",
    "getvar-top",
    "getvar-method",
    "call-getvar",
    "fact-function",
    "interpolation",
    "heredoc",
    "inline-erb-ivar",
    "inline-erb-facts",
    "inline-erb-scope",
    "inline-epp",
    "erb-file",
    "epp-file",
    "puppet-function",
    "ruby4-function",
    "ruby3-function",
    "hiera",
    "conditional-local",
    "erb-conditional-local",
    "local-alias",
    "erb-param-template",
    "self-assign",
    "ruby4-call-function",
    "epp-no-extension",
];

const WIDENING_FORMS: &[&str] = &[
    "facts-computed-key",
    "getvar-computed",
    "facts-whole",
    "erb-to-hash",
    "erb-computed-key",
    "ruby4-computed-key",
    "inline-erb-computed",
];

/// A read of `leaf` in form `form`, in module `m`; `ctx` names what it
/// defines.
fn read(
    rng: &mut ChaCha8Rng,
    form: &str,
    leaf: &'static [&'static str],
    m: &str,
    ctx: &str,
) -> Read {
    let k0 = leaf[0];
    let rest = &leaf[1..];
    let mut r = Read {
        form: form.to_string(),
        leaf,
        ..Read::default()
    };
    let idx = quoted(leaf, '\'');
    let idx_dq = quoted(leaf, '"');
    let rest_idx = quoted(rest, '\'');
    let rest_dq = quoted(rest, '"');
    match form {
        "facts-index" => r.expr = format!("$facts{idx}"),
        "facts-dig" => r.expr = format!("$facts.dig({})", dig_args(leaf, '\'')),
        "top-scope" => r.expr = format!("$::{k0}{rest_idx}"),
        "bare-top-scope" => r.expr = format!("${k0}{rest_idx}"),
        "getvar-facts" => r.expr = format!("getvar('facts.{}')", dotted(leaf)),
        "getvar-top" => r.expr = format!("getvar('{}')", dotted(leaf)),
        "getvar-method" => r.expr = format!("'facts.{}'.getvar()", dotted(leaf)),
        "call-getvar" => r.expr = format!("call('getvar', 'facts.{}')", dotted(leaf)),
        "fact-function" => r.expr = format!("fact('{}')", leaf.join(".")),
        "interpolation" => r.expr = format!("\"<${{facts{idx}}}>\""),
        "heredoc" => r.expr = format!("@(\"END\")\n  <${{facts{idx}}}>\n  | END\n"),
        "inline-erb-ivar" => r.expr = format!("inline_template('<%= @{k0}{rest_dq} %>')"),
        "inline-erb-facts" => {
            r.expr = match rng.random_range(0..2) {
                0 => format!("inline_template('<%= @facts{idx_dq} %>')"),
                _ => format!(
                    "inline_template('<%= @facts.dig({}) %>')",
                    dig_args(leaf, '"')
                ),
            }
        }
        "inline-erb-scope" => {
            r.expr = match rng.random_range(0..3) {
                0 => format!("inline_template('<%= scope[\"facts\"]{idx_dq} %>')"),
                1 => format!("inline_template('<%= scope[\"::{k0}\"]{rest_dq} %>')"),
                _ => format!("inline_template('<%= scope.lookupvar(\"::{k0}\"){rest_dq} %>')"),
            }
        }
        "inline-epp" => r.expr = format!("inline_epp('<%= $facts{idx_dq} %>')"),
        "erb-file" => {
            let text = match rng.random_range(0..7) {
                0 => format!("<%= @{k0}{rest_idx} %>"),
                1 => format!("<%= @facts{idx} %>"),
                2 => format!("<%= @facts.dig({}) %>", dig_args(leaf, '\'')),
                3 => format!("<%= scope['::{k0}']{rest_idx} %>"),
                4 => format!(
                    "<%= scope.lookupvar('facts').dig({}) %>",
                    dig_args(leaf, '\'')
                ),
                5 => format!("<% f = @facts -%>\nv=<%= f{idx} %>"),
                _ => {
                    r.files.push((
                        format!("templates/{ctx}_inner.erb"),
                        format!("<%= scope['facts']{idx} %>"),
                    ));
                    format!("<%= scope.call_function('template', ['{m}/{ctx}_inner.erb']) %>")
                }
            };
            r.erb_file(m, ctx, text);
        }
        "epp-file" => {
            let text = match rng.random_range(0..2) {
                0 => format!("<%= $facts{idx} %>"),
                _ => format!("<%= $::{k0}{rest_idx} %>"),
            };
            r.files.push((format!("templates/{ctx}.epp"), text));
            r.expr = format!("epp('{m}/{ctx}.epp')");
        }
        "puppet-function" => {
            r.files.push((
                format!("functions/{ctx}.pp"),
                format!("function {m}::{ctx}() {{\n  $facts{idx}\n}}\n"),
            ));
            r.expr = format!("{m}::{ctx}()");
        }
        "ruby4-function" => {
            let body = match rng.random_range(0..4) {
                0 => format!("closure_scope['facts']{idx}"),
                1 => format!("closure_scope['facts'].dig({})", dig_args(leaf, '\'')),
                2 => format!("f = closure_scope['facts']\n    f{idx}"),
                _ => format!("closure_scope.lookupvar('::{k0}'){rest_idx}"),
            };
            r.ruby4_function(m, ctx, &body);
        }
        "ruby3-function" => {
            let body = match rng.random_range(0..3) {
                0 => format!("lookupvar('::{k0}'){rest_idx}"),
                1 => format!("self['facts']{idx}"),
                _ => format!("scope = self\n    scope.lookupvar('facts'){idx}"),
            };
            r.files.push((
                format!("lib/puppet/parser/functions/fuzz_{ctx}.rb"),
                format!(
                    "module Puppet::Parser::Functions\n  newfunction(:fuzz_{ctx}, type: :rvalue) do |_args|\n    {body}\n  end\nend\n"
                ),
            ));
            r.expr = format!("fuzz_{ctx}()");
        }
        "hiera" => {
            let interpolation = match rng.random_range(0..4) {
                0 => format!("facts.{}", dotted(leaf)),
                1 => format!("::{}", dotted(leaf)),
                2 => dotted(leaf),
                _ => format!("scope('facts.{}')", dotted(leaf)),
            };
            let name = format!("h_{ctx}");
            // YAML single quotes keep the double quotes of a dotted key
            r.param = Some((
                name.clone(),
                "'none'".into(),
                format!("'<%{{{}}}>'", interpolation.replace('\'', "''")),
            ));
            r.expr = format!("${name}");
        }
        "erb-param-template" => {
            // the template is named by a class parameter whose default
            // names another one: Hiera's value is the one rendered
            let name = format!("t_{ctx}");
            r.files.push((
                format!("templates/{ctx}.erb"),
                format!("<%= @facts{idx} %>"),
            ));
            r.files
                .push((format!("templates/{ctx}_default.erb"), "none".into()));
            r.param = Some((
                name.clone(),
                format!("'{m}/{ctx}_default.erb'"),
                format!("'{m}/{ctx}.erb'"),
            ));
            r.expr = format!("template(${name})");
        }
        "conditional-local" => {
            // assigned only when fz_flag is false: with the base facts the
            // read below reaches top scope, the fact
            r.setup = format!("if $facts['fz_flag'] == false {{\n    ${k0} = 'local'\n  }}\n  ");
            r.expr = format!("\"<${{{k0}}}>\"");
        }
        "erb-conditional-local" => {
            // the template's @-variable is the caller's local only when
            // fz_flag is false: with the base facts it is the fact
            r.setup = format!("if $facts['fz_flag'] == false {{\n    ${k0} = 'local'\n  }}\n  ");
            r.erb_file(m, ctx, format!("<%= @{k0} %>"));
        }
        "self-assign" => {
            // the right side reads the fact before the name is local
            r.setup = format!("${k0} = \"<${{{k0}}}>\"\n  ");
            r.expr = format!("${k0}");
        }
        "ruby4-call-function" => {
            let body = format!("call_function('getvar', 'facts.{}')", dotted(leaf));
            r.ruby4_function(m, ctx, &body);
        }
        "epp-no-extension" => {
            // epp() adds `.epp`
            r.files.push((
                format!("templates/{ctx}.epp"),
                format!("<%= $facts{idx} %>"),
            ));
            r.expr = format!("epp('{m}/{ctx}')");
        }
        "local-alias" => {
            r.setup = format!("$f_{ctx} = $facts['{k0}']\n  ");
            r.expr = format!("$f_{ctx}{rest_idx}");
        }
        // --- forms the analysis cannot bound: it must widen
        "facts-computed-key" => {
            r.setup = format!("$k_{ctx} = '{k0}'\n  ");
            r.expr = format!("$facts[$k_{ctx}]{rest_idx}");
        }
        "getvar-computed" => {
            r.setup = format!("$k_{ctx} = 'facts.{}'\n  ", dotted(leaf));
            r.expr = format!("getvar($k_{ctx})");
        }
        "facts-whole" => r.expr = format!("$facts.filter |$k, $v| {{ $k == '{k0}' }}"),
        "erb-to-hash" => {
            r.erb_file(m, ctx, format!("<%= scope.to_hash['{k0}']{rest_idx} %>"));
        }
        "erb-computed-key" => {
            r.erb_file(
                m,
                ctx,
                format!("<% k = '{k0}' -%>\n<%= @facts[k]{rest_idx} %>"),
            );
        }
        "ruby4-computed-key" => {
            let body = format!("k = '{k0}'\n    closure_scope['facts'][k]{rest_idx}");
            r.ruby4_function(m, ctx, &body);
        }
        "inline-erb-computed" => {
            r.expr =
                format!("inline_template(join(['<%= @facts[\"', '{k0}', '\"]{rest_dq} %>'], ''))")
        }
        other => panic!("no form {other}"),
    }
    r.widens = WIDENING_FORMS.contains(&form);
    r
}

/// Whether `form` can read `leaf`.
fn fits(form: &str, leaf: &[&str]) -> bool {
    match form {
        // a local of that name shadows the fact; a string has no keys
        "conditional-local" | "erb-conditional-local" | "self-assign" => leaf.len() == 1,
        // stdlib's fact() splits on every dot
        "fact-function" => !leaf.iter().any(|k| k.contains('.')),
        _ => true,
    }
}

/// Where a read's value goes, so that a change of it shows in the catalog.
fn use_of(rng: &mut ChaCha8Rng, v: &str, ctx: &str) -> String {
    match rng.random_range(0..5) {
        0 => format!("notify {{ '{ctx}': message => \"v=${{{v}}}\" }}\n"),
        1 => format!("notify {{ \"{ctx}-${{{v}}}\": }}\n"),
        2 => format!(
            "$s_{ctx} = \"${{{v}}}\" ? {{ {CHANGED} => 'changed', default => 'base' }}\n  notify {{ '{ctx}': message => $s_{ctx} }}\n"
        ),
        3 => format!(
            "case \"${{{v}}}\" {{\n    {CHANGED}: {{ notify {{ '{ctx}-changed': }} }}\n    default: {{ notify {{ '{ctx}-base': }} }}\n  }}\n"
        ),
        _ => format!(
            "if \"${{{v}}}\" =~ {CHANGED} {{\n    notify {{ '{ctx}-changed': }}\n  }} else {{\n    notify {{ '{ctx}-base': }}\n  }}\n"
        ),
    }
}

/// Case `case` of `seed`, as module and class `fuzz<number>`.
fn generate(seed: u64, case: usize, number: usize) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(case as u64));
    let id = format!("{number:04}");
    let m = format!("fuzz{id}");
    let mut body = String::new();
    let mut params = Vec::new();
    let mut files = Vec::new();
    let mut hiera = Vec::new();
    let mut reads = Vec::new();
    let mut shadowed = Vec::new();
    let n = rng.random_range(1..=3);
    for i in 0..n {
        let ctx = format!("c{id}_{i}");
        let widening = rng.random_bool(0.15);
        let (form, leaf) = loop {
            let forms = if widening { WIDENING_FORMS } else { FORMS };
            let form = forms[rng.random_range(0..forms.len())];
            let leaf = LEAVES[rng.random_range(0..LEAVES.len())];
            // one local per name: Puppet refuses a second assignment
            let local = form.ends_with("conditional-local") || form == "self-assign";
            if fits(form, leaf) && !(local && shadowed.contains(&leaf[0])) {
                break (form, leaf);
            }
        };
        if form.ends_with("conditional-local") || form == "self-assign" {
            shadowed.push(leaf[0]);
        }
        let r = read(&mut rng, form, leaf, &m, &ctx);
        let code = format!(
            "{}$v_{ctx} = {}\n  {}",
            r.setup,
            r.expr,
            use_of(&mut rng, &format!("v_{ctx}"), &ctx)
        );
        // where the read sits: the class body, a lambda, a branch, or a
        // defined type the class declares (Hiera reads class parameters)
        let place = if r.param.is_some() || form.ends_with("conditional-local") {
            rng.random_range(0..3)
        } else {
            rng.random_range(0..4)
        };
        match place {
            0 => body.push_str(&format!("  {code}\n")),
            1 => body.push_str(&format!("  ['one'].each |$i| {{\n  {code}  }}\n")),
            2 => body.push_str(&format!("  if $facts['fuzz_case'] {{\n  {code}  }}\n")),
            _ => {
                files.push((
                    format!("manifests/{ctx}_d.pp"),
                    format!("define {m}::{ctx}_d() {{\n  {code}}}\n"),
                ));
                body.push_str(&format!("  {m}::{ctx}_d {{ 'one': }}\n"));
            }
        }
        if let Some((name, default, value)) = &r.param {
            params.push(format!("${name} = {default}"));
            hiera.push(format!("{m}::{name}: {value}"));
        }
        files.extend(r.files.iter().cloned());
        reads.push(r);
    }
    // a local that shadows a fact: no read of the fact
    if !shadowed.contains(&"fz_u") && rng.random_bool(0.3) {
        body.push_str(&format!(
            "  $fz_u = 'local'\n  notify {{ 'c{id}-shadow': message => $fz_u }}\n"
        ));
    }
    let class = format!("class {m}({}) {{\n{body}}}\n", params.join(", "));
    Case {
        id,
        module: m,
        class,
        files,
        hiera,
        reads,
    }
}

/// The generated environment, removed when dropped.
struct Environment {
    name: String,
    dir: PathBuf,
}

impl Environment {
    fn write<'a>(name: &str, cases: impl Iterator<Item = &'a Case>) -> Environment {
        let dir = Path::new("/etc/puppet/code/environments").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let put = |path: &Path, text: &str| {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        put(
            &dir.join("manifests/site.pp"),
            "node default {\n  include \"fuzz${facts['fuzz_case']}\"\n}\n",
        );
        // a module per case: each its own Hiera layer
        for c in cases {
            let module = dir.join("modules").join(&c.module);
            put(&module.join("manifests/init.pp"), &c.class);
            for (p, t) in &c.files {
                put(&module.join(p), t);
            }
            put(
                &module.join("hiera.yaml"),
                "---\nversion: 5\nhierarchy:\n  - name: common\n    path: common.yaml\n",
            );
            put(
                &module.join("data/common.yaml"),
                &format!("---\n{}\n", c.hiera.join("\n")),
            );
        }
        Environment {
            name: name.to_string(),
            dir,
        }
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What checking one case found.
#[derive(Default)]
struct Checked {
    compiles: usize,
    widened: bool,
    failures: Vec<String>,
}

async fn compile(
    server: &PuppetServer,
    env: &str,
    facts: &Map<String, Value>,
) -> Result<catalog::Compiled, String> {
    let job = Job {
        certname: Certname::parse("fuzz-node.example.com").map_err(|e| e.to_string())?,
        environment: env.to_string(),
        facts: facts.clone(),
        timeout: Duration::from_secs(120),
        leader_epoch: None,
    };
    let bytes = server.compile(job).await.map_err(|e| e.to_string())?;
    catalog::read(&bytes).map_err(|e| e.to_string())
}

async fn check(server: &PuppetServer, env: &str, analysis: &Analysis, case: &Case) -> Checked {
    let mut out = Checked::default();
    let facts = base_facts(&case.id);
    let ignore = Ignore::new(&[]).expect("ignore");
    out.compiles += 1;
    let base = match compile(server, env, &facts).await {
        Ok(c) => c,
        Err(e) => {
            out.failures
                .push(format!("the base compile failed (a generator bug): {e}"));
            return out;
        }
    };
    let deps = analysis.for_compiled(&base);
    let used = &deps.facts;
    out.widened = used.all;
    if case.widens() {
        return out; // any change recompiles: nothing to check
    }
    if used.all {
        out.failures.push(format!(
            "widened with no widening form: {}",
            deps.widened_by.clone().unwrap_or_default()
        ));
        return out;
    }
    let base_hash = used.hash(&facts, &ignore);
    // every recognised read's fact is in the set, and (once per case) its
    // change does show in the catalog: the generator's reads are real
    for (i, r) in case.reads.iter().enumerate() {
        let changed = perturb(&facts, r.leaf);
        if used.hash(&changed, &ignore) == base_hash {
            out.failures.push(format!(
                "{} of {} is not in the analysis: {:?}",
                r.form,
                r.leaf.join("."),
                used.paths()
            ));
        }
        if i == 0 {
            out.compiles += 1;
            match compile(server, env, &changed).await {
                Ok(c) if c.hash == base.hash => out.failures.push(format!(
                    "a change of {} ({}) did not move the catalog (a generator bug)",
                    r.leaf.join("."),
                    r.form
                )),
                _ => {}
            }
        }
    }
    // every leaf the filter would let through: the catalog must not move
    for leaf in LEAVES {
        let changed = perturb(&facts, leaf);
        if used.hash(&changed, &ignore) != base_hash {
            continue; // pcq recompiles on this change
        }
        out.compiles += 1;
        match compile(server, env, &changed).await {
            Ok(c) if c.hash == base.hash => {}
            Ok(_) => out.failures.push(format!(
                "MISSED: a change of {} moves the catalog, the analysis's set does not hold it: {:?}",
                leaf.join("."),
                used.paths()
            )),
            Err(e) => out.failures.push(format!(
                "MISSED: a change of {} makes the compile fail ({e}); the analysis's set does not hold it",
                leaf.join(".")
            )),
        }
    }
    out
}

fn seed_from_env() -> Option<u64> {
    let s = std::env::var("PCQ_FUZZ_SEED").ok()?;
    if s == "random" {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return Some(now.as_nanos() as u64 % 1_000_000_007);
    }
    s.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fact_that_moves_a_generated_catalog_is_in_its_analysis() {
    let _serial = harness::serial().await;
    let seed = seed_from_env().unwrap_or(SEED);
    let count: usize = std::env::var("PCQ_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CASES);
    // (seed, case) and the case; the regression cases numbered after
    let mut cases: Vec<((u64, usize), Case)> = (0..count)
        .map(|i| ((seed, i), generate(seed, i, i)))
        .collect();
    for (n, &(s, c)) in REGRESSIONS.iter().enumerate() {
        cases.push(((s, c), generate(s, c, count + n)));
    }
    let name = format!("pcq_fuzz_{}", seed % 1_000_000);
    let env = Environment::write(&name, cases.iter().map(|(_, c)| c));

    let started = Instant::now();
    let analysis = Analysis::run(
        &default_ruby(),
        &env.dir,
        &[
            PathBuf::from("/etc/puppet/code/modules"),
            PathBuf::from("/usr/share/puppet/modules"),
        ],
        &[],
    )
    .unwrap_or_else(|e| panic!("analysis: {e}"));
    assert!(
        analysis.raw.errors.is_empty(),
        "generated code the parser refused: {:?}",
        analysis.raw.errors
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(
        PuppetServer::new(
            &harness::server_url(),
            &PuppetSsl::new(Path::new(harness::SSL), &harness::host()),
            false,
            false,
        )
        .expect("client")
        .allow_missing_certificates(),
    );
    let results: Vec<(usize, Checked)> = stream::iter(cases.iter().enumerate())
        .map(|(i, (_, case))| {
            let (server, analysis, env) = (server.clone(), &analysis, &env.name);
            async move { (i, check(&server, env, analysis, case).await) }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;

    let compiles: usize = results.iter().map(|(_, c)| c.compiles).sum();
    let widened = results.iter().filter(|(_, c)| c.widened).count();
    let reads: usize = cases.iter().map(|(_, c)| c.reads.len()).sum();
    println!(
        "seed {seed}: {} cases, {reads} reads, {widened} widened, {compiles} compiles in {:.0} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    let mut report = String::new();
    for (i, checked) in &results {
        if checked.failures.is_empty() {
            continue;
        }
        let ((s, c), case) = &cases[*i];
        let _ = writeln!(
            report,
            "seed {s}, case {c} (add ({s}, {c}) to REGRESSIONS):\n  {}\n{}",
            checked.failures.join("\n  "),
            case.describe()
        );
    }
    assert!(report.is_empty(), "{report}");
    // the grammar covers every form, and CI's run exercises each
    if count >= CASES {
        for form in FORMS.iter().chain(WIDENING_FORMS) {
            assert!(
                cases
                    .iter()
                    .any(|(_, c)| c.reads.iter().any(|r| r.form == *form)),
                "no case reads facts by {form}"
            );
        }
    }
}
