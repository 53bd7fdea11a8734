//! Spec -> TLS settings: the preset and the certificates from files and a directory, loaded
//! and checked (key matches, expiry) so that `check` catches every mistake. Imports: schema, tls.

use super::compile::{duration, Errs};
use super::load::Sourced;
use super::schema::{AcmeSpec, IngressSpec, TlsSpec};
use crate::acme::{AcmeConfig, ChallengeKind};
use crate::routing::HostPattern;
use crate::tls::{CertKey, Preset};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

/// `tls.acme` and the names ingresses with `tls: { acme: true }` ask for.
pub(super) fn compile_acme(
    spec: Option<&AcmeSpec>,
    ingresses: &[Sourced<IngressSpec>],
    errors: &mut Vec<super::ConfigError>,
    main_file: &Path,
    has_https: bool,
) -> Option<AcmeConfig> {
    let mut names = Vec::new();
    for ing in ingresses {
        let Some(tls) = ing.spec.tls.as_ref().filter(|t| t.acme) else {
            continue;
        };
        let mut e = Errs {
            file: &ing.file,
            out: errors,
        };
        if spec.is_none() {
            e.push(
                format!("{}.tls.acme", ing.yaml_path),
                "ACME needs a `tls.acme` section in the main file (at least `email`)",
            );
        }
        let hosts: Vec<String> = if tls.hosts.is_empty() {
            ing.spec
                .rules
                .iter()
                .filter(|r| !r.host.is_empty() && !r.host.contains('*'))
                .map(|r| r.host.clone())
                .collect()
        } else {
            tls.hosts.clone()
        };
        if hosts.is_empty() {
            e.push(
                format!("{}.tls.hosts", ing.yaml_path),
                "no exact host to certify; list them in `hosts`",
            );
        }
        for (i, h) in hosts.iter().enumerate() {
            match HostPattern::parse(h) {
                Ok(HostPattern::Exact(n)) => names.push(n),
                Ok(_) => e.push(
                    format!("{}.tls.hosts[{i}]", ing.yaml_path),
                    format!(
                        "{h:?}: HTTP-01 and TLS-ALPN-01 cannot certify wildcards or catch-alls \
                         (that takes DNS-01); list exact hosts or use a certificate file"
                    ),
                ),
                Err(m) => e.push(format!("{}.tls.hosts[{i}]", ing.yaml_path), m),
            }
        }
    }
    let spec = spec?;
    let mut e = Errs {
        file: main_file,
        out: errors,
    };
    let base = main_file.parent().unwrap_or(Path::new("."));
    let dur = |raw: &Option<String>, key: &str, default: Duration, e: &mut Errs| match raw {
        None => default,
        Some(r) => match duration(r) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                e.push(
                    format!("tls.acme.{key}"),
                    format!("{r:?} must be greater than zero"),
                );
                default
            }
            Err(m) => {
                e.push(format!("tls.acme.{key}"), m);
                default
            }
        },
    };
    let directory = match spec.directory.as_deref().unwrap_or("production") {
        "production" => crate::acme::LETS_ENCRYPT.to_string(),
        "staging" => crate::acme::LETS_ENCRYPT_STAGING.to_string(),
        url if url.starts_with("https://") => url.to_string(),
        other => {
            e.push(
                "tls.acme.directory",
                format!("{other:?}: write an https:// URL, \"production\" or \"staging\""),
            );
            String::new()
        }
    };
    if let Some(email) = &spec.email {
        if !email.contains('@') || email.contains(char::is_whitespace) {
            e.push(
                "tls.acme.email",
                format!("{email:?} is not an email address"),
            );
        }
    }
    let challenge = match spec.challenge.as_deref().unwrap_or("http-01") {
        "http-01" => ChallengeKind::Http01,
        "tls-alpn-01" => {
            if !has_https {
                e.push(
                    "tls.acme.challenge",
                    "tls-alpn-01 is answered on an HTTPS listener (port 443 for public CAs); \
                     add one under `listen.https` or use http-01",
                );
            }
            ChallengeKind::TlsAlpn01
        }
        other => {
            e.push(
                "tls.acme.challenge",
                format!("{other:?}: write http-01 or tls-alpn-01"),
            );
            ChallengeKind::Http01
        }
    };
    let ca = spec.ca.as_ref().map(|c| base.join(c));
    if let Some(ca) = ca.as_ref().filter(|c| !c.is_file()) {
        e.push(
            "tls.acme.ca",
            format!("{} is not a readable file", ca.display()),
        );
    }
    names.sort();
    names.dedup();
    Some(AcmeConfig {
        directory,
        email: spec.email.clone(),
        storage: base.join(spec.storage.as_deref().unwrap_or("/var/lib/gatehouse/acme")),
        renew_before: dur(
            &spec.renew_before,
            "renew_before",
            Duration::from_secs(30 * 86_400),
            &mut e,
        ),
        ca,
        check_interval: dur(
            &spec.check_interval,
            "check_interval",
            Duration::from_secs(3600),
            &mut e,
        ),
        min_retry: dur(
            &spec.min_retry,
            "min_retry",
            Duration::from_secs(60),
            &mut e,
        ),
        max_retry: dur(
            &spec.max_retry,
            "max_retry",
            Duration::from_secs(6 * 3600),
            &mut e,
        ),
        challenge,
        names,
    })
}
