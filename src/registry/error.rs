//! One error type for registry work: each variant names the registry, reference or blob and
//! the step that failed. Never carries credentials.

use std::io;
use std::path::PathBuf;

use crate::image::ImageError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("bad image reference {reference:?}: {why}")]
    BadReference { reference: String, why: String },
    #[error("{step} {host}: {why}")]
    Connect {
        step: &'static str,
        host: String,
        why: String,
    },
    #[error("{registry}: authentication required: log in with `strata login {registry}`")]
    LoginRequired { registry: String },
    #[error("{registry}: wrong user name or password")]
    BadCredentials { registry: String },
    #[error("{registry}: access to {scope} denied for these credentials")]
    Denied { registry: String, scope: String },
    #[error("{reference}: manifest not found in the registry")]
    ManifestNotFound { reference: String },
    #[error("{step} {url}: HTTP {status}{}", detail(.message))]
    Status {
        step: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{step} {what}: {why}")]
    Protocol {
        step: &'static str,
        what: String,
        why: String,
    },
    #[error("{step} {}: {source}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {why}", path.display())]
    Config { path: PathBuf, why: String },
    #[error(transparent)]
    Image(#[from] ImageError),
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}

pub type Result<T> = std::result::Result<T, RegistryError>;

pub fn protocol(
    step: &'static str,
    what: impl Into<String>,
    why: impl Into<String>,
) -> RegistryError {
    RegistryError::Protocol {
        step,
        what: what.into(),
        why: why.into(),
    }
}

pub fn io_err(
    step: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> RegistryError {
    let path = path.into();
    move |source| RegistryError::Io { step, path, source }
}
