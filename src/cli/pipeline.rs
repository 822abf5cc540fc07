//! `strata pipeline run` and `strata pipeline validate`: a Cloud Build config run locally
//! (the work is in `strata::pipeline`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use strata::pipeline::{self, Checked, PipelineError, subst};

#[derive(Subcommand)]
pub enum PipelineCmd {
    /// Run the steps of a Cloud Build config (cloudbuild.yaml) over a copy of SOURCE_DIR.
    Run(RunArgs),
    /// Check a config (schema, Cloud Build's rules, substitutions) without running it.
    Validate {
        file: PathBuf,
        #[command(flatten)]
        subs: SubstArgs,
    },
}

#[derive(clap::Args)]
pub struct SubstArgs {
    /// User substitutions, overriding the config's: _KEY=VALUE[,_KEY=VALUE...]; repeatable.
    #[arg(long, value_name = "_K=V,...")]
    substitutions: Vec<String>,
    /// $PROJECT_ID.
    #[arg(long, default_value = "local")]
    project: String,
    /// $LOCATION.
    #[arg(long, default_value = "global")]
    location: String,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The config [default: SOURCE_DIR/cloudbuild.yaml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    subs: SubstArgs,
    /// Rewrite a registry host for pulls and pushes: FROM=TO (gcr.io=127.0.0.1:5000,
    /// *.pkg.dev=...); repeatable.
    #[arg(long, value_name = "FROM=TO")]
    registry_map: Vec<String>,
    /// Push nothing: neither `images:` nor docker push steps.
    #[arg(long)]
    no_push: bool,
    /// Keep the workspace, HOME and volumes after the build (the logs are always kept).
    #[arg(long)]
    keep_workspace: bool,
    /// Steps running at once [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Where the workspace and logs go [default: /var/tmp/strata-pipeline/BUILD_ID].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when steps are stopped.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    grace: f64,
    source_dir: PathBuf,
}

/// `_A=1,_B=2` (repeatable) into a map; the value may hold '=' but not ','.
fn parse_subs(list: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for item in list
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        let (k, v) = item
            .split_once('=')
            .with_context(|| format!("bad --substitutions entry {item:?}: use _KEY=VALUE"))?;
        m.insert(k.to_owned(), v.to_owned());
    }
    Ok(m)
}

/// Reads, validates and substitutes; prints the warnings. Returns the checked config and
/// every substitution's value.
fn prepare(
    file: &Path,
    subs: &SubstArgs,
    source: Option<&Path>,
    build_id: &str,
) -> anyhow::Result<(Checked, BTreeMap<String, String>)> {
    let text = std::fs::read_to_string(file).map_err(|source| PipelineError::Read {
        path: file.to_owned(),
        source,
    })?;
    let name = file.display();
    let mut config = pipeline::parse(&text).with_context(|| format!("{name}"))?;
    config
        .substitutions
        .extend(parse_subs(&subs.substitutions)?);
    let mut checked = pipeline::config::check(config).with_context(|| format!("{name}"))?;
    let info = subst::BuildInfo {
        project_id: subs.project.clone(),
        build_id: build_id.to_owned(),
        location: subs.location.clone(),
    };
    let mut values = subst::builtins(&info, source);
    values.extend(checked.config.substitutions.clone());
    let loose = checked.config.options.substitution_option.as_deref() == Some("ALLOW_LOOSE");
    let mut s = subst::Substituter::new(values, loose);
    s.apply(&mut checked.config)
        .with_context(|| format!("{name}"))?;
    for w in checked.warnings.iter().chain(&s.warnings) {
        eprintln!("strata: warning: {name}: {w}");
    }
    Ok((checked, s.values))
}

pub fn pipeline(root: Option<PathBuf>, cmd: PipelineCmd) -> anyhow::Result<u8> {
    match cmd {
        PipelineCmd::Validate { file, subs } => {
            let dir = file.parent().filter(|p| !p.as_os_str().is_empty());
            let (c, _) = prepare(
                &file,
                &subs,
                Some(dir.unwrap_or(Path::new("."))),
                "validate",
            )?;
            // Docker-builder commands strata cannot translate are config errors too.
            for (i, step) in c.config.steps.iter().enumerate() {
                pipeline::plan::precheck(step, i, true, &|_| true)
                    .with_context(|| format!("{}", file.display()))?;
            }
            println!(
                "{}: valid ({} steps, {} images)",
                file.display(),
                c.config.steps.len(),
                c.config.images.len()
            );
            Ok(0)
        }
        PipelineCmd::Run(a) => run(root, a),
    }
}

fn run(root: Option<PathBuf>, a: RunArgs) -> anyhow::Result<u8> {
    if !a.source_dir.is_dir() {
        anyhow::bail!("SOURCE_DIR {} is not a directory", a.source_dir.display());
    }
    if !(a.grace >= 0.0 && a.grace.is_finite()) {
        anyhow::bail!("bad --grace '{}': a number of seconds, 0 or more", a.grace);
    }
    let build_id = uuid::Uuid::new_v4().to_string();
    let file = a
        .config
        .clone()
        .unwrap_or_else(|| a.source_dir.join("cloudbuild.yaml"));
    let (checked, values) = prepare(&file, &a.subs, Some(&a.source_dir), &build_id)?;
    let map = pipeline::docker::RegistryMap::parse(&a.registry_map)
        .map_err(|e| anyhow::anyhow!("bad --registry-map {e}"))?;
    let jobs = a.jobs.unwrap_or_else(strata::sys::cpu_count);
    if jobs == 0 {
        anyhow::bail!("bad --jobs 0: at least 1");
    }
    let opts = pipeline::RunOptions {
        exe: std::env::current_exe().context("finding strata's own binary")?,
        store_root: root,
        run_dir: a
            .run_dir
            .unwrap_or_else(|| Path::new("/var/tmp/strata-pipeline").join(&build_id)),
        jobs,
        map,
        no_push: a.no_push,
        keep_workspace: a.keep_workspace,
        grace: Duration::from_secs_f64(a.grace),
        values,
    };
    println!(
        "BUILD {build_id}: {} steps, run directory {}",
        checked.config.steps.len(),
        opts.run_dir.display()
    );
    let out = pipeline::run(&checked, &opts, &a.source_dir)?;
    println!();
    print!("{}", pipeline::summary::render(&out.steps, &out.pushed));
    println!("logs: {}", out.run_dir.join("logs").display());
    if let Some(e) = &out.cleanup_error {
        eprintln!("strata: warning: the workspace was not removed: {e}");
    }
    match &out.failure {
        Some(why) => {
            eprintln!("strata: pipeline failed: {why}");
            Ok(out.exit.clamp(1, 255) as u8)
        }
        None => {
            println!("DONE");
            Ok(0)
        }
    }
}
