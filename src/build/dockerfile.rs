//! The Dockerfile parser: directives, comments, line continuations and heredocs become
//! logical lines, and each logical line a typed [`Instruction`]. Variables are not expanded
//! here (that depends on the build's state: see `expand.rs`); words keep their quotes so the
//! expansion can apply docker's quoting rules.

use std::fmt;

/// A parse error: `Dockerfile:LINE: what is wrong: the text`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile:{line}: {msg}: {text}")]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
    pub text: String,
}

/// The parser directives at the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    pub escape: char,
    pub syntax: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Line of the keyword, from 1.
    pub line: usize,
    /// The logical line as written (continuations joined), for history and errors.
    pub text: String,
    pub kind: Kind,
}

/// Exec (JSON) or shell form of RUN, CMD, ENTRYPOINT and HEALTHCHECK CMD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

/// A `<<EOF` document: its body, and whether the word was quoted (no expansion then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    pub body: String,
    pub expand: bool,
}

/// `--name=value` (or `--name`, value None) before an instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub flags: Vec<Flag>,
    /// Sources then destination, words with quotes kept (JSON form: already plain).
    pub args: Vec<String>,
    pub json: bool,
    pub heredocs: Vec<Heredoc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub flags: Vec<Flag>,
    /// None for `HEALTHCHECK NONE`.
    pub cmd: Option<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    From {
        image: String,
        alias: Option<String>,
        flags: Vec<Flag>,
    },
    Run {
        flags: Vec<Flag>,
        cmd: Command,
        heredocs: Vec<Heredoc>,
    },
    Cmd(Command),
    Entrypoint(Command),
    Shell(Vec<String>),
    Copy(Copy),
    Add(Copy),
    /// Key/value words, unexpanded.
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Arg(Vec<(String, Option<String>)>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    /// Paths (JSON form already plain, shell form words unexpanded).
    Volume(Vec<String>),
    StopSignal(String),
    Healthcheck(Health),
    Onbuild(Box<Instruction>),
    Maintainer(String),
}

impl Kind {
    pub fn keyword(&self) -> &'static str {
        match self {
            Kind::From { .. } => "FROM",
            Kind::Run { .. } => "RUN",
            Kind::Cmd(_) => "CMD",
            Kind::Entrypoint(_) => "ENTRYPOINT",
            Kind::Shell(_) => "SHELL",
            Kind::Copy(_) => "COPY",
            Kind::Add(_) => "ADD",
            Kind::Env(_) => "ENV",
            Kind::Label(_) => "LABEL",
            Kind::Arg(_) => "ARG",
            Kind::Workdir(_) => "WORKDIR",
            Kind::User(_) => "USER",
            Kind::Expose(_) => "EXPOSE",
            Kind::Volume(_) => "VOLUME",
            Kind::StopSignal(_) => "STOPSIGNAL",
            Kind::Healthcheck(_) => "HEALTHCHECK",
            Kind::Onbuild(_) => "ONBUILD",
            Kind::Maintainer(_) => "MAINTAINER",
        }
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One logical line: its first physical line number and its text.
struct Logical {
    line: usize,
    text: String,
}

/// Parses a whole Dockerfile.
pub fn parse(src: &str) -> Result<Dockerfile, ParseError> {
    let lines: Vec<&str> = src.lines().collect();
    let (directives, mut i) = directives(&lines)?;
    let esc = directives.escape;
    let mut instructions = Vec::new();
    while i < lines.len() {
        let Some(logical) = next_logical(&lines, &mut i, esc) else {
            break;
        };
        let heredocs = read_heredocs(&logical, &lines, &mut i)?;
        instructions.push(instruction(&logical, heredocs, esc)?);
    }
    Ok(Dockerfile {
        directives,
        instructions,
    })
}

/// How much of the offending text an error shows (a hostile line may be megabytes).
const SHOWN: usize = 200;

fn err(line: usize, msg: impl Into<String>, text: &str) -> ParseError {
    let t = text.trim();
    let text = match t.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", &t[..cut]),
        None => t.to_owned(),
    };
    ParseError {
        line,
        msg: msg.into(),
        text,
    }
}

