//! OCI images: import (OCI layouts, docker-save archives), a content-addressed layer store,
//! commit of an upper layer back to an image layer, export to an OCI layout.

pub mod check;
pub mod digest;
pub mod error;
pub mod fsutil;
pub mod unpack;

pub use digest::Digest;
pub use error::{ImageError, Result};
pub mod import;
pub mod layer;
pub mod limits;
pub mod merged;
pub mod oci;
mod pipe;
pub mod progress;
pub mod run;
pub mod source;
pub mod store;

pub use run::{ImageRun, RunDefaults, RunOverrides, RunPlan, image_run, merge_run, resolve_user};
pub use store::Store;
pub mod commit;
pub mod export;
