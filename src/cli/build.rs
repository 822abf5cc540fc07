//! `strata build`: argument parsing and output (the work is in `strata::build`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;

use strata::build::{self, BuildOptions, Network};
use strata::image::{self, Store};

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The Dockerfile [default: CONTEXT/Dockerfile].
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Name the image NAME[:TAG]; repeatable.
    #[arg(short = 't', long = "tag", value_name = "NAME:TAG")]
    tags: Vec<String>,
    /// Build up to this stage; it becomes the image.
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// Sets an ARG (KEY=VALUE, or KEY to take it from the environment); repeatable.
    #[arg(long = "build-arg", value_name = "K=V")]
    build_args: Vec<String>,
    /// Run every step, using no cached one.
    #[arg(long)]
    no_cache: bool,
    /// Network of RUN steps: none (only loopback) or host.
    #[arg(long, value_name = "MODE", default_value = "none")]
    network: String,
    /// Also write the image as oci:DIR (an OCI layout) or oci-archive:FILE.tar.
    #[arg(long, value_name = "DEST")]
    output: Option<String>,
    /// Progress output: auto or plain (both print one line per step).
    #[arg(long, value_name = "MODE", default_value = "auto")]
    progress: String,
    /// Print only the image ID.
    #[arg(short, long)]
    quiet: bool,
    /// Write the image ID to this file.
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// The build context (a directory).
    #[arg(value_name = "CONTEXT")]
    context: PathBuf,
}

fn options(a: &BuildArgs) -> anyhow::Result<BuildOptions> {
    let file = a
        .file
        .clone()
        .unwrap_or_else(|| a.context.join("Dockerfile"));
    let dockerfile =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut build_args = std::collections::BTreeMap::new();
    for b in &a.build_args {
        if let Some((k, v)) = build::parse_build_arg(b)? {
            build_args.insert(k, v);
        }
    }
    let network = match a.network.as_str() {
        "none" => Network::None,
        "host" => Network::Host,
        other => anyhow::bail!("bad --network '{other}': use none or host"),
    };
    if !matches!(a.progress.as_str(), "auto" | "plain" | "tty") {
        anyhow::bail!("bad --progress '{}': use auto or plain", a.progress);
    }
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(
            v.parse::<i64>()
                .with_context(|| format!("bad SOURCE_DATE_EPOCH {v:?}: not a number"))?,
        ),
        _ => None,
    };
    for t in &a.tags {
        image::oci::normalize_name(t)?;
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())?;
    }
    Ok(BuildOptions {
        context: a.context.clone(),
        dockerfile,
        tags: a.tags.clone(),
        target: a.target.clone(),
        build_args,
        no_cache: a.no_cache,
        network,
        quiet: a.quiet,
        strata_exe: std::env::current_exe().context("finding the strata binary")?,
        source_date_epoch,
        interrupted,
    })
}

/// Builds; the exit code is a failing RUN's status (1 for other failures).
pub fn build(root: Option<PathBuf>, a: BuildArgs) -> anyhow::Result<u8> {
    let opts = options(&a)?;
    if a.output.is_some() && a.tags.is_empty() {
        anyhow::bail!("--output needs a -t NAME for the image");
    }
    let store = Store::open(&root.unwrap_or_else(Store::default_root))?;
    // Scratch a killed earlier build's RUN steps left behind (a cached build runs none).
    strata::launcher::sweep_scratch();
    let built = match build::build(&store, &opts) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("strata: {e}");
            return Ok(e.exit_code());
        }
    };
    if let Some(out) = &a.output {
        let path = out
            .strip_prefix("oci:")
            .or_else(|| out.strip_prefix("oci-archive:"))
            .with_context(|| {
                format!("bad --output {out:?}: use oci:DIR or oci-archive:FILE.tar")
            })?;
        image::export::export(&store, &built.tags[0], std::path::Path::new(path))
            .with_context(|| format!("writing {out}"))?;
    }
    if let Some(f) = &a.iidfile {
        std::fs::write(f, &built.id).with_context(|| format!("writing {}", f.display()))?;
    }
    if !a.quiet {
        for t in &built.tags {
            eprintln!("tagged {t}");
        }
        eprintln!("{} steps run, {} cached", built.ran, built.cached);
    }
    println!("{}", built.id);
    Ok(0)
}
