//! Variable expansion with docker's rules (BuildKit's shell lexer): `$V`, `${V}`,
//! `${V:-w}`, `${V-w}`, `${V:+w}`, `${V+w}`, `${V:?msg}`, `${V?msg}`; single quotes are
//! literal, double quotes expand but do not split, the escape character quotes the next
//! character (inside double quotes only `"`, `$` and itself), and quotes are removed.

/// What went wrong expanding a word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("unterminated {0} quote in {1:?}")]
    Quote(&'static str, String),
    #[error("missing '}}' in {0:?}")]
    Brace(String),
    #[error("bad substitution in {0:?}")]
    Bad(String),
    #[error("unsupported modifier ({0}) in substitution {1:?}")]
    Modifier(char, String),
    #[error("{0}: {1}")]
    Required(String, String),
    #[error("substitutions nested more than {MAX_DEPTH} deep")]
    Deep,
}

/// Nesting of `${V:-${W:-..}}` allowed: each level is a frame on the stack.
pub const MAX_DEPTH: usize = 64;

/// Where variables come from.
pub trait Vars {
    fn get(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Vars for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

struct Lexer<'a> {
    /// Shared by the nested lexers of `${V:-word}`.
    src: std::rc::Rc<[char]>,
    depth: usize,
    pos: usize,
    esc: char,
    vars: &'a dyn Vars,
    /// Split on unquoted whitespace (several words) or not (one word).
    split: bool,
    words: Vec<String>,
    cur: String,
    /// The current word exists even if empty (`""` is a word).
    started: bool,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.src.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.pos += usize::from(c.is_some());
        c
    }

    fn whole(&self) -> String {
        self.src.iter().collect()
    }

    fn push(&mut self, c: char) {
        self.cur.push(c);
        self.started = true;
    }

    fn end_word(&mut self) {
        if self.started {
            self.words.push(std::mem::take(&mut self.cur));
            self.started = false;
        }
    }

    /// Text expanded without quotes, from an unquoted variable: split when splitting.
    fn push_unquoted(&mut self, s: &str) {
        for c in s.chars() {
            if self.split && c.is_whitespace() {
                self.end_word();
            } else {
                self.push(c);
            }
        }
    }

    /// Processes until `stop` (not consumed) or the end; returns whether `stop` was found.
    fn run(&mut self, stop: Option<char>) -> Result<bool, ExpandError> {
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                return Ok(true);
            }
            self.pos += 1;
            match c {
                '\'' => self.single()?,
                '"' => self.double()?,
                '$' => {
                    let v = self.dollar()?;
                    self.push_unquoted(&v);
                }
                c if c == self.esc => {
                    // An escape at the very end is dropped.
                    if let Some(n) = self.next() {
                        self.push(n);
                    }
                }
                c if self.split && c.is_whitespace() => self.end_word(),
                c => self.push(c),
            }
        }
        Ok(false)
    }

    fn single(&mut self) -> Result<(), ExpandError> {
        self.started = true;
        loop {
            match self.next() {
                None => return Err(ExpandError::Quote("single", self.whole())),
                Some('\'') => return Ok(()),
                Some(c) => self.push(c),
            }
        }
    }

    fn double(&mut self) -> Result<(), ExpandError> {
        self.started = true;
        loop {
            match self.next() {
                None => return Err(ExpandError::Quote("double", self.whole())),
                Some('"') => return Ok(()),
                Some('$') => {
                    let v = self.dollar()?;
                    self.cur.push_str(&v);
                }
                Some(c) if c == self.esc => match self.peek() {
                    None => {}
                    Some(n) if n == '"' || n == '$' || n == self.esc => {
                        self.pos += 1;
                        self.push(n);
                    }
                    Some(_) => self.push(c),
                },
                Some(c) => self.push(c),
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        // A positional parameter ($1) is one digit, and never set.
        if let Some(c) = self.peek().filter(char::is_ascii_digit) {
            self.pos += 1;
            name.push(c);
            return name;
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        name
    }

    /// After a `$`: the value it stands for.
    fn dollar(&mut self) -> Result<String, ExpandError> {
        match self.peek() {
            Some('{') => self.pos += 1,
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let n = self.name();
                return Ok(self.vars.get(&n).unwrap_or_default());
            }
            _ => return Ok("$".to_owned()),
        }
        let name = self.name();
        if name.is_empty() {
            return Err(ExpandError::Bad(self.whole()));
        }
        let value = self.vars.get(&name);
        let mut colon = false;
        let op = match self.next() {
            None => return Err(ExpandError::Brace(self.whole())),
            Some('}') => return Ok(value.unwrap_or_default()),
            Some(':') => {
                colon = true;
                self.next()
            }
            Some(c) => Some(c),
        };
        let op = match op {
            Some(c @ ('-' | '+' | '?')) => c,
            Some(c) => return Err(ExpandError::Modifier(c, self.whole())),
            None => return Err(ExpandError::Brace(self.whole())),
        };
        let word = self.sub_word()?;
        // With a colon, an empty value counts as unset.
        let set = value.as_ref().is_some_and(|v| !colon || !v.is_empty());
        Ok(match op {
            '-' if set => value.unwrap_or_default(),
            '-' => word,
            '+' if set => word,
            '+' => String::new(),
            _ if set => value.unwrap_or_default(),
            _ => {
                let msg = if word.is_empty() {
                    "is not set or empty".to_owned()
                } else {
                    word
                };
                return Err(ExpandError::Required(name, msg));
            }
        })
    }

    /// The word of a modifier, up to the closing brace, itself expanded (never split).
    fn sub_word(&mut self) -> Result<String, ExpandError> {
        if self.depth >= MAX_DEPTH {
            return Err(ExpandError::Deep);
        }
        let mut inner = Lexer {
            src: self.src.clone(),
            depth: self.depth + 1,
            pos: self.pos,
            esc: self.esc,
            vars: self.vars,
            split: false,
            words: Vec::new(),
            cur: String::new(),
            started: false,
        };
        if !inner.run(Some('}'))? {
            return Err(ExpandError::Brace(self.whole()));
        }
        self.pos = inner.pos + 1;
        Ok(inner.cur)
    }
}

fn lexer<'a>(s: &str, esc: char, vars: &'a dyn Vars, split: bool) -> Lexer<'a> {
    Lexer {
        src: s.chars().collect(),
        depth: 0,
        pos: 0,
        esc,
        vars,
        split,
        words: Vec::new(),
        cur: String::new(),
        started: false,
    }
}

/// Expands one word (whitespace kept), removing quotes.
pub fn word(s: &str, esc: char, vars: &dyn Vars) -> Result<String, ExpandError> {
    let mut l = lexer(s, esc, vars, false);
    l.run(None)?;
    Ok(l.cur)
}

/// Expands and splits on unquoted whitespace (also whitespace that expansion produced).
pub fn words(s: &str, esc: char, vars: &dyn Vars) -> Result<Vec<String>, ExpandError> {
    let mut l = lexer(s, esc, vars, true);
    l.run(None)?;
    l.end_word();
    Ok(l.words)
}
