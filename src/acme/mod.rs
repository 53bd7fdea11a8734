//! Automatic certificates over ACME (RFC 8555) with HTTP-01 challenges, on `instant-acme`.
//!
//! A background loop creates or loads the account, orders a certificate for every managed
//! name that lacks a valid one (or whose certificate is inside `renew_before`), answers the
//! HTTP-01 challenges through [`Challenges`] (read by the proxy), stores chain and key on disk
//! and installs them into the live [`CertStore`](crate::tls::CertStore): the next handshake
//! uses them. Failures are logged with their reason and retried with exponential backoff per
//! name; one failing name never holds up the others. Imports: tls, metrics.

mod challenge;
mod issue;
mod storage;

pub use challenge::Challenges;

use crate::metrics;
use crate::tls::{CertKey, CertStore, Source};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use storage::Storage;

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The typed `tls.acme` settings plus the names ingresses asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    pub directory: String,
    pub email: Option<String>,
    pub storage: PathBuf,
    pub renew_before: Duration,
    /// Trust this CA bundle (PEM) for the ACME server instead of the system roots.
    pub ca: Option<PathBuf>,
    /// How often certificates are checked for renewal.
    pub check_interval: Duration,
    /// First retry delay after a failure; doubles up to `max_retry`.
    pub min_retry: Duration,
    pub max_retry: Duration,
    /// Sorted, lower-case, unique.
    pub names: Vec<String>,
}

/// Where the ACME loop gets its current configuration and puts its results.
pub trait AcmeHost: Send + Sync {
    fn acme_config(&self) -> Option<AcmeConfig>;
    fn certs(&self) -> &CertStore;
    fn certificates_changed(&self);
}

struct Backoff {
    next_try: Instant,
    delay: Duration,
}

/// The ACME background loop; runs until the process ends.
pub async fn run(
    host: Arc<dyn AcmeHost>,
    challenges: Arc<Challenges>,
    wake: Arc<tokio::sync::Notify>,
) {
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    let mut account: Option<(String, instant_acme::Account)> = None;
    loop {
        let Some(cfg) = host.acme_config() else {
            wake.notified().await;
            continue;
        };
        let storage = Storage::new(&cfg.storage);
        for name in &cfg.names {
            if !needs_certificate(&cfg, &storage, host.as_ref(), name) {
                continue;
            }
            if backoff
                .get(name)
                .is_some_and(|b| b.next_try > Instant::now())
            {
                continue;
            }
            let result = issue::obtain(&cfg, &storage, &mut account, &challenges, name).await;
            let m = metrics::get();
            match result.and_then(|(chain, key)| {
                CertKey::from_pem(chain.as_bytes(), key.as_bytes(), Source::Acme)
                    .map_err(|e| format!("the CA returned an unusable certificate: {e}"))
            }) {
                Ok(cert) => {
                    log::info!(
                        "ACME: certificate for {name} issued, valid until {}",
                        humantime::format_rfc3339_seconds(cert.not_after)
                    );
                    host.certs().set_acme(name, Arc::new(cert));
                    host.certificates_changed();
                    backoff.remove(name);
                    m.acme_orders.with_label_values(&["success"]).inc();
                    m.acme_last_error.with_label_values(&[name]).set(0);
                }
                Err(reason) => {
                    let b = backoff.entry(name.clone()).or_insert(Backoff {
                        next_try: Instant::now(),
                        delay: Duration::ZERO,
                    });
                    b.delay = (b.delay * 2).clamp(cfg.min_retry, cfg.max_retry);
                    b.next_try = Instant::now() + b.delay;
                    log::error!(
                        "ACME: no certificate for {name}: {reason}; retrying in {:?}",
                        b.delay
                    );
                    m.acme_orders.with_label_values(&["failure"]).inc();
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    m.acme_last_error.with_label_values(&[name]).set(now as i64);
                }
            }
        }
        let soonest = backoff
            .values()
            .map(|b| b.next_try.saturating_duration_since(Instant::now()))
            .min();
        let sleep = soonest.map_or(cfg.check_interval, |s| s.min(cfg.check_interval));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = wake.notified() => {}
        }
    }
}

/// Whether `name` needs an order: no certificate in memory or on disk outside the renewal
/// window. A valid stored certificate is installed on the way (restart reuses it).
fn needs_certificate(cfg: &AcmeConfig, storage: &Storage, host: &dyn AcmeHost, name: &str) -> bool {
    if let Some(c) = host.certs().acme_cert(name) {
        return c.remaining() <= cfg.renew_before;
    }
    let Some((chain, key)) = storage.load_cert(name) else {
        return true;
    };
    match CertKey::from_pem(&chain, &key, Source::Acme) {
        Ok(c) => {
            let renew = c.remaining() <= cfg.renew_before;
            if !c.expired() {
                log::info!("ACME: using the stored certificate for {name}");
                host.certs().set_acme(name, Arc::new(c));
                host.certificates_changed();
            }
            renew
        }
        Err(e) => {
            log::warn!("ACME: stored certificate for {name} is unusable ({e}); ordering a new one");
            true
        }
    }
}
