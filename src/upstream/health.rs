//! Active health checks: TCP connect or an HTTP probe, with rise/fall thresholds.
//!
//! Each pool with a check gets one tokio task that holds only a weak reference to it, so a
//! pool dropped by a reload stops being checked by itself.

use super::{CheckKind, HealthCheckConfig, Pool, PoolConfig};
use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::prelude::RequestHeader;
use std::sync::atomic::Ordering;
use std::sync::Arc;

struct LogHealthChange {
    pool: String,
}

#[async_trait]
impl HealthObserve for LogHealthChange {
    async fn observe(&self, target: &Backend, healthy: bool) {
        if healthy {
            log::info!(
                "pool {}: backend {} is healthy again",
                self.pool,
                target.addr
            );
        } else {
            log::warn!(
                "pool {}: backend {} is unhealthy, taking it out",
                self.pool,
                target.addr
            );
        }
    }
}

/// Counts every check result in `gatehouse_health_checks_total`.
struct Counted {
    inner: Box<dyn HealthCheck + Send + Sync>,
    pool: String,
}

#[async_trait]
impl HealthCheck for Counted {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let result = self.inner.check(target).await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        crate::metrics::get()
            .health_checks
            .with_label_values(&[self.pool.as_str(), &target.addr.to_string(), outcome])
            .inc();
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.inner.health_status_change(target, healthy).await;
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

pub(super) fn build_check(
    pool: &PoolConfig,
    cfg: &HealthCheckConfig,
) -> Box<dyn HealthCheck + Send + Sync> {
    Box::new(Counted {
        inner: build_inner(pool, cfg),
        pool: pool.name.clone(),
    })
}

fn build_inner(pool: &PoolConfig, cfg: &HealthCheckConfig) -> Box<dyn HealthCheck + Send + Sync> {
    let observer = Box::new(LogHealthChange {
        pool: pool.name.clone(),
    });
    match &cfg.kind {
        CheckKind::Tcp => {
            let mut hc = TcpHealthCheck::new();
            hc.peer_template.options.connection_timeout = Some(cfg.timeout);
            hc.consecutive_success = cfg.rise;
            hc.consecutive_failure = cfg.fall;
            hc.health_changed_callback = Some(observer);
            hc
        }
        CheckKind::Http { path, expect, host } => {
            // The check speaks to the backends as requests do: same TLS, SNI and protocol.
            let host = host
                .as_deref()
                .or(pool
                    .tls
                    .as_ref()
                    .map(|t| t.sni.as_str())
                    .filter(|s| !s.is_empty()))
                .unwrap_or("localhost");
            let mut hc = HttpHealthCheck::new(host, pool.tls.is_some());
            pool.set_options(&mut hc.peer_template.options);
            if let Some(tls) = &pool.tls {
                hc.peer_template.sni.clone_from(&tls.sni);
            }
            // The path was validated at compile time; fall back to "/" rather than panic.
            if let Ok(req) = RequestHeader::build("GET", path.as_bytes(), None) {
                let mut req = req;
                let _ = req.insert_header("Host", host);
                let _ = req.insert_header("User-Agent", "gatehouse-health-check");
                hc.req = req;
            }
            hc.peer_template.options.connection_timeout = Some(cfg.timeout);
            hc.peer_template.options.read_timeout = Some(cfg.timeout);
            hc.peer_template.options.write_timeout = Some(cfg.timeout);
            hc.consecutive_success = cfg.rise;
            hc.consecutive_failure = cfg.fall;
            let expect = expect.clone();
            hc.validator = Some(Box::new(move |resp| {
                if expect.contains(&resp.status.as_u16()) {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode("unexpected status", resp.status.as_u16()),
                        "health check",
                    )
                }
            }));
            hc.health_changed_callback = Some(observer);
            Box::new(hc)
        }
    }
}

/// Start the periodic health check of `pool` if it has one and it is not already running.
/// Must be called from within a tokio runtime.
pub fn spawn_health_checks(pool: &Arc<Pool>) {
    let Some(cfg) = &pool.config.health_check else {
        return;
    };
    if pool.checks_started.swap(true, Ordering::AcqRel) {
        return;
    }
    let interval = cfg.interval;
    let weak = Arc::downgrade(pool);
    tokio::spawn(async move {
        loop {
            let Some(pool) = weak.upgrade() else { break };
            pool.backends().run_health_check(true).await;
            drop(pool);
            tokio::time::sleep(interval).await;
        }
    });
}
