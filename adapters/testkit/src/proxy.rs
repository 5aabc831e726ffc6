//! A TCP proxy that puts faults between a client and a real service.
//!
//! [`TcpProxy`] listens on a loopback port of its own and forwards every
//! connection to a target `host:port`. A test points the adapter under
//! test at [`TcpProxy::addr`] instead of the service, then breaks the link
//! at will:
//!
//! - [`set_down`](TcpProxy::set_down) cuts every open connection and
//!   refuses new ones (the port is closed), as a crashed broker or a
//!   pulled cable would; [`set_up`](TcpProxy::set_up) accepts connections
//!   again, on the same port.
//! - [`pause`](TcpProxy::pause) stops forwarding bytes while the
//!   connections stay open, as a network partition would;
//!   [`resume`](TcpProxy::resume) forwards what waited.
//! - [`set_delay`](TcpProxy::set_delay) holds every chunk of bytes back
//!   for a while before forwarding it, in both directions.
//!
//! # Examples
//!
//! ```no_run
//! use txmsg_testkit::proxy::TcpProxy;
//!
//! # async fn demo() {
//! let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
//! let (proxy, via_proxy) = TcpProxy::for_url(url, 5672).await;
//! assert!(via_proxy.contains(&proxy.addr().to_string()));
//! // connect the broker to `via_proxy`, then:
//! proxy.set_down();
//! proxy.set_up();
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

/// Bytes read from one side before they are forwarded to the other.
const CHUNK: usize = 16 * 1024;

/// What the forwarding tasks obey; changed by the [`TcpProxy`] methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    /// Bumped by every cut: a connection opened in an older epoch ends.
    epoch: u64,
    /// Whether connections are accepted.
    up: bool,
    /// Whether bytes are held back.
    paused: bool,
    /// Added before each chunk is forwarded.
    delay: Duration,
}

/// State shared by the proxy handle and its tasks.
#[derive(Debug)]
struct Shared {
    target: String,
    /// The port while the proxy is up; `None` (closed) while it is down.
    listener: Mutex<Option<TcpListener>>,
    /// Wakes the accept task when a listener was put back.
    rebound: Notify,
    link: watch::Sender<Link>,
    /// Reads from clients so far, every connection together.
    client_reads: AtomicU64,
}

impl Shared {
    fn listener(&self) -> MutexGuard<'_, Option<TcpListener>> {
        // The lock is never held across a panic point; recover anyway.
        self.listener.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A TCP forwarder from a loopback port to a target service, with switches
/// to cut, refuse, pause and slow the traffic.
///
/// Started with [`TcpProxy::start`] (or [`TcpProxy::for_url`]); it runs on
/// the current tokio runtime until the handle is dropped, which closes its
/// port and every connection. A connection through the proxy opens one
/// connection to the target and forwards bytes both ways, half-closes
/// included.
///
/// The switches act at once: when [`set_down`](TcpProxy::set_down)
/// returns, the port refuses connections and every open one is being cut;
/// when [`set_up`](TcpProxy::set_up) returns, the port accepts again.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

impl fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let link = *self.shared.link.borrow();
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("up", &link.up)
            .field("paused", &link.paused)
            .field("delay", &link.delay)
            .finish()
    }
}

