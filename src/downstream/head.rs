//! A deadline for every HTTP/1 request head, however its bytes trickle in.
//!
//! Pingora times each read of a request head separately, so a client that sends one byte
//! every few seconds (slowloris) is never cut off. [`HeadDeadline`] wraps a downstream
//! connection below Pingora's HTTP parser and follows it: the first read of a request head
//! that does not hold the whole head arms the deadline (a head that comes in one read, the
//! usual case, costs no timer), the blank line that ends the head (`\r\n\r\n`) disarms it, and the next
//! final response written (`HTTP/1.x` with a status of 200 or more) makes the next byte read
//! the start of a new head. A `101` response (WebSocket) and HTTP/2 connections turn it off.
//! A read past the deadline fails with `TimedOut`, which closes the connection.

use async_trait::async_trait;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    tls::SslDigest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest,
    Ssl, Stream, TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: the next byte starts a head.
    Idle,
    /// Reading a head; the deadline runs.
    Head,
    /// The head is in: body and response, until a final response is written.
    Body,
    /// HTTP/2 or an upgraded connection: nothing to follow.
    Off,
}

pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The last bytes of the head so far, to find `\r\n\r\n` split across reads.
    tail: [u8; 3],
}

impl std::fmt::Debug for HeadDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadDeadline")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl HeadDeadline {
    pub fn new(inner: Stream, timeout: Duration) -> HeadDeadline {
        let phase = if inner.selected_alpn_proto() == Some(ALPN::H2) {
            Phase::Off
        } else {
            Phase::Idle
        };
        HeadDeadline {
            inner,
            timeout,
            phase,
            deadline: None,
            tail: [0; 3],
        }
    }

    /// Follow the bytes just read.
    fn saw(&mut self, new: &[u8]) {
        if new.is_empty() {
            return;
        }
        if self.phase == Phase::Idle {
            if new.starts_with(b"PRI * HTTP/2.0") {
                self.phase = Phase::Off; // h2c with prior knowledge
                return;
            }
            self.phase = Phase::Head;
            self.tail = [0; 3];
        }
        if self.phase != Phase::Head {
            return;
        }
        // The blank line may straddle two reads: look at the last 3 bytes before this read
        // joined to the first 3 of it, then at the read itself.
        let mut seam = [0u8; 6];
        seam[..3].copy_from_slice(&self.tail);
        let k = new.len().min(3);
        seam[3..3 + k].copy_from_slice(&new[..k]);
        // A head usually ends its read: check the end before scanning the whole of it.
        let blank = |b: &[u8]| b.ends_with(b"\r\n\r\n") || b.windows(4).any(|x| x == b"\r\n\r\n");
        if blank(&seam[..3 + k]) || blank(new) {
            self.phase = Phase::Body;
            self.deadline = None;
            return;
        }
        if self.deadline.is_none() {
            // The head's first read did not hold all of it: from now on it is timed.
            self.deadline = Some(Box::pin(tokio::time::sleep(self.timeout)));
        }
        let joined = &seam[..3 + k];
        self.tail.copy_from_slice(if new.len() >= 3 {
            &new[new.len() - 3..]
        } else {
            &joined[joined.len() - 3..]
        });
    }

    /// Follow the bytes about to be written.
    fn writes(&mut self, buf: &[u8]) {
        if self.phase == Phase::Off || buf.len() < 12 || !buf.starts_with(b"HTTP/1.") {
            return;
        }
        match &buf[9..12] {
            b"101" => self.phase = Phase::Off,
            [b'1', _, _] => {} // 100 Continue and friends: the body follows
            _ => {
                self.phase = Phase::Idle;
                self.deadline = None;
            }
        }
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(d) = self.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                self.deadline = None;
                crate::metrics::get()
                    .downstream_rejected
                    .with_label_values(&["header_timeout"])
                    .inc();
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request head not complete within limits.header_timeout",
                )));
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        this.saw(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.writes(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            let first: &[u8] = first;
            self.writes(&first[..n.min(first.len())]);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn guard(io: tokio::io::DuplexStream, t: Duration) -> HeadDeadline {
        HeadDeadline::new(Box::new(io), t)
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_times_out_whole() {
        let (client, server) = tokio::io::duplex(1024);
        let mut g = guard(server, Duration::from_secs(10));
        let mut client = client;
        let writer = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\nHost: x\r\n" {
                client.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            client
        });
        let mut buf = [0u8; 64];
        let err = loop {
            match g.read(&mut buf).await {
                Ok(0) => panic!("eof"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        drop(writer);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_ending_one_byte_at_a_time_is_seen() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = guard(server, Duration::from_secs(10));
        let mut buf = [0u8; 64];
        for b in b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" {
            assert_ne!(g.phase, Phase::Body);
            client.write_all(&[*b]).await.unwrap();
            assert_eq!(g.read(&mut buf).await.unwrap(), 1);
        }
        assert_eq!(g.phase, Phase::Body);
    }

    #[tokio::test(start_paused = true)]
    async fn complete_heads_disarm_and_a_response_rearms() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut g = guard(server, Duration::from_secs(10));
        let mut buf = [0u8; 256];
        // A head that comes in one read is never timed.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let _ = g.read(&mut buf).await.unwrap();
        assert_eq!(g.phase, Phase::Body);
        assert!(g.deadline.is_none());
        g.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        // A head split across reads, "\r\n\r\n" across the boundary, is timed from its
        // first read.
        client
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r")
            .await
            .unwrap();
        let _ = g.read(&mut buf).await.unwrap();
        assert_eq!(g.phase, Phase::Head);
        assert!(g.deadline.is_some());
        client.write_all(b"\n").await.unwrap();
        let _ = g.read(&mut buf).await.unwrap();
        assert_eq!(g.phase, Phase::Body);
        // A slow body is not the head's business.
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"hello").await.unwrap();
        assert_eq!(g.read(&mut buf).await.unwrap(), 5);
        // 100 Continue keeps the body phase; a final response ends the request.
        g.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
        assert_eq!(g.phase, Phase::Body);
        g.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(g.phase, Phase::Idle);
        // Idle keep-alive time is not head time.
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let _ = g.read(&mut buf).await.unwrap();
        assert_eq!(g.phase, Phase::Head);
        // Upgrades and h2c are left alone.
        g.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(g.phase, Phase::Off);
        let (mut c2, s2) = tokio::io::duplex(1024);
        let mut g2 = guard(s2, Duration::from_secs(1));
        c2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let _ = g2.read(&mut buf).await.unwrap();
        assert_eq!(g2.phase, Phase::Off);
    }
}
