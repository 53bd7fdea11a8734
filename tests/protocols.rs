//! Protocols through the real binary: WebSockets (upgrade, both directions, their own idle
//! timeout).

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server that echoes every text message, prefixed with "echo: ".
async fn ws_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        if ws.send(Message::text(format!("echo: {t}"))).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn ws_gatehouse(timeouts: &str) -> Gatehouse {
    let origin = ws_echo().await;
    Gatehouse::start(&format!(
        "services: {{ ws: {{ targets: [\"{origin}\"], timeouts: {{ {timeouts} }} }} }}\ningresses: [{{ rules: [{{ paths: [{{ path: /ws, service: ws }}] }}] }}]\n"
    ))
    .await
}

#[tokio::test]
async fn websocket_echo_outlives_the_read_timeout() {
    let gh = ws_gatehouse("read: 300ms").await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", gh.port))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("echo: one")
    );
    // Silent for longer than the request read timeout: an upgraded connection is not cut.
    tokio::time::sleep(Duration::from_millis(900)).await;
    ws.send(Message::text("two")).await.unwrap();
    let two = ws.next().await.unwrap();
    assert_eq!(
        two.as_ref().ok(),
        Some(&Message::text("echo: two")),
        "{}",
        gh.log()
    );
}

#[tokio::test]
async fn websocket_idle_timeout_closes_a_silent_connection() {
    let gh = ws_gatehouse("websocket_idle: 1s").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", gh.port))
        .await
        .unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("echo: one")
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "a silent WebSocket was not closed after websocket_idle"
    );
}
