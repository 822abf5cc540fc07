//! `strata pipeline`: Cloud Build configs (`cloudbuild.yaml`) run locally, every step a
//! `strata run` container over a shared `/workspace`, docker-builder steps turned into strata's
//! own commands. Steps run as subprocesses of strata's own binary, so the pipeline depends on
//! the command lines of `run`, `build`, `push` and `image tag`, not on their code.

pub mod config;
pub mod dag;
pub mod docker;
pub mod plan;
pub mod runner;
pub mod subst;
pub mod summary;
pub mod workspace;

use std::io;
use std::path::PathBuf;

pub use config::{Checked, Config, Step, load, parse};
pub use runner::{Outcome, RunOptions, run};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The YAML itself, with its line and column, or a field the schema does not have.
    #[error("bad config: {0}")]
    Yaml(String),
    /// A rule of Cloud Build's validation.
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("{0}")]
    Substitution(String),
    /// Preparing the workspace, a volume or the run directory.
    #[error("{step} {}: {source}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A docker-builder step that strata cannot translate.
    #[error("{step}: {why}")]
    Docker { step: String, why: String },
    /// A strata subcommand the pipeline needs is not in this binary.
    #[error("{step}: needs `strata {sub}`, which this strata does not have yet")]
    Missing { step: String, sub: String },
    #[error("bad {what} {value:?}: {why}")]
    Arg {
        what: &'static str,
        value: String,
        why: String,
    },
}
