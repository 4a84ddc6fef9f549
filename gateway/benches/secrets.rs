//! Injection cost per header: rendering `inject` templates from a secret snapshot, as the
//! proxy does once per injected header per request. Everything here is in memory: the
//! request path never calls a provider (see tests/tests/secrets.rs for the OpenBao proof).
//!
//! Run: `cargo bench -p warden --bench secrets`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue};
use warden::secrets::{
    ProviderConfig, SecretBytes, SecretRef, SecretSnapshot, SecretStore, Template,
};

const KEY: &str = "sk-live-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ";

fn snapshot(n: usize) -> SecretSnapshot {
    SecretSnapshot::from_values((0..n).map(|i| {
        (
            SecretRef::new("vault", format!("ml/svc{i}#api_key")),
            SecretBytes::new(format!("{KEY}-{i}").into_bytes()),
        )
    }))
}

fn bench_render(c: &mut Criterion) {
    // A snapshot the size of a real deployment (many references), so lookups are realistic.
    let snap = snapshot(64);
    let mut g = c.benchmark_group("secrets/render_header");
    let cases = [
        ("literal", "application/json"),
        ("single_ref", "${vault:ml/svc7#api_key}"),
        ("bearer_ref", "Bearer ${vault:ml/svc7#api_key}"),
        (
            "two_refs",
            "key=${vault:ml/svc1#api_key};sig=${vault:ml/svc2#api_key}",
        ),
    ];
    for (name, text) in cases {
        let t = Template::parse(text).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| black_box(t.render_header(black_box(&snap)).unwrap()))
        });
    }
    g.finish();
}

fn bench_inject(c: &mut Criterion) {
    let snap = snapshot(64);
    let mut g = c.benchmark_group("secrets/inject");
    for n in [1usize, 4] {
        let inject: Vec<(HeaderName, Template)> = (0..n)
            .map(|i| {
                let name = if i == 0 {
                    "authorization".to_string()
                } else {
                    format!("x-key-{i}")
                };
                (
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    Template::parse(&format!("Bearer ${{vault:ml/svc{i}#api_key}}")).unwrap(),
                )
            })
            .collect();
        // A typical request head, including a client-sent header the injection replaces.
        let mut base = HeaderMap::new();
        base.insert("host", HeaderValue::from_static("ml-gateway.internal"));
        base.insert("user-agent", HeaderValue::from_static("sophia-api/1.4"));
        base.insert("content-type", HeaderValue::from_static("application/json"));
        base.insert(
            "authorization",
            HeaderValue::from_static("Bearer client-spoof"),
        );
        g.bench_function(format!("{n}_headers"), |b| {
            b.iter_batched_ref(
                || base.clone(),
                |h| {
                    for (name, t) in &inject {
                        h.remove(name);
                        h.insert(name.clone(), t.render_header(&snap).unwrap());
                    }
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_snapshot_load(c: &mut Criterion) {
    // A real store (dir provider, no background tasks): the per-request cost of taking the
    // current snapshot.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api_key"), KEY).unwrap();
    let providers: BTreeMap<String, ProviderConfig> = toml::from_str::<toml::Table>(&format!(
        "[file]\ntype = \"dir\"\npath = {:?}\n",
        dir.path().to_str().unwrap()
    ))
    .unwrap()
    .into_iter()
    .map(|(k, v)| (k, v.try_into().unwrap()))
    .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt
        .block_on(SecretStore::start(
            &providers,
            Path::new("/"),
            vec![SecretRef::new("file", "api_key")],
            false,
        ))
        .unwrap();
    let t = Template::parse("Bearer ${file:api_key}").unwrap();
    c.bench_function("secrets/snapshot_load", |b| {
        b.iter(|| black_box(store.snapshot()))
    });
    c.bench_function("secrets/snapshot_load_and_render", |b| {
        b.iter(|| {
            let s = store.snapshot();
            black_box(t.render_header(&s).unwrap())
        })
    });
}

criterion_group!(benches, bench_render, bench_inject, bench_snapshot_load);
criterion_main!(benches);
