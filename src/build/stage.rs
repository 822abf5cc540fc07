//! Building the stages: each instruction either changes the config (an `empty_layer` history
//! entry) or writes one layer, straight from the upper it was written to, through the cache.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::{Value, json};

use crate::image::commit::{NewLayer, write_layer};
use crate::image::oci;
use crate::image::{Digest, Store};

use super::cache::{self, Entry, LayerRef};
use super::config::{env_get, env_list, run_config, set_env};
use super::copy::{self, Resolve, Source};
use super::dockerfile::{Command, Dockerfile, Instruction, Kind};
use super::ignore::Ignore;
use super::layerfs::LayerFs;
use super::plan::{Base, Plan};
use super::workspace::{self, Container, Workspace};
use super::write::{Writer, current_umask};
use super::{BuildError, BuildOptions, Built, Result, at, expand, io_err};

mod config_steps;

/// A stage's image as it grows.
#[derive(Clone)]
pub(super) struct StageImage {
    pub layers: Vec<LayerRef>,
    pub config: Value,
    pub key: Digest,
}

/// The state of the stage being built.
struct St {
    label: String,
    img: StageImage,
    missed: bool,
    args: BTreeMap<String, String>,
    shell: Vec<String>,
    cmd_set: bool,
    step: usize,
    steps: usize,
    esc: char,
}

/// What a filesystem-changing step does.
enum Action {
    Run {
        argv: Vec<String>,
        env: Vec<String>,
        workdir: String,
        user: Option<(u32, u32)>,
        network: super::Network,
    },
    Copy(CopyJob),
    Mkdir(Vec<u8>),
}

pub(super) struct CopyJob {
    pub sources: Vec<Source>,
    pub dest: Vec<u8>,
    pub chown: Option<(u32, u32)>,
    pub chmod: Option<u32>,
    /// ADD: local archives are extracted.
    pub extract: bool,
    /// Keeps a `--from` root mounted while its files are read.
    pub _from: Option<Workspace>,
}

pub(super) struct Builder<'a> {
    pub store: &'a Store,
    pub opts: &'a BuildOptions,
    df: &'a Dockerfile,
    plan: &'a Plan,
    done: HashMap<usize, StageImage>,
    pub ctx: OwnedFd,
    pub ignore: Ignore,
    ran: AtomicUsize,
    cached: AtomicUsize,
}

const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} KB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

impl<'a> Builder<'a> {
    pub fn new(
        store: &'a Store,
        opts: &'a BuildOptions,
        df: &'a Dockerfile,
        plan: &'a Plan,
    ) -> Result<Self> {
        let ctx = crate::sys::open_root(&opts.context)
            .map_err(io_err("opening the build context", &opts.context))?;
        let ignore = match copy::gather(ctx.as_fd(), b".dockerignore", Resolve::Beneath, None) {
            Ok(src) => {
                let mut text = Vec::new();
                if let Some(copy::Src::Opened(f)) = src.entries.first().map(|e| &e.src) {
                    std::io::Read::read_to_end(&mut &**f, &mut text)
                        .map_err(io_err("reading", opts.context.join(".dockerignore")))?;
                }
                Ignore::parse(&String::from_utf8_lossy(&text)).map_err(|m| at(0, m))?
            }
            Err(_) => Ignore::default(),
        };
        workspace::isolate()?;
        Ok(Builder {
            store,
            opts,
            df,
            plan,
            done: HashMap::new(),
            ctx,
            ignore,
            ran: AtomicUsize::new(0),
            cached: AtomicUsize::new(0),
        })
    }