impl TcpProxy {
    /// Starts a proxy on `127.0.0.1:0` (a free port) to `target`, a
    /// `host:port` the proxy connects to for each connection it accepts.
    ///
    /// The proxy starts up, unpaused and without delay. If the target
    /// cannot be reached, each accepted connection is closed at once.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound, or outside a tokio runtime.
    pub async fn start(target: impl Into<String>) -> TcpProxy {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("the proxy cannot bind a loopback port: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("the proxy's port has no address: {e}"),
        };
        let (link, _) = watch::channel(Link {
            epoch: 0,
            up: true,
            paused: false,
            delay: Duration::ZERO,
        });
        let shared = Arc::new(Shared {
            target: target.into(),
            listener: Mutex::new(Some(listener)),
            rebound: Notify::new(),
            link,
            client_reads: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(Arc::clone(&shared))).abort_handle();
        TcpProxy {
            addr,
            shared,
            accept,
        }
    }

    /// How many times the proxy has read bytes from its clients, every
    /// connection together. On loopback, a client that writes a request at
    /// once and then waits for the answer is read once a request, so the
    /// difference between two readings counts its round trips.
    pub fn client_reads(&self) -> u64 {
        self.shared.client_reads.load(Ordering::SeqCst)
    }

    /// Starts a proxy to the service of `url` (`scheme://[user@]host[:port]/...`,
    /// `default_port` when it names none), and returns it with `url`
    /// pointed at the proxy instead: same scheme, credentials, path and
    /// query.
    ///
    /// # Panics
    ///
    /// If `url` has no host (see [`url_target`]), or as [`TcpProxy::start`].
    pub async fn for_url(url: &str, default_port: u16) -> (TcpProxy, String) {
        let Some(target) = url_target(url, default_port) else {
            panic!("`{url}` names no host to proxy");
        };
        let proxy = TcpProxy::start(target).await;
        let Some(via) = url_via(url, proxy.addr()) else {
            panic!("`{url}` names no host to proxy");
        };
        (proxy, via)
    }

    /// The address to connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `host:port` the proxy forwards to.
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// Cuts every open connection and refuses new ones.
    ///
    /// The port is closed before this returns, so a connect fails with
    /// "connection refused"; open connections are closed on both sides
    /// right after, without forwarding what was still in flight. Does
    /// nothing more if the proxy is already down.
    pub fn set_down(&self) {
        drop(self.shared.listener().take());
        self.shared.link.send_modify(|l| {
            l.up = false;
            l.epoch = l.epoch.wrapping_add(1);
        });
    }

    /// Accepts connections again, on the same port, after
    /// [`set_down`](TcpProxy::set_down). Does nothing if the proxy is up.
    ///
    /// # Panics
    ///
    /// If the port cannot be bound again (another socket took it while the
    /// proxy was down), or outside a tokio runtime.
    pub fn set_up(&self) {
        let mut slot = self.shared.listener();
        if slot.is_none() {
            let listener = std::net::TcpListener::bind(self.addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std);
            match listener {
                Ok(l) => *slot = Some(l),
                Err(e) => panic!("the proxy cannot bind {} again: {e}", self.addr),
            }
        }
        drop(slot);
        self.shared.link.send_modify(|l| l.up = true);
        self.shared.rebound.notify_one();
    }

    /// Stops forwarding bytes, in both directions, while every connection
    /// stays open and new ones are still accepted. What the peers send
    /// meanwhile waits in the proxy and the socket buffers.
    pub fn pause(&self) {
        self.shared.link.send_modify(|l| l.paused = true);
    }

    /// Forwards bytes again after [`pause`](TcpProxy::pause), starting
    /// with what waited.
    pub fn resume(&self) {
        self.shared.link.send_modify(|l| l.paused = false);
    }

    /// Holds every chunk of bytes back for `delay` before forwarding it, in
    /// both directions; [`Duration::ZERO`] forwards at once again. A chunk
    /// is what one read returned, so a burst of small writes may travel as
    /// one chunk and pay the delay once.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.link.send_modify(|l| l.delay = delay);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.set_down();
        self.accept.abort();
    }
}

/// The `host:port` that `url` (`scheme://[userinfo@]host[:port][/...]`)
/// points at, with `default_port` when it names no port; `None` if it has
/// no `scheme://` or no host.
pub fn url_target(url: &str, default_port: u16) -> Option<String> {
    let (_, host_port, _) = split_url(url)?;
    if has_port(host_port) {
        Some(host_port.to_owned())
    } else {
        Some(format!("{host_port}:{default_port}"))
    }
}

