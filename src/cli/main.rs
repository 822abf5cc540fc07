//! strata's command line. The only place `anyhow` is used.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use strata::mount::{MountRequest, umount};

mod build;
mod image;
mod pipeline;
mod registry;
mod run;
use strata::options::MountOptions;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Union filesystem for container layers"
)]
struct Cli {
    /// Image store directory [default: $XDG_DATA_HOME/strata, /var/lib/strata for root].
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount a union of layers (also the default: `strata -o lowerdir=A:B MNT`).
    Mount(MountArgs),
    /// Unmount a strata mount.
    Umount {
        mountpoint: PathBuf,
        /// Detach now, clean up when no longer busy.
        #[arg(short, long)]
        lazy: bool,
    },
    /// Manage OCI images in the layer store.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Turn an upper layer into a new image on top of IMAGE.
    Commit(image::CommitArgs),
    /// Run a command in a container on a union of layers (or an image).
    Run(Box<run::RunArgs>),
    /// Pull an image from a registry into the store.
    Pull(registry::PullArgs),
    /// Push an image from the store to a registry.
    Push(registry::PushArgs),
    /// Check and store credentials for a registry.
    Login(registry::LoginArgs),
    /// Remove the stored credentials for a registry.
    Logout(registry::LogoutArgs),
    /// Build an image from a Dockerfile.
    Build(Box<build::BuildArgs>),
    /// Run or check a Cloud Build config (cloudbuild.yaml), every step a container.
    #[command(subcommand)]
    Pipeline(pipeline::PipelineCmd),
}

#[derive(clap::Args)]
struct MountArgs {
    /// Lower layer, top first; repeat for more layers.
    #[arg(long = "lower", value_name = "DIR")]
    lowers: Vec<PathBuf>,
    /// Writable upper layer.
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// Work directory, on the upper's filesystem.
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,
    /// Options in fuse-overlayfs / mount(8) form: lowerdir=A:B,upperdir=U,workdir=W,...
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<OsString>,
    /// How deletions are recorded in the upper layer: chardev (0/0 devices), oci (`.wh.`
    /// files) or auto (devices where mknod works).
    #[arg(long, value_name = "FORMAT")]
    whiteout: Option<String>,
    /// Stay in the foreground instead of serving from a background daemon.
    #[arg(short, long)]
    foreground: bool,
    /// Log every request to stderr (implies --foreground).
    #[arg(short, long)]
    debug: bool,
    /// Request-handling threads.
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
    /// [SOURCE] MOUNTPOINT; SOURCE (as mount.fuse3 passes it) is ignored.
    #[arg(required = true, num_args = 1..=2, value_name = "MOUNTPOINT")]
    paths: Vec<PathBuf>,
}

fn default_threads() -> usize {
    (strata::sys::cpu_count() * 2).clamp(4, 16)
}

/// `strata -o ... MNT` (fuse-overlayfs form) and `strata SRC MNT -o ...` (mount helper form)
/// mean `strata mount ...`.
fn normalise_args() -> Vec<OsString> {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    const KNOWN: &[&[u8]] = &[
        b"mount",
        b"umount",
        b"image",
        b"commit",
        b"run",
        b"pull",
        b"push",
        b"login",
        b"logout",
        b"build",
        b"pipeline",
        b"--root",
        b"help",
        b"-h",
        b"--help",
        b"-V",
        b"--version",
    ];
    if args.len() > 1 && !KNOWN.contains(&args[1].as_bytes()) {
        args.insert(1, "mount".into());
    }
    args
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("strata: {}", one_line(&e));
            // `strata run` follows docker: 125 when strata itself fails.
            let run = std::env::args_os().nth(1).is_some_and(|a| a == "run");
            std::process::ExitCode::from(if run { 125 } else { 1 })
        }
    }
}

/// The error and its causes on one line. Our error types embed their cause in their message
/// (and also return it as `source`), so a cause the line already ends with is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !line.ends_with(&c) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&c);
        }
    }
    line
}

/// The exit code: 0, or the command's for `strata run`.
fn run() -> anyhow::Result<u8> {
    let cli = Cli::parse_from(normalise_args());
    match cli.cmd {
        Cmd::Mount(a) => {
            let mut options = MountOptions::default();
            for o in &a.options {
                options.apply(o.as_bytes())?;
            }
            if !a.lowers.is_empty() {
                options.lowers = a.lowers;
            }
            if let Some(w) = &a.whiteout {
                options.apply(format!("whiteout={w}").as_bytes())?;
            }
            options.upper = a.upper.or(options.upper);
            options.work = a.work.or(options.work);
            if a.debug {
                env_logger::Builder::new()
                    .filter_level(log::LevelFilter::Debug)
                    .init();
            }
            let mountpoint = a.paths.last().cloned().unwrap_or_default();
            strata::mount::run(MountRequest {
                options,
                mountpoint,
                foreground: a.foreground || a.debug,
                threads: a.threads,
            })?;
        }
        Cmd::Umount { mountpoint, lazy } => {
            umount(&mountpoint, lazy)
                .with_context(|| format!("unmounting {}", mountpoint.display()))?;
        }
        Cmd::Image(c) => image::image(cli.root, c)?,
        Cmd::Commit(a) => image::commit(cli.root, a)?,
        Cmd::Run(a) => return run::run(cli.root, *a),
        Cmd::Pull(a) => registry::pull_cmd(cli.root, a)?,
        Cmd::Push(a) => registry::push_cmd(cli.root, a)?,
        Cmd::Login(a) => registry::login_cmd(a)?,
        Cmd::Logout(a) => registry::logout_cmd(a)?,
        Cmd::Build(a) => return build::build(cli.root, *a),
        Cmd::Pipeline(c) => return pipeline::pipeline(cli.root, c),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("writing file \"big\": {0}")]
        struct Embeds(#[source] std::io::Error);
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = anyhow::Error::new(Embeds(io)).context("importing /x");
        assert_eq!(
            super::one_line(&e),
            "importing /x: writing file \"big\": No space left on device (os error 28)"
        );
        let plain = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EIO)).context("a");
        assert_eq!(
            super::one_line(&plain),
            "a: Input/output error (os error 5)"
        );
    }
}