/// `# key=value` lines at the very top; the first other line ends them.
fn directives(lines: &[&str]) -> Result<(Directives, usize), ParseError> {
    let mut d = Directives {
        escape: '\\',
        syntax: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for (n, raw) in lines.iter().enumerate() {
        let Some(body) = raw.trim().strip_prefix('#') else {
            return Ok((d, n));
        };
        let Some((k, v)) = body.split_once('=') else {
            return Ok((d, n));
        };
        let key = k.trim().to_ascii_lowercase();
        let value = v.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Ok((d, n));
        }
        if seen.contains(&key) {
            return Err(err(n + 1, format!("directive {key:?} given twice"), raw));
        }
        seen.push(key.clone());
        match key.as_str() {
            "escape" => {
                d.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    _ => return Err(err(n + 1, "escape must be \\ or `", raw)),
                }
            }
            "syntax" => d.syntax = Some(value.to_owned()),
            // Other directives (check=...) are accepted and have no effect here.
            _ => {}
        }
    }
    Ok((d, lines.len()))
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Strips a trailing escape character (whitespace after it allowed); None if the line does
/// not continue.
fn continued(line: &str, esc: char) -> Option<&str> {
    let t = line.trim_end();
    t.strip_suffix(esc)
}

/// The next instruction's logical line: comments and blank lines skipped, continuations
/// joined (comment and blank lines inside a continuation are dropped, as docker does).
fn next_logical(lines: &[&str], i: &mut usize, esc: char) -> Option<Logical> {
    while *i < lines.len() && (lines[*i].trim().is_empty() || is_comment(lines[*i])) {
        *i += 1;
    }
    if *i >= lines.len() {
        return None;
    }
    let line = *i + 1;
    let mut text = String::new();
    loop {
        let raw = lines[*i];
        *i += 1;
        match continued(raw, esc) {
            Some(head) => {
                text.push_str(head);
                while *i < lines.len() && (lines[*i].trim().is_empty() || is_comment(lines[*i])) {
                    *i += 1;
                }
                if *i >= lines.len() {
                    break;
                }
            }
            None => {
                text.push_str(raw);
                break;
            }
        }
    }
    Some(Logical { line, text })
}

/// Heredoc markers (`<<EOF`, `<<-EOF`, `<<"EOF"`) on a RUN/COPY/ADD line, in order.
fn heredoc_markers(text: &str) -> Vec<(String, bool, bool)> {
    let kw = text
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    if !matches!(kw.as_str(), "RUN" | "COPY" | "ADD") {
        return Vec::new();
    }
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut quote: Option<u8> = None;
    let mut k = 0;
    while k < b.len() {
        let c = b[k];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if b[k..].starts_with(b"<<") => {
                let mut j = k + 2;
                let strip = b.get(j) == Some(&b'-');
                if strip {
                    j += 1;
                }
                let q = b.get(j).copied().filter(|&c| c == b'"' || c == b'\'');
                if q.is_some() {
                    j += 1;
                }
                let start = j;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if j > start && (q.is_none() || b.get(j) == q.as_ref()) {
                    out.push((text[start..j].to_owned(), strip, q.is_none()));
                    k = j + usize::from(q.is_some());
                    continue;
                }
            }
            None => {}
        }
        k += 1;
    }
    out
}

