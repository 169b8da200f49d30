//! The layering the code promises: the policy core is pure (no runtime, no
//! network, no files), so `check`, `explain`, the benches and the listeners
//! all share it and it can be tested without any of them.

use std::path::Path;

/// Words that would bring I/O or a runtime into the core.
const FORBIDDEN: [&str; 9] = [
    "tokio",
    "hyper",
    "socket2",
    "std::fs",
    "std::net::TcpStream",
    "std::net::UdpSocket",
    "TcpListener",
    "File::",
    "SystemTime::now",
];

#[test]
fn the_policy_core_uses_no_runtime_sockets_files_or_clock() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/policy");
    let mut checked = 0;
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for word in FORBIDDEN {
                    assert!(
                        !code.contains(word),
                        "{}:{}: the policy core must not use `{word}`: {line}",
                        path.display(),
                        n + 1
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} files under src/policy");
}
