// gatehouse patch: a cheaper pool of idle upstream HTTP/1 connections.
//
// Pingora's own pool (pingora-core's `TransportConnector`) spends, per keep-alive request, an
// `Arc<Mutex<Stream>>`, a spawned task that watches the idle connection, a `Notify` and a oneshot
// channel, an LRU update under a lock, a `getpeername` system call on reuse, and a task switch
// (taking a connection waits for its watcher task to let go of it). This pool keeps the idle
// `Stream` itself in a short list under an uncontended lock (a connection is put in the shard of
// the worker thread that released it and taken from there first), and notices closed
// connections without a task per connection:
//
// - taking a connection polls a one-byte read once without waiting (as Pingora does on
//   release): a connection the backend closed, or one with unexpected data, is dropped and the
//   next one is tried; the most recently used connection is taken first (as nginx does);
// - one sweeper task per pool wakes every second and closes connections past their idle
//   timeout and connections the backend closed.
//
// The size limit is `ServerConf::upstream_keepalive_pool_size`, for the whole pool: at the
// limit, the oldest idle connection to the same backend makes room, or the new one is closed.

use futures::FutureExt;
use pingora_core::protocols::Stream;
use pingora_core::server::configuration::ServerConf;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How often the sweeper looks for expired and closed connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    expires: Option<Instant>,
}

impl Idle {
    /// Not past its idle timeout at `now`, and still open.
    fn usable(&mut self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now) && still_open(&mut self.stream)
    }
}

#[derive(Default)]
struct Shard {
    by_peer: HashMap<u64, VecDeque<Idle>, BuildHasherDefault<ReuseHash>>,
}

/// The keys are peers' reuse hashes already: used as they are rather than hashed again
/// (SipHash, about 150 instructions for each take and put).
#[derive(Default)]
struct ReuseHash(u64);

impl Hasher for ReuseHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys reach here (`write_u64`); anything else is folded in all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) struct IdlePool {
    shards: Box<[Mutex<Shard>]>,
    idle: AtomicUsize,
    max_idle: usize,
    sweeper: AtomicBool,
}

thread_local! {
    /// This thread's shard seed: threads are numbered as they first use any pool.
    static SEED: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
}

/// Whether an idle connection is still good to send a request on: nothing to read and not
/// closed. One read poll that never waits; it makes no system call while the socket has not
/// been reported readable.
fn still_open(stream: &mut Stream) -> bool {
    let mut buf = [0u8; 1];
    tokio::task::unconstrained(stream.read(&mut buf[..]))
        .now_or_never()
        .is_none()
}

impl IdlePool {
    /// A pool keeping at most `upstream_keepalive_pool_size` idle connections, sharded for the
    /// server's worker threads.
    pub(crate) fn for_conf(conf: &ServerConf) -> Arc<Self> {
        let shards = (0..conf.threads.max(1) * 2)
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        Arc::new(IdlePool {
            shards,
            idle: AtomicUsize::new(0),
            max_idle: conf.upstream_keepalive_pool_size,
            sweeper: AtomicBool::new(false),
        })
    }

    fn home(&self) -> usize {
        SEED.with(|s| *s) % self.shards.len()
    }

    /// An idle connection to the peer with this reuse hash, if one is still open: from this
    /// thread's shard, else (a task that moved threads, or a thread that released none yet)
    /// from any other.
    pub(crate) fn take(&self, key: u64) -> Option<Stream> {
        let home = self.home();
        let n = self.shards.len();
        (0..n).find_map(|i| self.take_from(&self.shards[(home + i) % n], key))
    }

    fn take_from(&self, shard: &Mutex<Shard>, key: u64) -> Option<Stream> {
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let list = shard.by_peer.get_mut(&key)?;
        let now = Instant::now();
        while let Some(mut idle) = list.pop_back() {
            self.idle.fetch_sub(1, Ordering::Relaxed);
            if idle.usable(now) {
                return Some(idle.stream);
            }
        }
        None
    }

    /// Keep `stream` (to the peer with this reuse hash) for reuse, closed after `idle_timeout`.
    pub(crate) fn put(
        self: &Arc<Self>,
        key: u64,
        mut stream: Stream,
        idle_timeout: Option<Duration>,
    ) {
        if self.max_idle == 0 || !still_open(&mut stream) {
            return;
        }
        let expires = idle_timeout.map(|t| Instant::now() + t);
        {
            let shard = &self.shards[self.home()];
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let list = shard.by_peer.entry(key).or_default();
            if self.idle.load(Ordering::Relaxed) >= self.max_idle {
                // Full: the oldest connection to this peer makes room, or this one is closed.
                if list.pop_front().is_none() {
                    return;
                }
            } else {
                self.idle.fetch_add(1, Ordering::Relaxed);
            }
            list.push_back(Idle { stream, expires });
        }
        if !self.sweeper.swap(true, Ordering::Relaxed) {
            let pool = Arc::downgrade(self);
            tokio::spawn(sweep_forever(pool));
        }
    }

    /// Close expired connections and the ones their backend closed; forget empty peers.
    fn sweep(&self, now: Instant) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.by_peer.retain(|_, list| {
                let before = list.len();
                list.retain_mut(|idle| idle.usable(now));
                self.idle.fetch_sub(before - list.len(), Ordering::Relaxed);
                !list.is_empty()
            });
        }
    }
}

/// gatehouse patch: how many idle connections a proxy's pool holds now (for a metric).
#[derive(Clone)]
pub struct IdleConnections(Arc<IdlePool>);

impl IdleConnections {
    pub(crate) fn new(pool: Arc<IdlePool>) -> Self {
        IdleConnections(pool)
    }

    /// Idle connections kept for reuse, all backends together.
    pub fn count(&self) -> usize {
        self.0.idle.load(Ordering::Relaxed)
    }
}

async fn sweep_forever(pool: Weak<IdlePool>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(Instant::now()),
            None => return,
        }
    }
}
