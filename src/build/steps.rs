//! The parts of steps that need no builder state of their own: RUN's argv (heredocs
//! included), HEALTHCHECK's config, and COPY/ADD's sources and destination.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use serde_json::{Value, json};

use super::copy::{self, Entry, Meta, Resolve, Source, Src};
use super::dockerfile::{Command, Copy, Health, Heredoc, Instruction};
use super::ignore::Ignore;
use super::stage::{Builder, CopyJob, StageImage};
use super::workspace::Workspace;
use super::write::Writer;
use super::{Result, at};

/// RUN's argv. A heredoc alone is the script; a command with heredocs gets them back as
/// shell heredocs (the shell feeds them to it, quoted or not, as the Dockerfile says).
pub fn run_argv(cmd: &Command, heredocs: &[Heredoc], shell: &[String]) -> Vec<String> {
    let script = match cmd {
        Command::Exec(v) => return v.clone(),
        Command::Shell(s) => s.clone(),
    };
    let rest: String = super::dockerfile::words(&script, '\\')
        .into_iter()
        .filter(|w| !w.starts_with("<<"))
        .collect();
    let script = match heredocs {
        [] => script,
        [h] if rest.trim().is_empty() => h.body.clone(),
        docs => {
            let mut s = script;
            for h in docs {
                s.push('\n');
                s.push_str(&h.body);
                s.push_str(&h.name);
            }
            s.push('\n');
            s
        }
    };
    shell.iter().cloned().chain([script]).collect()
}

/// `30s`, `1m30s`, `500ms`, `2h` in nanoseconds.
fn duration_ns(s: &str) -> Option<i64> {
    let mut total: f64 = 0.0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    if s.is_empty() {
        return None;
    }
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek().filter(|n| n.is_ascii_alphabetic()) {
            unit.push(n);
            chars.next();
        }
        let mult = match unit.as_str() {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += num.parse::<f64>().ok()? * mult;
        num.clear();
    }
    num.is_empty().then_some(total as i64)
}

/// HEALTHCHECK as docker-format configs keep it (`config.Healthcheck`; OCI has no field).
pub fn healthcheck(h: &Health, shell: &[String]) -> std::result::Result<Value, String> {
    let test = match &h.cmd {
        None => json!(["NONE"]),
        Some(Command::Exec(v)) => json!(
            ["CMD"]
                .into_iter()
                .map(str::to_owned)
                .chain(v.iter().cloned())
                .collect::<Vec<_>>()
        ),
        Some(Command::Shell(s)) => {
            let _ = shell;
            json!(["CMD-SHELL", s])
        }
    };
    let mut out = json!({ "Test": test });
    for f in &h.flags {
        let v = f.value.as_deref().unwrap_or("");
        let field = match f.name.as_str() {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => {
                let n: u32 = v
                    .parse()
                    .map_err(|_| format!("HEALTHCHECK --retries={v}: not a number"))?;
                out["Retries"] = json!(n);
                continue;
            }
            other => return Err(format!("HEALTHCHECK: unknown flag --{other}")),
        };
        let ns = duration_ns(v)
            .ok_or_else(|| format!("HEALTHCHECK --{}={v}: not a duration", f.name))?;
        out[field] = json!(ns);
    }
    Ok(out)
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The context paths a glob source matches (sorted), `.dockerignore` applied.
fn glob(ctx: BorrowedFd<'_>, pattern: &str, ignore: &Ignore) -> io::Result<Vec<Vec<u8>>> {
    let mut paths: Vec<Vec<u8>> = vec![Vec::new()];
    for comp in pattern.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let mut next = Vec::new();
        for p in &paths {
            let join = |n: &[u8]| {
                if p.is_empty() {
                    n.to_vec()
                } else {
                    [p.as_slice(), b"/", n].concat()
                }
            };
            if !is_glob(comp) {
                next.push(join(comp.as_bytes()));
                continue;
            }
            let m = globset::GlobBuilder::new(comp)
                .literal_separator(true)
                .build()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?
                .compile_matcher();
            let Ok(dir) = crate::image::fsutil::open_beneath(ctx, p) else {
                continue;
            };
            let mut names = Vec::new();
            crate::sys::read_dir(dir.as_fd(), |e| {
                if m.is_match(std::path::Path::new(OsStr::from_bytes(e.name))) {
                    names.push(join(e.name));
                }
                Ok(())
            })?;
            names.sort();
            next.extend(names);
        }
        paths = next;
    }
    paths.retain(|p| !ignore.excluded(p));
    Ok(paths)
}

