//! The embedded server a drill starts for itself: `stampede serve` in a temporary data dir, on
//! a free port, killed when the drill is done. Started as a child process of the same binary,
//! so the server under test is exactly the one shipped (no in-process shortcut), and can be
//! pinned to other CPUs than the load (`taskset`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::DrillError;

/// A running embedded server.
pub struct EmbeddedServer {
    child: Child,
    /// Where it listens, e.g. `http://127.0.0.1:41234`.
    pub base: String,
    /// Its SQLite file, for the audit (and for seeding accounts before it starts).
    pub db_path: PathBuf,
    /// Kept alive while the server runs; removed on drop unless kept.
    _dir: Option<tempfile::TempDir>,
}

/// How to start the server.
pub struct Launch<'a> {
    /// The `stampede` binary.
    pub exe: &'a Path,
    pub admin_email: &'a str,
    pub admin_password: &'a str,
    /// `taskset -c` CPU list for the server, if any.
    pub cpus: Option<&'a str>,
    /// Keep the data dir after the drill (its path is printed).
    pub keep_data: bool,
}

impl Launch<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match self.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(self.exe);
                c
            }
            None => Command::new(self.exe),
        };
        cmd.args(args);
        cmd
    }

    /// Creates the data dir and applies the store's migrations (so accounts can be seeded
    /// before the server starts).
    pub fn prepare(&self) -> Result<(tempfile::TempDir, PathBuf), DrillError> {
        let dir = tempfile::Builder::new()
            .prefix("stampede-drill-")
            .tempdir()
            .map_err(|e| DrillError::Server(format!("temp dir: {e}")))?;
        let data = dir.path().join("data");
        let data_str = data.to_string_lossy().into_owned();
        let status = self
            .command(&["migrate", "--data-dir", &data_str])
            .env("STAMPEDE_LOG", "warn")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| {
                DrillError::Server(format!("running {} migrate: {e}", self.exe.display()))
            })?;
        if !status.success() {
            return Err(DrillError::Server(format!(
                "stampede migrate failed: {status}"
            )));
        }
        Ok((dir, data))
    }

    /// Starts `stampede serve` on the prepared data dir and waits for its listening line.
    pub fn start(&self, dir: tempfile::TempDir, data: &Path) -> Result<EmbeddedServer, DrillError> {
        let data_str = data.to_string_lossy().into_owned();
        let mut child = self
            .command(&["serve", "--listen", "127.0.0.1:0", "--data-dir", &data_str])
            .env("STAMPEDE_ADMIN_EMAIL", self.admin_email)
            .env("STAMPEDE_ADMIN_PASSWORD", self.admin_password)
            // The drill's own server: a rehearsal of the sale, not of password hashing or of
            // the per-client rate limits (every virtual buyer comes from one address).
            .env("STAMPEDE_ARGON2_MEMORY_KIB", "256")
            .env("STAMPEDE_ARGON2_ITERATIONS", "1")
            .env("STAMPEDE_RATE_LIMIT_PER_SEC", "1000000")
            .env("STAMPEDE_IP_RATE_LIMIT_PER_SEC", "100000000")
            .env("STAMPEDE_SWEEP_INTERVAL_MS", "100")
            .env(
                "STAMPEDE_LOG",
                std::env::var("STAMPEDE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                DrillError::Server(format!("starting {} serve: {e}", self.exe.display()))
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| DrillError::Server("server stdout".into()))?;
        // Read the listening line on a thread: a server that never prints it must not hang us.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                    break;
                }
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let base = loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(100)) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(DrillError::Server(format!(
                    "server exited at start: {status}"
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(DrillError::Server(
                    "server did not start within 60 s".into(),
                ));
            }
        };
        let db_path = data.join("stampede.db");
        let dir = if self.keep_data {
            eprintln!("drill data kept in {}", dir.keep().display());
            None
        } else {
            Some(dir)
        };
        Ok(EmbeddedServer {
            child,
            base,
            db_path,
            _dir: dir,
        })
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
