//! A PostgreSQL server of a test's own, for tests that restart it or cut its connections (the
//! shared `TEST_DATABASE_URL` server must stay up for the others). Made with the same
//! binaries `tests/run.sh` uses; run as the `postgres` user when the tests run as root, since
//! PostgreSQL refuses root.

use std::path::PathBuf;
use std::process::Command;

use crate::components;

pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_root: bool,
    /// `fsync` on, as production runs it (tests keep it off for speed).
    durable: bool,
}

impl PrivatePostgres {
    /// Creates a cluster in a fresh directory and starts it with `fsync=off`; `None` where
    /// PostgreSQL's server binaries are missing (and components may be skipped).
    pub fn start() -> Option<PrivatePostgres> {
        Self::start_with(false)
    }

    /// [`Self::start`], with `fsync` (and `synchronous_commit`, the default) on when `durable`,
    /// as production runs PostgreSQL.
    pub fn start_with(durable: bool) -> Option<PrivatePostgres> {
        let Some(bin) = server_bin() else {
            return components::missing(
                "PostgreSQL's server binaries (initdb, pg_ctl)",
                "apt-get install postgresql, or run `bash tests/run.sh`",
            );
        };
        let dir = tempfile::tempdir().expect("a directory for PostgreSQL");
        let as_root = nix::unistd::Uid::effective().is_root();
        if as_root {
            let status = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown the PostgreSQL directory");
        }
        let server = PrivatePostgres {
            bin,
            dir,
            port: free_port(),
            as_root,
            durable,
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        server.pg_ctl(&["start", "-w"]);
        Some(server)
    }

    /// An admin URL (the `postgres` database).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A URL for a fresh database on this server.
    pub async fn fresh_database(&self) -> String {
        use sqlx::Connection;
        let name = format!("autopilot_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&self.url())
            .await
            .expect("connect to the private PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create a database");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server at once (`immediate`: no checkpoint, as a crash would leave it).
    pub fn stop_immediately(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
    }

    /// Starts it again on the same port and data.
    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w"]);
    }

    /// Ends every client connection, as a failover or a proxy restart does.
    pub async fn drop_connections(&self) -> u64 {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.url())
            .await
            .expect("connect to the private PostgreSQL");
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_all(&mut admin)
        .await
        .expect("terminate the connections");
        ended.into_iter().filter(|ended| *ended).count() as u64
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let log = self.dir.path().join("log").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c max_connections=100",
            self.port,
            self.dir.path().display(),
            if self.durable { "on" } else { "off" }
        );
        let mut all = vec!["-D", &data, "-l", &log, "-o", &options];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    /// `program` of the server's binaries, as the `postgres` user when the tests run as root.
    fn command(&self, program: &str) -> Command {
        let binary = self.bin.join(program);
        if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&binary);
            command
        } else {
            Command::new(&binary)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .output()
            .expect("PostgreSQL tool runs");
        assert!(
            output.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "stop", "-m", "immediate"])
            .output();
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb`.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}
