//! The instructions that change only the image config (ENV, LABEL, USER, CMD, ...): each is
//! an `empty_layer` history entry.

use serde_json::{Value, json};

use super::{Builder, St};
use crate::build::config::{insert_map, run_config, set_env};
use crate::build::dockerfile::{Instruction, Kind};
use crate::build::{Result, at};

fn cfg(st: &mut St) -> &mut serde_json::Map<String, Value> {
    run_config(&mut st.img.config)
}

impl Builder<'_> {
    /// A config-only instruction; any other kind is refused.
    pub(super) fn config_instruction(&self, st: &mut St, ins: &Instruction) -> Result<()> {
        let line = ins.line;
        match &ins.kind {
            Kind::Env(pairs) => self.env(st, ins, pairs),
            Kind::Label(pairs) => self.label(st, ins, pairs),
            Kind::Expose(ports) => self.expose(st, ins, ports),
            Kind::Volume(vols) => self.volume(st, ins, vols),
            Kind::Maintainer(m) => {
                st.img.config["author"] = json!(m);
                insert_map(&mut st.img.config, "Labels", "maintainer", json!(m));
                self.config_step(st, ins, ins.text.clone())
            }
            Kind::User(u) => {
                let u = self.expand_word(st, line, u)?;
                cfg(st).insert("User".into(), json!(u));
                self.config_step(st, ins, format!("USER {u}"))
            }
            Kind::StopSignal(s) => {
                let s = self.expand_word(st, line, s)?;
                cfg(st).insert("StopSignal".into(), json!(s));
                self.config_step(st, ins, format!("STOPSIGNAL {s}"))
            }
            Kind::Cmd(c) => {
                let v = self.command(st, c);
                cfg(st).insert("Cmd".into(), json!(v));
                st.cmd_set = true;
                self.config_step(st, ins, format!("CMD {v:?}"))
            }
            Kind::Entrypoint(c) => {
                let v = self.command(st, c);
                cfg(st).insert("Entrypoint".into(), json!(v));
                // A new ENTRYPOINT drops a CMD inherited from the base (docker's rule).
                if !st.cmd_set {
                    cfg(st).insert("Cmd".into(), Value::Null);
                }
                self.config_step(st, ins, format!("ENTRYPOINT {v:?}"))
            }
            Kind::Shell(v) => {
                st.shell = v.clone();
                self.config_step(st, ins, format!("SHELL {v:?}"))
            }
            Kind::Healthcheck(h) => {
                let hc = crate::build::steps::healthcheck(h, &st.shell).map_err(|m| at(line, m))?;
                cfg(st).insert("Healthcheck".into(), hc);
                self.config_step(st, ins, ins.text.clone())
            }
            Kind::Onbuild(i) => {
                let c = cfg(st);
                let mut list = c
                    .get("OnBuild")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                list.push(json!(i.text));
                c.insert("OnBuild".into(), json!(list));
                self.config_step(st, ins, ins.text.clone())
            }
            _ => Err(at(line, "not a config instruction")),
        }
    }
    fn env(&self, st: &mut St, ins: &Instruction, pairs: &[(String, String)]) -> Result<()> {
        let line = ins.line;
        let mut out = Vec::new();
        for (k, v) in pairs {
            out.push((
                self.expand_word(st, line, k)?,
                self.expand_word(st, line, v)?,
            ));
        }
        for (k, v) in &out {
            set_env(&mut st.img.config, k, v);
        }
        let text = out
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        self.config_step(st, ins, format!("ENV {text}"))
    }

    fn label(&self, st: &mut St, ins: &Instruction, pairs: &[(String, String)]) -> Result<()> {
        let line = ins.line;
        let mut text = Vec::new();
        for (k, v) in pairs {
            let (k, v) = (
                self.expand_word(st, line, k)?,
                self.expand_word(st, line, v)?,
            );
            text.push(format!("{k}={v}"));
            insert_map(&mut st.img.config, "Labels", &k, json!(v));
        }
        self.config_step(st, ins, format!("LABEL {}", text.join(" ")))
    }

    fn expose(&self, st: &mut St, ins: &Instruction, ports: &[String]) -> Result<()> {
        let line = ins.line;
        let mut all = Vec::new();
        for p in ports {
            for p in self.expand_words(st, line, p)? {
                let p = if p.contains('/') {
                    p
                } else {
                    format!("{p}/tcp")
                };
                insert_map(&mut st.img.config, "ExposedPorts", &p, json!({}));
                all.push(p);
            }
        }
        self.config_step(st, ins, format!("EXPOSE {}", all.join(" ")))
    }

    fn volume(&self, st: &mut St, ins: &Instruction, vols: &[String]) -> Result<()> {
        let line = ins.line;
        let mut all = Vec::new();
        for v in vols {
            let v = self.expand_word(st, line, v)?;
            if v.is_empty() {
                return Err(at(line, "VOLUME: empty path"));
            }
            insert_map(&mut st.img.config, "Volumes", &v, json!({}));
            all.push(v);
        }
        self.config_step(st, ins, format!("VOLUME {all:?}"))
    }
}
