//! A TCP proxy on loopback that the test can cut and restore: a network partition between one
//! process and a server. Cut, it resets every connection through it and every new one at once
//! (the process sees its server go away, as after a failed link or a firewall's reset), until
//! it is restored.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

struct State {
    open: AtomicBool,
    /// Cancelled at a cut: the connections made before it end.
    links: Mutex<CancellationToken>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            open: AtomicBool::new(true),
            links: Mutex::new(CancellationToken::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, target, Arc::clone(&state), stop.clone()));
        Ok(TcpProxy { addr, state, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets every connection through the proxy and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.state.open.store(false, Ordering::SeqCst);
        let mut links = self.state.links.lock().unwrap();
        links.cancel();
        *links = CancellationToken::new();
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.state.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn serve(
    listener: TcpListener,
    target: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut client, _)) = accepted else {
            continue;
        };
        if !state.open.load(Ordering::SeqCst) {
            // Dropped at once: a reset, not a connection that hangs.
            let _ = client.set_zero_linger();
            continue;
        }
        let link = state.links.lock().unwrap().clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = link.cancelled() => {
                    let _ = client.set_zero_linger();
                    let _ = server.set_zero_linger();
                }
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            }
        });
    }
}
