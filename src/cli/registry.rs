//! `strata pull`, `push`, `login` and `logout`: arguments and output; the work is in
//! `strata::registry`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::Context;

use strata::image::Store;
use strata::registry::auth::{self, Credentials};
use strata::registry::config::RegistriesConf;
use strata::registry::manifest::PlatformSpec;
use strata::registry::pull::{self, PullOptions};
use strata::registry::push::{self, PushOptions};
use strata::registry::{ImageRef, RegistryError};

/// `--tls-verify=false` takes a value, as podman's and skopeo's does.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("'{s}' is not true or false")),
    }
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// NAME[:TAG] or NAME@sha256:DIGEST (docker's normalisation: busybox is
    /// docker.io/library/busybox:latest).
    reference: String,
    /// OS/ARCH[/VARIANT] to choose in a multi-platform image [default: linux/this machine].
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    /// No progress, only the image name at the end.
    #[arg(short, long)]
    quiet: bool,
    /// Check TLS certificates (false also allows plain HTTP).
    #[arg(long, value_name = "BOOL", default_value = "true", value_parser = parse_bool,
          num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    tls_verify: bool,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// An image in the store.
    image: String,
    /// Where to push [default: IMAGE itself, read as a reference].
    reference: Option<String>,
    /// Write the pushed manifest's digest to this file.
    #[arg(long, value_name = "FILE")]
    digestfile: Option<PathBuf>,
    #[arg(short, long)]
    quiet: bool,
    #[arg(long, value_name = "BOOL", default_value = "true", value_parser = parse_bool,
          num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    tls_verify: bool,
    /// Blobs above this many bytes are sent in PATCH chunks of this size.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    chunk_size: u64,
}

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The registry (HOST[:PORT]), or a repository namespace in it (HOST/NS).
    registry: String,
    #[arg(short, long)]
    username: Option<String>,
    /// Read the password from standard input (the only way: never on the command line).
    #[arg(long)]
    password_stdin: bool,
    #[arg(long, value_name = "BOOL", default_value = "true", value_parser = parse_bool,
          num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    tls_verify: bool,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    registry: String,
}

fn store(root: Option<PathBuf>) -> anyhow::Result<Store> {
    Ok(Store::open(&root.unwrap_or_else(Store::default_root))?)
}

pub fn pull_cmd(root: Option<PathBuf>, a: PullArgs) -> anyhow::Result<()> {
    let store = store(root)?;
    let r = ImageRef::parse(&a.reference)?;
    let opts = PullOptions {
        platform: match &a.platform {
            Some(p) => PlatformSpec::parse(p)?,
            None => PlatformSpec::host(),
        },
        tls_verify: a.tls_verify,
        quiet: a.quiet,
        ..PullOptions::default()
    };
    let p = pull::pull(&store, &r, &opts).with_context(|| format!("pulling {r}"))?;
    if !a.quiet {
        eprintln!(
            "{}: {} of {} layers fetched ({} bytes), manifest {}",
            p.name, p.layers_fetched, p.layers, p.bytes_fetched, p.manifest_digest
        );
    }
    println!("{}", p.name);
    Ok(())
}

/// `strata run REF`: the stored image's name, pulling REF first when the store lacks it.
pub fn ensure_image(store: &Store, name: &str) -> anyhow::Result<String> {
    if store.get(name).is_ok() {
        return Ok(name.to_owned());
    }
    let r = ImageRef::parse(name)?;
    if store.get(&r.store_name()).is_ok() {
        return Ok(r.store_name());
    }
    eprintln!("strata: {name} is not in the store: pulling {r}");
    let p =
        pull::pull(store, &r, &PullOptions::default()).with_context(|| format!("pulling {r}"))?;
    Ok(p.name)
}

pub fn push_cmd(root: Option<PathBuf>, a: PushArgs) -> anyhow::Result<()> {
    let store = store(root)?;
    let dest = ImageRef::parse(a.reference.as_deref().unwrap_or(&a.image))?;
    let opts = PushOptions {
        tls_verify: a.tls_verify,
        quiet: a.quiet,
        chunk_size: a.chunk_size.max(1),
        ..PushOptions::default()
    };
    let p = push::push(&store, &a.image, &dest, &opts)
        .with_context(|| format!("pushing {} to {dest}", a.image))?;
    if !a.quiet {
        eprintln!(
            "{}: {} blobs uploaded ({} bytes), {} already there, {} mounted",
            p.reference, p.uploaded, p.bytes_uploaded, p.skipped, p.mounted
        );
    }
    if let Some(f) = &a.digestfile {
        std::fs::write(f, p.digest.as_str()).with_context(|| format!("writing {}", f.display()))?;
    }
    println!("{}", p.digest);
    Ok(())
}

/// `HOST[:PORT][/NS]` as given; docker.io's aliases become docker.io.
fn registry_key(s: &str) -> anyhow::Result<String> {
    let s = s
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if s.is_empty() || s.contains(char::is_whitespace) || s.contains('@') {
        anyhow::bail!("bad registry {s:?}: give HOST[:PORT] or HOST/NAMESPACE");
    }
    Ok(match s {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        s => s.to_owned(),
    })
}

pub fn login_cmd(a: LoginArgs) -> anyhow::Result<()> {
    let key = registry_key(&a.registry)?;
    if !a.password_stdin {
        anyhow::bail!("give the password on standard input with --password-stdin");
    }
    let Some(username) = a.username.filter(|u| !u.is_empty()) else {
        anyhow::bail!("give the user name with --username");
    };
    if std::io::stdin().is_terminal() {
        eprint!("Password: ");
    }
    let mut password = String::new();
    std::io::stdin()
        .take(64 << 10)
        .read_to_string(&mut password)
        .context("reading the password from standard input")?;
    let password = password.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        anyhow::bail!("no password on standard input");
    }
    let c = Credentials { username, password };
    let host = key.split('/').next().unwrap_or(&key);
    let conf = RegistriesConf::load()?;
    let client = strata::registry::Client::connect(
        host,
        &strata::registry::ClientOptions {
            tls_verify: a.tls_verify,
            insecure: conf.insecure(host),
            credentials: Some(c.clone()),
        },
    )?;
    client.check_login()?;
    let path = auth::store(&key, &c)?;
    eprintln!(
        "Login succeeded: credentials for {key} in {}",
        path.display()
    );
    Ok(())
}

pub fn logout_cmd(a: LogoutArgs) -> anyhow::Result<()> {
    let key = registry_key(&a.registry)?;
    if !auth::remove(&key)? {
        return Err(RegistryError::Config {
            path: auth::auth_file(),
            why: format!("not logged in to {key}"),
        }
        .into());
    }
    eprintln!("Removed login credentials for {key}");
    Ok(())
}