/// Whether a context path stays inside the context lexically (`a/../b` does, `../x` not).
fn inside(path: &str) -> bool {
    let mut depth: i64 = 0;
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

fn source_error(line: usize, kw: &str, src: &str, e: &io::Error) -> super::BuildError {
    let why = match e.raw_os_error() {
        Some(libc::ENOENT) => "no such file or directory in the build context".to_owned(),
        Some(libc::EXDEV) => "leads outside the build context (refused)".to_owned(),
        _ => e.to_string(),
    };
    at(line, format!("{kw} {src}: {why}"))
}

/// Sources from the context (`.dockerignore` applies, nothing may lead out of it).
/// ADD also takes URLs: fetched here, `checksum` (`--checksum=sha256:..`) checked.
fn context_sources(
    b: &Builder<'_>,
    kw: &str,
    line: usize,
    srcs: &[String],
    checksum: Option<&str>,
) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for s in srcs {
        if super::fetch::is_url(s) && kw == "ADD" {
            let mtime = b.opts.source_date_epoch.unwrap_or_else(now);
            let src = super::fetch::fetch(b.store, s, checksum, mtime)
                .map_err(|why| at(line, format!("{kw} {s}: {why}")))?;
            out.push(src);
            continue;
        }
        if super::fetch::is_url(s) || s.starts_with("git@") {
            return Err(at(
                line,
                format!("{kw} {s}: URL sources are taken only by ADD (and git ones not at all)"),
            ));
        }
        if !inside(s) {
            return Err(at(
                line,
                format!("{kw} {s}: outside the build context (refused)"),
            ));
        }
        let paths = if is_glob(s) {
            let p = glob(b.ctx.as_fd(), s, &b.ignore).map_err(|e| source_error(line, kw, s, &e))?;
            if p.is_empty() {
                return Err(at(
                    line,
                    format!("{kw} {s}: no files match in the build context"),
                ));
            }
            p
        } else {
            let rel = copy::clean(s.as_bytes());
            if !rel.is_empty() && b.ignore.excluded(&rel) {
                return Err(at(line, format!("{kw} {s}: excluded by .dockerignore")));
            }
            vec![rel]
        };
        for p in paths {
            let src = copy::gather(b.ctx.as_fd(), &p, Resolve::Beneath, Some(&b.ignore))
                .map_err(|e| source_error(line, kw, s, &e))?;
            out.push(src);
        }
    }
    Ok(out)
}

/// COPY/ADD flags: --from, --chown, --chmod, ADD's --checksum.
struct Flags {
    from: Option<String>,
    chown: Option<String>,
    chmod: Option<u32>,
    checksum: Option<String>,
}

fn parse_flags(ins: &Instruction, c: &Copy, ex: &dyn Fn(&str) -> Result<String>) -> Result<Flags> {
    let (mut from, mut chown, mut chmod, mut checksum) = (None, None, None, None);
    for f in &c.flags {
        let v = f.value.as_deref().unwrap_or("");
        match f.name.as_str() {
            "from" => from = Some(ex(v)?),
            "chown" => chown = Some(ex(v)?),
            "chmod" => {
                let m = ex(v)?;
                chmod = Some(
                    u32::from_str_radix(&m, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| at(ins.line, format!("--chmod={m}: not an octal mode")))?,
                );
            }
            // Layers are always independent of what is below here: --link changes nothing.
            "link" => {}
            "checksum" if ins.kind.keyword() == "ADD" => checksum = Some(ex(v)?),
            other => {
                return Err(at(
                    ins.line,
                    format!("{}: unknown flag --{other}", ins.kind.keyword()),
                ));
            }
        }
    }
    Ok(Flags {
        from,
        chown,
        chmod,
        checksum,
    })
}

