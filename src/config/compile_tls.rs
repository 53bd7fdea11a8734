//! Spec -> TLS settings: the preset and the certificates from files and a directory, loaded
//! and checked (key matches, expiry) so that `check` catches every mistake. Imports: schema, tls.

use super::compile::Errs;
use super::schema::TlsSpec;
use crate::tls::{CertKey, Preset};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(super) fn compile_tls(
    spec: &TlsSpec,
    main_file: &Path,
    e: &mut Errs,
    warnings: &mut Vec<String>,
) -> (Preset, Vec<Arc<CertKey>>) {
    let preset = match spec.preset.as_deref().unwrap_or("intermediate") {
        "modern" => Preset::Modern,
        "intermediate" => Preset::Intermediate,
        "old" => Preset::Old,
        other => {
            e.push(
                "tls.preset",
                format!("{other:?}: write modern, intermediate or old"),
            );
            Preset::Intermediate
        }
    };
    let base = main_file.parent().unwrap_or(Path::new("."));
    let mut certs = Vec::new();
    for (i, c) in spec.certificates.iter().enumerate() {
        let (cert, key) = (base.join(&c.cert), base.join(&c.key));
        load(
            &cert,
            &key,
            &format!("tls.certificates[{i}]"),
            e,
            warnings,
            &mut certs,
        );
    }
    if let Some(dir) = &spec.directory {
        for (cert, key) in directory_pairs(&base.join(dir), e) {
            load(&cert, &key, "tls.directory", e, warnings, &mut certs);
        }
    }
    (preset, certs)
}

fn load(
    cert: &Path,
    key: &Path,
    at: &str,
    e: &mut Errs,
    warnings: &mut Vec<String>,
    out: &mut Vec<Arc<CertKey>>,
) {
    match CertKey::from_files(cert, key) {
        Ok(c) => {
            if c.expired() {
                warnings.push(format!(
                    "certificate {} ({}) has expired",
                    cert.display(),
                    c.names.join(", ")
                ));
            }
            if c.names.is_empty() {
                e.push(
                    at,
                    format!(
                        "{} names no host (no DNS subject alternative name or CN)",
                        cert.display()
                    ),
                );
            }
            out.push(Arc::new(c));
        }
        Err(m) => e.push(at, format!("{}: {m}", cert.display())),
    }
}

/// `<name>.crt` files with their `<name>.key`, sorted by name.
fn directory_pairs(dir: &Path, e: &mut Errs) -> Vec<(PathBuf, PathBuf)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(err) => {
            e.push(
                "tls.directory",
                format!("cannot read {}: {err}", dir.display()),
            );
            return Vec::new();
        }
    };
    let mut pairs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "crt") {
            let key = path.with_extension("key");
            if key.exists() {
                pairs.push((path, key));
            } else {
                e.push(
                    "tls.directory",
                    format!("{} has no matching {}", path.display(), key.display()),
                );
            }
        }
    }
    pairs.sort();
    pairs
}
