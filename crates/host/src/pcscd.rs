//! A private pcscd with vsmartcard's vpcd driver, for tests and benchmarks.
//!
//! [`Pcscd::start`] runs `pcscd --foreground` (with `--disable-polkit` where pcscd has it) as a
//! child process with a reader configuration directory of its own, waits until the virtual
//! readers are listed, and stops the daemon when dropped. pcsc-lite has one daemon per machine
//! (its socket is `/run/pcscd/pcscd.comm`); [`MachineLock`] keeps two from overlapping.
//!
//! The configuration is Debian's `/etc/reader.conf.d/vpcd` (one vpcd reader, `CHANNELID 0x8C7B`
//! = port 35963, which vpcd exposes as two slots: "Virtual PCD 00 00" on 35963 and
//! "Virtual PCD 00 01" on 35964). More readers ([`Pcscd::start_with_readers`]) are more entries
//! of the same form ([`vpcd_reader_entry`]), each with its own name and port **and its own copy
//! of the driver**: vpcd keeps its connections in a static array indexed by slot number only,
//! so two entries loading the same `libifdvpcd.so` share slots 0 and 1 and their cards appear
//! in both readers at once. pcscd loads a copy under another path as a separate instance.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Debian's reader configuration for vpcd.
pub const DEBIAN_VPCD_CONF: &str = "/etc/reader.conf.d/vpcd";
/// Where Debian installs the vpcd driver.
pub const DEBIAN_VPCD_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";
/// pcsc-lite's daemon socket.
pub const PCSCD_SOCKET: &str = "/run/pcscd/pcscd.comm";
/// Name prefix of vpcd's readers.
pub const VPCD_READER_PREFIX: &str = "Virtual PCD";

/// Why a private pcscd could not be started.
#[derive(Debug, Error)]
pub enum PcscdError {
    /// A program or file the daemon needs is not installed.
    #[error("{0} not found: install the Debian packages pcscd and vsmartcard-vpcd")]
    Missing(String),
    /// Another pcscd is serving the machine.
    #[error(
        "a pcscd is already running ({PCSCD_SOCKET} answers): stop it first \
         (`sudo systemctl stop pcscd.socket pcscd`)"
    )]
    AlreadyRunning,
    /// pcscd may not create its socket and pid file (`/run/pcscd`): not running as root.
    #[error(
        "pcscd cannot create its files in /run/pcscd (Permission denied): run the tests as \
         root, or make /run/pcscd writable for this user"
    )]
    NotPermitted,
    /// The daemon exited or did not list the virtual readers in time.
    #[error("pcscd did not come up: {0}")]
    NotReady(String),
    /// Setting up the configuration or spawning failed.
    #[error("starting pcscd: {0}")]
    Io(#[from] io::Error),
}

/// One `reader.conf` entry for a vpcd reader whose first slot listens on `port` (the second on
/// `port + 1`). `driver` must be a copy of the vpcd driver used by no other entry (see the
/// module documentation).
pub fn vpcd_reader_entry(friendly_name: &str, port: u16, driver: &Path) -> String {
    format!(
        "FRIENDLYNAME \"{friendly_name}\"\nDEVICENAME   /dev/null:0x{port:04X}\n\
         LIBPATH      {}\nCHANNELID    0x{port:04X}\n",
        driver.display()
    )
}

/// Finds `program` on `PATH` or in the sbin directories (where Debian puts pcscd).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Checks that pcscd and the vpcd driver are installed; the error names what is missing.
pub fn check_installed() -> Result<PathBuf, PcscdError> {
    let pcscd = find_program("pcscd").ok_or_else(|| PcscdError::Missing("pcscd".into()))?;
    for file in [DEBIAN_VPCD_CONF, DEBIAN_VPCD_DRIVER] {
        if !Path::new(file).exists() {
            return Err(PcscdError::Missing(file.into()));
        }
    }
    Ok(pcscd)
}

/// True when this pcscd has the `--disable-polkit` option (pcsc-lite built with polkit).
fn supports_disable_polkit(program: &Path) -> bool {
    Command::new(program)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout).contains("--disable-polkit")
                || String::from_utf8_lossy(&out.stderr).contains("--disable-polkit")
        })
        .unwrap_or(false)
}

/// True when a pcscd answers on the machine's socket.
pub fn is_running() -> bool {
    Path::new(PCSCD_SOCKET).exists() && pcsc::Context::establish(pcsc::Scope::User).is_ok()
}

/// Where [`MachineLock`] locks.
pub const LOCK_PATH: &str = "/tmp/tessera-pcscd.lock";

/// Exclusive use of the machine's one pcscd, across threads and processes (test runners run
/// tests as threads, cargo-nextest as processes): an advisory lock on [`LOCK_PATH`], released
/// when dropped or when the process dies.
#[derive(Debug)]
pub struct MachineLock {
    _file: fs::File,
}

impl MachineLock {
    /// Waits until no other holder is left, then takes the lock.
    pub fn acquire() -> io::Result<Self> {
        let file =
            fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK_PATH)?;
        file.lock()?;
        Ok(Self { _file: file })
    }
}

