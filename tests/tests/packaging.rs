//! Packaging: the Dockerfile, the compose reference stack, the Kubernetes manifests and the
//! Grafana dashboard, checked without a Docker engine or a cluster:
//!
//! - the Dockerfile's builder runs exactly the build commands CI runs, with flags the real
//!   CLI accepts, and its runtime stage is small, non-root and secret-free;
//! - compose and Kubernetes files parse, isolate what they should, and take every secret
//!   their Warden config references from a secret mount (cross-checked against the config);
//! - the configs they ship pass the real `warden check` against a real OpenBao, real age
//!   files and real certificates once their cluster paths point at local stand-ins;
//! - every metric the dashboard queries exists in a running gateway's `/metrics`, and every
//!   family the gateway exports has a panel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_norway::Value as Yaml;
use warden_tests::certs::Ca;
use warden_tests::openbao::{OpenBao, toml_path};
use warden_tests::upstream::Echo;
use warden_tests::{Gateway, client, repo_root, run_warden};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every YAML document of a file, with `<<` merge keys applied.
fn yaml_docs(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            let mut v = Yaml::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
            v.apply_merge().unwrap();
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn kube_docs() -> Vec<(PathBuf, Yaml)> {
    let dir = repo_root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
        .into_iter()
        .flat_map(|f| yaml_docs(&f).into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

fn kind<'a>(docs: &'a [(PathBuf, Yaml)], kind: &str) -> Vec<&'a Yaml> {
    docs.iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d)
        .collect()
}

fn one<'a>(docs: &'a [(PathBuf, Yaml)], k: &str) -> &'a Yaml {
    let v = kind(docs, k);
    assert_eq!(v.len(), 1, "expected exactly one {k}");
    v[0]
}

