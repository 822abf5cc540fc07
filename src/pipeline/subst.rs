//! Substitutions, as Cloud Build does them: `$KEY` and `${KEY}` where KEY is `[A-Z_][A-Z0-9_]*`
//! (anything else after a `$` is left alone), `$$` is a literal `$`. They apply to each step's
//! name, args, env, dir and entrypoint, to `options.env` and to `images`; never to `script`
//! (it sees them as environment variables with `automapSubstitutions`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use super::PipelineError;
use super::config::{Config, is_user_key};

/// Built-ins a user may set (with `--substitutions`), as Cloud Build allows.
pub const OVERRIDABLE: &[&str] = &[
    "REPO_NAME",
    "REPO_FULL_NAME",
    "BRANCH_NAME",
    "TAG_NAME",
    "REVISION_ID",
    "COMMIT_SHA",
    "SHORT_SHA",
];

/// One `$...` found in a template.
#[derive(Debug, PartialEq, Eq)]
pub struct Param {
    /// Byte range of the whole expression.
    pub start: usize,
    pub end: usize,
    /// None for `$$`.
    pub key: Option<String>,
}

fn is_key_start(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'_'
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
}

/// Every `$$`, `$KEY` and `${KEY}` in `s`, left to right.
pub fn params(s: &str) -> Vec<Param> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        let next = b.get(i + 1).copied();
        if next == Some(b'$') {
            out.push(Param {
                start: i,
                end: i + 2,
                key: None,
            });
            i += 2;
            continue;
        }
        let braced = next == Some(b'{');
        let k0 = if braced { i + 2 } else { i + 1 };
        let mut k = k0;
        if b.get(k).copied().is_some_and(is_key_start) {
            while b.get(k).copied().is_some_and(is_key_byte) {
                k += 1;
            }
        }
        let closed = !braced || b.get(k) == Some(&b'}');
        if k > k0 && closed {
            let end = if braced { k + 1 } else { k };
            out.push(Param {
                start: i,
                end,
                key: Some(s[k0..k].to_owned()),
            });
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// The values every template sees, and which user keys were used.
pub struct Substituter {
    pub values: BTreeMap<String, String>,
    /// Unknown keys become empty with a warning instead of failing (`ALLOW_LOOSE`).
    pub loose: bool,
    used: BTreeSet<String>,
    pub warnings: Vec<String>,
}

impl Substituter {
    pub fn new(values: BTreeMap<String, String>, loose: bool) -> Substituter {
        Substituter {
            values,
            loose,
            used: BTreeSet::new(),
            warnings: Vec::new(),
        }
    }

    /// Expands one template; `what` names the field for the error.
    pub fn expand(&mut self, s: &str, what: &str) -> Result<String, PipelineError> {
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        for p in params(s) {
            out.push_str(&s[last..p.start]);
            last = p.end;
            let Some(key) = p.key else {
                out.push('$');
                continue;
            };
            match self.values.get(&key) {
                Some(v) => {
                    out.push_str(v);
                    self.used.insert(key);
                }
                None if self.loose => self.warnings.push(format!(
                    "{what}: ${key} is not a known substitution: replaced by nothing (ALLOW_LOOSE)"
                )),
                None => {
                    let hint = if is_user_key(&key) {
                        "define it under substitutions: or with --substitutions"
                    } else {
                        "not a built-in substitution; user ones start with '_' (write $$ for a literal $)"
                    };
                    return Err(PipelineError::Substitution(format!(
                        "{what}: unknown substitution ${key}: {hint}"
                    )));
                }
            }
        }
        out.push_str(&s[last..]);
        Ok(out)
    }

    fn expand_all(&mut self, v: &mut [String], what: &str) -> Result<(), PipelineError> {
        for (j, a) in v.iter_mut().enumerate() {
            *a = self.expand(a, &format!("{what}[{j}]"))?;
        }
        Ok(())
    }

    /// Applies to the whole config in place; warns about user substitutions nothing used.
    pub fn apply(&mut self, c: &mut Config) -> Result<(), PipelineError> {
        for (i, s) in c.steps.iter_mut().enumerate() {
            let l = s.label(i);
            s.name = self.expand(&s.name, &format!("{l} name"))?;
            self.expand_all(&mut s.args, &format!("{l} args"))?;
            self.expand_all(&mut s.env, &format!("{l} env"))?;
            s.dir = self.expand(&s.dir, &format!("{l} dir"))?;
            if let Some(e) = &s.entrypoint {
                s.entrypoint = Some(self.expand(e, &format!("{l} entrypoint"))?);
            }
        }
        self.expand_all(&mut c.options.env, "options.env")?;
        self.expand_all(&mut c.images, "images")?;
        // A script sees substitutions as variables only when mapped: that counts as a use.
        let automap = c.options.automap_substitutions
            || c.steps
                .iter()
                .any(|s| s.automap_substitutions == Some(true));
        for k in self.values.keys() {
            if is_user_key(k) && !self.used.contains(k) && !automap {
                self.warnings
                    .push(format!("substitution {k} is defined but not used anywhere"));
            }
        }
        Ok(())
    }
}

/// What the build knows about itself and its source.
pub struct BuildInfo {
    pub project_id: String,
    pub build_id: String,
    pub location: String,
}

/// The built-in values: the build's own, then git's for SOURCE_DIR (empty when it is not a
/// repository, as Cloud Build leaves them for a source without a repository).
pub fn builtins(info: &BuildInfo, source: Option<&Path>) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert("PROJECT_ID".into(), info.project_id.clone());
    v.insert("BUILD_ID".into(), info.build_id.clone());
    v.insert("LOCATION".into(), info.location.clone());
    let git = source.map(git_info).unwrap_or_default();
    let sha = git.commit.clone();
    v.insert("SHORT_SHA".into(), sha.chars().take(7).collect());
    v.insert("COMMIT_SHA".into(), sha.clone());
    v.insert("REVISION_ID".into(), sha);
    v.insert("BRANCH_NAME".into(), git.branch);
    v.insert("TAG_NAME".into(), git.tag);
    v.insert("REPO_FULL_NAME".into(), git.repo.clone());
    v.insert(
        "REPO_NAME".into(),
        git.repo.rsplit('/').next().unwrap_or_default().to_owned(),
    );
    v
}

