//! Control of the running process: the current runtime slot and configuration reloads.
//!
//! A reload compiles the file again off the async runtime, carrying over unchanged pools
//! (health state), rate limiters (counters) and the access log, then swaps the new runtime
//! in atomically. Requests in flight keep the snapshot they started with. A configuration that
//! fails to load changes nothing. Imports: config, runtime, upstream, tls, acme, metrics.

use crate::acme::{self, AcmeConfig, AcmeHost, Challenges};
use crate::config::{self, ConfigError, ConfigErrors};
use crate::runtime::Runtime;
use crate::tls::{CertKey, CertStore};
use crate::{metrics, upstream};
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// What a successful reload did.
#[derive(Debug)]
pub struct ReloadReport {
    pub version: u64,
    pub summary: String,
    /// Changes that only take effect after `gatehouse upgrade` (or a restart).
    pub needs_upgrade: Vec<String>,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reloaded configuration {:016x}\n{}",
            self.version, self.summary
        )?;
        for w in &self.needs_upgrade {
            writeln!(
                f,
                "warning: {w}: not applied until `gatehouse upgrade` or a restart"
            )?;
        }
        Ok(())
    }
}

pub struct Control {
    pub state: Arc<ArcSwap<Runtime>>,
    /// Certificates every handshake reads: files from the running configuration, plus ACME.
    pub certs: Arc<CertStore>,
    /// HTTP-01 answers the proxy serves while an ACME order waits on them.
    pub challenges: Arc<Challenges>,
    /// Wakes the ACME loop after a reload.
    acme_wake: Arc<tokio::sync::Notify>,
    acme_started: AtomicBool,
    pub config_path: PathBuf,
    /// The log level `RUST_LOG` fixed, if it was set; else the configuration decides.
    pub env_log_level: bool,
    reloading: tokio::sync::Mutex<()>,
}

impl Control {
    pub fn new(rt: Runtime, config_path: PathBuf) -> Result<Arc<Control>, String> {
        let env_log_level = std::env::var_os("RUST_LOG").is_some();
        let fallback = CertKey::self_signed(&["gatehouse.invalid".to_string()])
            .map_err(|e| format!("cannot make the fallback certificate: {e}"))?;
        let control = Arc::new(Control {
            state: Arc::new(ArcSwap::from_pointee(rt)),
            certs: Arc::new(CertStore::new(fallback)),
            challenges: Arc::new(Challenges::default()),
            acme_wake: Arc::new(tokio::sync::Notify::new()),
            acme_started: AtomicBool::new(false),
            config_path,
            env_log_level,
            reloading: tokio::sync::Mutex::new(()),
        });
        control.publish(&control.state.load());
        Ok(control)
    }

    /// Metrics and log level that follow the running configuration.
    fn publish(&self, rt: &Runtime) {
        let m = metrics::get();
        m.config_info.reset();
        m.config_info
            .with_label_values(&[&format!("{:016x}", rt.version)])
            .set(1);
        let loaded = rt
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        m.config_loaded.set(loaded);
        if !self.env_log_level {
            log::set_max_level(rt.log_level);
        }
        self.certs.set_files(rt.certificates.clone());
        self.publish_certificates();
    }

    /// `gatehouse_certificate_expiry_timestamp_seconds` for every certificate served.
    pub fn publish_certificates(&self) {
        let m = metrics::get();
        m.certificate_expiry.reset();
        for (name, cert) in self.certs.all() {
            let source = match cert.source {
                crate::tls::Source::File(_) => "file",
                crate::tls::Source::Acme => "acme",
                crate::tls::Source::Fallback => "fallback",
            };
            let at = cert
                .not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            m.certificate_expiry
                .with_label_values(&[&name, source])
                .set(at as i64);
        }
    }

    /// Start what the current runtime needs in the background: health checks of new pools,
    /// and the ACME loop once. Call from within a tokio runtime.
    pub fn start_background(self: &Arc<Self>) {
        for pool in &self.state.load().pools {
            upstream::spawn_health_checks(pool);
        }
        if !self.acme_started.swap(true, Ordering::Relaxed) {
            let host: Arc<dyn AcmeHost> = self.clone();
            tokio::spawn(acme::run(
                host,
                self.challenges.clone(),
                self.acme_wake.clone(),
            ));
        } else {
            self.acme_wake.notify_one();
        }
    }

    /// Load the configuration file again and swap it in. On error nothing changes.
    pub async fn reload(self: &Arc<Self>) -> Result<ReloadReport, ConfigErrors> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.state.load_full();
        let path = self.config_path.clone();
        let prev = current.clone();
        let loaded =
            tokio::task::spawn_blocking(move || config::load_runtime(&path, Some(&prev))).await;
        let result = loaded.unwrap_or_else(|e| {
            Err(ConfigErrors(vec![ConfigError::file(
                &self.config_path,
                format!("reload failed: {e}"),
            )]))
        });
        let m = metrics::get();
        match result {
            Ok(next) => {
                let report = ReloadReport {
                    version: next.version,
                    summary: next.summary(),
                    needs_upgrade: current.needs_upgrade(&next),
                };
                self.state.store(Arc::new(next));
                self.start_background();
                self.publish(&self.state.load());
                m.reloads.with_label_values(&["success"]).inc();
                log::info!(
                    "reloaded configuration {:016x} from {}",
                    report.version,
                    self.config_path.display()
                );
                for w in &report.needs_upgrade {
                    log::warn!("{w}: not applied until `gatehouse upgrade` or a restart");
                }
                Ok(report)
            }
            Err(errors) => {
                m.reloads.with_label_values(&["failure"]).inc();
                log::error!("reload rejected, the running configuration stays:\n{errors}");
                Err(errors)
            }
        }
    }
}

impl AcmeHost for Control {
    fn acme_config(&self) -> Option<AcmeConfig> {
        self.state.load().acme.clone()
    }

    fn certs(&self) -> &CertStore {
        &self.certs
    }

    fn certificates_changed(&self) {
        self.publish_certificates();
    }
}
