//! Registries: references with docker's normalisation, credentials (containers auth.json,
//! docker's config.json), registries.conf, an OCI distribution client (blocking, ureq), and
//! pull into / push from the image store.

pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod manifest;
pub mod pool;
pub mod pull;
pub mod push;
pub mod reference;
pub mod resume;

pub use client::{Client, ClientOptions};
pub use error::{RegistryError, Result};
pub use reference::ImageRef;
