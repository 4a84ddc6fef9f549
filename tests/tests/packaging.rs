//! Packaging: the Dockerfile, the compose reference stack, the Kubernetes manifests and the
//! Grafana dashboard, checked without a Docker engine or a cluster. Each test states a
//! property users or operators rely on, not the exact shape of a file:
//!
//! - the image builds with the commands CI tests and ships small, non-root and secret-free;
//!   its health check, compose's and the cluster's probes pass on a real gateway;
//! - compose and Kubernetes isolate and lock down what they should, and hand the gateway
//!   every secret its config reads as a file, never through the environment;
//! - the configs they ship pass the real `warden check` against a real OpenBao, real age
//!   files and real certificates, and enforce the reference policies;
//! - the dashboard queries only metrics a running gateway exports, and covers them all.

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

// ---- Helpers ---------------------------------------------------------------------------

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn toml_of(text: &str) -> toml::Table {
    text.parse().expect("valid TOML")
}

/// Every YAML document of a file, with `<<` merge keys applied.
fn yaml_docs(path: &Path) -> Vec<Yaml> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&std::fs::read_to_string(path).unwrap()) {
        let mut v = Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        v.apply_merge().unwrap();
        docs.extend((!v.is_null()).then_some(v));
    }
    docs
}

fn strs(v: &Yaml) -> Vec<&str> {
    let items = v.as_sequence().map(|s| s.iter().filter_map(Yaml::as_str));
    items.map(Iterator::collect).unwrap_or_default()
}

/// The entries of a YAML list (compose short or long syntax) or the keys of a map.
fn names(v: &Yaml) -> BTreeSet<String> {
    match v {
        Yaml::Sequence(s) => s
            .iter()
            .filter_map(|x| x.as_str().or(x["source"].as_str()).map(String::from))
            .collect(),
        Yaml::Mapping(m) => m.keys().filter_map(Yaml::as_str).map(Into::into).collect(),
        _ => BTreeSet::new(),
    }
}

/// The word after `flag` in an argument list.
fn after<'a, S: AsRef<str>>(argv: &'a [S], flag: &str) -> &'a str {
    let mut rest = argv.iter().map(AsRef::as_ref).skip_while(|a| *a != flag);
    rest.nth(1).expect(flag)
}

fn secretish(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    let words = ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"];
    words.iter().any(|w| n.contains(w))
}

/// Every `/run/secrets/NAME` path and `${file:NAME}` reference in a Warden config: the
/// secret files the deployment has to mount.
fn secret_files_referenced(config: &str) -> BTreeSet<String> {
    let words = config.split(['"', '\'', ' ', '\n', '{', '}', '$']);
    let names = words.filter_map(|w| w.strip_prefix("/run/secrets/").or(w.strip_prefix("file:")));
    names.map(String::from).collect()
}

/// `warden ARGS…`: (exit code, stdout, stderr).
fn warden(args: &[String]) -> (i32, String, String) {
    run_warden(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The port of a `host:port` listener.
fn port(listen: &str) -> u64 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

// ---- Dockerfile: an instruction scan, split into what builds and what ships ------------

/// The Dockerfile's instructions: comments dropped, continuation lines joined.
fn dockerfile() -> Vec<String> {
    let text = read("Dockerfile");
    let code = text.lines().filter(|l| !l.trim().starts_with('#'));
    let joined = code.collect::<Vec<_>>().join("\n").replace("\\\n", " ");
    let instructions = joined.lines().map(str::trim).filter(|l| !l.is_empty());
    instructions.map(String::from).collect()
}

fn keyword(instruction: &str) -> String {
    let word = instruction.split_whitespace().next().unwrap_or("");
    word.to_ascii_uppercase()
}

/// (everything before the final stage, the final stage): what builds and what ships.
fn stages() -> (Vec<String>, Vec<String>) {
    let mut all = dockerfile();
    let last = all.iter().rposition(|i| keyword(i) == "FROM");
    let runtime = all.split_off(last.expect("FROM"));
    (all, runtime)
}

/// The arguments of every `kw` instruction in `stage`.
fn args<'a>(stage: &'a [String], kw: &str) -> Vec<&'a str> {
    let of_kind = stage.iter().filter(|i| keyword(i) == kw);
    of_kind.map(|i| i[kw.len()..].trim()).collect()
}

/// The shell commands the builder runs: its RUNs without BuildKit options, split on `&&`.
fn build_steps() -> Vec<String> {
    let mut steps = Vec::new();
    for run in args(&stages().0, "RUN") {
        let words = run.split_whitespace().skip_while(|w| w.starts_with("--"));
        let cmd = words.collect::<Vec<_>>().join(" ");
        steps.extend(cmd.split("&&").map(|s| s.trim().to_string()));
    }
    steps
}

/// The words of the builder's `warden plugin precompile` step.
fn precompile_step() -> Vec<String> {
    let mut steps = build_steps().into_iter();
    let step = steps.find(|s| s.starts_with("warden plugin precompile"));
    let step = step.expect("the builder runs `warden plugin precompile`");
    step.split_whitespace().map(String::from).collect()
}

