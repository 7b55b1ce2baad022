//! What the binary's tests share: running `tessera`, checking exit codes, child processes that
//! die with the test, and a `tessera server` process on an ephemeral port.
#![allow(dead_code)] // each test binary uses its own part of this module
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs the `tessera` binary with `args`.
pub fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).output().unwrap()
}

/// Output bytes as text, for messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code, showing both output streams when it differs.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Kills a child process when dropped (a failing assertion must not leave a server running).
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `tessera server` process on an ephemeral port: its URL, fingerprint and bootstrap token,
/// read from what it prints on standard output.
pub struct Server {
    _child: Child,
    /// Its `https://127.0.0.1:PORT` address.
    pub url: String,
    /// Its certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// The bootstrap admin token.
    pub token: String,
}

impl Server {
    /// Starts a server whose data directory is `data`.
    pub fn start(data: &Path) -> Server {
        let mut child = Child(
            Command::new(env!("CARGO_BIN_EXE_tessera"))
                .args(["server", "--data", data.to_str().unwrap(), "--listen", "127.0.0.1:0"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let mut after = |prefix: &str| loop {
            let line = lines.next().expect("server output ended").unwrap();
            if let Some(i) = line.find(prefix) {
                break line[i + prefix.len()..].trim().to_owned();
            }
        };
        let url = after("listening on ");
        let fingerprint = after("fingerprint: ");
        let token = after("): ");
        Server { _child: child, url, fingerprint, token }
    }

    /// `tessera COMMAND --server .. --fingerprint .. [--token ..] ARGS`.
    pub fn run(&self, command: &str, token: bool, args: &[&str]) -> Output {
        let mut all = vec![command, "--server", &self.url, "--fingerprint", &self.fingerprint];
        if token {
            all.extend_from_slice(&["--token", &self.token]);
        }
        all.extend_from_slice(args);
        tessera(&all)
    }

    /// `tessera admin ARGS` with the bootstrap token.
    pub fn admin(&self, args: &[&str]) -> Output {
        self.run("admin", true, args)
    }
}
