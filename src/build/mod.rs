//! `strata build`: images from a Dockerfile. Every filesystem-changing instruction becomes one
//! layer, committed straight from the upper directory it was written to; the other
//! instructions change only the config. Steps are cached in the store by a key over the
//! parent chain, the expanded instruction, the build args it sees and its sources' checksum.

pub mod cache;
mod config;
pub mod copy;
pub mod dockerfile;
pub mod expand;
mod fetch;
pub mod ignore;
mod layerfs;
pub mod plan;
mod stage;
mod steps;
mod workspace;
mod write;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::image::{ImageError, Store};
use crate::mount::MountError;
pub use dockerfile::ParseError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A problem with one instruction: `Dockerfile:LINE: what` (line 0: the whole build).
    #[error("{}{msg}", if *line > 0 { format!("Dockerfile:{line}: ") } else { String::new() })]
    At { line: usize, msg: String },
    #[error("{step} {path}: {cause}")]
    Io {
        step: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("Dockerfile:{line}: {text}: exited with status {code}")]
    RunFailed {
        line: usize,
        text: String,
        code: i32,
    },
    #[error("bad --build-arg {0:?}: expected KEY=VALUE")]
    BuildArg(String),
    #[error("--target {0:?}: no such stage")]
    Target(String),
    #[error("interrupted")]
    Interrupted,
}

impl BuildError {
    /// The exit code: a failing RUN's own status, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            BuildError::RunFailed { code, .. } => (*code).clamp(1, 255) as u8,
            BuildError::Interrupted => 130,
            _ => 1,
        }
    }
}

pub type Result<T> = std::result::Result<T, BuildError>;

pub(crate) fn io_err(
    step: &'static str,
    path: impl AsRef<Path>,
) -> impl FnOnce(io::Error) -> BuildError {
    let path = path.as_ref().to_owned();
    move |cause| BuildError::Io { step, path, cause }
}

pub(crate) fn at(line: usize, msg: impl Into<String>) -> BuildError {
    BuildError::At {
        line,
        msg: msg.into(),
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    #[default]
    None,
    Host,
}

/// What `strata build` was asked for.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    pub context: PathBuf,
    /// The Dockerfile's text and the name it is shown under.
    pub dockerfile: String,
    pub tags: Vec<String>,
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub no_cache: bool,
    pub network: Network,
    pub quiet: bool,
    /// The strata binary, for RUN steps (`strata run`).
    pub strata_exe: PathBuf,
    /// SOURCE_DATE_EPOCH: timestamps in layers, config and history clamped to it.
    pub source_date_epoch: Option<i64>,
    /// Set by SIGINT/SIGTERM: stop at the next step.
    pub interrupted: Arc<AtomicBool>,
}

/// Parses `KEY=VALUE` (or `KEY`, taking the value from the environment when set).
pub fn parse_build_arg(s: &str) -> Result<Option<(String, String)>> {
    let (k, v) = match s.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (s, None),
    };
    let valid = !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(BuildError::BuildArg(s.to_owned()));
    }
    Ok(v.or_else(|| std::env::var(k).ok())
        .map(|v| (k.to_owned(), v)))
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image ID (config digest).
    pub id: String,
    pub tags: Vec<String>,
    /// Steps run and steps taken from the cache.
    pub ran: usize,
    pub cached: usize,
}

/// Builds the Dockerfile in `opts` with the store; the result is tagged with every tag.
pub fn build(store: &Store, opts: &BuildOptions) -> Result<Built> {
    let df = dockerfile::parse(&opts.dockerfile)?;
    let plan = plan::Plan::new(&df, opts)?;
    stage::Builder::new(store, opts, &df, &plan)?.run()
}

#[cfg(test)]
mod parse_tests;