#[derive(Default)]
struct GitInfo {
    commit: String,
    branch: String,
    tag: String,
    repo: String,
}

/// One git query in `dir`; None if git is missing or says no.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8(o.stdout).ok()?.trim().to_owned();
    (o.status.success() && !s.is_empty()).then_some(s)
}

fn git_info(dir: &Path) -> GitInfo {
    let Some(commit) = git(dir, &["rev-parse", "--verify", "-q", "HEAD"]) else {
        return GitInfo::default();
    };
    let branch = git(dir, &["symbolic-ref", "-q", "--short", "HEAD"]).unwrap_or_default();
    let tag = git(dir, &["describe", "--tags", "--exact-match", "HEAD"]).unwrap_or_default();
    // The repository's name: from its origin's URL when there is one, else its directory's.
    let repo = git(dir, &["config", "--get", "remote.origin.url"])
        .map(|u| repo_from_url(&u))
        .or_else(|| {
            git(dir, &["rev-parse", "--show-toplevel"]).and_then(|t| {
                Path::new(&t)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
        })
        .unwrap_or_default();
    GitInfo {
        commit,
        branch,
        tag,
        repo,
    }
}

/// `https://host/owner/name.git` or `git@host:owner/name` -> `owner/name`.
fn repo_from_url(url: &str) -> String {
    let u = url.trim_end_matches('/').trim_end_matches(".git");
    let path = match u.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map(|(_, p)| p).unwrap_or(rest),
        None => u.rsplit_once(':').map(|(_, p)| p).unwrap_or(u),
    };
    path.trim_start_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn forms_and_escapes() {
        let mut s = Substituter::new(vals(&[("PROJECT_ID", "p"), ("_X", "x")]), false);
        assert_eq!(s.expand("gcr.io/$PROJECT_ID/a", "t").unwrap(), "gcr.io/p/a");
        assert_eq!(s.expand("${_X}y $_X", "t").unwrap(), "xy x");
        assert_eq!(
            s.expand("$$PROJECT_ID $$$_X", "t").unwrap(),
            "$PROJECT_ID $x"
        );
        // Not a key: left as is (lower case, digits first, an unclosed brace, a lone $).
        assert_eq!(
            s.expand("$home ${_X $1 a$", "t").unwrap(),
            "$home ${_X $1 a$"
        );
        assert_eq!(s.expand("${lower}", "t").unwrap(), "${lower}");
    }

    #[test]
    fn unknown_is_an_error_unless_loose() {
        let mut s = Substituter::new(vals(&[]), false);
        let e = s.expand("a $_NOPE b", "step #0 args[1]").unwrap_err();
        assert!(e.to_string().contains("unknown substitution $_NOPE"), "{e}");
        assert!(e.to_string().contains("step #0 args[1]"), "{e}");
        let e = s.expand("${WHAT}", "images[0]").unwrap_err();
        assert!(e.to_string().contains("$WHAT"), "{e}");
        let mut s = Substituter::new(vals(&[]), true);
        assert_eq!(s.expand("a${_NOPE}b", "t").unwrap(), "ab");
        assert_eq!(s.warnings.len(), 1);
    }

    #[test]
    fn unused_user_substitution_warns() {
        let mut c = super::super::config::parse(
            "steps:\n- name: x\n  args: ['$_USED']\nsubstitutions:\n  _USED: a\n  _UNUSED: b\n",
        )
        .unwrap();
        let mut s = Substituter::new(vals(&[("_USED", "a"), ("_UNUSED", "b")]), false);
        s.apply(&mut c).unwrap();
        assert_eq!(c.steps[0].args, ["a"]);
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("_UNUSED"));
    }

    #[test]
    fn repo_names_from_urls() {
        assert_eq!(repo_from_url("https://github.com/o/n.git"), "o/n");
        assert_eq!(repo_from_url("git@github.com:o/n.git"), "o/n");
        assert_eq!(repo_from_url("/srv/git/n"), "srv/git/n");
    }
}
