//! Micro-benchmarks of the decision core: `decide` for hits and misses at
//! 100, 10k and 100k rules, host normalisation, and compiling a 10k-rule policy.
//!
//! Run: `cargo bench --bench policy`. Compare ratios within one run.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis::policy::{Host, Policy, Verdict};

/// A policy of `n` rules: 80% exact names, 15% `*.suffix`, 5% globs
/// (capped at 500: real policies hold few globs, and globset cost grows with them).
fn policy_yaml(n: usize) -> String {
    let mut yaml = String::from("version: 1\nallow:\n");
    let globs = (n / 20).min(500);
    let suffixes = n * 15 / 100;
    for i in 0..n {
        let line = if i < globs {
            format!("  - \"api-*.glob{i}.example.com\"\n")
        } else if i < globs + suffixes {
            format!("  - \"*.svc{i}.example.net\"\n")
        } else {
            format!("  - host{i}.tenant{}.example.org\n", i % 97)
        };
        yaml.push_str(&line);
    }
    yaml.push_str("deny:\n  - blocked.example.org\n");
    yaml
}

fn compiled(n: usize) -> Policy {
    Policy::from_yaml(&policy_yaml(n))
        .expect("bench policy compiles")
        .policy
}

fn bench_decide(c: &mut Criterion) {
    let client: IpAddr = "127.0.0.1".parse().unwrap();
    let mut group = c.benchmark_group("decide");
    for n in [100usize, 10_000, 100_000] {
        let policy = compiled(n);
        let globs = (n / 20).min(500);
        let suffixes = n * 15 / 100;
        let cases = [
            (
                "exact_hit",
                format!("host{}.tenant{}.example.org", n - 1, (n - 1) % 97),
                Verdict::Allow,
            ),
            (
                "suffix_hit",
                format!("a.b.svc{}.example.net", globs + suffixes - 1),
                Verdict::Allow,
            ),
            (
                "glob_hit",
                format!("api-eu.glob{}.example.com", globs - 1),
                Verdict::Allow,
            ),
            ("miss", "nothing.here.example.io".to_string(), Verdict::Deny),
            ("deny_hit", "blocked.example.org".to_string(), Verdict::Deny),
        ];
        for (name, host, want) in cases {
            let host = Host::parse(&host).unwrap();
            assert_eq!(
                policy.decide(client, &host, 443).verdict,
                want,
                "{name} at {n}"
            );
            group.bench_with_input(BenchmarkId::new(name, n), &host, |b, host| {
                b.iter(|| policy.decide(black_box(client), black_box(host), black_box(443)))
            });
        }
        let raw = format!("HOST{}.Tenant{}.example.org.", n - 1, (n - 1) % 97);
        group.bench_with_input(BenchmarkId::new("parse_and_decide", n), &raw, |b, raw| {
            b.iter(|| policy.decide_str(black_box(client), black_box(raw), 443))
        });
    }
    group.finish();
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("host_parse");
    for (name, host) in [
        ("ascii", "API.Stripe.com."),
        ("idn", "bücher.example.de"),
        ("ipv4", "203.0.113.7"),
    ] {
        group.bench_function(name, |b| b.iter(|| Host::parse(black_box(host))));
    }
    group.finish();
}

fn bench_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for n in [10_000usize, 100_000] {
        let yaml = policy_yaml(n);
        group.bench_with_input(BenchmarkId::new("rules", n), &yaml, |b, yaml| {
            b.iter(|| Policy::from_yaml(black_box(yaml)).unwrap())
        });
    }
    let compiled = Policy::from_yaml(&policy_yaml(10_000)).unwrap();
    group.bench_function("lint_10k_rules", |b| {
        b.iter(|| compiled.warnings(portcullis::policy_file::today()))
    });
    group.finish();
}

criterion_group!(benches, bench_decide, bench_parse, bench_compile);
criterion_main!(benches);