/// `url` with its host and port replaced by `addr`, everything else kept;
/// `None` if it has no `scheme://` or no host.
pub fn url_via(url: &str, addr: SocketAddr) -> Option<String> {
    let (before, _, after) = split_url(url)?;
    Some(format!("{before}{addr}{after}"))
}

/// Splits `url` into what precedes its `host[:port]`, the `host[:port]`,
/// and what follows it.
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_start = authority.rfind('@').map_or(0, |at| at + 1);
    let host_port = &authority[host_start..];
    if host_port.is_empty() || host_port.starts_with(':') {
        return None;
    }
    let split = start + host_start;
    Some((&url[..split], host_port, &url[start + end..]))
}

/// Whether `host_port` ends with a port (`[::1]:5672`, `host:5672`).
fn has_port(host_port: &str) -> bool {
    match host_port.rfind(':') {
        Some(i) => !host_port[..i].ends_with('[') && !host_port[i..].contains(']'),
        None => false,
    }
}

/// Accepts connections while the proxy is up; waits for a new listener
/// while it is down.
async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            accepted = std::future::poll_fn(|cx| match shared.listener().as_ref() {
                Some(l) => l.poll_accept(cx),
                None => Poll::Pending,
            }) => accepted,
            () = shared.rebound.notified() => continue,
        };
        let Ok((inbound, _)) = accepted else {
            // Out of file descriptors and the like: try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut link = shared.link.subscribe();
        let now = *link.borrow_and_update();
        if !now.up {
            // Accepted just before the port was closed.
            continue;
        }
        tokio::spawn(forward(inbound, Arc::clone(&shared), link, now.epoch));
    }
}

/// Forwards one connection until both sides are done, one fails, or the
/// proxy cuts it.
async fn forward(
    inbound: TcpStream,
    shared: Arc<Shared>,
    mut link: watch::Receiver<Link>,
    epoch: u64,
) {
    let (to_target, to_client) = (link.clone(), link.clone());
    let work = async move {
        let outbound = TcpStream::connect(shared.target.as_str()).await?;
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let (in_read, in_write) = inbound.into_split();
        let (out_read, out_write) = outbound.into_split();
        tokio::try_join!(
            pump(in_read, out_write, to_target, Some(&shared.client_reads)),
            pump(out_read, in_write, to_client, None),
        )
        .map(|_| ())
    };
    tokio::select! {
        _ = work => {}
        // Cut, or the proxy is gone: dropping `work` closes both sockets.
        _ = link.wait_for(|l| l.epoch != epoch) => {}
    }
}