/// An exec-form (JSON) argument list: the runtime image has no shell.
fn exec_form(what: &str, args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|_| panic!("{what} not in exec form: {args}"))
}

#[test]
fn dockerfile_builder_runs_the_ci_build_commands() {
    let steps = build_steps();
    let ci = read("scripts/test.sh");
    assert!(ci.contains("cargo test --release"), "CI tests --release");
    for cmd in ["scripts/build-plugins.sh", "cargo build --release"] {
        assert!(ci.contains(cmd), "CI no longer runs `{cmd}`");
        let runs = steps.iter().any(|s| s.starts_with(cmd));
        assert!(runs, "the builder does not run `{cmd}`: {steps:?}");
    }
    // Nothing makes the shipped code differ from what CI compiled and tested.
    let mut cargo = steps.iter().filter(|s| s.contains("cargo "));
    let as_ci = cargo.all(|s| s.starts_with("cargo build --release"));
    assert!(as_ci, "the builder runs cargo unlike CI: {steps:?}");
    let changes_build = "RUSTFLAGS CARGO_PROFILE CARGO_BUILD --features --profile";
    for i in &stages().0 {
        let changed = changes_build.split(' ').any(|c| i.contains(c));
        assert!(!changed, "`{i}` changes the build CI tested");
    }
}