/// Reads the bodies of the line's heredocs from the following lines.
fn read_heredocs(
    logical: &Logical,
    lines: &[&str],
    i: &mut usize,
) -> Result<Vec<Heredoc>, ParseError> {
    let mut docs = Vec::new();
    for (name, strip, expand) in heredoc_markers(&logical.text) {
        let mut body = String::new();
        loop {
            let Some(raw) = lines.get(*i) else {
                return Err(err(
                    logical.line,
                    format!("heredoc {name:?} is not terminated"),
                    &logical.text,
                ));
            };
            *i += 1;
            let l = if strip {
                raw.trim_start_matches('\t')
            } else {
                raw
            };
            if l == name {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        docs.push(Heredoc { name, body, expand });
    }
    Ok(docs)
}

/// Splits `--name=value` flags off the front of the arguments.
fn flags(mut rest: &str) -> (Vec<Flag>, &str) {
    let mut out = Vec::new();
    while let Some(f) = rest.strip_prefix("--") {
        let end = f.find(char::is_whitespace).unwrap_or(f.len());
        let (word, after) = f.split_at(end);
        if word.is_empty() {
            break;
        }
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (word.to_owned(), None),
        };
        out.push(Flag { name, value });
        rest = after.trim_start();
    }
    (out, rest)
}

/// A JSON array of strings, or None (then the shell form applies, as docker does).
fn json_array(rest: &str) -> Option<Vec<String>> {
    let t = rest.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

fn command(rest: &str) -> Command {
    match json_array(rest) {
        Some(v) => Command::Exec(v),
        None => Command::Shell(rest.trim().to_owned()),
    }
}

/// Words split on unquoted whitespace, quotes and escapes kept for the expander.
pub fn words(s: &str, esc: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == esc && quote != Some('\'') {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
            in_word = true;
            continue;
        }
        match quote {
            Some(q) if c == q => quote = None,
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                continue;
            }
            _ => {}
        }
        cur.push(c);
        in_word = true;
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// ENV and LABEL arguments: `k=v k2="v 2"` or the legacy `k v w` (one pair, the rest is
/// the value).
fn pairs(
    rest: &str,
    esc: char,
    line: usize,
    text: &str,
) -> Result<Vec<(String, String)>, ParseError> {
    let ws = words(rest, esc);
    let Some(first) = ws.first() else {
        return Err(err(line, "missing arguments", text));
    };
    if !first.contains('=') {
        let value = rest.trim_start()[first.len()..].trim().to_owned();
        if value.is_empty() && ws.len() < 2 {
            return Err(err(line, "needs a value (KEY VALUE or KEY=VALUE)", text));
        }
        return Ok(vec![(first.clone(), value)]);
    }
    ws.iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(err(line, format!("{w:?} is not KEY=VALUE"), text)),
        })
        .collect()
}

fn one_arg(rest: &str, line: usize, text: &str) -> Result<String, ParseError> {
    let t = rest.trim();
    if t.is_empty() {
        return Err(err(line, "missing argument", text));
    }
    Ok(t.to_owned())
}

fn copy_args(rest: &str, heredocs: Vec<Heredoc>, esc: char) -> (Copy, usize) {
    let (flags, rest) = flags(rest);
    let (mut args, json) = match json_array(rest) {
        Some(v) => (v, true),
        None => (words(rest, esc), false),
    };
    // Heredoc markers stand for the documents, which are sources of their own.
    args.retain(|w| {
        let name = w.trim_start_matches("<<").trim_start_matches('-');
        let name = name.trim_matches(|c| c == '"' || c == '\'');
        !(w.starts_with("<<") && heredocs.iter().any(|h| h.name == name))
    });
    let n = args.len() + heredocs.len();
    (
        Copy {
            flags,
            args,
            json,
            heredocs,
        },
        n,
    )
}

