//! The release binary, built the way `deploy/github-actions/release.yml`
//! builds it (`cargo zigbuild --profile dist --locked --target
//! x86_64-unknown-linux-musl`: static, stripped), runs on its own: it has no
//! dynamic loader or symbol table, prints its version, and serves the example
//! policy until SIGTERM.
//!
//! The build takes minutes on a small machine, so the test is ignored by a
//! plain `cargo test`; `.ci/run` runs it once with `-- --ignored`, with
//! cargo-zigbuild and Zig from its tool venv (`target/ci-tools`). It builds
//! into its own target directory, `target/release-static`, and later runs
//! only rebuild what changed.

#[path = "served/mod.rs"]
mod served;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use served::Served;

/// The release workflow's Linux x86_64 target (its arm64 twin differs only
/// in the triple).
const TARGET: &str = "x86_64-unknown-linux-musl";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `PATH` with the CI tool venv first, where `.ci/run` installs
/// cargo-zigbuild and Zig.
fn tool_path() -> std::ffi::OsString {
    let venv = root().join("target/ci-tools/bin");
    let mut dirs = vec![venv];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).expect("PATH")
}

/// Builds the release binary with the workflow's command; returns its path.
fn build_release_binary() -> PathBuf {
    let target_dir = root().join("target/release-static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let out = Command::new(cargo)
        .current_dir(root())
        .env("PATH", tool_path())
        .args([
            "zigbuild",
            "--profile",
            "dist",
            "--locked",
            "--target",
            TARGET,
            "--bin",
            "portcullis",
            "--target-dir",
        ])
        .arg(&target_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .expect("spawn cargo");
    assert!(
        out.status.success(),
        "cargo zigbuild failed (is cargo-zigbuild installed? `.ci/run` puts it in target/ci-tools; \
         the target needs `rustup target add {TARGET}`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "release build ({TARGET}, profile dist): {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let bin = target_dir.join(TARGET).join("dist/portcullis");
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Static: no program interpreter, no shared libraries. Stripped: no symbol
/// table.
fn assert_static_and_stripped(bin: &Path) {
    let bin = bin.to_str().unwrap();
    let ldd = run("ldd", &[bin]);
    assert!(
        text(&ldd).contains("not a dynamic executable") || text(&ldd).contains("statically linked"),
        "ldd {bin}: {}",
        text(&ldd)
    );
    let headers = run("readelf", &["--program-headers", "--wide", bin]);
    assert!(headers.status.success(), "{}", text(&headers));
    let headers = text(&headers);
    assert!(
        !headers.contains("INTERP"),
        "a program interpreter:\n{headers}"
    );
    assert!(
        !headers.contains("DYNAMIC"),
        "a dynamic section:\n{headers}"
    );
    let sections = run("readelf", &["--section-headers", "--wide", bin]);
    assert!(sections.status.success(), "{}", text(&sections));
    let sections = text(&sections);
    assert!(!sections.contains(".symtab"), "not stripped:\n{sections}");
    assert!(
        !sections.contains(".debug_info"),
        "debug info left:\n{sections}"
    );
}

/// `portcullis health` of the release binary itself, until /readyz answers
/// 200 or the deadline passes.
fn wait_ready(bin: &Path, admin: SocketAddr) {
    let admin = admin.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(bin)
            .args(["health", "--admin", &admin, "--timeout", "1s"])
            .output()
            .expect("spawn health");
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {}", text(&out));
        thread::sleep(Duration::from_millis(100));
    }
}

/// The status line the proxy answers a CONNECT with.
fn connect_status(proxy: SocketAddr, authority: &str) -> String {
    let mut s = TcpStream::connect(proxy).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && head.len() < 1024 {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).trim_end().to_owned()
}

fn sigterm(child: &Child) {
    let out = run("kill", &["-TERM", &child.id().to_string()]);
    assert!(out.status.success(), "kill -TERM: {}", text(&out));
}

#[test]
#[ignore = "builds the static release binary (minutes); .ci/run runs it with --ignored"]
fn release_binary_is_static_and_serves_the_example_policy() {
    let bin = build_release_binary();
    assert_static_and_stripped(&bin);

    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(version.status.success(), "{}", text(&version));
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(
        version.starts_with("portcullis ") && version.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {version:?}"
    );

    let policy = root().join("config/portcullis.yaml");
    let mut served = Served::start(&bin, &policy, &["explicit", "admin"]);
    wait_ready(&bin, served.addr("admin"));
    // The example policy allows no pastebin: the proxy answers with the
    // refusal, decided by the policy it loaded (no DNS needed).
    let status = connect_status(served.addr("explicit"), "pastebin.com:443");
    assert!(
        status.starts_with("HTTP/1.1 403"),
        "CONNECT pastebin.com:443 answered {status:?}"
    );

    // SIGTERM drains and exits 0.
    sigterm(&served.child);
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 40 s after SIGTERM"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit after SIGTERM: {status:?}");
}