#[test]
fn dockerfile_runtime_is_small_non_root_and_secret_free() {
    let (_, runtime) = stages();
    let base = runtime[0].split_whitespace().nth(1).unwrap();
    let small = ["/distroless/", "alpine:", "busybox:"];
    let is_small = base == "scratch" || small.iter().any(|b| base.contains(b));
    assert!(is_small, "runtime base {base} is not a small base");
    let users = args(&runtime, "USER");
    let user = users.last().expect("the runtime sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(!["root", "0"].contains(&uid), "runs as root: USER {user}");

    // Only build outputs ship, including the precompiled plugins, never the build context
    // (where local secrets live); the context excludes those and local build outputs.
    let cache_dir = after(&precompile_step(), "--cache-dir").to_string();
    let copies = args(&runtime, "COPY");
    let ships = copies.iter().any(|c| c.contains(&cache_dir));
    assert!(ships, "the runtime does not ship the cache {cache_dir}");
    for i in &runtime[1..] {
        let from_builder = i.contains("--from=");
        match keyword(i).as_str() {
            "ADD" => panic!("the runtime stage adds files: {i}"),
            "COPY" => assert!(from_builder, "copies the build context: {i}"),
            _ => {}
        }
    }
    let ignore = read(".dockerignore");
    for p in ["**/target", "deploy/compose/secrets", "policies/demo/certs"] {
        let ignored = ignore.lines().any(|l| l.trim() == p);
        assert!(ignored, ".dockerignore should exclude {p}");
    }
    // No secret is baked in as an environment variable or build argument, in any stage.
    for i in dockerfile() {
        if matches!(keyword(&i).as_str(), "ENV" | "ARG") {
            let mut names = i.split_whitespace().skip(1).map(|w| w.split('=').next());
            assert!(!names.any(|n| secretish(n.unwrap())), "secret in `{i}`");
        }
    }
}

/// The image's HEALTHCHECK and compose's run the image's `warden health` on the admin
/// listener of the config they ship; they, and the cluster's probes, pass on a gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_run_warden_health_and_pass_on_a_running_gateway() {
    let (_, runtime) = stages();
    let entry = args(&runtime, "ENTRYPOINT");
    let entrypoint = exec_form("ENTRYPOINT", entry.last().expect("ENTRYPOINT"));
    let hc = *args(&runtime, "HEALTHCHECK").last().expect("a HEALTHCHECK");
    let image_check = exec_form("HEALTHCHECK", hc[hc.find("CMD").unwrap() + 3..].trim());
    let compose = compose();
    let test = strs(&compose["services"][GATEWAY]["healthcheck"]["test"]);
    assert_eq!(test.first(), Some(&"CMD"), "compose healthcheck: {test:?}");
    let compose_check = test[1..].iter().map(|w| w.to_string()).collect();

    let config = toml_of(&read("deploy/compose/warden.toml"));
    let admin = port(config["admin"]["listen"].as_str().unwrap());
    let admin = format!("127.0.0.1:{admin}");
    let dir = tempfile::tempdir().unwrap();
    let listeners = "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let gw = Gateway::start(dir.path(), listeners).await;
    let real = gw.admin_addr.to_string();
    for (what, argv) in [("HEALTHCHECK", image_check), ("compose", compose_check)] {
        assert_eq!(argv[0], entrypoint[0], "{what} runs another binary");
        assert_eq!(argv[1], "health", "{what}: {argv:?}");
        let url = after(&argv, "--url");
        let probes = url.ends_with("/readyz") || url.ends_with("/healthz");
        assert!(probes && url.contains(&admin), "{what} probes {url}");
        let live: Vec<String> = argv[1..].iter().map(|a| a.replace(&admin, &real)).collect();
        let (code, out, err) = warden(&live);
        assert_eq!(code, 0, "{what} fails on a healthy gateway:\n{out}{err}");
    }
    for path in ["/readyz", "/healthz"] {
        let resp = client().get(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {path}");
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    const TEST: &str = "scripts/test.sh";
    let documented = read("README.md").lines().any(|l| l.starts_with(TEST));
    assert!(documented, "the README's test command is not {TEST}");
    let ci = read(".ci/run");
    let runs = ci.lines().any(|l| l.trim() == TEST);
    assert!(runs && ci.contains("set -e"), ".ci/run does not run {TEST}");
}

// ---- Compose ---------------------------------------------------------------------------

const GATEWAY: &str = "mcp-gateway";

fn compose() -> Yaml {
    yaml_docs(&repo_root().join("docker-compose.yml")).remove(0)
}

fn services(c: &Yaml) -> Vec<(&str, &Yaml)> {
    let s = c["services"].as_mapping().expect("services");
    s.iter().map(|(k, v)| (k.as_str().unwrap(), v)).collect()
}

#[test]
fn compose_isolates_services() {
    let c = compose();
    let declared = names(&c["networks"]);
    assert!(declared.contains("frontend"), "clients come in on frontend");
    for (name, svc) in services(&c) {
        let on = names(&svc["networks"]);
        assert!(!on.is_empty(), "{name} is on the default network");
        assert!(on.is_subset(&declared), "{name}: undeclared network");
        if name == GATEWAY {
            assert_eq!(on, declared, "the gateway reaches every network");
        } else {
            assert_eq!(on.len(), 1, "{name} bridges networks {on:?}");
            assert!(!on.contains("frontend"), "{name} is reachable by clients");
            assert!(svc["ports"].is_null(), "{name} publishes ports");
        }
    }
    for n in declared.iter().filter(|n| *n != "frontend") {
        let internal = c["networks"][n.as_str()]["internal"].as_bool();
        assert_eq!(internal, Some(true), "network {n} is not internal");
    }
}

#[test]
fn compose_services_are_hardened_and_health_checked() {
    for (name, svc) in services(&compose()) {
        assert_eq!(svc["read_only"].as_bool(), Some(true), "{name}: read_only");
        assert!(strs(&svc["cap_drop"]).contains(&"ALL"), "{name}: cap_drop");
        let opts = strs(&svc["security_opt"]);
        let nnp = opts.iter().any(|o| o.starts_with("no-new-privileges"));
        assert!(nnp, "{name}: no-new-privileges");
        let test = strs(&svc["healthcheck"]["test"]);
        assert!(!test.is_empty(), "{name}: no healthcheck");
    }
}

#[test]
fn compose_passes_secrets_as_files_never_environment() {
    let c = compose();
    for (name, svc) in services(&c) {
        assert!(svc["env_file"].is_null(), "{name}: env_file");
        for e in names(&svc["environment"]) {
            let var = e.split('=').next().unwrap();
            assert!(!secretish(var), "{name}: secret in environment {var}");
        }
    }
    // Every secret file the config reads is a Docker secret from a file bootstrap.sh makes.
    let config = read("deploy/compose/warden.toml") + &read("deploy/compose/sophia.toml");
    let wanted = secret_files_referenced(&config);
    let given = names(&c["services"][GATEWAY]["secrets"]);
    let missing: Vec<_> = wanted.difference(&given).collect();
    assert!(!wanted.is_empty(), "the config reads no secret file");
    assert!(missing.is_empty(), "the gateway is not given {missing:?}");
    let bootstrap = read("deploy/compose/bootstrap.sh");
    for s in &given {
        let file = c["secrets"][s.as_str()]["file"].as_str();
        let file = file.unwrap_or_else(|| panic!("secret {s} is not from a file"));
        let base = Path::new(file).file_name().unwrap().to_str().unwrap();
        assert!(bootstrap.contains(base), "bootstrap.sh: no {file}");
    }
}

/// The gateway runs the configs checked below, and their policies admit its clients.
#[test]
fn compose_gateway_runs_the_repo_config() {
    let c = compose();
    let gw = &c["services"][GATEWAY];
    let mount = "./deploy/compose:/etc/warden:ro";
    assert!(strs(&gw["volumes"]).contains(&mount), "no {mount}");
    let cfg = after(&strs(&gw["command"]), "--config").to_string();
    let rel = cfg.strip_prefix("/etc/warden/").expect("under /etc/warden");
    let exists = repo_root().join("deploy/compose").join(rel).exists();
    assert!(exists, "{cfg} is not from deploy/compose");
    let subnet = &c["networks"]["frontend"]["ipam"]["config"][0]["subnet"];
    let cidr = format!("cidr = \"{}\"", subnet.as_str().expect("frontend subnet"));
    let admitted = read("deploy/compose/sophia.toml").contains(&cidr);
    assert!(admitted, "policies deny the frontend: no {cidr}");
}

// ---- Kubernetes ------------------------------------------------------------------------

/// Every document of every manifest in deploy/kubernetes, with its file name.
fn kube_docs() -> Vec<(String, Yaml)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(repo_root().join("deploy/kubernetes")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let file = p.file_name().unwrap().to_string_lossy().into_owned();
            out.extend(yaml_docs(&p).into_iter().map(|d| (file.clone(), d)));
        }
    }
    assert!(!out.is_empty(), "no manifests");
    out
}

