//! The `cloudbuild.yaml` schema (Cloud Build's field names) and its validation, following
//! Cloud Build's own rules: unique ids, `waitFor` naming earlier ids only (so no cycles),
//! `KEY=VALUE` env entries, `_UPPER` user substitution keys, volume names and paths, timeouts
//! within the build's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::PipelineError;

/// `waitFor: ['-']`: start at once.
pub const START: &str = "-";
const MAX_STEPS: usize = 100;
const MAX_ARGS: usize = 100;
const MAX_ENVS: usize = 100;
const MAX_SUBSTITUTIONS: usize = 100;
/// Cloud Build's default build timeout (10 minutes) and its upper limit (24 hours).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub steps: Vec<Step>,
    #[serde(default)]
    pub substitutions: BTreeMap<String, String>,
    #[serde(default)]
    pub options: Options,
    pub timeout: Option<String>,
    #[serde(default)]
    pub images: Vec<String>,
    /// Labels on the build: no meaning locally, accepted silently.
    #[serde(default)]
    pub tags: Vec<String>,
    // Cloud services with no local equivalent: warned about, never used.
    pub service_account: Option<Value>,
    pub logs_bucket: Option<Value>,
    pub available_secrets: Option<Value>,
    pub secrets: Option<Value>,
    pub artifacts: Option<Value>,
    pub queue_ttl: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Options {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// `ALLOW_LOOSE` makes unknown substitutions empty (a warning) instead of an error.
    pub substitution_option: Option<String>,
    #[serde(default)]
    pub automap_substitutions: bool,
    // Cloud Build machine and logging settings: warned about, never used.
    pub machine_type: Option<Value>,
    pub disk_size_gb: Option<Value>,
    pub logging: Option<Value>,
    pub log_streaming_option: Option<Value>,
    pub worker_pool: Option<Value>,
    pub pool: Option<Value>,
    pub secret_env: Option<Value>,
    pub dynamic_substitutions: Option<Value>,
    pub requested_verify_option: Option<Value>,
    pub source_provenance_hash: Option<Value>,
    pub default_logs_bucket_behavior: Option<Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    pub name: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub dir: String,
    pub id: Option<String>,
    pub wait_for: Option<Vec<String>>,
    pub entrypoint: Option<String>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    pub timeout: Option<String>,
    pub script: Option<String>,
    #[serde(default)]
    pub allow_failure: bool,
    #[serde(default)]
    pub allow_exit_codes: Vec<i32>,
    pub automap_substitutions: Option<bool>,
    /// Secret Manager / KMS: warned about, never used.
    pub secret_env: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub path: String,
}

/// A config that parsed and passed validation, with what deserves a warning.
#[derive(Debug)]
pub struct Checked {
    pub config: Config,
    pub warnings: Vec<String>,
    /// For each step, the steps it waits for (indices, all earlier).
    pub deps: Vec<Vec<usize>>,
    pub build_timeout: Duration,
    pub step_timeouts: Vec<Option<Duration>>,
}

impl Step {
    /// How logs and errors name the step: its id, else its position.
    pub fn label(&self, i: usize) -> String {
        match &self.id {
            Some(id) => format!("step #{i} {id:?}"),
            None => format!("step #{i}"),
        }
    }
}

fn invalid(msg: String) -> PipelineError {
    PipelineError::Invalid(msg)
}

