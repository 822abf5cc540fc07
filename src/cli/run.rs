//! `strata run`: command-line arguments to a `RunSpec` (with an image's defaults when an image
//! is named), then the launcher.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;
use strata::image;
use strata::launcher::{self, Limits, Net, RunSpec};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Lower layer, top first; repeat for more (instead of an IMAGE).
    #[arg(long = "lower", value_name = "DIR")]
    lowers: Vec<PathBuf>,
    /// Keep the container layer in DIR (DIR/diff, DIR/work); default: a fresh one, removed at exit.
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// Memory limit (e.g. 256M, 1G); swap is off.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// CPU quota in cores (e.g. 0.5).
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// Maximum number of processes.
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// Network: none (only loopback) or host.
    #[arg(long, value_name = "MODE", default_value = "none")]
    net: String,
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// Environment variable for the command; repeatable.
    #[arg(short, long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// UID[:GID] (or, with an image, a user name from its /etc/passwd).
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
    /// Overrides the image's Entrypoint.
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// The root filesystem is read-only.
    #[arg(long)]
    read_only: bool,
    /// Bind mount SRC to DST inside; repeatable.
    #[arg(long = "bind", value_name = "SRC:DST[:ro]")]
    binds: Vec<String>,
    /// An image from the store, or a registry reference (pulled when the store lacks it),
    /// instead of --lower.
    #[arg(value_name = "IMAGE")]
    image: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    cmd: Vec<OsString>,
}

/// Builds the spec and runs; the exit code is the command's.
pub fn run(root: Option<PathBuf>, a: RunArgs) -> anyhow::Result<u8> {
    let limits = Limits {
        memory: a.memory.as_deref().map(launcher::parse_size).transpose()?,
        cpus: match a.cpus {
            Some(c) if !(c > 0.0 && c.is_finite()) => {
                anyhow::bail!("bad --cpus '{c}': must be a number of cores above 0")
            }
            c => c,
        },
        pids: match a.pids {
            Some(0) => anyhow::bail!("bad --pids '0': must be at least 1"),
            p => p,
        },
    };
    let net = match a.net.as_str() {
        "none" => Net::None,
        "host" => Net::Host,
        other => anyhow::bail!("bad --net '{other}': use none or host"),
    };
    let binds = a
        .binds
        .iter()
        .map(|b| launcher::parse_bind(b))
        .collect::<Result<Vec<_>, _>>()?;
    let mut spec = RunSpec {
        upper: a.upper,
        hostname: a.hostname,
        limits,
        net,
        read_only: a.read_only,
        binds,
        ..RunSpec::default()
    };
    match a.image {
        Some(name) => {
            if !a.lowers.is_empty() {
                anyhow::bail!("give an IMAGE or --lower layers, not both");
            }
            let store = image::Store::open(&root.unwrap_or_else(image::Store::default_root))?;
            let name = crate::registry::ensure_image(&store, &name)?;
            let img = image::image_run(&store, &name)?;
            let user = match &a.user {
                Some(u) => Some(image::resolve_user(&img.lowers, u)?),
                None => None,
            };
            let args = a
                .cmd
                .iter()
                .map(|s| s.to_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .context("the command must be UTF-8 with an image")?;
            let plan = image::merge_run(
                &img,
                &image::RunOverrides {
                    entrypoint: a.entrypoint,
                    args,
                    env: a.env,
                    workdir: a.workdir,
                    user,
                },
            )?;
            spec.lowers = img.lowers;
            spec.argv = plan.argv.into_iter().map(OsString::from).collect();
            spec.env = plan.env.into_iter().map(OsString::from).collect();
            spec.workdir = Some(PathBuf::from(plan.workdir));
            spec.user = plan.user;
        }
        None => {
            spec.lowers = a.lowers;
            spec.argv = a.cmd;
            if let Some(e) = a.entrypoint {
                spec.argv.insert(0, e.into());
            }
            spec.env = vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "TERM=xterm".into(),
            ];
            // `-e PATH=...` replaces the default rather than adding a second PATH.
            for e in a.env {
                let key = e.split('=').next().unwrap_or(&e).to_owned();
                spec.env
                    .retain(|d| d.to_str().and_then(|d| d.split('=').next()) != Some(&key));
                spec.env.push(e.into());
            }
            spec.workdir = a.workdir.map(PathBuf::from);
            spec.user = a.user.as_deref().map(launcher::parse_user).transpose()?;
        }
    }
    let code = launcher::run(&spec)?;
    Ok(code.clamp(0, 255) as u8)
}