/// Everything a COPY/ADD needs, read before the step so its checksum can be part of the key.
pub fn copy_job(
    b: &Builder<'_>,
    img: &StageImage,
    esc: char,
    ex: &dyn Fn(&str) -> Result<String>,
    ins: &Instruction,
    c: &Copy,
    add: bool,
) -> Result<CopyJob> {
    let kw = ins.kind.keyword();
    let line = ins.line;
    let _ = esc;
    let Flags {
        from,
        chown,
        chmod,
        checksum,
    } = parse_flags(ins, c, ex)?;
    let mut args = c.args.iter().map(|a| ex(a)).collect::<Result<Vec<_>>>()?;
    let dest = args
        .pop()
        .ok_or_else(|| at(line, format!("{kw} needs a destination")))?;
    let workdir = img.config["config"]["WorkingDir"].as_str().unwrap_or("/");
    let dest = if dest.starts_with('/') {
        dest
    } else {
        format!("{}/{dest}", workdir.trim_end_matches('/'))
    };
    let (mut sources, from_ws) = match &from {
        None => (
            context_sources(b, kw, line, &args, checksum.as_deref())?,
            None,
        ),
        Some(r) => b.stage_sources(kw, line, r, &args)?,
    };
    for h in &c.heredocs {
        let body = if h.expand {
            ex(&format!("\"{}\"", h.body.replace('"', "\\\"")))?
        } else {
            h.body.clone()
        };
        sources.push(Source {
            name: h.name.clone().into_bytes(),
            is_dir: false,
            entries: vec![Entry {
                rel: Vec::new(),
                src: Src::Bytes(body.into_bytes()),
                meta: Meta {
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: b.opts.source_date_epoch.unwrap_or_else(now),
                },
                xattrs: Vec::new(),
            }],
        });
    }
    if sources.len() > 1 && !dest.ends_with('/') {
        return Err(at(
            line,
            format!("{kw} with more than one source: the destination {dest} must end with /"),
        ));
    }
    let chown = match chown {
        None => None,
        Some(spec) => Some(
            b.resolve_owner(img, &spec)
                .map_err(|e| at(line, format!("--chown={spec}: {e}")))?,
        ),
    };
    Ok(CopyJob {
        sources,
        dest: dest.into_bytes(),
        chown,
        chmod,
        extract: add,
        _from: from_ws,
    })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Writes a job's sources at its destination, inside the stage's root.
pub fn copy_into(w: &mut Writer<'_>, job: &CopyJob, line: usize) -> Result<()> {
    let dest = &job.dest;
    let into_dir = dest.ends_with(b"/") || job.sources.len() > 1 || w.is_dir(dest);
    let err = |e: io::Error| {
        at(
            line,
            format!("writing {}: {e}", String::from_utf8_lossy(dest)),
        )
    };
    for s in &job.sources {
        if job.extract
            && let Some(Entry {
                src: Src::Opened(f),
                ..
            }) = s.entries.first()
            && let Some(stream) = copy::archive(f).map_err(err)?
        {
            w.extract(stream, dest).map_err(err)?;
            continue;
        }
        w.copy(s, dest, into_dir).map_err(err)?;
    }
    Ok(())
}

impl Builder<'_> {
    /// Sources from an earlier stage, a stage index or an image, read inside its root.
    fn stage_sources(
        &self,
        kw: &str,
        line: usize,
        r: &str,
        srcs: &[String],
    ) -> Result<(Vec<Source>, Option<Workspace>)> {
        let img = match self.built_stage(r) {
            Some(img) => img,
            None => self
                .image_base(r, line)
                .map_err(|_| at(line, format!("{kw} --from={r}: no such stage or image")))?,
        };
        let lowers = self.lowers(&img)?;
        let ws = Workspace::mount(self.store, &lowers)?;
        let mut out = Vec::new();
        if let Some(root) = ws.root() {
            for s in srcs {
                let src = copy::gather(root, s.as_bytes(), Resolve::InRoot, None)
                    .map_err(|e| at(line, format!("{kw} --from={r} {s}: {e}")))?;
                out.push(src);
            }
        }
        Ok((out, Some(ws)))
    }

    /// `user[:group]`, names resolved in the stage's own /etc/passwd and /etc/group.
    fn resolve_owner(
        &self,
        img: &StageImage,
        spec: &str,
    ) -> std::result::Result<(u32, u32), String> {
        let (u, g) = spec.split_once(':').unwrap_or((spec, spec));
        if let (Ok(u), Ok(g)) = (u.parse::<u32>(), g.parse::<u32>()) {
            return Ok((u, g));
        }
        let lowers = self.lowers(img).map_err(|e| e.to_string())?;
        if lowers.is_empty() {
            return Err("names need an /etc/passwd (the stage has no files)".into());
        }
        crate::image::resolve_user(&lowers, spec).map_err(|e| e.to_string())
    }
}
