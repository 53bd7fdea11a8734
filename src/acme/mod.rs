//! Automatic certificates over ACME (RFC 8555) with HTTP-01 or TLS-ALPN-01 challenges, on
//! `instant-acme`.
//!
//! A background loop creates or loads the account, orders a certificate for every managed
//! name that lacks a valid one or is due for renewal, answers the challenges (HTTP-01 through
//! [`Challenges`], read by the proxy; TLS-ALPN-01 through validation certificates in the
//! [`CertStore`]), stores chain and key on disk and installs them into the live store: the next
//! handshake uses them. Renewal is due inside `renew_before`, or earlier when the CA's renewal
//! information (ARI, RFC 9773) says so. Failures are logged with their reason and retried with
//! exponential backoff per name, never sooner than the CA's `Retry-After`; one failing name
//! never holds up the others. Imports: tls, metrics.

mod challenge;
mod client;
mod issue;
mod storage;

pub use challenge::Challenges;

use crate::metrics;
use crate::tls::{CertKey, CertStore, Source};
use client::RetryAfter;
use instant_acme::CertificateIdentifier;
use issue::AccountCache;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use storage::Storage;

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The longest `Retry-After` honoured; a CA asking for more is retried after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// How the CA validates control of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A token under `/.well-known/acme-challenge/` on port 80.
    Http01,
    /// A validation certificate for the `acme-tls/1` ALPN on port 443 (RFC 8737).
    TlsAlpn01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

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
    pub challenge: ChallengeKind,
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

/// What the CA's renewal information said about the certificate a name has now.
struct Ari {
    id: CertificateIdentifier<'static>,
    /// A random point in the suggested window (RFC 9773 §4.2).
    renew_at: SystemTime,
    /// When to ask again (the CA's `Retry-After`).
    next_poll: Instant,
}