/// A pcscd child process; stopped (SIGTERM, then SIGKILL) when dropped.
///
/// Holds the [`MachineLock`] for its whole life, so two of them never overlap.
#[derive(Debug)]
pub struct Pcscd {
    child: Option<Child>,
    dir: PathBuf,
    program: PathBuf,
    extra_readers: Vec<(String, u16)>,
    // Declared last: released after the daemon has stopped.
    _lock: MachineLock,
}

impl Pcscd {
    /// For tests: [`Pcscd::start_with_readers`], or `None` (after a notice on standard error)
    /// when pcscd cannot run on this machine: not installed, one already running, not
    /// permitted. With `CI=true` that panics instead, so CI never skips in silence; any other
    /// failure panics too.
    pub fn start_for_test(extra_readers: &[(&str, u16)]) -> Option<Self> {
        match Self::start_with_readers(extra_readers) {
            Ok(daemon) => Some(daemon),
            Err(
                e
                @ (PcscdError::Missing(_) | PcscdError::AlreadyRunning | PcscdError::NotPermitted),
            ) => {
                assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI=true and {e}");
                eprintln!("NOTICE: skipping a pcscd test: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts pcscd with Debian's vpcd configuration and waits until it lists the vpcd readers.
    pub fn start() -> Result<Self, PcscdError> {
        Self::start_with_readers(&[])
    }

    /// Like [`Pcscd::start`], with more vpcd readers: `(name, port)` gives the readers
    /// "`name` 00 00" on `port` and "`name` 00 01" on `port + 1`, each reader with its own copy
    /// of the driver.
    pub fn start_with_readers(extra_readers: &[(&str, u16)]) -> Result<Self, PcscdError> {
        let program = check_installed()?;
        let lock = MachineLock::acquire()?;
        let dir = std::env::temp_dir().join(format!("tessera-pcscd-{}", std::process::id()));
        let conf_dir = dir.join("reader.conf.d");
        let driver_dir = dir.join("drivers");
        fs::create_dir_all(&conf_dir)?;
        fs::create_dir_all(&driver_dir)?;
        let mut conf = fs::read_to_string(DEBIAN_VPCD_CONF)?;
        for (i, (name, port)) in extra_readers.iter().enumerate() {
            let driver = driver_dir.join(format!("libifdvpcd-{}.so", i + 2));
            fs::copy(DEBIAN_VPCD_DRIVER, &driver)?;
            conf.push('\n');
            conf.push_str(&vpcd_reader_entry(name, *port, &driver));
        }
        fs::write(conf_dir.join("vpcd"), conf)?;
        let mut pcscd = Self {
            child: None,
            dir,
            program,
            extra_readers: extra_readers.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
            _lock: lock,
        };
        pcscd.spawn()?;
        Ok(pcscd)
    }

    fn spawn(&mut self) -> Result<(), PcscdError> {
        if is_running() {
            return Err(PcscdError::AlreadyRunning);
        }
        let log = fs::File::create(self.log_path())?;
        let mut command = Command::new(&self.program);
        command.arg("--foreground").arg("--config").arg(self.dir.join("reader.conf.d"));
        if supports_disable_polkit(&self.program) {
            // pcsc-lite built with polkit would ask it whether the test may use the daemon.
            command.arg("--disable-polkit");
        }
        let child = command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(15))
    }

    /// The daemon's log file (its stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pcscd.log")
    }

    /// The readers added to Debian's, as `(name, first port)`.
    pub fn extra_readers(&self) -> &[(String, u16)] {
        &self.extra_readers
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), PcscdError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                let log = fs::read_to_string(self.log_path()).unwrap_or_default();
                if log.contains("Permission denied") {
                    return Err(PcscdError::NotPermitted);
                }
                return Err(PcscdError::NotReady(format!("exited with {status}: {log}")));
            }
            if let Ok(ctx) = pcsc::Context::establish(pcsc::Scope::User)
                && let Ok(names) = ctx.list_readers_owned()
                && names.iter().any(|n| n.to_string_lossy().starts_with(VPCD_READER_PREFIX))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(PcscdError::NotReady(format!(
                    "no vpcd reader listed after {timeout:?}; log in {}",
                    self.log_path().display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon and waits for it to exit.
    pub fn stop(&mut self) -> Result<(), PcscdError> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        // SIGTERM lets pcscd remove its socket and pid file; std only sends SIGKILL.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the daemon and starts it again with the same configuration (as after an upgrade
    /// or a crash): every PC/SC handle and every vpcd connection is lost.
    pub fn restart(&mut self) -> Result<(), PcscdError> {
        self.stop()?;
        self.spawn()
    }
}

impl Drop for Pcscd {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether PC/SC lists `reader` with a card in it (false when PC/SC cannot be reached).
pub fn card_present(reader: &str) -> bool {
    crate::list_readers()
        .map(|rs| rs.iter().any(|r| r.name == reader && r.card_present))
        .unwrap_or(false)
}

/// Waits up to `timeout` until `ok` holds, polling every 50 ms; false when it never did.
pub fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_entries_follow_debians_format() {
        let entry = vpcd_reader_entry("Virtual PCD 2", 35965, Path::new("/opt/vpcd-2.so"));
        assert_eq!(
            entry,
            "FRIENDLYNAME \"Virtual PCD 2\"\nDEVICENAME   /dev/null:0x8C7D\n\
             LIBPATH      /opt/vpcd-2.so\nCHANNELID    0x8C7D\n"
        );
    }
}