fn of_kind<'a>(docs: &'a [(String, Yaml)], kind: &str) -> Vec<&'a Yaml> {
    let docs = docs.iter().map(|(_, d)| d);
    docs.filter(|d| d["kind"].as_str() == Some(kind)).collect()
}

fn one<'a>(docs: &'a [(String, Yaml)], kind: &str) -> &'a Yaml {
    let all = of_kind(docs, kind);
    assert_eq!(all.len(), 1, "expected one {kind}");
    all[0]
}

fn configmap_files(docs: &[(String, Yaml)]) -> BTreeMap<String, String> {
    let data = one(docs, "ConfigMap")["data"].as_mapping().unwrap();
    let text = |v: &Yaml| v.as_str().unwrap().to_string();
    data.iter().map(|(k, v)| (text(k), text(v))).collect()
}

/// The Deployment, its pod spec and its Warden container.
fn gateway_pod(docs: &[(String, Yaml)]) -> (&Yaml, &Yaml, &Yaml) {
    let dep = one(docs, "Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    let mut containers = pod["containers"].as_sequence().unwrap().iter();
    let warden = |c: &&Yaml| c["image"].as_str().is_some_and(|i| i.contains("warden"));
    let c = containers.find(warden).expect("a warden container");
    (dep, pod, c)
}

fn port_number(container: &Yaml, port: &Yaml) -> u64 {
    port.as_u64().unwrap_or_else(|| {
        let ports = container["ports"].as_sequence().unwrap();
        let named = ports.iter().find(|p| p["name"] == *port);
        let number = named.and_then(|p| p["containerPort"].as_u64());
        number.unwrap_or_else(|| panic!("no container port {port:?}"))
    })
}

/// The pod volume mounted at `path`, as a whole directory: a subPath mount never sees
/// ConfigMap or Secret updates.
fn volume_at<'a>(pod: &'a Yaml, c: &Yaml, path: &str) -> &'a Yaml {
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let m = mounts.iter().find(|m| m["mountPath"] == path);
    let m = m.unwrap_or_else(|| panic!("nothing mounted at {path}"));
    assert!(m["subPath"].is_null(), "{path}: a subPath mount");
    let volumes = pod["volumes"].as_sequence().unwrap();
    volumes.iter().find(|v| v["name"] == m["name"]).unwrap()
}

fn labels_match(selector: &Yaml, labels: &Yaml) -> bool {
    let sel = selector.as_mapping().expect("selector labels");
    !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k.as_str().unwrap()] == v)
}

#[test]
fn kubernetes_gateway_is_stateless_and_probed() {
    let docs = kube_docs();
    let (dep, pod, c) = gateway_pod(&docs);
    let replicas = dep["spec"]["replicas"].as_u64().unwrap_or(1);
    assert!(replicas >= 2, "a single replica");
    for v in pod["volumes"].as_sequence().into_iter().flatten() {
        let kinds = ["configMap", "secret", "emptyDir"];
        let stateless = kinds.iter().any(|k| !v[*k].is_null());
        assert!(stateless, "volume {:?} keeps state", v["name"]);
    }
    let config = toml_of(&configmap_files(&docs)["warden.toml"]);
    let admin = config["admin"]["listen"].as_str().unwrap();
    assert!(!admin.starts_with("127."), "kubelet can't reach {admin}");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(port_number(c, &get["port"]), port(admin), "{probe} port");
    }
}

#[test]
fn kubernetes_gateway_is_locked_down() {
    let docs = kube_docs();
    let (_, pod, c) = gateway_pod(&docs);
    let (sc, psc) = (&c["securityContext"], &pod["securityContext"]);
    let either = |k: &str| if sc[k].is_null() { &psc[k] } else { &sc[k] };
    assert_eq!(either("runAsNonRoot").as_bool(), Some(true), "runAsNonRoot");
    assert_ne!(either("runAsUser").as_u64(), Some(0), "runAsUser 0");
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    let dropped = strs(&sc["capabilities"]["drop"]);
    assert!(dropped.contains(&"ALL"), "capabilities: drop ALL");
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    let memory = &c["resources"]["limits"]["memory"];
    assert!(memory.is_string(), "no memory limit");
    let tmp = &volume_at(pod, c, "/tmp")["emptyDir"];
    assert!(!tmp.is_null(), "/tmp is not a writable emptyDir");
}

