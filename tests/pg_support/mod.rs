//! A throwaway PostgreSQL cluster for the fleet tests: `initdb` into a temp directory, `pg_ctl start` on a Unix
//! socket there (and a free TCP port on 127.0.0.1, password-authenticated, for the wrong-password test), stopped
//! and removed when the [`Cluster`] drops — also when the test panics. The server refuses to run as root, so under
//! root (CI) every server command runs as `nobody`, which owns the cluster's directory. The binaries are Debian's
//! (`postgresql` package, installed by scripts/setup.sh), found under /usr/lib/postgresql/<version>/bin.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The superuser initdb creates, and its password (for TCP connections).
pub const USER: &str = "robustd";
pub const PASSWORD: &str = "fleet-test-pw";

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// `(uid, gid)` the server runs as when the tests run as root.
    owner: Option<(u32, u32)>,
    running: bool,
}

impl Cluster {
    /// A new cluster, started, with fsync off (tests: speed over durability).
    pub fn start() -> Self {
        Self::start_with(&[
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ])
    }

    /// A new cluster started with extra `name=value` server settings.
    pub fn start_with(settings: &[&str]) -> Self {
        let bin = server_bin();
        let dir = tempfile::Builder::new()
            .prefix("robustd-pg-")
            .tempdir()
            .unwrap();
        // SAFETY: geteuid has no preconditions.
        let owner = (unsafe { libc::geteuid() } == 0).then_some((65534, 65534));
        if let Some((uid, gid)) = owner {
            chown(dir.path(), uid, gid);
        }
        let port = free_port();
        let mut cluster = Self {
            dir,
            bin,
            port,
            owner,
            running: false,
        };
        std::fs::create_dir_all(cluster.socket_dir()).unwrap();
        if let Some((uid, gid)) = owner {
            chown(&cluster.socket_dir(), uid, gid);
        }
        let pwfile = cluster.dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if let Some((uid, gid)) = owner {
            chown(&pwfile, uid, gid);
        }
        let out = cluster.server_cmd("initdb", |c| {
            c.arg("-D")
                .arg(cluster.data_dir())
                .args([
                    "-U",
                    USER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .arg("--no-instructions");
        });
        assert!(out.status.success(), "initdb failed:\n{}", text(&out));
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             max_connections = 300\nlog_min_messages = warning\n",
            cluster.socket_dir().display()
        );
        for s in settings {
            conf.push_str(s);
            conf.push('\n');
        }
        let conf_path = cluster.data_dir().join("postgresql.conf");
        let mut text_conf = std::fs::read_to_string(&conf_path).unwrap();
        text_conf.push_str(&conf);
        std::fs::write(&conf_path, text_conf).unwrap();
        cluster.resume();
        cluster
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The connection string robustd gets: the Unix socket, trusted.
    pub fn url(&self) -> String {
        format!(
            "host={} port={} user={USER} dbname=postgres",
            self.socket_dir().display(),
            self.port
        )
    }

    /// A URL over TCP with a password (scram-sha-256).
    pub fn tcp_url(&self, password: &str) -> String {
        format!(
            "postgresql://{USER}:{password}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Stops the server (fast shutdown: connections are closed), keeping the data.
    pub fn pause(&mut self) {
        let out = self.server_cmd("pg_ctl", |c| {
            c.arg("stop")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "fast", "-w"]);
        });
        assert!(out.status.success(), "pg_ctl stop failed:\n{}", text(&out));
        self.running = false;
    }

    /// Starts the server (again).
    pub fn resume(&mut self) {
        let out = self.server_cmd("pg_ctl", |c| {
            c.arg("start")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_file())
                .args(["-w", "-t", "60"]);
        });
        assert!(
            out.status.success(),
            "pg_ctl start failed:\n{}\n{}",
            text(&out),
            std::fs::read_to_string(self.log_file()).unwrap_or_default()
        );
        self.running = true;
    }

    /// Runs SQL through psql on the socket; returns its output (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql:?} failed:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn server_cmd(&self, program: &str, args: impl FnOnce(&mut Command)) -> Output {
        let mut cmd = Command::new(self.bin.join(program));
        args(&mut cmd);
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid).env("HOME", self.dir.path());
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.server_cmd("pg_ctl", |c| {
                c.arg("stop")
                    .arg("-D")
                    .arg(self.data_dir())
                    .args(["-m", "immediate", "-w"]);
            });
        }
    }
}

/// The server binaries' directory: `$ROBUSTD_PG_BIN`, else the newest /usr/lib/postgresql/<version>/bin.
fn server_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("ROBUSTD_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql: run scripts/setup.sh (it installs \
             Debian's postgresql package), or set ROBUSTD_PG_BIN"
        )
    })
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::chown(c.as_ptr(), uid, gid) };
    assert_eq!(rc, 0, "chown {}", path.display());
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