/// Copies `from` to `to` chunk by chunk, obeying pause and delay, and
/// passes the end of `from` on as a half-close of `to`.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
    reads: Option<&AtomicU64>,
) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if let Some(reads) = reads {
            reads.fetch_add(1, Ordering::SeqCst);
        }
        let delay = match link.wait_for(|l| !l.paused).await {
            Ok(l) => l.delay,
            Err(_) => return Err(io::ErrorKind::ConnectionAborted.into()),
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A loopback service that echoes every connection back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    const WAIT: Duration = Duration::from_secs(5);

    async fn connect(proxy: &TcpProxy) -> io::Result<TcpStream> {
        tokio::time::timeout(WAIT, TcpStream::connect(proxy.addr()))
            .await
            .expect("connect must not hang")
    }

    /// A proxy in front of an echo server, and a connection through it.
    async fn proxied_echo() -> (TcpProxy, TcpStream) {
        let proxy = TcpProxy::start(echo_server().await.to_string()).await;
        let stream = connect(&proxy).await.expect("the proxy accepts");
        (proxy, stream)
    }

    /// Sends `msg` and reads the echo back.
    async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        stream.write_all(msg).await.expect("write");
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, stream.read_exact(&mut got))
            .await
            .expect("the echo must come back")
            .expect("read the echo");
        got
    }

    /// Whether the peer closed `stream`: end of stream or a reset.
    async fn is_closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    #[tokio::test]
    async fn forwards_cuts_refuses_and_comes_back_up() {
        let (proxy, mut open) = proxied_echo().await;
        assert_eq!(round_trip(&mut open, b"hello").await, b"hello");

        proxy.set_down();
        assert!(is_closed(&mut open).await, "set_down cuts open connections");
        let refused = connect(&proxy).await.expect_err("set_down refuses");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);

        proxy.set_up();
        let mut again = connect(&proxy).await.expect("set_up accepts again");
        assert_eq!(round_trip(&mut again, b"again").await, b"again");
        // Going down twice and up twice is harmless.
        proxy.set_down();
        proxy.set_down();
        proxy.set_up();
        proxy.set_up();
        assert!(is_closed(&mut again).await, "the second cut closed it too");
        let mut third = connect(&proxy).await.expect("up after two downs");
        assert_eq!(round_trip(&mut third, b"third").await, b"third");
    }

    #[tokio::test]
    async fn pause_holds_bytes_and_resume_releases_them() {
        let (proxy, mut stream) = proxied_echo().await;
        assert_eq!(round_trip(&mut stream, b"warm").await, b"warm");

        proxy.pause();
        stream.write_all(b"held").await.expect("write while paused");
        let mut buf = [0u8; 4];
        let waited =
            tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut buf)).await;
        assert!(waited.is_err(), "nothing is forwarded while paused");

        proxy.resume();
        tokio::time::timeout(WAIT, stream.read_exact(&mut buf))
            .await
            .expect("resume forwards what waited")
            .expect("read");
        assert_eq!(&buf, b"held");
    }

    #[tokio::test]
    async fn delay_slows_every_chunk() {
        let (proxy, mut stream) = proxied_echo().await;
        proxy.set_delay(Duration::from_millis(150));
        let started = Instant::now();
        assert_eq!(round_trip(&mut stream, b"slow").await, b"slow");
        // Held back on the way there and on the way back.
        assert!(started.elapsed() >= Duration::from_millis(300));

        proxy.set_delay(Duration::ZERO);
        let started = Instant::now();
        assert_eq!(round_trip(&mut stream, b"fast").await, b"fast");
        assert!(started.elapsed() < Duration::from_millis(150));
    }

    #[tokio::test]
    async fn unreachable_target_closes_the_connection() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let proxy = TcpProxy::start(format!("127.0.0.1:{port}")).await;
        let mut stream = connect(&proxy).await.expect("the proxy accepts");
        assert!(is_closed(&mut stream).await);
    }

    #[test]
    fn urls_are_pointed_at_the_proxy() {
        let addr: SocketAddr = "127.0.0.1:40001".parse().expect("addr");
        let cases = [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                5672,
                "127.0.0.1:5672",
                "amqp://guest:guest@127.0.0.1:40001/%2f",
            ),
            (
                "nats://localhost",
                4222,
                "localhost:4222",
                "nats://127.0.0.1:40001",
            ),
            (
                "redis://:p%40ss@[::1]/0?x=1",
                6379,
                "[::1]:6379",
                "redis://:p%40ss@127.0.0.1:40001/0?x=1",
            ),
            (
                "mqtt://[::1]:1883",
                1883,
                "[::1]:1883",
                "mqtt://127.0.0.1:40001",
            ),
        ];
        for (url, port, target, via) in cases {
            assert_eq!(url_target(url, port).as_deref(), Some(target), "{url}");
            assert_eq!(url_via(url, addr).as_deref(), Some(via), "{url}");
        }
        for bad in [
            "127.0.0.1:5672",
            "amqp://",
            "amqp://user@/x",
            "mqtt://:1883",
        ] {
            assert_eq!(url_target(bad, 1), None, "{bad}");
            assert_eq!(url_via(bad, addr), None, "{bad}");
        }
    }
}
