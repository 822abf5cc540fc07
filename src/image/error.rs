//! One error type for the image code: every variant names the failing step and the path,
//! blob or tar entry it concerns.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A system call on a store or source path failed.
    #[error("{step} {}: {source}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A tar entry could not be written into a layer directory.
    #[error("{step} {entry:?} in layer {layer}: {source}")]
    Entry {
        step: &'static str,
        layer: String,
        entry: String,
        #[source]
        source: io::Error,
    },
    /// A tar entry tries to leave the layer directory, or is otherwise refused.
    #[error("unsafe entry {entry:?} in layer {layer}: {why}")]
    Unsafe {
        layer: String,
        entry: String,
        why: &'static str,
    },
    /// The tar stream itself is malformed.
    #[error("reading layer {layer}: {source}")]
    Tar {
        layer: String,
        #[source]
        source: io::Error,
    },
    /// A blob's content does not hash to the digest that names it.
    #[error("blob {expected}: content has digest {actual}")]
    DigestMismatch { expected: String, actual: String },
    /// A layer's uncompressed content does not hash to the config's diff_id.
    #[error(
        "layer {blob}: uncompressed content has digest {actual}, config says diff_id {expected}"
    )]
    DiffIdMismatch {
        blob: String,
        expected: String,
        actual: String,
    },
    /// A JSON document could not be parsed.
    #[error("parsing {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// Well-formed input that does not say what an image must say.
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
    #[error("no image named {0:?} in the store")]
    NotFound(String),
}

pub type Result<T> = std::result::Result<T, ImageError>;

/// `map_err` helper: `.map_err(io_err("creating", &path))`.
pub fn io_err(
    step: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { step, path, source }
}

pub fn invalid(what: impl Into<String>, why: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        what: what.into(),
        why: why.into(),
    }
}