/// Parses YAML (or JSON, a subset) text. Errors carry the line and column, and name an
/// unknown field.
pub fn parse(text: &str) -> Result<Config, PipelineError> {
    serde_yaml_ng::from_str(text).map_err(|e| PipelineError::Yaml(one_line(&e.to_string())))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses and validates.
pub fn load(text: &str) -> Result<Checked, PipelineError> {
    check(parse(text)?)
}

pub fn check(config: Config) -> Result<Checked, PipelineError> {
    let build_timeout = match &config.timeout {
        Some(t) => parse_duration(t).map_err(|e| invalid(format!("timeout: {e}")))?,
        None => DEFAULT_TIMEOUT,
    };
    if build_timeout > MAX_TIMEOUT {
        return Err(invalid(format!("timeout {build_timeout:?} exceeds 24h")));
    }
    check_substitution_keys(&config.substitutions)?;
    let deps = check_steps(&config.steps)?;
    let mut step_timeouts = Vec::new();
    for (i, s) in config.steps.iter().enumerate() {
        step_timeouts.push(step_timeout(s, i, build_timeout)?);
        check_step_fields(s, i)?;
    }
    check_env_list(&config.options.env, "options.env")?;
    check_volumes(&config)?;
    if let Some(o) = &config.options.substitution_option
        && o != "ALLOW_LOOSE"
        && o != "MUST_MATCH"
    {
        return Err(invalid(format!(
            "options.substitutionOption {o:?}: use ALLOW_LOOSE or MUST_MATCH"
        )));
    }
    let warnings = unsupported_warnings(&config);
    Ok(Checked {
        config,
        warnings,
        deps,
        build_timeout,
        step_timeouts,
    })
}

fn step_timeout(s: &Step, i: usize, build: Duration) -> Result<Option<Duration>, PipelineError> {
    let Some(t) = &s.timeout else {
        return Ok(None);
    };
    let d = parse_duration(t).map_err(|e| invalid(format!("{}: timeout: {e}", s.label(i))))?;
    if d > build {
        return Err(invalid(format!(
            "{}: timeout {t} is longer than the build's ({}s)",
            s.label(i),
            build.as_secs_f64()
        )));
    }
    Ok(Some(d))
}

/// Cloud Build durations: seconds with an `s` suffix, fractions allowed (`600s`, `1.5s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {s:?}: use seconds with an 's' suffix, like \"600s\"");
    let n = s.strip_suffix('s').ok_or_else(bad)?;
    if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let secs: f64 = n.parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// User keys are `_UPPER_CASE`; the git built-ins may be overridden as in Cloud Build.
pub fn check_substitution_keys(subs: &BTreeMap<String, String>) -> Result<(), PipelineError> {
    if subs.len() > MAX_SUBSTITUTIONS {
        return Err(invalid(format!(
            "{} substitutions: at most {MAX_SUBSTITUTIONS}",
            subs.len()
        )));
    }
    for k in subs.keys() {
        if !is_user_key(k) && !super::subst::OVERRIDABLE.contains(&k.as_str()) {
            return Err(invalid(format!(
                "substitution key {k:?}: user substitutions start with '_' and use only A-Z, 0-9 and '_'"
            )));
        }
    }
    Ok(())
}

pub fn is_user_key(k: &str) -> bool {
    k.len() > 1
        && k.len() <= 100
        && k.starts_with('_')
        && k.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Ids unique, `waitFor` naming earlier ids only (so the graph has no cycle); the
/// dependencies of each step.
fn check_steps(steps: &[Step]) -> Result<Vec<Vec<usize>>, PipelineError> {
    if steps.is_empty() {
        return Err(invalid("no steps: a build needs at least one".into()));
    }
    if steps.len() > MAX_STEPS {
        return Err(invalid(format!(
            "{} steps: at most {MAX_STEPS}",
            steps.len()
        )));
    }
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    let mut later: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in steps.iter().enumerate() {
        if let Some(id) = &s.id {
            later.entry(id).or_insert(i);
        }
    }
    let mut deps = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let d = match &s.wait_for {
            None => (0..i).collect(),
            Some(w) => wait_for(s, i, w, &ids, &later)?,
        };
        deps.push(d);
        if let Some(id) = &s.id {
            if id == START {
                return Err(invalid(format!(
                    "step #{i}: the id '-' is reserved (waitFor: ['-'] means start at once)"
                )));
            }
            if let Some(first) = ids.insert(id, i) {
                return Err(invalid(format!(
                    "step #{i}: duplicate id {id:?} (also step #{first})"
                )));
            }
        }
    }
    Ok(deps)
}

fn wait_for(
    s: &Step,
    i: usize,
    w: &[String],
    ids: &BTreeMap<&str, usize>,
    later: &BTreeMap<&str, usize>,
) -> Result<Vec<usize>, PipelineError> {
    let mut d = BTreeSet::new();
    for dep in w {
        if dep == START {
            continue;
        }
        match ids.get(dep.as_str()) {
            Some(&j) => {
                d.insert(j);
            }
            None => {
                let why = match later.get(dep.as_str()) {
                    Some(&j) if j == i => "itself (a cycle)".to_owned(),
                    Some(&j) => format!("step #{j}, which comes later (a forward reference)"),
                    None => "no step has that id".to_owned(),
                };
                return Err(invalid(format!(
                    "{}: waitFor {dep:?} names {why}; waitFor may name earlier step ids only",
                    s.label(i)
                )));
            }
        }
    }
    Ok(d.into_iter().collect())
}

fn check_step_fields(s: &Step, i: usize) -> Result<(), PipelineError> {
    let label = s.label(i);
    if s.name.is_empty() {
        return Err(invalid(format!("{label}: no name (the builder image)")));
    }
    if s.args.len() > MAX_ARGS {
        return Err(invalid(format!("{label}: more than {MAX_ARGS} args")));
    }
    check_env_list(&s.env, &format!("{label}: env"))?;
    if s.script.is_some() && !s.args.is_empty() {
        return Err(invalid(format!(
            "{label}: script and args cannot both be given"
        )));
    }
    if s.script.is_some() && s.entrypoint.is_some() {
        return Err(invalid(format!(
            "{label}: script and entrypoint cannot both be given"
        )));
    }
    if s.dir.split('/').any(|c| c == "..") {
        return Err(invalid(format!(
            "{label}: dir {:?} must not contain '..'",
            s.dir
        )));
    }
    Ok(())
}

fn check_env_list(env: &[String], what: &str) -> Result<(), PipelineError> {
    if env.len() > MAX_ENVS {
        return Err(invalid(format!("{what}: more than {MAX_ENVS} entries")));
    }
    for e in env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => {
                return Err(invalid(format!(
                    "{what}: entry {e:?} must be of the form KEY=VALUE"
                )));
            }
        }
    }
    Ok(())
}