#[test]
fn kubernetes_config_and_secrets_are_mounted_files() {
    let docs = kube_docs();
    let (_, pod, c) = gateway_pod(&docs);
    assert!(c["envFrom"].is_null(), "envFrom");
    for e in c["env"].as_sequence().into_iter().flatten() {
        let name = e["name"].as_str().unwrap();
        assert!(!secretish(name), "secret in environment {name}");
        let from_secret = !e["valueFrom"]["secretKeyRef"].is_null();
        assert!(!from_secret, "{name} comes from a Secret");
    }
    // The ConfigMap as the --config directory (its updates reach the pod: hot reload),
    // the Secret at /run/secrets with every file the config reads.
    let files = configmap_files(&docs);
    let argv = strs(&c["args"]);
    let config = Path::new(after(&argv, "--config"));
    let dir = config.parent().unwrap().to_str().unwrap();
    let cm = &volume_at(pod, c, dir)["configMap"]["name"];
    assert_eq!(cm, &one(&docs, "ConfigMap")["metadata"]["name"], "{dir}");
    let name = config.file_name().unwrap().to_str().unwrap();
    assert!(files.contains_key(name), "the ConfigMap has no {name}");
    let secret = one(&docs, "Secret");
    let mounted = &volume_at(pod, c, "/run/secrets")["secret"]["secretName"];
    assert_eq!(mounted, &secret["metadata"]["name"], "/run/secrets");
    let mut keys = names(&secret["stringData"]);
    keys.extend(names(&secret["data"]));
    let wanted = secret_files_referenced(&files.values().cloned().collect::<String>());
    let missing: Vec<_> = wanted.difference(&keys).collect();
    assert!(missing.is_empty(), "the Secret lacks {missing:?}");
}

#[test]
fn kubernetes_manifests_fit_together() {
    let docs = kube_docs();
    for (f, d) in &docs {
        let typed = d["apiVersion"].is_string() && d["kind"].is_string();
        assert!(typed, "{f}: apiVersion/kind");
    }
    let (dep, pod, c) = gateway_pod(&docs);
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Yaml| labels_match(selector, labels);
    assert!(selects(&dep["spec"]["selector"]["matchLabels"]));
    let spread = pod["topologySpreadConstraints"].as_sequence();
    for s in spread.into_iter().flatten() {
        assert!(selects(&s["labelSelector"]["matchLabels"]), "spread");
    }
    for svc in of_kind(&docs, "Service") {
        let name = &svc["metadata"]["name"];
        assert!(selects(&svc["spec"]["selector"]), "{name:?}");
        for p in svc["spec"]["ports"].as_sequence().unwrap() {
            port_number(c, &p["targetPort"]);
        }
    }
    // The PDB covers the pods and still lets a node drain.
    let pdb = one(&docs, "PodDisruptionBudget");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"]), "PDB");
    let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
    let replicas = dep["spec"]["replicas"].as_u64().unwrap_or(1);
    assert!(min < replicas, "the PDB blocks node drains");
    // `kubectl apply -k` applies every manifest but the Secret template, which would
    // overwrite the real Secret.
    let kust = docs.iter().find(|(f, _)| f == "kustomization.yaml");
    let listed = strs(&kust.expect("kustomization").1["resources"]);
    for (f, _) in &docs {
        let expected = f != "kustomization.yaml" && f != "secret.yaml";
        assert_eq!(listed.contains(&&**f), expected, "kustomization: {f}");
    }
}

// ---- The shipped configs pass `warden check` -------------------------------------------

/// Write stand-ins for every secret file a deployment mounts into `s`: AppRole credentials
/// for `bao` (which gets the upstream credentials), an age identity and client keys
/// encrypted to it, certificates, the admin token.
fn write_secrets(bao: &OpenBao, s: &Path) {
    bao.kv_put("sophia/api", &[("service_token", "svc-token-packaging")]);
    bao.kv_put("ml/inference", &[("api_key", "ml-key-packaging")]);
    let (role_id, secret_id) = bao.create_approle("warden", "1h", "4h");
    std::fs::create_dir_all(s).unwrap();
    std::fs::write(s.join("vault_role_id"), role_id).unwrap();
    std::fs::write(s.join("vault_secret_id"), secret_id).unwrap();
    std::fs::write(s.join("admin_token"), "packaging-admin-token").unwrap();
    if let Some(ca) = &bao.ca_file {
        std::fs::copy(ca, s.join("openbao-ca.crt")).unwrap();
    }
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let key = s.join("gateway.agekey");
    run(Command::new("age-keygen").arg("-o").arg(&key));
    let recipient = run(Command::new("age-keygen").arg("-y").arg(&key));
    let plain = s.join("clients.env");
    std::fs::write(&plain, "CLIENT_API_KEY=client-key-packaging\n").unwrap();
    let to = ["-a", "-r", recipient.trim(), "-o"];
    run(Command::new("age")
        .args(to)
        .args([&s.join("clients.env.age"), &plain]));
    std::fs::remove_file(&plain).unwrap();
    let ca = Ca::new("ml-gateway CA");
    ca.write(s, "ml-ca.crt");
    let leaf = ca.leaf(&["warden.internal"], &["spiffe://sophia/warden"]);
    leaf.write(s, "gw");
}

