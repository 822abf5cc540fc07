//! strata: a FUSE union filesystem with kernel-overlayfs semantics.
#![deny(unsafe_code)]

pub mod build;
pub mod format;
pub mod fuse;
pub mod image;
pub mod launcher;
pub mod mount;
pub mod options;
pub mod passwd;
pub mod pipeline;
pub mod registry;
#[allow(unsafe_code)]
pub mod sys;
pub mod union;