fn valid_volume_name(n: &str) -> bool {
    let mut b = n.bytes();
    n.len() >= 2
        && b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Lexically cleaned absolute path (no `..` allowed at all).
fn clean_abs(p: &str) -> Option<String> {
    if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
        return None;
    }
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    Some(format!("/{}", parts.join("/")))
}

fn check_volume_list(vols: &[Volume], what: &str) -> Result<(), PipelineError> {
    let mut names = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for v in vols {
        if !valid_volume_name(&v.name) {
            return Err(invalid(format!(
                "{what}: volume name {:?}: letters, digits, '_', '.', '-', starting with a letter or digit, at least 2 characters",
                v.name
            )));
        }
        let p = clean_abs(&v.path).ok_or_else(|| {
            invalid(format!(
                "{what}: volume path {:?} must be absolute, without '..'",
                v.path
            ))
        })?;
        if matches!(
            p.as_str(),
            "/" | "/workspace" | "/builder/home" | "/var/run/docker.sock"
        ) || p.starts_with("/cloudbuild/")
        {
            return Err(invalid(format!("{what}: volume path {p:?} is reserved")));
        }
        if !names.insert(&v.name) {
            return Err(invalid(format!(
                "{what}: volume name {:?} given twice",
                v.name
            )));
        }
        if !paths.insert(p.clone()) {
            return Err(invalid(format!("{what}: volume path {p:?} given twice")));
        }
    }
    Ok(())
}

fn check_volumes(c: &Config) -> Result<(), PipelineError> {
    let global = &c.options.volumes;
    if !global.is_empty() && c.steps.len() < 2 {
        return Err(invalid(
            "options.volumes given but there are fewer than two steps".into(),
        ));
    }
    check_volume_list(global, "options.volumes")?;
    let mut used: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in c.steps.iter().enumerate() {
        let label = s.label(i);
        check_volume_list(&s.volumes, &label)?;
        for v in &s.volumes {
            if global.iter().any(|g| g.name == v.name || g.path == v.path) {
                return Err(invalid(format!(
                    "{label}: volume {:?} conflicts with one in options.volumes",
                    v.name
                )));
            }
            *used.entry(&v.name).or_default() += 1;
        }
    }
    if let Some((name, _)) = used.iter().find(|(_, n)| **n < 2) {
        return Err(invalid(format!(
            "volume {name:?} is used by one step only: a volume is for sharing between steps"
        )));
    }
    Ok(())
}

fn unsupported_warnings(c: &Config) -> Vec<String> {
    let o = &c.options;
    let fields: [(&str, bool); 17] = [
        ("serviceAccount", c.service_account.is_some()),
        ("logsBucket", c.logs_bucket.is_some()),
        ("availableSecrets", c.available_secrets.is_some()),
        ("secrets", c.secrets.is_some()),
        ("artifacts", c.artifacts.is_some()),
        ("queueTtl", c.queue_ttl.is_some()),
        ("options.machineType", o.machine_type.is_some()),
        ("options.diskSizeGb", o.disk_size_gb.is_some()),
        ("options.logging", o.logging.is_some()),
        (
            "options.logStreamingOption",
            o.log_streaming_option.is_some(),
        ),
        ("options.workerPool", o.worker_pool.is_some()),
        ("options.pool", o.pool.is_some()),
        ("options.secretEnv", o.secret_env.is_some()),
        (
            "options.dynamicSubstitutions",
            o.dynamic_substitutions.is_some(),
        ),
        (
            "options.requestedVerifyOption",
            o.requested_verify_option.is_some(),
        ),
        (
            "options.sourceProvenanceHash",
            o.source_provenance_hash.is_some(),
        ),
        (
            "options.defaultLogsBucketBehavior",
            o.default_logs_bucket_behavior.is_some(),
        ),
    ];
    let mut w: Vec<String> = fields
        .iter()
        .filter(|(_, set)| *set)
        .map(|(f, _)| format!("{f} has no meaning in a local build: ignored"))
        .collect();
    for (i, s) in c.steps.iter().enumerate() {
        if s.secret_env.is_some() {
            w.push(format!(
                "{}: secretEnv (Secret Manager) is not available locally: ignored",
                s.label(i)
            ));
        }
    }
    w
}

#[cfg(test)]
mod tests;
