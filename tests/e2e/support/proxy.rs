//! The `portier` binary under test: `Portier` runs it as a real process on a
//! manifest the test writes; `check` runs `portier check`.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::access::AccessLine;
use super::client::{Client, Reply};
use super::wait_or_kill;

/// The binary cargo built for this test run.
pub const PORTIER: &str = env!("CARGO_BIN_EXE_portier");

/// Where the host's build script put the compiled built-in plugins.
pub const PLUGIN_DIR: &str = env!("PORTIER_PLUGIN_DIR");

/// How long a proxy may take to listen; the first start of a test run may
/// compile every plugin while other tests do the same.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `portier check` may run (it compiles plugins too).
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a test waits for a log line to appear.
const LOG_TIMEOUT: Duration = Duration::from_secs(5);

/// How often bounded waits poll.
const POLL: Duration = Duration::from_millis(20);

/// How long `portier` may take to exit after SIGTERM: its drain timeout
/// (10 s) and some.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Ports handed to proxies: below Linux's ephemeral range (32768-60999), so
/// no client socket of a parallel test can take one between `free_port`
/// and the proxy's bind (an ephemeral port could be, and was).
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free port on 127.0.0.1 for a proxy to bind next: each test process
/// walks [`PORTS`] from a point of its own, never handing a port out twice,
/// and skips ports something already holds.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(PORTS.end - PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = PORTS.start + (NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORTS:?}")
}

/// `127.0.0.1:` a [`free_port`].
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The path of a built-in plugin's `.wasm` file, for manifests that load it by path.
pub fn plugin_path(name: &str) -> String {
    format!("{PLUGIN_DIR}/{name}.wasm")
}

/// A `portier` command with a test-run-wide plugin cache (so plugins compile
/// once per run, not per test, and nothing lands in the user's ~/.cache), no
/// colours in its logs, and its log filter (`PORTIER_LOG`, the variable the
/// binary reads) taken from `PORTIER_TEST_LOG` or else left at the binary's
/// default, which logs access lines: what the tests expect to see.
fn portier_command() -> Command {
    wrapped_command(None)
}

/// [`portier_command`], run by `wrapper` (a program and its arguments, such
/// as `prlimit --nofile=96:96 --`) when there is one.
fn wrapped_command(wrapper: Option<&(String, Vec<String>)>) -> Command {
    let mut command = match wrapper {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(PORTIER);
            c
        }
        None => Command::new(PORTIER),
    };
    command
        .env(
            "XDG_CACHE_HOME",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/xdg-cache"),
        )
        .env("NO_COLOR", "1")
        .env_remove("PORTIER_LOG")
        .env_remove("RUST_LOG")
        // Not the manifest's directory: relative plugin paths must resolve
        // against the manifest, not the working directory.
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null());
    if let Ok(filter) = std::env::var("PORTIER_TEST_LOG") {
        command.env("PORTIER_LOG", filter);
    }
    command
}

/// Read a captured output file, without ANSI colour codes.
fn read_log(path: &Path) -> String {
    strip_ansi(&fs::read_to_string(path).unwrap_or_default())
}

/// Remove `ESC [ ... letter` sequences, in case the binary colours its logs anyway.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `server.listen` of a manifest (its first address when a list), and
/// `admin.listen` if it has one.
fn listen_addrs(manifest: &str) -> (SocketAddr, Option<SocketAddr>) {
    let table: toml::Table = toml::from_str(manifest)
        .unwrap_or_else(|e| panic!("test manifest is not TOML: {e}\n{manifest}"));
    let admin = table.get("admin").map(|admin| {
        admin["listen"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("test manifest needs admin.listen as ip:port"))
    });
    let listen = &table["server"]["listen"];
    let first = listen
        .as_str()
        .or_else(|| listen.as_array().and_then(|a| a.first()?.as_str()));
    let listen = first
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("test manifest needs server.listen as ip:port: {listen}"));
    (listen, admin)
}

