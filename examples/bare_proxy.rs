//! A bare Pingora proxy: one fixed peer, no routing, no policy, no metrics. The load
//! comparison (`make bench`) runs it beside gatehouse: the distance between the two is the cost
//! of gatehouse's own features; the distance between it and nginx is Pingora's (as vendored in
//! `vendor/`: it builds against the same patched crates as gatehouse).
//!
//! Usage: `bare_proxy LISTEN_ADDR PEER_ADDR [THREADS]`

use async_trait::async_trait;

/// The same allocator as gatehouse, so that the distance between the two is our features'.
#[global_allocator]
static GLOBAL: gatehouse::alloc::Allocator = gatehouse::alloc::Allocator;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

struct Bare {
    peer: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.peer.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(peer)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bare_proxy LISTEN_ADDR PEER_ADDR [THREADS]");
        std::process::exit(2);
    };
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy =
        pingora::proxy::http_proxy_service(&server.configuration, Bare { peer: peer.clone() });
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
