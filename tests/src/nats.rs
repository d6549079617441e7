//! A throwaway nats-server with JetStream for tests that need to stop or restart it under a bus
//! (tests that only need a server use `components::nats_url()`).
//!
//! The server listens on 127.0.0.1 on a port picked at start and keeps its JetStream store in a
//! temporary directory; a restart reuses both, so clients reconnect to the same address and find
//! their streams and consumers again.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::components;

/// How long a started server has to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    log: PathBuf,
    jetstream: bool,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server, or returns `None` (a failure in CI) when nats-server is not installed.
    pub async fn start() -> Option<Self> {
        Self::start_with(true).await
    }

    /// A server without JetStream (no `-js`), for testing what a client of it is told.
    pub async fn start_without_jetstream() -> Option<Self> {
        Self::start_with(false).await
    }

    async fn start_with(jetstream: bool) -> Option<Self> {
        let bin = components::nats_server_bin()?;
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let log = store.path().join("nats-server.log");
        let port = free_port().expect("a free port for nats-server");
        let mut server = Self {
            bin,
            port,
            store,
            log,
            jetstream,
            child: None,
        };
        server.spawn().await.expect("start nats-server");
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server without warning (SIGKILL), as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port with the same store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Kills the server and starts it again on the same port with an empty store, as a server
    /// without a persistent volume comes back: no streams, no consumers.
    pub async fn restart_without_store(&mut self) -> anyhow::Result<()> {
        self.kill();
        let store = self.store_dir();
        if store.exists() {
            std::fs::remove_dir_all(&store).context("wipe the JetStream store")?;
        }
        self.spawn().await
    }

    fn store_dir(&self) -> PathBuf {
        self.store.path().join("jetstream")
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("open the nats-server log")?;
        let mut command = Command::new(&self.bin);
        command
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string());
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(self.store_dir());
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("run {}", self.bin.display()))?;
        self.child = Some(child);
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "nats-server exited with {status} at start; its log:\n{}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not accept connections on {address} within {READY_TIMEOUT:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on right now (the OS picks it; nats-server takes it a moment later).
fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
