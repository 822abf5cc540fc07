//! The image config as a stage changes it, and the image a build ends with.

use serde_json::{Value, json};

use crate::image::Digest;
use crate::image::oci::{self, Descriptor};
use crate::image::store::ImageRecord;

use super::stage::{Builder, StageImage};
use super::{Result, at};

/// `config.config`, created if missing.
pub fn run_config(config: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !config["config"].is_object() {
        config["config"] = json!({});
    }
    match config["config"].as_object_mut() {
        Some(m) => m,
        None => unreachable!("just made an object"),
    }
}

pub fn env_list(config: &Value) -> Vec<String> {
    config["config"]["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub fn env_get(config: &Value, key: &str) -> Option<String> {
    env_list(config)
        .into_iter()
        .find_map(|e| e.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

pub fn set_env(config: &mut Value, key: &str, value: &str) {
    let mut env = env_list(config);
    env.retain(|e| e.split('=').next() != Some(key));
    env.push(format!("{key}={value}"));
    run_config(config).insert("Env".into(), json!(env));
}

pub fn insert_map(config: &mut Value, field: &str, key: &str, value: Value) {
    let c = run_config(config);
    if !c.get(field).is_some_and(Value::is_object) {
        c.insert(field.into(), json!({}));
    }
    if let Some(m) = c.get_mut(field).and_then(Value::as_object_mut) {
        m.insert(key.into(), value);
    }
}

impl Builder<'_> {
    /// Writes the target's config and manifest and moves the tags to it; returns its ID.
    pub(super) fn write_image(&self, img: &StageImage) -> Result<String> {
        let mut config = img.config.clone();
        config["rootfs"] = json!({
            "type": "layers",
            "diff_ids": img.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        });
        if let Some(last) = config["history"].as_array().and_then(|h| h.last()).cloned() {
            config["created"] = last["created"].clone();
        }
        let config_bytes = oci::to_json(&config);
        let config_digest = Digest::of(&config_bytes);
        let manifest = oci::Manifest {
            schema_version: 2,
            media_type: Some(oci::MT_MANIFEST.to_owned()),
            config: Descriptor::new(oci::MT_CONFIG, &config_digest, config_bytes.len() as u64),
            layers: img
                .layers
                .iter()
                .map(|l| {
                    Ok(Descriptor::new(
                        oci::MT_LAYER_GZIP,
                        &Digest::parse(&l.digest)?,
                        l.size,
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
            annotations: Default::default(),
        };
        let manifest_bytes = oci::to_json(&manifest);
        let lock = self.store.lock()?;
        for l in &img.layers {
            if !self.store.has_layer(&Digest::parse(&l.chain)?) {
                return Err(at(
                    0,
                    format!("layer {} was removed during the build", l.chain),
                ));
            }
        }
        self.store.put_blob(&config_bytes)?;
        let manifest_digest = self.store.put_blob(&manifest_bytes)?;
        let mut images = self.store.images()?;
        for t in &self.opts.tags {
            images.insert(
                oci::normalize_name(t)?,
                ImageRecord {
                    manifest: manifest_digest.to_string(),
                    config: config_digest.to_string(),
                },
            );
        }
        self.store.write_images(&lock, &images)?;
        Ok(config_digest.to_string())
    }
}