/// With the image's and the cluster's paths pointed at local stand-ins, precompile the
/// plugins with the Dockerfile's own step, then `warden check` the config: it must pass and
/// use the precompiled plugins (no new artifact: start-up never compiles).
fn assert_check_passes(files: &BTreeMap<String, String>, bao: OpenBao) {
    let precompile = precompile_step();
    let config = toml_of(&files["warden.toml"]);
    let dir = config["policy"]["cache_dir"].as_str();
    assert_eq!(dir, Some(after(&precompile, "--cache-dir")), "cache_dir");
    let tmp = tempfile::tempdir().unwrap();
    let (secrets, cache) = (tmp.path().join("secrets"), tmp.path().join("cache"));
    write_secrets(&bao, &secrets);
    let plugins = repo_root().join("plugins/target/wasm32-unknown-unknown/release/");
    let vault = config["secrets"]["vault"]["address"].as_str().unwrap();
    let localize = |text: &str| {
        text.replace("/run/secrets/", &format!("{}/", secrets.display()))
            .replace("\"/run/secrets\"", &toml_path(&secrets))
            .replace("/usr/share/warden/plugins/", plugins.to_str().unwrap())
            .replace("/var/cache/warden", cache.to_str().unwrap())
            .replace(vault, &bao.addr)
    };
    for (name, text) in files {
        std::fs::write(tmp.path().join(name), localize(text)).unwrap();
    }
    let mut argv: Vec<String> = Vec::new();
    for w in localize(&precompile[1..].join(" ")).split_whitespace() {
        let Some(dir) = w.strip_suffix("*.wasm") else {
            argv.push(w.to_string());
            continue;
        };
        let files = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path());
        let wasm = files.filter(|p| p.extension().is_some_and(|e| e == "wasm"));
        argv.extend(wasm.map(|p| p.to_str().unwrap().to_string()));
    }
    let (code, out, err) = warden(&argv);
    assert_eq!(code, 0, "precompile {argv:?}:\n{out}\n{err}");
    let precompiled = artifacts(&cache);
    assert!(!precompiled.is_empty(), "nothing precompiled");

    let config = tmp.path().join("warden.toml");
    let (code, out, err) = run_warden(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "warden check failed:\n{out}\n{err}");
    let now = artifacts(&cache);
    assert_eq!(now, precompiled, "check compiled plugins anew");
}

/// Compiled artifacts under `dir` (not wasmtime's bookkeeping files).
fn artifacts(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let (p, name) = (e.path(), e.file_name().to_string_lossy().into_owned());
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
    assert_check_passes(&configmap_files(&kube_docs()), OpenBao::start_tls());
}

#[test]
fn compose_config_passes_warden_check() {
    let files = ["warden.toml", "sophia.toml"]
        .map(|n| (n.to_string(), read(&format!("deploy/compose/{n}"))));
    assert_check_passes(&BTreeMap::from(files), OpenBao::start());
}

/// `[plugins]` and `[[routes]]` of a policy file, with what may differ per deployment
/// blanked: plugin directories, secret references, network CIDRs.
fn policies(text: &str) -> toml::Value {
    fn blank(v: &mut toml::Value) {
        match v {
            toml::Value::String(s) => {
                if let Some(i) = s.find("${") {
                    s.replace_range(i.., "${…}");
                } else if s.ends_with(".wasm") {
                    *s = s.rsplit('/').next().unwrap().to_string();
                }
            }
            toml::Value::Table(t) => {
                if let Some(cidr) = t.get_mut("cidr") {
                    *cidr = "…".into();
                }
                t.iter_mut().for_each(|(_, v)| blank(v));
            }
            toml::Value::Array(a) => a.iter_mut().for_each(blank),
            _ => {}
        }
    }
    let t = toml_of(text);
    let mut v = toml::Value::Array(vec![t["plugins"].clone(), t["routes"].clone()]);
    blank(&mut v);
    v
}

/// The deployments enforce the reference policies (`policies/sophia.toml`, which the end
/// to end tests exercise): same plugins, limits, routes, policy chains and plugin configs.
#[test]
fn deployment_policies_follow_the_reference_policies() {
    let reference = policies(&read("policies/sophia.toml"));
    let compose = policies(&read("deploy/compose/sophia.toml"));
    assert_eq!(compose, reference, "deploy/compose/sophia.toml drifted");
    let kube = policies(&configmap_files(&kube_docs())["sophia.toml"]);
    assert_eq!(kube, reference, "the ConfigMap's sophia.toml drifted");
}

// ---- Grafana ---------------------------------------------------------------------------

/// A gateway config that exercises every metric family: proxied requests through a plugin
/// chain (enforce and shadow), a silent and a refused upstream, plugins that trap, loop
/// past their deadline and grow past their memory limit, a secret provider.
const EVERY_FAMILY: &str = r#"
routes = [
  { name = "echo", match = { path_prefix = "/echo" }, upstream = "echo", policies = [
    { plugin = "header-guard", config = { strip = ["x-debug"] } },
    { plugin = "header-guard", mode = "shadow", config = { require = ["x-never-sent"] } },
  ] },
  { name = "silent", match = { path_prefix = "/silent" }, upstream = "silent", timeout = "300ms" },
  { name = "dead", match = { path_prefix = "/dead" }, upstream = "dead" },
  { name = "trap", match = { path = "/trap" }, upstream = "echo", policies = [
    { plugin = "misbehave", on_error = "deny", config = { mode = "trap" } } ] },
  { name = "loop", match = { path = "/loop" }, upstream = "echo", policies = [
    { plugin = "misbehave", on_error = "deny", config = { mode = "loop" } } ] },
  { name = "hog", match = { path = "/hog" }, upstream = "echo", policies = [
    { plugin = "misbehave", on_error = "deny", config = { mode = "hog" } } ] },
]
[gateway]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
token = "${file:admin_token}"
[secrets.file]
type = "dir"
path = SECRETS
[plugins]
header-guard = { file = HEADER_GUARD }
misbehave = { file = MISBEHAVE, limits = { memory = "2MiB", deadline = "20ms" } }
[upstreams]
echo = { url = "ECHO" }
silent = { url = "http://SILENT" }
dead = { url = "http://DEAD", connect_timeout = "500ms" }
mtls = { url = "https://127.0.0.1:9", tls = { client_cert_file = "CLIENT_CERT", client_key_file = "CLIENT_KEY" } }
"#;