fn instruction(
    logical: &Logical,
    heredocs: Vec<Heredoc>,
    esc: char,
) -> Result<Instruction, ParseError> {
    let (line, text) = (logical.line, logical.text.trim());
    let kw_end = text.find(char::is_whitespace).unwrap_or(text.len());
    let (kw, rest) = text.split_at(kw_end);
    let rest = rest.trim_start();
    let kw = kw.to_ascii_uppercase();
    let need = |r: &str| {
        if r.trim().is_empty() {
            Err(err(line, format!("{kw} needs arguments"), text))
        } else {
            Ok(())
        }
    };
    let kind = match kw.as_str() {
        "FROM" => from(rest, line, text)?,
        "RUN" => {
            let (flags, rest) = flags(rest);
            if rest.trim().is_empty() && heredocs.is_empty() {
                return Err(err(line, "RUN needs a command", text));
            }
            Kind::Run {
                flags,
                cmd: command(rest),
                heredocs,
            }
        }
        "CMD" => Kind::Cmd(command(rest)),
        "ENTRYPOINT" => Kind::Entrypoint(command(rest)),
        "SHELL" => match json_array(rest) {
            Some(v) if !v.is_empty() => Kind::Shell(v),
            _ => return Err(err(line, "SHELL needs a JSON array", text)),
        },
        "COPY" | "ADD" => copy_or_add(&kw, rest, heredocs, esc, line, text)?,
        "ENV" => Kind::Env(pairs(rest, esc, line, text)?),
        "LABEL" => Kind::Label(pairs(rest, esc, line, text)?),
        "ARG" => {
            need(rest)?;
            Kind::Arg(
                words(rest, esc)
                    .into_iter()
                    .map(|w| match w.split_once('=') {
                        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                        None => (w, None),
                    })
                    .collect(),
            )
        }
        "WORKDIR" => Kind::Workdir(one_arg(rest, line, text)?),
        "USER" => Kind::User(one_arg(rest, line, text)?),
        "STOPSIGNAL" => Kind::StopSignal(one_arg(rest, line, text)?),
        "MAINTAINER" => Kind::Maintainer(one_arg(rest, line, text)?),
        "EXPOSE" => {
            need(rest)?;
            Kind::Expose(words(rest, esc))
        }
        "VOLUME" => {
            need(rest)?;
            Kind::Volume(json_array(rest).unwrap_or_else(|| words(rest, esc)))
        }
        "HEALTHCHECK" => healthcheck(rest, line, text)?,
        "ONBUILD" => {
            need(rest)?;
            onbuild(rest, heredocs, esc, line, text)?
        }
        _ => return Err(err(line, format!("unknown instruction {kw}"), text)),
    };
    Ok(Instruction {
        line,
        text: text.to_owned(),
        kind,
    })
}

/// `FROM [--platform=..] IMAGE [AS NAME]`.
fn from(rest: &str, line: usize, text: &str) -> Result<Kind, ParseError> {
    let (flags, rest) = flags(rest);
    let ws: Vec<&str> = rest.split_whitespace().collect();
    match ws.as_slice() {
        [image] => Ok(Kind::From {
            image: (*image).to_owned(),
            alias: None,
            flags,
        }),
        [image, as_, alias] if as_.eq_ignore_ascii_case("as") => Ok(Kind::From {
            image: (*image).to_owned(),
            alias: Some((*alias).to_owned()),
            flags,
        }),
        _ => Err(err(line, "expected FROM IMAGE [AS NAME]", text)),
    }
}

fn copy_or_add(
    kw: &str,
    rest: &str,
    heredocs: Vec<Heredoc>,
    esc: char,
    line: usize,
    text: &str,
) -> Result<Kind, ParseError> {
    let (c, n) = copy_args(rest, heredocs, esc);
    if c.args.is_empty() || n < 2 {
        let why = format!("{kw} needs a source and a destination");
        return Err(err(line, why, text));
    }
    Ok(if kw == "COPY" {
        Kind::Copy(c)
    } else {
        Kind::Add(c)
    })
}

/// `HEALTHCHECK [OPTIONS] CMD ...` or `HEALTHCHECK NONE`.
fn healthcheck(rest: &str, line: usize, text: &str) -> Result<Kind, ParseError> {
    let (flags, rest) = flags(rest);
    let w_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let (w, cmd) = rest.split_at(w_end);
    match w.to_ascii_uppercase().as_str() {
        "NONE" if cmd.trim().is_empty() => Ok(Kind::Healthcheck(Health { flags, cmd: None })),
        "CMD" if !cmd.trim().is_empty() => Ok(Kind::Healthcheck(Health {
            flags,
            cmd: Some(command(cmd)),
        })),
        _ => Err(err(
            line,
            "expected HEALTHCHECK [OPTIONS] CMD ... or NONE",
            text,
        )),
    }
}

/// `ONBUILD INSTRUCTION`: any instruction but ONBUILD, FROM and MAINTAINER.
fn onbuild(
    rest: &str,
    heredocs: Vec<Heredoc>,
    esc: char,
    line: usize,
    text: &str,
) -> Result<Kind, ParseError> {
    let inner = Logical {
        line,
        text: rest.to_owned(),
    };
    let i = instruction(&inner, heredocs, esc)?;
    if matches!(
        i.kind,
        Kind::Onbuild(_) | Kind::From { .. } | Kind::Maintainer(_)
    ) {
        let why = format!("ONBUILD {} is not allowed", i.kind.keyword());
        return Err(err(line, why, text));
    }
    Ok(Kind::Onbuild(Box::new(i)))
}