fn str_list(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Names under a compose `networks:`/`secrets:` entry (list or map form).
fn names(v: &Yaml) -> BTreeSet<String> {
    match v {
        Yaml::Sequence(s) => s
            .iter()
            .filter_map(|x| {
                x.as_str()
                    .map(String::from)
                    .or_else(|| x["source"].as_str().map(String::from))
            })
            .collect(),
        Yaml::Mapping(m) => m
            .keys()
            .filter_map(|k| k.as_str().map(String::from))
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn secretish(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"]
        .iter()
        .any(|w| n.contains(w))
}

/// Every `/run/secrets/NAME` path and `${file:NAME}` reference in a Warden config: the
/// secret mounts the deployment has to provide.
fn secret_files_referenced(config: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (marker, terminators) in [
        ("/run/secrets/", &['"', '\'', ' ', '\n', '}'][..]),
        ("${file:", &['}'][..]),
    ] {
        let mut rest = config;
        while let Some(i) = rest.find(marker) {
            rest = &rest[i + marker.len()..];
            let end = rest.find(terminators).unwrap_or(rest.len());
            out.insert(rest[..end].to_string());
        }
    }
    out
}

/// Dockerfile instructions (continuations joined, comments dropped), grouped by stage.
struct Stage {
    from: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

fn dockerfile_stages() -> Vec<Stage> {
    let text = read("Dockerfile");
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(s) = t.strip_suffix('\\') {
            cur.push_str(s);
            cur.push(' ');
        } else {
            cur.push_str(t);
            logical.push(std::mem::take(&mut cur));
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for l in logical.into_iter().filter(|l| !l.trim().is_empty()) {
        let (ins, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let (ins, args) = (ins.to_ascii_uppercase(), args.trim().to_string());
        if ins == "FROM" {
            let parts: Vec<&str> = args.split_whitespace().collect();
            let name = parts
                .iter()
                .position(|p| p.eq_ignore_ascii_case("as"))
                .map(|i| parts[i + 1].to_string());
            stages.push(Stage {
                from: parts[0].to_string(),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(s) = stages.last_mut() {
            s.instructions.push((ins, args));
        }
    }
    stages
}

/// The words of the Dockerfile's `warden plugin precompile` step.
fn precompile_step() -> Vec<String> {
    dockerfile_stages()
        .iter()
        .flat_map(|st| st.instructions.iter())
        .filter(|(i, _)| i == "RUN")
        .flat_map(|(_, a)| {
            run_command(a)
                .split("&&")
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .find(|s| s.starts_with("warden plugin precompile"))
        .expect("a `warden plugin precompile` step")
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A RUN's shell command without BuildKit `--mount=…`/`--network=…` options.
fn run_command(args: &str) -> String {
    args.split_whitespace()
        .skip_while(|w| w.starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `--flags` of a command line.
fn flags(cmd: &str) -> Vec<String> {
    cmd.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.split('=').next().unwrap().to_string())
        .collect()
}

fn help_of(args: &[&str]) -> String {
    let mut a = args.to_vec();
    a.push("--help");
    let (code, out, err) = run_warden(&a);
    assert_eq!(
        code,
        0,
        "`warden {}` is not a command of the real CLI:\n{err}",
        args.join(" ")
    );
    out
}

// ---------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------

#[test]
fn dockerfile_builder_runs_the_ci_build_commands_and_nothing_else() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "multi-stage build expected");
    let builder = stages
        .iter()
        .find(|s| s.name.as_deref() == Some("builder"))
        .expect("a stage named builder");
    assert!(
        builder.from.contains("rust:"),
        "builder should be a Rust image, got {}",
        builder.from
    );

    // What CI runs (scripts/test.sh) and the README documents.
    let test_sh = read("scripts/test.sh");
    assert!(
        test_sh.contains("scripts/build-plugins.sh"),
        "CI builds plugins with scripts/build-plugins.sh"
    );
    // CI runs exactly the README's test command: the second of its two set-up commands.
    let readme = read("README.md");
    let setup: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .filter_map(|l| l.split('#').next().map(str::trim))
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        setup,
        ["scripts/demo.sh", "scripts/test.sh"],
        "README set-up commands"
    );
    let ci: Vec<String> = read(".ci/run")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    assert_eq!(
        ci.last().map(String::as_str),
        Some(setup[1]),
        "CI runs the README's test command"
    );
    assert!(
        test_sh.contains("cargo test --release"),
        "the test command tests the release build the image ships"
    );

    let runs: Vec<String> = builder
        .instructions
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, a)| run_command(a))
        .collect();
    let steps: Vec<&str> = runs
        .iter()
        .flat_map(|r| r.split("&&"))
        .map(str::trim)
        .collect();
    let mut saw = BTreeMap::from([
        ("plugins", false),
        ("gateway", false),
        ("precompile", false),
    ]);
    for step in &steps {
        let words: Vec<&str> = step.split_whitespace().collect();
        match words.as_slice() {
            ["scripts/build-plugins.sh", rest @ ..] => {
                assert!(
                    rest.iter().all(|a| *a == "--no-test"),
                    "unexpected build-plugins.sh options: {step}"
                );
                *saw.get_mut("plugins").unwrap() = true;
            }
            ["cargo", ..] => {
                assert_eq!(
                    *step, "cargo build --release -p warden",
                    "the only cargo step is the CI build, verbatim"
                );
                *saw.get_mut("gateway").unwrap() = true;
            }
            ["warden", "plugin", "precompile", ..] => {
                let help = help_of(&["plugin", "precompile"]);
                for f in flags(step) {
                    assert!(
                        help.contains(&f),
                        "`warden plugin precompile` has no {f} option:\n{help}"
                    );
                }
                *saw.get_mut("precompile").unwrap() = true;
            }
            // Tooling and staging of the runtime layout only: nothing that changes the code.
            ["apk", "add", ..]
            | ["rustup", ..]
            | ["mkdir", ..]
            | ["strip", ..]
            | ["cp", ..]
            | ["chmod", ..] => {}
            _ => panic!("builder step is neither a CI build command nor staging: {step}"),
        }
    }
    assert!(
        saw.values().all(|v| *v),
        "builder must build plugins, gateway and precompile: {saw:?}"
    );
    for (ins, args) in &builder.instructions {
        if ins == "ENV" || ins == "ARG" {
            for bad in ["RUSTFLAGS", "CARGO_PROFILE", "CARGO_BUILD", "CARGO_ENCODED"] {
                assert!(
                    !args.contains(bad),
                    "builder changes the build with {ins} {args}: CI would test something else"
                );
            }
        }
    }
    // The precompile step writes into the [policy] cache_dir of the configs the image and
    // the cluster run, and the runtime stage copies exactly that directory.
    let pre = precompile_step();
    let cache_dir = pre
        .iter()
        .skip_while(|w| *w != "--cache-dir")
        .nth(1)
        .expect("precompile --cache-dir")
        .as_str();
    let kube = configmap_files(&kube_docs());
    for (name, text) in [
        (
            "deploy/compose/warden.toml",
            read("deploy/compose/warden.toml"),
        ),
        ("ConfigMap warden.toml", kube["warden.toml"].clone()),
    ] {
        let cfg: toml::Table = text.parse().unwrap();
        assert_eq!(
            cfg["policy"]["cache_dir"].as_str(),
            Some(cache_dir),
            "{name}: [policy] cache_dir must be where the image precompiled the plugins"
        );
    }
    let runtime = stages.last().unwrap();
    let copies: Vec<&String> = runtime
        .instructions
        .iter()
        .filter(|(i, _)| i == "COPY")
        .map(|(_, a)| a)
        .collect();
    assert!(
        copies.iter().any(|c| c.contains(&format!(" {cache_dir}"))),
        "runtime stage copies the cache {cache_dir}"
    );
}

#[test]
fn dockerfile_runtime_is_small_non_root_and_secret_free() {
    let stages = dockerfile_stages();
    let runtime = stages.last().unwrap();
    let small = [
        "gcr.io/distroless/static",
        "gcr.io/distroless/cc",
        "alpine:",
        "docker.io/library/alpine:",
        "scratch",
    ];
    assert!(
        small.iter().any(|b| runtime.from.starts_with(b)),
        "runtime base {} is not a small base",
        runtime.from
    );
    fn get<'a>(stage: &'a Stage, k: &'a str) -> impl Iterator<Item = &'a str> {
        stage
            .instructions
            .iter()
            .filter(move |(i, _)| i == k)
            .map(|(_, a)| a.as_str())
    }
    let get = |k: &'static str| get(runtime, k);

    let user = get("USER").last().expect("runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        !["root", "0", ""].contains(&uid),
        "runtime runs as root: USER {user}"
    );

    let hc = get("HEALTHCHECK").last().expect("HEALTHCHECK");
    let cmd = &hc[hc.find("CMD").expect("HEALTHCHECK CMD") + 3..].trim();
    let argv: Vec<String> =
        serde_json::from_str(cmd).expect("HEALTHCHECK CMD in exec form (no shell in the image)");
    assert_eq!(
        argv[1], "health",
        "health check probes through the binary: {argv:?}"
    );
    let help = help_of(&["health"]);
    for f in argv.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(f.as_str()),
            "`warden health` has no {f} option"
        );
    }
    let url = argv
        .iter()
        .skip_while(|a| *a != "--url")
        .nth(1)
        .expect("--url");
    assert!(
        url.ends_with("/readyz") || url.ends_with("/healthz"),
        "health check URL {url}"
    );
    let entry = get("ENTRYPOINT").last().expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry).expect("ENTRYPOINT in exec form");
    assert_eq!(
        entry[0], argv[0],
        "health check runs the same binary as the entrypoint"
    );

    for (ins, args) in &runtime.instructions {
        match ins.as_str() {
            "ENV" | "ARG" | "LABEL" => assert!(
                !secretish(args.split(['=', ' ']).next().unwrap_or("")),
                "{ins} {args}: secrets come from /run/secrets, never the image or its environment"
            ),
            "RUN" | "ADD" => panic!("runtime stage should only copy build outputs: {ins} {args}"),
            "COPY" => assert!(
                args.contains("--from=builder"),
                "runtime copies only from the builder: COPY {args}"
            ),
            _ => {}
        }
    }
    // The build context never carries local build outputs or secrets into a layer.
    let ignore = read(".dockerignore");
    for p in ["**/target", "deploy/compose/secrets", "policies/demo/certs"] {
        assert!(
            ignore.lines().any(|l| l.trim() == p),
            ".dockerignore should exclude {p}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Compose
// ---------------------------------------------------------------------------------------

#[test]
fn compose_isolates_services_and_passes_secrets_as_files() {
    let docs = yaml_docs(&repo_root().join("docker-compose.yml"));
    assert_eq!(docs.len(), 1);
    let c = &docs[0];
    let services = c["services"].as_mapping().expect("services");
    let nets = &c["networks"];
    let gw = &c["services"]["mcp-gateway"];
    assert!(!gw.is_null(), "Warden runs as mcp-gateway");
    for s in ["sophia-api", "ml-gateway", "openbao"] {
        assert!(services.contains_key(s), "service {s} missing");
    }

    // Network isolation: the gateway is on frontend and backend; nobody else spans networks.
    let gw_nets = names(&gw["networks"]);
    assert!(
        gw_nets.contains("frontend") && gw_nets.contains("backend"),
        "gateway networks: {gw_nets:?}"
    );
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        let n = names(&svc["networks"]);
        assert!(
            !n.is_empty(),
            "{name} must name its networks (not the default one)"
        );
        if name != "mcp-gateway" {
            assert_eq!(
                n.len(),
                1,
                "only the gateway may span networks; {name} is on {n:?}"
            );
            assert!(
                !n.contains("frontend"),
                "{name} must not be reachable from the frontend"
            );
        }
        for n in &n {
            assert!(
                !nets[n.as_str()].is_null(),
                "{name} uses undeclared network {n}"
            );
        }
    }
    assert_eq!(
        nets["backend"]["internal"].as_bool(),
        Some(true),
        "backend network is internal"
    );
    for (n, def) in nets.as_mapping().unwrap() {
        if n.as_str() != Some("frontend") {
            assert_eq!(
                def["internal"].as_bool(),
                Some(true),
                "network {n:?} should be internal"
            );
        }
    }
    assert!(
        services["openbao"]["ports"].is_null(),
        "OpenBao is not published"
    );

    // Hardening and health checks on every service.
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        let test = str_list(&svc["healthcheck"]["test"]);
        assert!(
            test.len() >= 2 && test[0] == "CMD",
            "{name}: healthcheck in exec form: {test:?}"
        );
        assert_eq!(svc["read_only"].as_bool(), Some(true), "{name}: read_only");
        assert!(
            str_list(&svc["cap_drop"]).contains(&"ALL".to_string()),
            "{name}: cap_drop ALL"
        );
        assert!(
            str_list(&svc["security_opt"])
                .iter()
                .any(|o| o.starts_with("no-new-privileges")),
            "{name}"
        );
        assert!(svc["env_file"].is_null(), "{name}: no env_file");
        let env_names: Vec<String> = match &svc["environment"] {
            Yaml::Mapping(m) => m
                .keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect(),
            Yaml::Sequence(s) => s
                .iter()
                .filter_map(|e| e.as_str())
                .map(|e| e.split('=').next().unwrap().into())
                .collect(),
            _ => Vec::new(),
        };
        for e in env_names {
            assert!(
                !secretish(&e),
                "{name}: secret-looking environment variable {e}; use secrets:"
            );
        }
    }
    let hc = str_list(&gw["healthcheck"]["test"]);
    assert_eq!(
        &hc[1..3],
        ["/usr/local/bin/warden", "health"]
            .map(String::from)
            .as_slice(),
        "{hc:?}"
    );

    // Every secret file the gateway config references arrives as a Docker secret, and every
    // Docker secret comes from a file (not from the environment).
    let config = read("deploy/compose/warden.toml") + &read("deploy/compose/sophia.toml");
    let wanted = secret_files_referenced(&config);
    let given = names(&gw["secrets"]);
    assert!(!wanted.is_empty());
    for w in &wanted {
        assert!(
            given.contains(w),
            "config reads /run/secrets/{w} but mcp-gateway does not get that secret"
        );
    }
    let bootstrap = read("deploy/compose/bootstrap.sh");
    for s in &given {
        let def = &c["secrets"][s.as_str()];
        let file = def["file"]
            .as_str()
            .unwrap_or_else(|| panic!("secret {s} must come from a file: {def:?}"));
        assert!(def["environment"].is_null());
        let base = Path::new(file).file_name().unwrap().to_str().unwrap();
        assert!(
            bootstrap.contains(base),
            "bootstrap.sh never creates {file}"
        );
    }

    // The config the gateway runs is the one in the repo, mounted read-only where the image
    // looks for it; the network policy's CIDR is the frontend network's subnet.
    let vols = str_list(&gw["volumes"]);
    assert!(
        vols.contains(&"./deploy/compose:/etc/warden:ro".to_string()),
        "{vols:?}"
    );
    let subnet = nets["frontend"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .expect("frontend subnet");
    assert!(
        read("deploy/compose/sophia.toml").contains(&format!("cidr = \"{subnet}\"")),
        "policies allow {subnet}"
    );
}

// ---------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------

fn configmap_files(docs: &[(PathBuf, Yaml)]) -> BTreeMap<String, String> {
    let cm = one(docs, "ConfigMap");
    cm["data"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn port_number(container: &Yaml, port: &Yaml) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("port name or number");
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

fn labels_match(selector: &Yaml, labels: &Yaml) -> bool {
    let sel = selector.as_mapping().expect("selector labels");
    !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k.as_str().unwrap()] == v)
}

#[test]
fn kubernetes_manifests_are_stateless_probed_and_locked_down() {
    let docs = kube_docs();
    for (f, d) in &docs {
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "{}: apiVersion/kind",
            f.display()
        );
    }
    let dep = one(&docs, "Deployment");
    let files = configmap_files(&docs);
    let config: toml::Table = files["warden.toml"]
        .parse()
        .expect("ConfigMap warden.toml is TOML");
    let admin_port: u64 = config["admin"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        config["admin"]["listen"]
            .as_str()
            .unwrap()
            .starts_with("0.0.0.0:"),
        "probes need a non-loopback admin"
    );

    assert!(
        dep["spec"]["replicas"].as_u64().unwrap() >= 3,
        "several stateless replicas"
    );
    let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert!(labels_match(
        &dep["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let pod = &dep["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            port_number(c, &get["port"]),
            admin_port,
            "{probe} on the admin port"
        );
    }

    // Locked down: non-root, read-only root, no privilege escalation, no capabilities.
    let psc = &pod["securityContext"];
    let sc = &c["securityContext"];
    assert!(
        psc["runAsNonRoot"].as_bool() == Some(true) || sc["runAsNonRoot"].as_bool() == Some(true)
    );
    assert_ne!(
        sc["runAsUser"].as_u64().or(psc["runAsUser"].as_u64()),
        Some(0)
    );
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(str_list(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    let spread = pod["topologySpreadConstraints"]
        .as_sequence()
        .expect("topology spread");
    assert!(
        spread
            .iter()
            .all(|s| labels_match(&s["labelSelector"]["matchLabels"], pod_labels))
    );

    // Secrets only as files: no env var that looks like one, none from a Secret.
    assert!(c["envFrom"].is_null(), "no envFrom");
    for e in c["env"].as_sequence().into_iter().flatten() {
        let name = e["name"].as_str().unwrap();
        assert!(!secretish(name), "secret-looking env var {name}");
        assert!(
            e["valueFrom"]["secretKeyRef"].is_null(),
            "{name} comes from a Secret: mount it instead"
        );
    }

    // Volumes: the ConfigMap as a directory (updates reach the pod: hot reload), the Secret
    // at /run/secrets carrying every file the config reads, /tmp writable.
    let cm_name = one(&docs, "ConfigMap")["metadata"]["name"]
        .as_str()
        .unwrap();
    let secret = one(&docs, "Secret");
    let volumes = pod["volumes"].as_sequence().unwrap();
    let mount = |path: &str| {
        let m = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(path));
        let m = m.unwrap_or_else(|| panic!("nothing mounted at {path}"));
        assert!(
            m["subPath"].is_null(),
            "{path}: subPath mounts never see updates"
        );
        let name = m["name"].as_str().unwrap();
        volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap()
            .clone()
    };
    let args = str_list(&c["args"]);
    let cfg_path = args
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("--config");
    let cfg_dir = Path::new(cfg_path).parent().unwrap().to_str().unwrap();
    assert_eq!(mount(cfg_dir)["configMap"]["name"].as_str(), Some(cm_name));
    assert!(files.contains_key(Path::new(cfg_path).file_name().unwrap().to_str().unwrap()));
    assert_eq!(
        mount("/run/secrets")["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    assert!(!mount("/tmp")["emptyDir"].is_null(), "/tmp is an emptyDir");
    let secret_keys = names(&secret["stringData"])
        .into_iter()
        .chain(names(&secret["data"]))
        .collect::<BTreeSet<_>>();
    for w in secret_files_referenced(&files.values().cloned().collect::<String>()) {
        assert!(
            secret_keys.contains(&w),
            "config reads /run/secrets/{w}; the Secret has no such key"
        );
    }

    // The PDB selects exactly this Deployment's pods and still lets a node drain.
    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"]
    );
    let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
    assert!(
        min >= 1 && min < dep["spec"]["replicas"].as_u64().unwrap(),
        "minAvailable {min}"
    );

    // Services select the pods and target real container ports.
    for svc in kind(&docs, "Service") {
        assert!(
            labels_match(&svc["spec"]["selector"], pod_labels),
            "{:?}",
            svc["metadata"]["name"]
        );
        for p in svc["spec"]["ports"].as_sequence().unwrap() {
            port_number(c, &p["targetPort"]);
        }
    }

    // kustomization: every manifest but the Secret template.
    let kust = docs
        .iter()
        .find(|(f, _)| f.ends_with("kustomization.yaml"))
        .map(|(_, d)| d)
        .expect("kustomization");
    let listed: BTreeSet<String> = str_list(&kust["resources"]).into_iter().collect();
    for (f, _) in &docs {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let expect = !(name == "kustomization.yaml" || name == "secret.yaml");
        assert_eq!(
            listed.contains(&name),
            expect,
            "kustomization lists {name}: {listed:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The shipped configs pass `warden check`
// ---------------------------------------------------------------------------------------

/// Local stand-ins for everything a deployment mounts: an OpenBao with the upstream
/// credentials and an AppRole, an age identity and encrypted client keys, certificates.
struct Stubs {
    bao: OpenBao,
    dir: tempfile::TempDir,
}

impl Stubs {
    fn new(tls: bool) -> Stubs {
        let bao = if tls {
            OpenBao::start_tls()
        } else {
            OpenBao::start()
        };
        bao.kv_put("sophia/api", &[("service_token", "svc-token-packaging")]);
        bao.kv_put("ml/inference", &[("api_key", "ml-key-packaging")]);
        let (role_id, secret_id) = bao.create_approle("warden", "1h", "4h");
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("secrets");
        std::fs::create_dir_all(&s).unwrap();
        std::fs::write(s.join("vault_role_id"), role_id).unwrap();
        std::fs::write(s.join("vault_secret_id"), secret_id).unwrap();
        std::fs::write(s.join("admin_token"), "packaging-admin-token").unwrap();
        if let Some(ca) = &bao.ca_file {
            std::fs::copy(ca, s.join("openbao-ca.crt")).unwrap();
        }
        let key = s.join("gateway.agekey");
        assert!(
            Command::new("age-keygen")
                .arg("-o")
                .arg(&key)
                .output()
                .unwrap()
                .status
                .success()
        );
        let recipient = Command::new("age-keygen")
            .arg("-y")
            .arg(&key)
            .output()
            .unwrap();
        let recipient = String::from_utf8(recipient.stdout).unwrap();
        let plain = s.join("clients.env");
        std::fs::write(&plain, "CLIENT_API_KEY=client-key-packaging\n").unwrap();
        let st = Command::new("age")
            .args(["-a", "-r", recipient.trim(), "-o"])
            .arg(s.join("clients.env.age"))
            .arg(&plain)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::remove_file(&plain).unwrap();
        let ca = Ca::new("ml-gateway CA");
        ca.write(&s, "ml-ca.crt");
        ca.leaf(&["warden.internal"], &["spiffe://sophia/warden"])
            .write(&s, "gw");
        Stubs { bao, dir }
    }

    /// Copy `files` (config name → text) to a temp `etc/warden`, pointing the cluster paths
    /// at the stand-ins. Returns the path of `warden.toml`.
    fn localize(&self, files: &BTreeMap<String, String>, vault_address: &str) -> PathBuf {
        let etc = self.dir.path().join("etc/warden");
        std::fs::create_dir_all(&etc).unwrap();
        let plugins = repo_root().join("plugins/target/wasm32-wasip2/release/");
        for (name, text) in files {
            let text = text
                .replace(
                    "/run/secrets/",
                    &format!("{}/", self.dir.path().join("secrets").display()),
                )
                .replace(
                    "\"/run/secrets\"",
                    &toml_path(&self.dir.path().join("secrets")),
                )
                .replace("/usr/share/warden/plugins/", plugins.to_str().unwrap())
                .replace(
                    "/var/cache/warden",
                    self.dir.path().join("cache").to_str().unwrap(),
                )
                .replace(vault_address, &self.bao.addr);
            std::fs::write(etc.join(name), text).unwrap();
        }
        etc.join("warden.toml")
    }
}

fn vault_address(config: &str) -> String {
    let t: toml::Table = config.parse().unwrap();
    t["secrets"]["vault"]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Precompile the plugins the way the image build does (the Dockerfile's own step, with
/// the image paths pointed at the repo and `cache`), then `warden check` the config: it
/// must pass and find every plugin in the cache (no new artifact: start-up never compiles).
fn assert_check_passes(config: &Path, cache: &Path) {
    let plugins = repo_root().join("plugins/target/wasm32-wasip2/release");
    let mut argv: Vec<String> = Vec::new();
    for w in precompile_step().into_iter().skip(1) {
        if w == "/usr/share/warden/plugins/*.wasm" {
            let mut wasm: Vec<String> = std::fs::read_dir(&plugins)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
                .map(|p| p.to_str().unwrap().to_string())
                .collect();
            wasm.sort();
            argv.extend(wasm);
        } else if w.starts_with("/var/cache/warden") {
            argv.push(cache.to_str().unwrap().to_string());
        } else {
            argv.push(w);
        }
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (code, out, err) = run_warden(&argv);
    assert_eq!(code, 0, "precompile failed: {argv:?}\n{out}\n{err}");
    let precompiled = artifacts(cache);
    assert!(precompiled.len() >= 3, "precompiled {precompiled:?}");

    let (code, out, err) = run_warden(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "warden check failed:\n{out}\n{err}");
    assert!(out.contains("3 routes, 2 upstreams, 3 plugins"), "{out}");
    assert_eq!(
        artifacts(cache),
        precompiled,
        "check compiled plugins the image had precompiled"
    );
}

/// Compiled artifacts under `dir` (not wasmtime's bookkeeping files).
fn artifacts(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            out.extend(artifacts(&p));
        } else if !name.starts_with('.') && !name.ends_with(".stats") {
            out.insert(p);
        }
    }
    out
}

#[test]
fn configmap_config_passes_warden_check() {
    let files = configmap_files(&kube_docs());
    // As shipped (cluster paths), the only problems are the files only a cluster has.
    let tmp = tempfile::tempdir().unwrap();
    for (n, t) in &files {
        std::fs::write(tmp.path().join(n), t).unwrap();
    }
    let (code, _, err) = run_warden(&[
        "check",
        "--config",
        tmp.path().join("warden.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("error: /"),
        "file:line errors expected:\n{err}"
    );
    for line in err.lines().filter(|l| l.starts_with("error: /")) {
        assert!(
            line.contains("/run/secrets") || line.contains("/usr/share/warden/plugins/"),
            "unexpected error for the shipped ConfigMap: {line}"
        );
    }
    // With the mounts provided by stand-ins, everything resolves.
    let stubs = Stubs::new(true);
    let addr = vault_address(&files["warden.toml"]);
    let cfg = stubs.localize(&files, &addr);
    assert_check_passes(&cfg, &stubs.dir.path().join("cache"));
}

#[test]
fn compose_config_passes_warden_check() {
    let files: BTreeMap<String, String> = ["warden.toml", "sophia.toml"]
        .into_iter()
        .map(|n| (n.to_string(), read(&format!("deploy/compose/{n}"))))
        .collect();
    let stubs = Stubs::new(false);
    let addr = vault_address(&files["warden.toml"]);
    let cfg = stubs.localize(&files, &addr);
    assert_check_passes(&cfg, &stubs.dir.path().join("cache"));
}

/// Routes, matches, upstreams and policy chains of the deployment configs are those of
/// `policies/sophia.toml`; only plugin paths, secret providers and network CIDRs differ.
#[test]
fn deployment_policies_follow_the_reference_policies() {
    fn shape(text: &str) -> (Vec<String>, BTreeMap<String, String>) {
        let t: toml::Table = text.parse().unwrap();
        let routes = t["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let chain: Vec<String> = r
                    .get("policies")
                    .and_then(|p| p.as_array())
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let secrets: Vec<&String> = p
                            .get("secrets")
                            .and_then(|s| s.as_table())
                            .map(|s| s.keys().collect())
                            .unwrap_or_default();
                        format!(
                            "{}:{:?}:{:?}:{secrets:?}",
                            p["plugin"],
                            p.get("mode"),
                            p.get("on_error")
                        )
                    })
                    .collect();
                let inject: Vec<&String> = r
                    .get("inject")
                    .and_then(|s| s.as_table())
                    .map(|s| s.keys().collect())
                    .unwrap_or_default();
                format!(
                    "{} {} -> {} timeout={:?} inject={inject:?} chain={chain:?}",
                    r["name"],
                    r["match"],
                    r["upstream"],
                    r.get("timeout")
                )
            })
            .collect();
        let plugins = t["plugins"]
            .as_table()
            .unwrap()
            .iter()
            .map(|(n, p)| {
                let file = Path::new(p["file"].as_str().unwrap())
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                (
                    n.clone(),
                    format!(
                        "{file} {}",
                        p.get("limits").map(|l| l.to_string()).unwrap_or_default()
                    ),
                )
            })
            .collect();
        (routes, plugins)
    }
    let reference = shape(&read("policies/sophia.toml"));
    assert_eq!(
        shape(&read("deploy/compose/sophia.toml")),
        reference,
        "deploy/compose/sophia.toml drifted"
    );
    assert_eq!(
        shape(&configmap_files(&kube_docs())["sophia.toml"]),
        reference,
        "ConfigMap sophia.toml drifted"
    );
}

// ---------------------------------------------------------------------------------------
// Grafana
// ---------------------------------------------------------------------------------------

fn collect_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => collect_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_queries(v, out)),
        _ => {}
    }
}

fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("warden_") {
        let boundary = i == 0
            || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if boundary {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// A TCP server that accepts connections and never answers (for upstream timeouts).
fn silent_upstream() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().take(8) {
            held.push(s);
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
    });
    (addr, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_only_metrics_the_gateway_exports() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/warden-dashboard.json"))
            .expect("dashboard is JSON");
    assert!(
        dash["panels"].as_array().is_some_and(|p| !p.is_empty()),
        "panels"
    );
    let mut queries = Vec::new();
    collect_queries(&dash, &mut queries);
    let used: BTreeSet<String> = queries.iter().flat_map(|q| metric_names_in(q)).collect();
    assert!(used.len() >= 15, "dashboard uses {used:?}");

    // A gateway that exercises every family: proxied requests through a plugin chain
    // (enforce and shadow), a refused and a silent upstream, a plugin that traps, one that
    // loops past its deadline, one that grows past its memory limit, a secret provider and
    // a reload.
    let echo = Echo::start().await;
    let (silent, _silent_thread) = silent_upstream();
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // closed again
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("admin_token"), "dash-admin-token").unwrap();
    let header_guard = toml_path(&warden_tests::plugin_wasm("header_guard"));
    let misbehave =
        toml_path(&repo_root().join("tests/plugins/target/wasm32-wasip2/release/misbehave.wasm"));
    let chaos = |name: &str, mode: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ path = \"/{name}\" }}\nupstream = \"echo\"\n\
             [[routes.policies]]\nplugin = \"misbehave\"\non_error = \"deny\"\nconfig = {{ mode = \"{mode}\" }}\n"
        )
    };
    let config = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"
token = "${{file:admin_token}}"

[secrets.file]
type = "dir"
path = {secrets}

[plugins.header-guard]
file = {header_guard}

[plugins.misbehave]
file = {misbehave}
limits = {{ memory = "2MiB", deadline = "20ms" }}

[upstreams.echo]
url = "{echo}"

[upstreams.silent]
url = "http://{silent}"

[upstreams.dead]
url = "http://{dead}"
connect_timeout = "500ms"

[[routes]]
name = "echo"
match = {{ path_prefix = "/echo" }}
upstream = "echo"

[[routes.policies]]
plugin = "header-guard"
config = {{ strip = ["x-debug"] }}

[[routes.policies]]
plugin = "header-guard"
mode = "shadow"
config = {{ require = ["x-never-sent"] }}

[[routes]]
name = "silent"
match = {{ path_prefix = "/silent" }}
upstream = "silent"
timeout = "300ms"

[[routes]]
name = "dead"
match = {{ path_prefix = "/dead" }}
upstream = "dead"

{trap}
{deadline}
{hog}
"#,
        secrets = toml_path(&secrets),
        echo = echo.url(),
        trap = chaos("trap", "trap"),
        deadline = chaos("loop", "loop"),
        hog = chaos("hog", "hog"),
    );
    let gw = Gateway::start(dir.path(), &config)
        .await
        .with_admin_token("dash-admin-token");
    let http = client();
    for (path, want) in [
        ("/echo/a", 200),
        ("/echo/b", 200),
        ("/silent", 504),
        ("/dead", 502),
        ("/trap", 503),
        ("/loop", 503),
        ("/hog", 503),
    ] {
        let status = http
            .get(gw.url(path))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, want, "GET {path}");
    }
    http.post(gw.url("/echo/c")).body("x").send().await.unwrap();
    let reload = http
        .post(gw.admin_url("/reload"))
        .bearer_auth("dash-admin-token")
        .send()
        .await
        .unwrap();
    assert!(reload.status().is_success(), "reload: {}", reload.status());

    // A provider that cannot re-read its secret keeps serving the last value and counts
    // the failure.
    std::fs::remove_file(secrets.join("admin_token")).unwrap();
    let refresh = http
        .post(gw.admin_url("/secrets/refresh"))
        .bearer_auth("dash-admin-token")
        .send()
        .await
        .unwrap();
    assert_ne!(
        refresh.status().as_u16(),
        401,
        "refresh with the admin token"
    );

    let text = gw.metrics().await;
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "dashboard queries metrics the gateway does not export: {missing:?}\n\n{text}"
    );

    // And the other way round: every family the gateway exports has a panel.
    let families: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    for f in &families {
        assert!(
            used.iter().any(|u| u.starts_with(f.as_str())),
            "no panel for {f}"
        );
    }
}