const TOKEN: &str = "dash-admin-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_only_metrics_the_gateway_exports() {
    let text = read("deploy/grafana/warden-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let panels = dash["panels"].as_array().map_or(0, Vec::len);
    assert!(panels > 0, "a dashboard without panels");
    // Every `warden_…` identifier in the dashboard names a metric.
    let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
    let used: BTreeSet<&str> = words
        .filter(|w| w.starts_with("warden_") || w.starts_with("process_"))
        .collect();
    assert!(!used.is_empty(), "the dashboard queries no warden metric");

    let echo = Echo::start().await;
    let silent = TcpListener::bind("127.0.0.1:0").unwrap(); // accepts, never answers
    let dead = TcpListener::bind("127.0.0.1:0").unwrap(); // closed before the gateway starts
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("admin_token"), TOKEN).unwrap();
    let header_guard = warden_tests::plugin_wasm("header_guard");
    let misbehave = "tests/plugins/target/wasm32-wasip2/release/misbehave.wasm";
    let (client_cert, client_key) = Ca::new("dashboard CA")
        .leaf(&["gateway.internal"], &[])
        .write(dir.path(), "client");
    let config = EVERY_FAMILY
        .replace("\"CLIENT_CERT\"", &toml_path(&client_cert))
        .replace("\"CLIENT_KEY\"", &toml_path(&client_key))
        .replace("SECRETS", &toml_path(&secrets))
        .replace("HEADER_GUARD", &toml_path(&header_guard))
        .replace("MISBEHAVE", &toml_path(&repo_root().join(misbehave)))
        .replace("ECHO", &echo.url())
        .replace("SILENT", &silent.local_addr().unwrap().to_string())
        .replace("DEAD", &dead.local_addr().unwrap().to_string());
    drop(dead);
    let gw = Gateway::start(dir.path(), &config).await;
    let gw = gw.with_admin_token(TOKEN);
    let http = client();
    for (path, want) in [
        ("/echo/a", 200),
        ("/silent", 504),
        ("/dead", 502),
        ("/trap", 503),
        ("/loop", 503),
        ("/hog", 503),
    ] {
        let status = http.get(gw.url(path)).send().await.unwrap().status();
        assert_eq!(status.as_u16(), want, "GET {path}");
    }
    http.post(gw.url("/echo/b")).body("x").send().await.unwrap();
    let admin_post = |path: &str| http.post(gw.admin_url(path)).bearer_auth(TOKEN);
    let reload = admin_post("/reload").send().await.unwrap();
    assert!(reload.status().is_success(), "reload: {}", reload.status());
    // A provider that cannot re-read its secret keeps the last value and counts the failure.
    std::fs::remove_file(secrets.join("admin_token")).unwrap();
    let refresh = admin_post("/secrets/refresh").send().await.unwrap();
    assert_ne!(refresh.status(), 401, "refresh with the admin token");

    let metrics = gw.metrics().await;
    let samples = metrics.lines().filter(|l| !l.starts_with('#'));
    let exported: BTreeSet<&str> = samples.filter_map(|l| l.split(['{', ' ']).next()).collect();
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n\n{metrics}");
    // And the other way round: every family the gateway exports has a panel.
    for family in metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let family = family.split_whitespace().next().unwrap();
        let shown = used.iter().any(|u| u.starts_with(family));
        assert!(shown, "no panel for {family}");
    }
}

