//! A TCP proxy the fault campaign controls, to cut one agent off etcd.
//!
//! While cut, the proxy is a black hole: it keeps every connection open but forwards nothing
//! (at most one chunk read per direction is held back, so TCP back-pressure stalls both ends),
//! and accepts new connections without connecting them upstream. No reset, no error: the agent
//! only sees silence, the hardest partition to notice. Healing forwards the held data.
//!
//! [`Proxy::sever`] is the other kind of network fault: it closes the connections open now
//! (both sides, or only the upstream side while the client's side stays open and silent), and
//! new ones are forwarded as usual.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Which sides of the open connections [`Proxy::sever`] closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sever {
    /// Both: each end sees its connection closed.
    Both,
    /// Only the upstream side: the server sees its connection closed, the client sees silence.
    Upstream,
}

/// A proxy to one upstream address.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    cut: watch::Sender<bool>,
    sever: watch::Sender<(u64, Sever)>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, rx) = watch::channel(false);
        let (sever, sever_rx) = watch::channel((0, Sever::Both));
        let task = tokio::spawn(accept_loop(listener, upstream, rx, sever_rx));
        Ok(Self {
            port,
            cut,
            sever,
            task,
        })
    }

    /// Closes the connections open now (see [`Sever`]); later ones are forwarded.
    pub fn sever(&self, how: Sever) {
        self.sever.send_modify(|(n, h)| {
            *n += 1;
            *h = how;
        });
    }

    /// The local port agents connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the black hole.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Ends it.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort(); // its JoinSet of connections goes with it
    }
}

async fn wait_open(cut: &mut watch::Receiver<bool>) {
    while *cut.borrow_and_update() {
        if cut.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    cut: watch::Receiver<bool>,
    sever: watch::Receiver<(u64, Sever)>,
) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        let mut cut = cut.clone();
        let mut sever = sever.clone();
        sever.borrow_and_update();
        conns.spawn(async move {
            wait_open(&mut cut).await;
            let Ok(outbound) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut ri, mut wi) = inbound.into_split();
            let (mut ro, mut wo) = outbound.into_split();
            let how = {
                let up = pump(&mut ri, &mut wo, cut.clone());
                let down = pump(&mut ro, &mut wi, cut);
                tokio::pin!(up, down);
                let mut up_done = false;
                loop {
                    tokio::select! {
                        _ = &mut up, if !up_done => up_done = true,
                        _ = &mut down => break None,
                        _ = sever.changed() => break Some(sever.borrow().1),
                    }
                }
            };
            if how == Some(Sever::Upstream) {
                drop((ro, wo));
                // The client's side stays open and silent until the proxy goes.
                std::future::pending::<()>().await;
                drop((ri, wi));
            }
        });
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
}

async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        wait_open(&mut cut).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Cut while reading: hold the chunk until healed.
        wait_open(&mut cut).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn forwards_then_hangs_while_cut_then_resumes() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = Proxy::start(addr).await.unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        let mut b = [0u8; 5];
        c.write_all(b"hello").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hello");

        proxy.cut();
        c.write_all(b"again").await.unwrap();
        let silent = tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut b)).await;
        assert!(silent.is_err(), "data passed a cut proxy");
        proxy.heal();
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"again", "held data is delivered after healing");
    }
}
