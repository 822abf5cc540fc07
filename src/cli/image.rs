//! `strata image ...` and `strata commit`: argument parsing and output (anyhow lives here, as
//! in main.rs; the work is in `strata::image`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use strata::image::{self, Store};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Import an OCI image layout (directory or tar) or a `docker save` archive.
    Import {
        path: PathBuf,
        /// Name the image NAME[:TAG] (selects one image of an archive holding several).
        #[arg(long, value_name = "NAME:TAG")]
        name: Option<String>,
    },
    /// List images.
    Ls,
    /// Remove an image name, and the layers no other image uses.
    Rm { name: String },
    /// Show an image's manifest digest, layers and config.
    Inspect { name: String },
    /// Drop the build cache, and the layers only it kept.
    Prune,
    /// Write an image as an OCI image layout (a directory, or a tar if PATH ends in .tar).
    Export { name: String, path: PathBuf },
    /// Give an image another name (e.g. a registry reference to push to).
    Tag { src: String, dst: String },
    /// Re-verify every blob digest, every layer's diff_id and every image's references;
    /// report orphans (unreferenced blobs and layers, staging debris). Fails on damage.
    Check {
        /// Remove the orphans found (never anything an image uses).
        #[arg(long)]
        repair: bool,
    },
}

#[derive(clap::Args)]
pub struct CommitArgs {
    /// The upper layer (what changed over --from), or a container layer kept by
    /// `strata run --upper DIR` (its DIR/diff is used).
    #[arg(long, value_name = "DIR")]
    upper: PathBuf,
    /// The image the upper layer was made over.
    #[arg(long, value_name = "IMAGE")]
    from: String,
    /// Name of the new image.
    #[arg(long, value_name = "NAME:TAG")]
    name: String,
    /// A comment for the new history entry.
    #[arg(long)]
    message: Option<String>,
}

fn store(root: Option<PathBuf>) -> anyhow::Result<Store> {
    let root = root.unwrap_or_else(Store::default_root);
    Ok(Store::open(&root)?)
}

fn human(n: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub fn image(root: Option<PathBuf>, cmd: ImageCmd) -> anyhow::Result<()> {
    let store = store(root)?;
    match cmd {
        ImageCmd::Import { path, name } => {
            let names = image::import::import(&store, &path, name.as_deref())
                .with_context(|| format!("importing {}", path.display()))?;
            for n in names {
                println!("{n}");
            }
        }
        ImageCmd::Ls => {
            println!(
                "{:<40} {:<14} {:>6} {:>10}",
                "NAME", "IMAGE ID", "LAYERS", "SIZE"
            );
            for (name, _) in store.images()? {
                let img = store.get(&name)?;
                let size: u64 = img.manifest.layers.iter().map(|l| l.size).sum();
                let id = img.manifest.config.digest()?;
                println!(
                    "{name:<40} {:<14} {:>6} {:>10}",
                    id.short(),
                    img.chain_ids.len(),
                    human(size)
                );
            }
        }
        ImageCmd::Rm { name } => {
            let r = store.remove(&name)?;
            println!(
                "removed {name} ({} layers, {} blobs freed{})",
                r.layers,
                r.blobs,
                partial_note(&r)
            );
        }
        ImageCmd::Inspect { name } => {
            let img = store.get(&name)?;
            let layers: Vec<_> = img
                .manifest
                .layers
                .iter()
                .zip(&img.diff_ids)
                .zip(&img.chain_ids)
                .map(|((l, d), c)| {
                    serde_json::json!({
                        "digest": l.digest, "mediaType": l.media_type, "size": l.size,
                        "diff_id": d.as_str(), "chain_id": c.as_str(),
                        "dir": store.layer_dir(c),
                    })
                })
                .collect();
            let config: serde_json::Value = serde_json::from_slice(&img.config_bytes)?;
            let doc = serde_json::json!({
                "name": img.name,
                "id": img.manifest.config.digest,
                "manifest": img.manifest_digest.as_str(),
                "layers": layers,
                "config": config,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        ImageCmd::Tag { src, dst } => {
            let name = store
                .tag(&src, &dst)
                .with_context(|| format!("tagging {src} as {dst}"))?;
            println!("{name}");
        }
        ImageCmd::Prune => {
            let r = store.prune_build_cache()?;
            println!(
                "build cache pruned ({} layers, {} blobs freed{})",
                r.layers,
                r.blobs,
                partial_note(&r)
            );
        }
        ImageCmd::Check { repair } => check(&store, repair)?,
        ImageCmd::Export { name, path } => {
            image::export::export(&store, &name, &path)
                .with_context(|| format!("exporting {name} to {}", path.display()))?;
        }
    }
    Ok(())
}

fn check(store: &Store, repair: bool) -> anyhow::Result<()> {
    let r = image::check::check(store, repair)?;
    for p in &r.problems {
        println!("damaged: {p}");
    }
    for (path, why) in &r.orphans {
        let verb = if repair { "removed orphan" } else { "orphan" };
        println!("{verb}: {} ({why})", path.display());
    }
    println!(
        "checked {} blobs, {} layers, {} images: {} damaged, {} orphans{}",
        r.blobs,
        r.layers,
        r.images,
        r.problems.len(),
        r.orphans.len(),
        if repair {
            format!(", {} removed", r.removed)
        } else if r.orphans.is_empty() {
            String::new()
        } else {
            " (--repair removes them)".into()
        }
    );
    anyhow::ensure!(
        r.ok(),
        "the store is damaged: {} problems",
        r.problems.len()
    );
    Ok(())
}

pub fn commit(root: Option<PathBuf>, a: CommitArgs) -> anyhow::Result<()> {
    let store = store(root)?;
    // A persistent container layer of `strata run --upper DIR` keeps its changes in DIR/diff.
    let kept = a.upper.join("diff");
    let upper: &Path = if kept.is_dir() && a.upper.join("work").is_dir() {
        &kept
    } else {
        &a.upper
    };
    let d = image::commit::commit(&store, upper, &a.from, &a.name, a.message.as_deref())
        .with_context(|| format!("committing {}", upper.display()))?;
    println!("{} {d}", image::oci::normalize_name(&a.name)?);
    Ok(())
}

/// `, N partial downloads` when `rm` or `prune` removed some.
fn partial_note(r: &image::store::GcReport) -> String {
    match r.partial {
        0 => String::new(),
        n => format!(", {n} partial downloads"),
    }
}
