//! Micro-benchmark of `gatehouse::policy` (no criterion): compiles 10,000
//! partners × 20 routes, then times `check_target` + `authorize` on a
//! partner with 200 routes. Run with
//! `cargo run --release --example bench_policy`.

use std::hint::black_box;
use std::time::Instant;

use gatehouse::config::{Risk, RouteSpec};
use gatehouse::policy::{RouteTable, check_target};

fn route(methods: &[&str], path: String, upstream: String, strip_prefix: bool) -> RouteSpec {
    RouteSpec {
        methods: methods.iter().map(|m| m.to_string()).collect(),
        path,
        upstream,
        strip_prefix,
        risk: Risk::Normal,
        limits: None,
        max_body_bytes: None,
        value: None,
        require_signature: None,
    }
}

fn partner_routes(partner: usize, n: usize) -> Vec<RouteSpec> {
    (0..n)
        .map(|i| {
            route(
                &["GET", "POST"],
                format!("/api/v{}/p{partner}/resource{i}", i % 4),
                format!("up{}", i % 8),
                i % 2 == 0,
            )
        })
        .collect()
}

fn main() {
    const PARTNERS: usize = 10_000;
    const ROUTES: usize = 20;
    const BIG: usize = 200;
    const ITERS: usize = 2_000_000;

    let specs: Vec<Vec<RouteSpec>> = (0..PARTNERS).map(|p| partner_routes(p, ROUTES)).collect();
    let start = Instant::now();
    let tables: Vec<RouteTable> = specs.iter().map(|r| RouteTable::compile(r)).collect();
    let build = start.elapsed();
    println!(
        "compile: {PARTNERS} partners x {ROUTES} routes in {:.1} ms ({:.2} us/partner)",
        build.as_secs_f64() * 1e3,
        build.as_secs_f64() * 1e6 / PARTNERS as f64
    );
    black_box(&tables);

    let big = RouteTable::compile(&partner_routes(7, BIG));
    let hits: Vec<String> = (0..BIG)
        .map(|i| format!("/api/v{}/p7/resource{i}/items/{i}?page=2", i % 4))
        .collect();
    let misses: Vec<String> = (0..BIG)
        .map(|i| format!("/api/v{}/p7/resource{i}-x/items?page=2", i % 4))
        .collect();

    for (name, targets, expect_ok) in [("hit", &hits, true), ("miss", &misses, false)] {
        // Warm up, and check the answers once.
        for t in targets.iter() {
            let Ok(target) = check_target(t) else {
                panic!("bad target {t}");
            };
            assert_eq!(big.authorize("GET", target.path).is_ok(), expect_ok, "{t}");
        }
        let start = Instant::now();
        let mut granted = 0usize;
        for i in 0..ITERS {
            let raw = black_box(targets[i % BIG].as_str());
            if let Ok(target) = check_target(raw)
                && let Ok(p) = big.authorize(black_box("GET"), target.path)
            {
                granted += p.upstream_path.len();
            }
        }
        let per = start.elapsed().as_nanos() as f64 / ITERS as f64;
        black_box(granted);
        println!(
            "check_target + authorize ({name}, partner with {BIG} routes): {per:.0} ns/request"
        );

        let start = Instant::now();
        for i in 0..ITERS {
            let raw = black_box(targets[i % BIG].as_str());
            black_box(check_target(raw).is_ok());
        }
        let per_check = start.elapsed().as_nanos() as f64 / ITERS as f64;
        println!("  of which check_target: {per_check:.0} ns");
    }
}
