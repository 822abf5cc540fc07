//! `.dockerignore` with docker's rules: one pattern a line (`#` comments), paths relative to
//! the context root (a leading `/` dropped, cleaned), `*` and `?` within a name, `**` across
//! directories, `!` re-includes, the last matching pattern wins, and a pattern that matches a
//! directory matches everything under it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{GlobBuilder, GlobMatcher};

#[derive(Default)]
pub struct Ignore {
    rules: Vec<(bool, GlobMatcher)>,
}

/// Lexically cleaned, relative: `./a//b/../c` is `a/c`.
fn clean(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

impl Ignore {
    /// Parses the file's text; a pattern globset cannot read is an error naming it.
    pub fn parse(text: &str) -> Result<Ignore, String> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (neg, pat) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let pat = clean(pat);
            if pat.is_empty() {
                continue;
            }
            let g = GlobBuilder::new(&pat)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!(".dockerignore: pattern {pat:?}: {e}"))?;
            rules.push((neg, g.compile_matcher()));
        }
        Ok(Ignore { rules })
    }

    /// Whether the context-relative path is left out of the context.
    pub fn excluded(&self, rel: &[u8]) -> bool {
        let mut out = false;
        for (neg, m) in &self.rules {
            // The path itself or one of its parent directories.
            let mut hit = false;
            let mut end = rel.len();
            loop {
                if m.is_match(Path::new(OsStr::from_bytes(&rel[..end]))) {
                    hit = true;
                    break;
                }
                match rel[..end].iter().rposition(|&b| b == b'/') {
                    Some(i) => end = i,
                    None => break,
                }
            }
            if hit {
                out = !neg;
            }
        }
        out
    }

    /// Whether some `!` pattern could re-include something below an excluded directory.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(neg, _)| *neg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_rules() {
        let i = Ignore::parse(
            "# comment\n*.md\n!README.md\n/build\n**/*.tmp\nsecret/\n!secret/keep\ndocs/*/x\n",
        )
        .unwrap();
        let ex = |p: &str| i.excluded(p.as_bytes());
        assert!(ex("notes.md"));
        assert!(!ex("README.md"));
        assert!(!ex("sub/notes.md"), "* does not cross directories");
        assert!(ex("build") && ex("build/out/a.o"));
        assert!(ex("a.tmp") && ex("deep/er/b.tmp"));
        assert!(ex("secret/key") && !ex("secret/keep"));
        assert!(ex("docs/v1/x") && !ex("docs/x"));
        assert!(!ex("src/main.c"));
        assert!(i.has_exceptions());
    }
}