#[test]
fn alert_rules_pass_promtool_and_use_exported_metric_names() {
    let rules = repo_root().join("deploy/prometheus/warden-rules.yml");
    let out = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool runs (scripts/setup.sh installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 6 rules found"), "{text}");
    // Each alert the operations docs promise, on a metric the gateway exports (the
    // dashboard test above checks the exported names against a live gateway).
    let yaml = read("deploy/prometheus/warden-rules.yml");
    for (alert, metric) in [
        ("WardenSecretStale", "warden_secret_reference_age_seconds"),
        (
            "WardenReloadFailing",
            "warden_config_last_reload_successful",
        ),
        (
            "WardenCertificateExpiringSoon",
            "warden_tls_certificate_not_after_timestamp_seconds",
        ),
        ("WardenEndpointEjected", "warden_upstream_ejections_total"),
        ("WardenPluginTraps", "warden_plugin_traps_total"),
        ("WardenRateLimitStoreDown", "warden_rate_limit_store_up"),
    ] {
        let block = yaml
            .split("- alert: ")
            .find(|b| b.starts_with(alert))
            .unwrap_or_else(|| panic!("no alert {alert}"));
        assert!(block.contains(metric), "{alert} does not use {metric}");
    }
}

// ---- The registry-free OCI image (scripts/image.sh) --------------------------------------

/// A JSON blob of an unpacked OCI archive.
fn oci_blob(dir: &Path, digest: &str) -> serde_json::Value {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("command runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The archive `scripts/image.sh` writes, unpacked layer by layer into a root filesystem
/// with nothing of the host in it: the image's binary runs there as its non-root user,
/// prints its version and checks a config that uses the image's plugins, their
/// precompiled artifacts, the CA bundle and mounted secrets.
#[test]
fn the_oci_image_is_self_contained_and_runs_as_its_user_under_chroot() {
    let archive = repo_root().join("target/warden-oci.tar");
    assert!(
        archive.exists(),
        "{} missing: scripts/test.sh builds it with scripts/image.sh",
        archive.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let (oci, rootfs) = (tmp.path().join("oci"), tmp.path().join("rootfs"));
    std::fs::create_dir_all(&oci).unwrap();
    std::fs::create_dir_all(&rootfs).unwrap();
    let (code, _, err) = run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&oci));
    assert_eq!(code, 0, "unpacking the archive: {err}");

    let index = oci_blob_index(&oci);
    let manifest = oci_blob(&oci, index["manifests"][0]["digest"].as_str().unwrap());
    let config = oci_blob(&oci, manifest["config"]["digest"].as_str().unwrap());
    let c = &config["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/warden"]),
        "{c}"
    );
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["run", "--config", "/etc/warden/warden.toml"]),
        "{c}"
    );
    // A numeric user (no passwd lookup needed by the runtime), and not root.
    let user = c["User"].as_str().unwrap_or_default();
    let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0) && gid.parse::<u32>().is_ok_and(|g| g != 0),
        "User {user:?}"
    );
    assert!(
        c.get("Env").and_then(|e| e.as_array()).is_none_or(|e| e
            .iter()
            .all(|v| !v.as_str().unwrap_or("").contains("SECRET"))),
        "no secret in the environment: {c}"
    );
    for layer in manifest["layers"].as_array().unwrap() {
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let (code, _, err) = run(Command::new("tar")
            .args(["--numeric-owner", "-xf"])
            .arg(oci.join("blobs/sha256").join(hex))
            .arg("-C")
            .arg(&rootfs));
        assert_eq!(code, 0, "unpacking layer {hex}: {err}");
    }
    // No shell, no libc: the binary is all there is to run.
    for absent in ["bin/sh", "usr/bin", "lib/ld-musl-x86_64.so.1", "lib64"] {
        assert!(!rootfs.join(absent).exists(), "{absent} in the image");
    }
    assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file());

    let chroot = |args: &[&str]| {
        run(Command::new("chroot")
            .arg(format!("--userspec={user}"))
            .arg(&rootfs)
            .arg("/usr/local/bin/warden")
            .args(args)
            // Nothing of the host's environment: only where to find `chroot` itself.
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
    };
    let (code, out, err) = chroot(&["--version"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("warden {}", env!("CARGO_PKG_VERSION")));

    // What an operator mounts: secrets under /run/secrets and a config of their own that
    // uses the image's plugins and an https upstream verified against the image's CAs.
    std::fs::write(rootfs.join("run/secrets/client_key"), "image-test-key-1\n").unwrap();
    std::fs::write(
        rootfs.join("run/secrets/service_token"),
        "image-test-token\n",
    )
    .unwrap();
    std::fs::write(
        rootfs.join("etc/warden/check.toml"),
        r#"
[gateway]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[policy]
cache_dir = "/var/cache/warden"
[secrets.file]
type = "dir"
path = "/run/secrets"
[plugins.network-isolation]
file = "/usr/share/warden/plugins/network_isolation.wasm"
[plugins.api-key]
file = "/usr/share/warden/plugins/api_key.wasm"
[plugins.header-guard]
file = "/usr/share/warden/plugins/header_guard.wasm"
[upstreams.api]
url = "https://api.internal:8443"
inject = { x-service-token = "${file:service_token}" }
[[routes]]
name = "api"
match = { path_prefix = "/" }
upstream = "api"
[[routes.policies]]
plugin = "header-guard"
config = { strip = ["x-debug"] }
[[routes.policies]]
plugin = "network-isolation"
config = { rule_set = "api", allow = [ { cidr = "10.0.0.0/8" } ] }
[[routes.policies]]
plugin = "api-key"
secrets = { client_key = "${file:client_key}" }
config = { header = "x-api-key", secret = "client_key" }
"#,
    )
    .unwrap();
    let cache = rootfs.join("var/cache/warden");
    let precompiled = artifacts(&cache);
    assert!(
        !precompiled.is_empty(),
        "the image carries no precompiled plugin"
    );
    let (code, out, err) = chroot(&["check", "--config", "/etc/warden/check.toml"]);
    assert_eq!(code, 0, "warden check in the image:\n{out}\n{err}");
    assert!(out.contains("3 plugins"), "{out}");
    assert_eq!(
        artifacts(&cache),
        precompiled,
        "check compiled a plugin anew"
    );
}

fn oci_blob_index(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap()
}
