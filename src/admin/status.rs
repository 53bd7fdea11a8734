//! `/status` JSON and the backend gauges refreshed at each scrape.

use super::sockets::{tcp_sockets, ESTABLISHED};
use crate::metrics;
use crate::runtime::{RouteAction, Runtime};
use crate::tls::CertStore;
use serde_json::json;
use std::time::UNIX_EPOCH;

/// Set `gatehouse_backend_up`, in-flight and downstream connection gauges.
pub fn refresh_backend_metrics(rt: &Runtime) {
    let m = metrics::get();
    // The kernel's count, so the request path pays nothing for this gauge.
    let sockets = tcp_sockets();
    let established_on = |port: u16| {
        sockets
            .iter()
            .filter(|(a, st)| *st == ESTABLISHED && a.port() == port)
            .count() as i64
    };
    m.downstream_connections.reset();
    for (kind, addrs) in [("http", &rt.listen_http), ("https", &rt.listen_https)] {
        for a in addrs {
            m.downstream_connections
                .with_label_values(&[kind, &a.to_string()])
                .set(established_on(a.port()));
        }
    }
    m.backend_up.reset();
    m.backend_inflight.reset();
    for pool in &rt.pools {
        for t in &pool.config.targets {
            let labels = [pool.config.name.as_str(), &t.addr.to_string()];
            m.backend_up
                .with_label_values(&labels)
                .set(i64::from(pool.is_healthy(t.addr)));
            m.backend_inflight
                .with_label_values(&labels)
                .set(pool.inflight(t.addr) as i64);
        }
    }
}

pub fn status_json(rt: &Runtime, certs: &CertStore) -> String {
    let routes: Vec<_> = rt
        .routes
        .iter()
        .map(|r| {
            let target = match &r.action {
                RouteAction::Proxy(p) => json!({ "service": rt.pool(*p).config.name }),
                RouteAction::Respond(d) => json!({ "respond": d.status.as_u16() }),
                RouteAction::Redirect(d) => json!({ "redirect": d.code.as_u16() }),
            };
            json!({ "name": r.name, "host": r.host.to_string(), "path": r.path, "target": target })
        })
        .collect();
    let pools: Vec<_> = rt
        .pools
        .iter()
        .map(|p| {
            let backends: Vec<_> = p
                .config
                .targets
                .iter()
                .map(|t| {
                    json!({
                        "address": t.addr.to_string(),
                        "weight": t.weight,
                        "healthy": p.is_healthy(t.addr),
                        "in_flight": p.inflight(t.addr),
                    })
                })
                .collect();
            json!({
                "name": p.config.name,
                "balance": p.config.balance.name(),
                "health_check": p.config.health_check.is_some(),
                "backends": backends,
            })
        })
        .collect();
    let loaded = rt
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": {
            "hash": format!("{:016x}", rt.version),
            "loaded_at": humantime::format_rfc3339_seconds(rt.loaded_at).to_string(),
            "loaded_at_unix": loaded,
            "files": rt.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        },
        "listen": {
            "http": rt.listen_http.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "https": rt.listen_https.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        },
        "certificates": certs.all().iter().map(|(name, c)| json!({
            "name": name,
            "source": format!("{:?}", c.source),
            "not_after": humantime::format_rfc3339_seconds(c.not_after).to_string(),
            "expired": c.expired(),
        })).collect::<Vec<_>>(),
        "routes": routes,
        "pools": pools,
        "warnings": rt.warnings,
    })
    .to_string()
}