/// The ACME background loop; runs until the process ends.
pub async fn run(
    host: Arc<dyn AcmeHost>,
    challenges: Arc<Challenges>,
    wake: Arc<tokio::sync::Notify>,
) {
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    let mut ari: HashMap<String, Ari> = HashMap::new();
    let retry_after = RetryAfter::default();
    let mut accounts = AccountCache::new(retry_after.clone());
    loop {
        let Some(cfg) = host.acme_config() else {
            wake.notified().await;
            continue;
        };
        let storage = Storage::new(&cfg.storage);
        for name in &cfg.names {
            if backoff
                .get(name)
                .is_some_and(|b| b.next_try > Instant::now())
            {
                continue;
            }
            let current = current_certificate(&storage, host.as_ref(), name);
            let due = match &current {
                None => true,
                Some(c) if c.remaining() <= cfg.renew_before => true,
                Some(c) => ari_says_renew(&cfg, &storage, &mut accounts, &mut ari, name, c).await,
            };
            if !due {
                continue;
            }
            // Tell the CA which certificate this one replaces (when it speaks ARI), on the
            // first attempt only: a CA that refuses it must not block the renewal.
            let replaces = ari
                .get(name)
                .filter(|_| current.is_some() && !backoff.contains_key(name))
                .map(|a| a.id.clone());
            retry_after.clear();
            let result = match accounts.get(&cfg, &storage).await {
                Ok(account) => {
                    let answers = issue::Answers {
                        kind: cfg.challenge,
                        tokens: &challenges,
                        certs: host.certs(),
                    };
                    issue::obtain(&storage, account, &answers, name, replaces).await
                }
                Err(e) => Err(e),
            };
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
                    ari.remove(name);
                    m.acme_orders.with_label_values(&["success"]).inc();
                    m.acme_last_error.with_label_values(&[name]).set(0);
                }
                Err(reason) => {
                    let b = backoff.entry(name.clone()).or_insert(Backoff {
                        next_try: Instant::now(),
                        delay: Duration::ZERO,
                    });
                    b.delay = (b.delay * 2).clamp(cfg.min_retry, cfg.max_retry);
                    let mut wait = b.delay;
                    let mut asked = String::new();
                    if let Some(ra) = retry_after.take() {
                        let ra = Duration::from_secs(ra.as_secs_f64().ceil() as u64);
                        asked = format!(" (the CA asked for {ra:?})");
                        wait = wait.max(ra.min(MAX_RETRY_AFTER));
                    }
                    b.next_try = Instant::now() + wait;
                    log::error!(
                        "ACME: no certificate for {name}: {reason}; retrying in {wait:?}{asked}"
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
            .map(|b| b.next_try)
            .chain(ari.values().map(|a| a.next_poll))
            .map(|t| t.saturating_duration_since(Instant::now()))
            .min();
        let sleep = soonest.map_or(cfg.check_interval, |s| s.min(cfg.check_interval));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = wake.notified() => {}
        }
    }
}

/// The certificate `name` has: in memory, else a still-valid one from storage (installed on
/// the way, so that a restart reuses it).
fn current_certificate(storage: &Storage, host: &dyn AcmeHost, name: &str) -> Option<Arc<CertKey>> {
    if let Some(c) = host.certs().acme_cert(name) {
        return Some(c);
    }
    let (chain, key) = storage.load_cert(name)?;
    match CertKey::from_pem(&chain, &key, Source::Acme) {
        Ok(c) if !c.expired() => {
            log::info!("ACME: using the stored certificate for {name}");
            let c = Arc::new(c);
            host.certs().set_acme(name, c.clone());
            host.certificates_changed();
            Some(c)
        }
        Ok(_) => None,
        Err(e) => {
            log::warn!("ACME: stored certificate for {name} is unusable ({e}); ordering a new one");
            None
        }
    }
}

/// Whether the CA's renewal information (RFC 9773) puts `name`'s renewal in the past. Polled
/// no more often than the CA's `Retry-After`; a CA without ARI, or one that cannot be reached,
/// leaves the decision to `renew_before`.
async fn ari_says_renew(
    cfg: &AcmeConfig,
    storage: &Storage,
    accounts: &mut AccountCache,
    ari: &mut HashMap<String, Ari>,
    name: &str,
    cert: &CertKey,
) -> bool {
    let Some(id) = certificate_id(cert) else {
        return false;
    };
    if let Some(a) = ari.get(name).filter(|a| a.id == id) {
        if a.next_poll > Instant::now() {
            return a.renew_at <= SystemTime::now();
        }
    }
    let account = match accounts.get(cfg, storage).await {
        Ok(a) => a,
        Err(e) => {
            log::debug!("ACME: no renewal information for {name}: {e}");
            return false;
        }
    };
    match account.renewal_info(&id).await {
        Ok((info, poll_after)) => {
            let (start, end) = (
                SystemTime::from(info.suggested_window.start),
                SystemTime::from(info.suggested_window.end),
            );
            let span = end.duration_since(start).unwrap_or_default();
            let renew_at = start + span.mul_f64(fastrand::f64());
            let changed = ari.get(name).is_none_or(|a| a.id != id);
            if changed {
                log::info!(
                    "ACME: the CA suggests renewing {name} between {} and {}; renewing at {}{}",
                    humantime::format_rfc3339_seconds(start),
                    humantime::format_rfc3339_seconds(end),
                    humantime::format_rfc3339_seconds(renew_at),
                    info.explanation_url
                        .map(|u| format!(" (see {u})"))
                        .unwrap_or_default()
                );
            }
            // RFC 9773 §4.3.2: honour Retry-After, within sane bounds.
            let poll = poll_after.clamp(
                cfg.check_interval.min(Duration::from_secs(60)),
                Duration::from_secs(86_400),
            );
            ari.insert(
                name.to_string(),
                Ari {
                    id,
                    renew_at,
                    next_poll: Instant::now() + poll,
                },
            );
            renew_at <= SystemTime::now()
        }
        Err(instant_acme::Error::Unsupported(_)) => {
            ari.remove(name);
            false
        }
        Err(e) => {
            log::warn!("ACME: renewal information for {name} unavailable: {e}");
            if let Some(a) = ari.get_mut(name) {
                a.next_poll = Instant::now() + cfg.check_interval;
            }
            false
        }
    }
}

/// The ARI identifier of a certificate (authority key id + serial, RFC 9773 §4.1).
fn certificate_id(cert: &CertKey) -> Option<CertificateIdentifier<'static>> {
    let der = cert.chain.first()?.to_der().ok()?;
    let der = rustls::pki_types::CertificateDer::from(der);
    CertificateIdentifier::try_from(&der)
        .ok()
        .map(CertificateIdentifier::into_owned)
}