/// Replace `path` with `contents` atomically (write a sibling, rename it
/// over), so a watching proxy never reads a half-written file.
fn replace_file(path: &Path, contents: &[u8]) {
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

// === impl Portier ===

/// A running `portier run` process. On drop it fails the test if the process
/// died, or if the host panicked anywhere (a panic in a connection task does
/// not end the process, so only the log tells), then kills it; when the test
/// is failing, its log is printed instead.
pub struct Portier {
    child: Child,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    dir: TempDir,
    /// Set by [`Portier::stop`]: the process was asked to exit, and did.
    exited: Option<ExitStatus>,
}

/// How to start a `portier run`: the manifest, files beside it, and extra
/// arguments and environment variables. Build with [`Portier::launch`].
#[must_use = "a Launch does nothing until `start`"]
pub struct Launch {
    manifest: String,
    files: Vec<(PathBuf, Vec<u8>)>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    wrapper: Option<(String, Vec<String>)>,
}

impl Launch {
    /// Write this file (path relative to the manifest's directory) before starting.
    pub fn file(mut self, relative: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Self {
        self.files
            .push((relative.as_ref().to_owned(), contents.as_ref().to_owned()));
        self
    }

    /// Add an argument after the manifest path (e.g. `--watch`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Set an environment variable for the process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Run portier under `program args...` (e.g. `prlimit --nofile=96:96 --`).
    pub fn wrap(mut self, program: &str, args: &[&str]) -> Self {
        self.wrapper = Some((
            program.to_owned(),
            args.iter().map(|a| (*a).to_owned()).collect(),
        ));
        self
    }

    /// Write the manifest (as `portier.toml`) and the files to a fresh
    /// directory, run `portier run` on it, and wait until `server.listen`
    /// (and `admin.listen`, if any) accept connections.
    pub async fn start(self) -> Portier {
        let (addr, admin) = listen_addrs(&self.manifest);
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest_path = dir.path().join("portier.toml");
        fs::write(&manifest_path, &self.manifest).expect("write manifest");
        for (relative, contents) in &self.files {
            let path = dir.path().join(relative);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("create the file's directory");
            }
            fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let stdout = File::create(dir.path().join("stdout.log")).expect("stdout.log");
        let stderr = File::create(dir.path().join("stderr.log")).expect("stderr.log");
        let child = wrapped_command(self.wrapper.as_ref())
            .arg("run")
            .arg(&manifest_path)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {PORTIER}: {e}"));
        let mut proxy = Portier {
            child,
            addr,
            admin,
            dir,
            exited: None,
        };
        proxy.wait_until_listening().await;
        proxy
    }
}

impl Portier {
    /// Write `manifest` to a fresh directory, run `portier run` on it, and wait
    /// until `server.listen` accepts connections.
    pub async fn start(manifest: &str) -> Self {
        Self::launch(manifest).start().await
    }

    /// [`Portier::start`] with extra arguments after the manifest path.
    pub async fn start_with_args(manifest: &str, args: &[&str]) -> Self {
        args.iter()
            .fold(Self::launch(manifest), |launch, arg| launch.arg(arg))
            .start()
            .await
    }

    /// A [`Launch`] for `manifest`, to add files, arguments or environment first.
    pub fn launch(manifest: &str) -> Launch {
        Launch {
            manifest: manifest.to_owned(),
            files: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            wrapper: None,
        }
    }

    async fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "portier exited ({status}) before listening on {}\n{}",
                    self.addr,
                    self.logs()
                );
            }
            let mut listening = tokio::net::TcpStream::connect(self.addr).await.is_ok();
            if let (true, Some(admin)) = (listening, self.admin) {
                listening = tokio::net::TcpStream::connect(admin).await.is_ok();
            }
            if listening {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "portier not listening on {} after {START_TIMEOUT:?}\n{}",
                    self.addr,
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The address it listens on (`server.listen`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A fresh keep-alive client for this proxy.
    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// The process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding the manifest (`portier.toml`) and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The manifest the process was started on.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("portier.toml")
    }

    /// Replace the manifest on disk (atomically); nothing else happens until
    /// a reload.
    pub fn rewrite_manifest(&self, manifest: &str) {
        replace_file(&self.manifest_path(), manifest.as_bytes());
    }

    /// Replace (or create) a file relative to the manifest's directory, atomically.
    pub fn rewrite_file(&self, relative: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
        replace_file(&self.dir.path().join(relative), contents.as_ref());
    }

    /// Send the process SIGHUP (asks it to reload).
    pub fn sighup(&self) {
        self.signal("-HUP");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill {signal} {} failed: {status}",
            self.pid()
        );
    }

    /// Fail the test unless the process is still running and the host has
    /// not panicked. Dropping a `Portier` checks the same.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("portier exited ({status})\n{}", self.logs());
        }
        self.assert_no_host_panic();
    }

    /// Fail the test if the host's log shows a Rust panic (of any thread).
    fn assert_no_host_panic(&self) {
        let logs = self.logs();
        if let Some(line) = logs.lines().find(|l| is_panic_line(l)) {
            panic!("the portier host panicked: {line}\n{logs}");
        }
    }

    /// Ask the process to shut down (SIGTERM), wait for it to exit (bounded)
    /// and fail the test unless it exits successfully. Afterwards the log is
    /// complete: every line the process would ever write is in it.
    pub async fn stop(&mut self) -> ExitStatus {
        self.assert_alive();
        self.signal("-TERM");
        // Polled, not blocking: backends in this test's runtime must go on
        // serving while the proxy drains.
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "portier still running {STOP_TIMEOUT:?} after SIGTERM (killed)\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        };
        self.exited = Some(status);
        assert!(
            status.success(),
            "portier exited with {status} after SIGTERM\n{}",
            self.logs()
        );
        self.assert_no_host_panic();
        status
    }

    /// A keep-alive client for the admin listener (`admin.listen`).
    pub fn admin(&self) -> Client {
        Client::new(self.admin.expect("the manifest has no [admin] listen"))
    }

    /// `GET /status` on the admin listener, parsed.
    pub async fn status(&self) -> serde_json::Value {
        let reply = self.admin().get("/status").await;
        assert_eq!(
            reply.status,
            http::StatusCode::OK,
            "GET /status: {}",
            reply.text()
        );
        serde_json::from_slice(&reply.body)
            .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {}", reply.text()))
    }

    /// The pipeline generation `/status` reports.
    pub async fn generation(&self) -> u64 {
        let status = self.status().await;
        status["generation"]
            .as_u64()
            .unwrap_or_else(|| panic!("/status has no numeric generation: {status}"))
    }

    /// `POST /reload` on the admin listener.
    pub async fn reload(&self) -> Reply {
        let admin = self.admin();
        let request = admin
            .request(http::Method::POST, "/reload")
            .body(super::body::empty())
            .expect("request");
        admin.send(request).await
    }

    /// Every access-log line written so far, parsed (either log format).
    pub fn access_lines(&self) -> Vec<AccessLine> {
        AccessLine::all(&self.logs())
    }

    /// How many log lines so far match `matches`.
    pub fn count_log_lines(&self, matches: impl Fn(&str) -> bool) -> usize {
        self.logs().lines().filter(|line| matches(line)).count()
    }

    /// Everything it wrote so far: stdout, then stderr.
    pub fn logs(&self) -> String {
        let stdout = read_log(&self.dir.path().join("stdout.log"));
        let stderr = read_log(&self.dir.path().join("stderr.log"));
        format!("--- portier stdout ---\n{stdout}--- portier stderr ---\n{stderr}")
    }

    /// Wait (bounded) for a log line matching `matches` and return it; fails
    /// the test, showing the log, when none appears.
    pub async fn wait_for_log_line(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LOG_TIMEOUT;
        loop {
            let logs = self.logs();
            if let Some(line) = logs.lines().find(|line| matches(line)) {
                return line.to_owned();
            }
            if Instant::now() >= deadline {
                panic!("no log line {what} within {LOG_TIMEOUT:?}\n{logs}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Portier {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("portier on {} ({}):\n{}", self.addr, PORTIER, self.logs());
            return;
        }
        if self.exited.is_none() {
            // The end of every test that started a proxy: it must still be up.
            let alive = self.child.try_wait().expect("try_wait").is_none();
            let _ = self.child.kill();
            let _ = self.child.wait();
            assert!(alive, "portier exited during the test\n{}", self.logs());
        }
        self.assert_no_host_panic();
    }
}

/// Whether a log line is Rust's panic message (`thread 'NAME' panicked at`).
/// A plugin's panic is a trap the host logs differently, so this is the host.
fn is_panic_line(line: &str) -> bool {
    line.starts_with("thread '") && line.contains("' panicked at ")
}

// === portier check ===

/// The outcome of `portier check`.
#[derive(Debug)]
pub struct Checked {
    /// The manifest path given on the command line.
    pub path: PathBuf,
    /// Its exit status.
    pub status: ExitStatus,
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
    /// The manifest text, for failure messages.
    manifest: String,
}

/// Write `manifest` to a fresh directory and run `portier check` on it.
pub fn check(manifest: &str) -> Checked {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("portier.toml");
    fs::write(&path, manifest).expect("write manifest");
    check_file(&path)
}

/// Run `portier check PATH` (bounded by a timeout).
pub fn check_file(path: &Path) -> Checked {
    run_to_exit("check", path)
}

/// Write `manifest` to a fresh directory and `portier run` it, expecting it
/// to exit (it cannot start); the outcome, bounded by a timeout.
pub fn run_expecting_exit(manifest: &str) -> Checked {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("portier.toml");
    fs::write(&path, manifest).expect("write manifest");
    run_to_exit("run", &path)
}

/// Run `portier COMMAND PATH` with these environment variables to its exit
/// (bounded by a timeout).
pub fn run_command(command: &str, path: &Path, env: &[(&str, &str)]) -> Checked {
    run_to_exit_with(command, path, env)
}

/// Run `portier COMMAND PATH` to its exit (bounded by a timeout).
fn run_to_exit(command: &str, path: &Path) -> Checked {
    run_to_exit_with(command, path, &[])
}

fn run_to_exit_with(command: &str, path: &Path, env: &[(&str, &str)]) -> Checked {
    let out = tempfile::tempdir().expect("temp dir");
    let stdout_path = out.path().join("stdout.log");
    let stderr_path = out.path().join("stderr.log");
    let mut child = portier_command()
        .arg(command)
        .arg(path)
        .envs(env.iter().copied())
        .stdout(File::create(&stdout_path).expect("stdout.log"))
        .stderr(File::create(&stderr_path).expect("stderr.log"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {PORTIER}: {e}"));
    let status = wait_or_kill(&mut child, CHECK_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "portier {command} {} still running after {CHECK_TIMEOUT:?}",
            path.display()
        )
    });
    Checked {
        path: path.to_owned(),
        status,
        stdout: read_log(&stdout_path),
        stderr: read_log(&stderr_path),
        manifest: fs::read_to_string(path).unwrap_or_default(),
    }
}

impl Checked {
    /// Assert the manifest was accepted.
    pub fn assert_ok(&self) {
        assert!(
            self.status.success(),
            "portier check rejected {}:\n{self}",
            self.path.display()
        );
    }

    /// Assert the manifest was rejected with `PATH: KEY: reason` for exactly
    /// this key; returns stderr for further checks on the reason.
    pub fn assert_rejected_at(&self, key: &str) -> &str {
        self.assert_rejected_with(&format!("{}: {key}: ", self.path.display()))
    }

    fn assert_rejected_with(&self, expected: &str) -> &str {
        assert!(
            !self.status.success(),
            "portier check accepted a bad manifest:\n{self}"
        );
        assert!(
            self.stderr.contains(expected),
            "stderr should contain {expected:?}:\n{self}"
        );
        &self.stderr
    }
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit: {}\n--- stderr ---\n{}--- stdout ---\n{}--- manifest ---\n{}",
            self.status, self.stderr, self.stdout, self.manifest
        )
    }
}
