//! `strata build`: images from a Dockerfile.

pub mod dockerfile;
pub mod expand;

#[cfg(test)]
mod parse_tests;