    /// Err(Interrupted) once SIGINT/SIGTERM reached the build.
    fn stop_if_interrupted(&self) -> Result<()> {
        match self
            .opts
            .interrupted
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            true => Err(BuildError::Interrupted),
            false => Ok(()),
        }
    }

    fn say(&self, line: String) {
        if !self.opts.quiet {
            eprintln!("{line}");
        }
    }

    fn now(&self) -> String {
        match self.opts.source_date_epoch {
            Some(t) => oci::rfc3339(t),
            None => oci::now_rfc3339(),
        }
    }

    /// The line of the target stage's last USER (for errors about it).
    fn user_line(&self, stage: usize) -> usize {
        let sp = &self.plan.stages[stage];
        sp.body
            .iter()
            .rev()
            .find(|i| matches!(i.kind, Kind::User(_)))
            .map_or(sp.from_line, |i| i.line)
    }

    /// An earlier stage (by name or index), once built.
    pub fn built_stage(&self, r: &str) -> Option<StageImage> {
        let i = super::plan::stage_ref(&self.plan.stages, self.plan.stages.len(), r)?;
        self.done.get(&i).cloned()
    }

    pub fn lowers(&self, img: &StageImage) -> Result<Vec<PathBuf>> {
        img.layers
            .iter()
            .rev()
            .map(|l| Ok(self.store.layer_dir(&Digest::parse(&l.chain)?)))
            .collect()
    }

    pub fn run(mut self) -> Result<Built> {
        // Stages whose dependencies are built go together, each on its own thread.
        while self.done.len() < self.plan.needed.len() {
            let wave: Vec<usize> = self
                .plan
                .needed
                .iter()
                .copied()
                .filter(|s| !self.done.contains_key(s))
                .filter(|s| self.plan.deps[s].iter().all(|d| self.done.contains_key(d)))
                .collect();
            if wave.is_empty() {
                return Err(at(0, "the stages depend on each other in a cycle"));
            }
            let this = &self;
            let built: Vec<Result<StageImage>> = std::thread::scope(|scope| {
                let hs: Vec<_> = wave
                    .iter()
                    .map(|&s| scope.spawn(move || this.stage(s)))
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(at(0, "a stage's thread panicked")))
                    })
                    .collect()
            });
            for (s, img) in wave.into_iter().zip(built) {
                self.done.insert(s, img?);
            }
        }
        let target = self.plan.target;
        let img = self
            .done
            .remove(&target)
            .ok_or_else(|| at(0, "target stage was not built"))?;
        // The image's USER must resolve in its own /etc/passwd, or `strata run` could not start it.
        if let Some(u) = img.config["config"]["User"]
            .as_str()
            .filter(|u| !u.is_empty())
        {
            let numeric = u.split(':').all(|p| p.parse::<u32>().is_ok());
            if !numeric {
                let lowers = self.lowers(&img)?;
                crate::image::resolve_user(&lowers, u)
                    .map_err(|e| at(self.user_line(target), format!("USER {u}: {e}")))?;
            }
        }
        let id = self.write_image(&img)?;
        let tags = self
            .opts
            .tags
            .iter()
            .map(|t| oci::normalize_name(t))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Built {
            id,
            tags,
            ran: self.ran.into_inner(),
            cached: self.cached.into_inner(),
        })
    }

    /// The image a stage starts from, and its cache key.
    fn base(&self, s: usize) -> Result<StageImage> {
        let sp = &self.plan.stages[s];
        Ok(match &sp.base {
            Base::Scratch => StageImage {
                layers: Vec::new(),
                config: json!({
                    "architecture": super::plan::arch(), "os": "linux", "config": {},
                    "rootfs": {"type": "layers", "diff_ids": []}, "history": [],
                }),
                key: Digest::of(b"scratch"),
            },
            Base::Stage(b) => self
                .done
                .get(b)
                .cloned()
                .ok_or_else(|| at(sp.from_line, "base stage was not built"))?,
            Base::Image(name) => self.image_base(name, sp.from_line)?,
        })
    }

    pub fn image_base(&self, name: &str, line: usize) -> Result<StageImage> {
        let img = self.store.get(name).map_err(|e| {
            at(
                line,
                format!("image {name:?}: {e} (strata image import it first)"),
            )
        })?;
        let layers = img
            .manifest
            .layers
            .iter()
            .zip(&img.diff_ids)
            .zip(&img.chain_ids)
            .map(|((d, diff), chain)| LayerRef {
                diff_id: diff.to_string(),
                digest: d.digest.clone(),
                size: d.size,
                chain: chain.to_string(),
            })
            .collect();
        let config: Value = oci::parse(&img.config_bytes, &format!("config of {name}"))?;
        let key = cache::key(
            &Digest::of(b"image"),
            &[img.manifest.config.digest.as_bytes()],
        );
        Ok(StageImage {
            layers,
            config,
            key,
        })
    }

    fn stage(&self, s: usize) -> Result<StageImage> {
        let sp = &self.plan.stages[s];
        let mut img = self.base(s)?;
        // docker's default PATH, when the base sets none.
        if env_get(&img.config, "PATH").is_none() {
            set_env(
                &mut img.config,
                "PATH",
                crate::image::run::DEFAULT_PATH.trim_start_matches("PATH="),
            );
        }
        let triggers: Vec<String> = img.config["config"]["OnBuild"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        run_config(&mut img.config).remove("OnBuild");
        let mut st = St {
            label: sp.label(),
            img,
            missed: false,
            args: BTreeMap::new(),
            shell: DEFAULT_SHELL.iter().map(|s| (*s).to_owned()).collect(),
            cmd_set: false,
            step: 1,
            steps: sp.body.len() + 1,
            esc: self.df.directives.escape,
        };
        self.say(format!("[{}] [1/{}] {}", st.label, st.steps, sp.from_text));
        let mut body = Vec::new();
        for t in &triggers {
            let df = super::dockerfile::parse(t)
                .map_err(|e| at(sp.from_line, format!("ONBUILD trigger {t:?}: {}", e.msg)))?;
            body.extend(df.instructions.into_iter().map(|mut i| {
                i.line = sp.from_line;
                i
            }));
            st.steps += 1;
        }
        body.extend(sp.body.iter().cloned());
        for ins in &body {
            self.stop_if_interrupted()?;
            self.instruction(&mut st, ins)?;
        }
        Ok(st.img)
    }

    /// Variables for expansion: the stage's ENV, then its ARGs (ENV wins, as in docker).
    fn expand_word(&self, st: &St, line: usize, w: &str) -> Result<String> {
        let vars = |n: &str| env_get(&st.img.config, n).or_else(|| st.args.get(n).cloned());
        expand::word(w, st.esc, &vars).map_err(|e| at(line, e.to_string()))
    }

    fn expand_words(&self, st: &St, line: usize, w: &str) -> Result<Vec<String>> {
        let vars = |n: &str| env_get(&st.img.config, n).or_else(|| st.args.get(n).cloned());
        expand::words(w, st.esc, &vars).map_err(|e| at(line, e.to_string()))
    }

    fn command(&self, st: &St, c: &Command) -> Vec<String> {
        match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => st.shell.iter().cloned().chain([s.clone()]).collect(),
        }
    }

    fn instruction(&self, st: &mut St, ins: &Instruction) -> Result<()> {
        let line = ins.line;
        match &ins.kind {
            Kind::Arg(args) => self.arg(st, ins, args),
            Kind::Workdir(w) => self.workdir(st, ins, w),
            Kind::Run {
                cmd,
                heredocs,
                flags,
            } => {
                let mut network = self.opts.network;
                for f in flags {
                    network = match (f.name.as_str(), f.value.as_deref()) {
                        ("network", Some("none")) => super::Network::None,
                        ("network", Some("host")) => super::Network::Host,
                        ("network", Some("default")) => self.opts.network,
                        (name, v) => {
                            let v = v.map_or(String::new(), |v| format!("={v}"));
                            return Err(at(line, format!("RUN --{name}{v}: not supported")));
                        }
                    };
                }
                let argv = super::steps::run_argv(cmd, heredocs, &st.shell);
                self.run_step(st, ins, argv, network)
            }
            Kind::Copy(c) => self.copy_step(st, ins, c, false),
            Kind::Add(c) => self.copy_step(st, ins, c, true),
            Kind::From { .. } => Err(at(line, "FROM inside a stage")),
            _ => self.config_instruction(st, ins),
        }
    }

    fn arg(&self, st: &mut St, ins: &Instruction, args: &[(String, Option<String>)]) -> Result<()> {
        let mut text = Vec::new();
        for (k, default) in args {
            let value = match (self.opts.build_args.get(k), default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(d)) => Some(self.expand_word(st, ins.line, d)?),
                (None, None) => self
                    .plan
                    .global_args
                    .get(k)
                    .cloned()
                    .or_else(|| super::plan::automatic_arg(k)),
            };
            match value {
                Some(v) => {
                    text.push(format!("{k}={v}"));
                    st.args.insert(k.clone(), v);
                }
                None => text.push(k.clone()),
            }
        }
        // Keyed by the names only: a value matters to the steps that use it (RUN sees every
        // ARG, others their expanded text), so a new --build-arg reruns from there.
        let names: Vec<&str> = args.iter().map(|(k, _)| k.as_str()).collect();
        let key_text = format!("ARG {}", names.join(" "));
        self.step(
            st,
            ins,
            &[key_text.as_bytes()],
            format!("ARG {}", text.join(" ")),
            None,
        )
    }

    fn workdir(&self, st: &mut St, ins: &Instruction, w: &str) -> Result<()> {
        let w = self.expand_word(st, ins.line, w)?;
        let prev = st.img.config["config"]["WorkingDir"]
            .as_str()
            .unwrap_or("/")
            .to_owned();
        let joined = if w.starts_with('/') {
            w
        } else {
            format!("{prev}/{w}")
        };
        let path = format!(
            "/{}",
            String::from_utf8_lossy(&copy::clean(joined.as_bytes()))
        );
        run_config(&mut st.img.config).insert("WorkingDir".into(), json!(path));
        let lowers = self.lowers(&st.img)?;
        let exists = !lowers.is_empty()
            && crate::image::merged::Merged::new(&lowers)
                .ok()
                .and_then(|m| m.lookup(path.as_bytes()).ok().flatten())
                .is_some();
        let created_by = format!("WORKDIR {path}");
        if exists || path == "/" {
            return self.config_step(st, ins, created_by);
        }
        let key_text = created_by.clone();
        self.step(
            st,
            ins,
            &[key_text.as_bytes()],
            created_by,
            Some(Action::Mkdir(path.into_bytes())),
        )
    }

    fn config_step(&self, st: &mut St, ins: &Instruction, created_by: String) -> Result<()> {
        let t = created_by.clone();
        self.step(st, ins, &[t.as_bytes()], created_by, None)
    }

    /// One step through the cache: reused when its key is there (and nothing missed
    /// before it in this stage), else done and recorded.
    fn step(
        &self,
        st: &mut St,
        ins: &Instruction,
        parts: &[&[u8]],
        created_by: String,
        action: Option<Action>,
    ) -> Result<()> {
        st.step += 1;
        self.say(format!(
            "[{}] [{}/{}] {}",
            st.label, st.step, st.steps, ins.text
        ));
        let key = cache::key(&st.img.key, parts);
        if !self.opts.no_cache
            && !st.missed
            && let Some(e) = cache::lookup(self.store, &key)
        {
            self.say(format!("[{}] [{}/{}] CACHED", st.label, st.step, st.steps));
            self.cached.fetch_add(1, Ordering::Relaxed);
            apply(st, key, e, created_by);
            return Ok(());
        }
        st.missed = true;
        let started = Instant::now();
        let created = self.now();
        let layer = match action {
            None => None,
            Some(a) => Some(self.act(st, ins, a)?),
        };
        let lock = self.store.lock()?;
        if let Some(l) = &layer {
            l.store(self.store, &lock)?;
        }
        let entry = Entry {
            created,
            layer: layer.as_ref().map(|l| LayerRef {
                diff_id: l.diff_id.to_string(),
                digest: l.digest.to_string(),
                size: l.size,
                chain: l.chain.to_string(),
            }),
        };
        cache::record(self.store, &lock, &key, &entry)?;
        drop(lock);
        let size = layer
            .as_ref()
            .map_or(String::new(), |l| format!(", layer {}", human(l.size)));
        self.say(format!(
            "[{}] [{}/{}] DONE {:.2}s{size}",
            st.label,
            st.step,
            st.steps,
            started.elapsed().as_secs_f64()
        ));
        self.ran.fetch_add(1, Ordering::Relaxed);
        apply(st, key, entry, created_by);
        Ok(())
    }

    fn act(&self, st: &St, ins: &Instruction, a: Action) -> Result<NewLayer> {
        let lowers = self.lowers(&st.img)?;
        let diff_ids = st
            .img
            .layers
            .iter()
            .map(|l| Digest::parse(&l.diff_id))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let clamp = self.opts.source_date_epoch;
        match a {
            Action::Run {
                argv,
                env,
                workdir,
                user,
                network,
            } => {
                // Interrupted before the container starts: do not start it.
                self.stop_if_interrupted()?;
                let c = Container {
                    exe: &self.opts.strata_exe,
                    lowers: &lowers,
                    argv: &argv,
                    env: &env,
                    workdir: &workdir,
                    user,
                    network,
                    quiet: self.opts.quiet,
                    prefix: rustix::termios::isatty(std::io::stderr())
                        .then(|| format!("[{}] [{}/{}]", st.label, st.step, st.steps)),
                    interrupted: &self.opts.interrupted,
                };
                let (code, upper, _staging) = workspace::run_container(self.store, &c)?;
                self.stop_if_interrupted()?;
                if code != 0 {
                    return Err(BuildError::RunFailed {
                        line: ins.line,
                        text: ins.text.clone(),
                        code,
                    });
                }
                Ok(write_layer(self.store, &upper, &lowers, &diff_ids, clamp)?)
            }
            Action::Mkdir(path) => {
                let fs = LayerFs::open(self.store, &lowers, current_umask())?;
                fs.make_dirs(&path)
                    .map_err(io_err("creating", std::ffi::OsStr::from_bytes(&path)))?;
                let upper = fs.upper.clone();
                let layer = write_layer(self.store, &upper, &lowers, &diff_ids, clamp);
                drop(fs);
                Ok(layer?)
            }
            Action::Copy(job) => {
                let umask = current_umask();
                let fs = LayerFs::open(self.store, &lowers, umask)?;
                let mut w = Writer::new(&fs, umask);
                w.chown = job.chown;
                w.chmod = job.chmod;
                w.clamp = clamp;
                super::steps::copy_into(&mut w, &job, ins.line)?;
                let layer = write_layer(self.store, &fs.upper, &lowers, &diff_ids, clamp);
                drop(fs);
                Ok(layer?)
            }
        }
    }

    fn run_step(
        &self,
        st: &mut St,
        ins: &Instruction,
        argv: Vec<String>,
        network: super::Network,
    ) -> Result<()> {
        let mut env = env_list(&st.img.config);
        for (k, v) in &st.args {
            if env_get(&st.img.config, k).is_none() {
                env.push(format!("{k}={v}"));
            }
        }
        let workdir = st.img.config["config"]["WorkingDir"]
            .as_str()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_owned();
        let user = match st.img.config["config"]["User"]
            .as_str()
            .filter(|u| !u.is_empty())
        {
            None => None,
            Some(u) => {
                let lowers = self.lowers(&st.img)?;
                Some(
                    crate::image::resolve_user(&lowers, u)
                        .map_err(|e| at(ins.line, format!("USER {u}: {e}")))?,
                )
            }
        };
        // The args it sees are part of its key, the env and all before it in the chain.
        let args: Vec<String> = st.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let net = format!("{network:?}");
        let argv_json = serde_json::to_string(&argv).unwrap_or_default();
        let created_by = format!("RUN {}", argv.join(" "));
        let args = args.join("\n");
        let parts: [&[u8]; 4] = [
            b"RUN",
            argv_json.as_bytes(),
            args.as_bytes(),
            net.as_bytes(),
        ];
        self.step(
            st,
            ins,
            &parts,
            created_by,
            Some(Action::Run {
                argv,
                env,
                workdir,
                user,
                network,
            }),
        )
    }

    fn copy_step(
        &self,
        st: &mut St,
        ins: &Instruction,
        c: &super::dockerfile::Copy,
        add: bool,
    ) -> Result<()> {
        let job = super::steps::copy_job(
            self,
            &st.img,
            st.esc,
            &|w| self.expand_word(st, ins.line, w),
            ins,
            c,
            add,
        )?;
        let sum =
            copy::checksum(&job.sources).map_err(io_err("reading the sources of", &ins.text))?;
        let kw = if add { "ADD" } else { "COPY" };
        let desc = format!(
            "{kw} chown={:?} chmod={:?} dest={}",
            job.chown,
            job.chmod,
            String::from_utf8_lossy(&job.dest)
        );
        let created_by = format!(
            "{kw} {}",
            ins.text
                .split_once(char::is_whitespace)
                .map_or("", |x| x.1)
                .trim()
        );
        self.step(
            st,
            ins,
            &[desc.as_bytes(), &sum],
            created_by,
            Some(Action::Copy(job)),
        )
    }
}

/// A step's result joins the stage: its layer, its history entry, its key.
fn apply(st: &mut St, key: Digest, e: Entry, created_by: String) {
    let mut h =
        json!({ "created": e.created, "created_by": created_by, "comment": "strata build" });
    match e.layer {
        Some(l) => st.img.layers.push(l),
        None => h["empty_layer"] = json!(true),
    }
    if !st.img.config["history"].is_array() {
        st.img.config["history"] = json!([]);
    }
    if let Some(a) = st.img.config["history"].as_array_mut() {
        a.push(h);
    }
    st.img.key = key;
}
