//! Manifest validation: each kind of mistake is rejected with its key.

use super::*;

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(Path::new("/etc/portier/m.toml"), text)
}

fn key_of(text: &str) -> String {
    let e = parse(text).expect_err("manifest should be rejected");
    assert_eq!(e.file, Path::new("/etc/portier/m.toml"));
    e.key
}

const UPSTREAM: &str = "[[upstreams]]\nname = \"api\"\nendpoints = [\"127.0.0.1:3001\"]\n";

#[test]
fn minimal_manifest_gets_defaults() {
    let m = parse(&format!(
        "[server]\nlisten = \"127.0.0.1:3000\"\n{UPSTREAM}"
    ))
    .unwrap();
    assert_eq!(
        m.server.listen,
        vec!["127.0.0.1:3000".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(m.server.access_log, super::AccessLog::Process);
    let u = &m.upstreams[0];
    assert_eq!(
        (u.timeout, u.connect_timeout),
        (DEFAULT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT)
    );
    assert_eq!(u.endpoints[0].weight, 1);
}

#[test]
fn builtin_stage_takes_its_role_and_name_and_config_becomes_json() {
    let m = parse(&format!(
        "[server]\nlisten = \"127.0.0.1:3000\"\n{UPSTREAM}\
         [[pipeline]]\nplugin = \"balancer\"\non_error = \"fail-open\"\ncall_timeout = \"5ms\"\n\
         memory_limit = \"8MiB\"\nconfig = {{ algorithm = \"round-robin\" }}\n"
    ))
    .unwrap();
    let s = &m.stages[0];
    assert_eq!(
        (s.name.as_str(), s.role, s.on_error),
        ("balancer", Role::Balancer, FailurePolicy::Open)
    );
    assert_eq!(
        (s.call_timeout, s.memory_limit),
        (Duration::from_millis(5), 8 << 20)
    );
    assert_eq!(s.config_json, r#"{"algorithm":"round-robin"}"#);
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    assert_eq!(
        key_of("[server]\nlisten = \"127.0.0.1:3000\"\nlisen = 1\n"),
        "server.lisen"
    );
    let e = parse("[server]\nlisten = \"127.0.0.1:3000\"\nlisen = 1\n").unwrap_err();
    assert!(e.reason.contains("lisen"), "{e}");
    assert_eq!(
        key_of(&format!(
            "[server]\nlisten = \"127.0.0.1:3000\"\n{UPSTREAM}[[pipeline]]\nplugin = \"router\"\nroel = \"x\"\n"
        )),
        "pipeline[0].roel"
    );
}

#[test]
fn bad_addresses_name_the_exact_key() {
    assert_eq!(
        key_of(&format!("[server]\nlisten = \"localhost\"\n{UPSTREAM}")),
        "server.listen"
    );
    assert_eq!(
        key_of(
            "[server]\nlisten = \"127.0.0.1:3000\"\n[[upstreams]]\nname = \"a\"\nendpoints = [\"nope\"]\n"
        ),
        "upstreams[0].endpoints[0]"
    );
}

#[test]
fn duplicate_upstreams_and_missing_router_are_rejected() {
    let two =
        format!("{UPSTREAM}[[upstreams]]\nname = \"api\"\nendpoints = [\"127.0.0.1:3002\"]\n");
    assert_eq!(
        key_of(&format!("[server]\nlisten = \"127.0.0.1:3000\"\n{two}")),
        "upstreams[1].name"
    );
    let distinct = two.replace(
        "name = \"api\"\nendpoints = [\"127.0.0.1:3002\"]",
        "name = \"web\"\nendpoints = [\"127.0.0.1:3002\"]",
    );
    assert_eq!(
        key_of(&format!(
            "[server]\nlisten = \"127.0.0.1:3000\"\n{distinct}"
        )),
        "pipeline"
    );
}

#[test]
fn plugin_files_must_exist_and_declare_a_role() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:3000\"\n{UPSTREAM}[[pipeline]]\nplugin = \"auth.wasm\"\n"
    );
    assert_eq!(
        Manifest::parse(&file, &text).unwrap_err().key,
        "pipeline[0].plugin"
    );
    std::fs::write(dir.path().join("auth.wasm"), b"").unwrap();
    assert_eq!(
        Manifest::parse(&file, &text).unwrap_err().key,
        "pipeline[0].role"
    );
    let ok = Manifest::parse(&file, &format!("{text}role = \"filter\"\n")).unwrap();
    assert_eq!(ok.stages[0].name, "auth");
}

#[test]
fn pipeline_shape_rules_hold() {
    let base = format!("[server]\nlisten = \"127.0.0.1:3000\"\n{UPSTREAM}");
    let two_routers = format!(
        "{base}[[pipeline]]\nplugin = \"router\"\n[[pipeline]]\nplugin = \"router\"\nname = \"r2\"\n"
    );
    assert_eq!(key_of(&two_routers), "pipeline[1]");
    let order =
        format!("{base}[[pipeline]]\nplugin = \"balancer\"\n[[pipeline]]\nplugin = \"router\"\n");
    assert_eq!(key_of(&order), "pipeline[0]");
    let builtin_wrong_role =
        format!("{base}[[pipeline]]\nplugin = \"router\"\nrole = \"filter\"\n");
    assert_eq!(key_of(&builtin_wrong_role), "pipeline[0].role");
}

#[test]
fn error_display_is_file_key_reason() {
    let e = ManifestError {
        file: "m.toml".into(),
        key: "server.listen".into(),
        reason: "bad".into(),
    };
    assert_eq!(e.to_string(), "m.toml: server.listen: bad");
}

#[test]
fn included_upstreams_come_first_and_their_errors_name_the_included_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("shared")).unwrap();
    let shared = dir.path().join("shared/upstreams.toml");
    std::fs::write(&shared, UPSTREAM).unwrap();
    let file = dir.path().join("prod.toml");
    let text = "include = [\"shared/upstreams.toml\"]\n[server]\nlisten = \"127.0.0.1:3000\"\n\
                [[upstreams]]\nname = \"web\"\nendpoints = [\"127.0.0.1:3002\"]\n\
                [[pipeline]]\nplugin = \"router\"\n";
    let m = Manifest::parse(&file, text).unwrap();
    let names: Vec<_> = m.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(m.includes, std::slice::from_ref(&shared));

    std::fs::write(
        &shared,
        "[[upstreams]]\nname = \"api\"\nendpoints = [\"nope\"]\n",
    )
    .unwrap();
    let e = Manifest::parse(&file, text).unwrap_err();
    assert_eq!(
        (e.file.as_path(), e.key.as_str()),
        (shared.as_path(), "upstreams[0].endpoints[0]")
    );

    std::fs::write(
        &shared,
        format!("{UPSTREAM}[server]\nlisten = \"127.0.0.1:1\"\n"),
    )
    .unwrap();
    let e = Manifest::parse(&file, text).unwrap_err();
    assert_eq!(
        (e.file.as_path(), e.key.as_str()),
        (shared.as_path(), "server")
    );

    let missing = text.replace("shared/upstreams.toml", "shared/nope.toml");
    assert_eq!(
        Manifest::parse(&file, &missing).unwrap_err().key,
        "include[0]"
    );
}

#[test]
fn granted_directories_must_exist_and_be_absolute_in_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let file = dir.path().join("m.toml");
    let stage = |grants: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:3000\"\n{UPSTREAM}[[pipeline]]\nplugin = \"headers\"\ngrants = {grants}\n"
        )
    };
    let m = Manifest::parse(
        &file,
        &stage("{ dirs = { \"/rules\" = \"rules\" }, env = { MODE = \"strict\" } }"),
    )
    .unwrap();
    assert_eq!(
        m.stages[0].grants.dirs,
        [("/rules".to_string(), dir.path().join("rules"))]
    );
    assert_eq!(
        m.stages[0].grants.env,
        [("MODE".to_string(), "strict".to_string())]
    );
    let e = Manifest::parse(&file, &stage("{ dirs = { \"/rules\" = \"missing\" } }")).unwrap_err();
    assert_eq!(e.key, "pipeline[0].grants.dirs./rules");
    let e = Manifest::parse(&file, &stage("{ dirs = { \"rules\" = \"rules\" } }")).unwrap_err();
    assert_eq!(e.key, "pipeline[0].grants.dirs.rules");
}

#[test]
fn an_upstream_defined_again_after_an_include_is_a_duplicate_in_the_including_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shared.toml"), UPSTREAM).unwrap();
    let file = dir.path().join("m.toml");
    let text =
        format!("include = [\"shared.toml\"]\n[server]\nlisten = \"127.0.0.1:3000\"\n{UPSTREAM}");
    let e = Manifest::parse(&file, &text).unwrap_err();
    assert_eq!(
        (e.file.as_path(), e.key.as_str()),
        (file.as_path(), "upstreams[0].name")
    );
    assert!(e.reason.contains("duplicate upstream name \"api\""), "{e}");
}

/// A manifest whose one upstream carries `extra` keys.
fn upstream_with(extra: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:3000\"\n{UPSTREAM}{extra}\n")
}

#[test]
fn upstream_tables_parse_with_their_defaults_filled_in() {
    let m = parse(&upstream_with(
        "protocol = \"h2c\"\n\
         pool = { max_idle = 8, max_connections = 100 }\n\
         health = { path = \"/health?deep=1\", expect = [200, \"300-304\"] }\n\
         outlier = { consecutive_failures = 3, statuses = [502, \"503-504\"] }\n\
         retry = { attempts = 3, on = [\"reset\", 503], methods = [\"GET\", \"POST\"], body_buffer = \"64KiB\" }",
    ))
    .unwrap();
    let u = &m.upstreams[0];
    assert_eq!(u.protocol, Protocol::H2c);
    assert_eq!((u.pool.max_idle, u.pool.max_connections), (8, 100));
    assert_eq!(u.pool.idle_timeout, Pool::default().idle_timeout);
    let h = u.health.as_ref().unwrap();
    assert_eq!(h.path.as_str(), "/health?deep=1");
    assert!(h.passes(200) && h.passes(304) && !h.passes(204));
    assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (2, 3));
    assert!(u.outlier.fails(503) && !u.outlier.fails(500));
    assert_eq!(u.outlier.consecutive_connect_failures, 1);
    assert!(u.retry.on_reset && !u.retry.on_timeout);
    assert_eq!(u.retry.statuses, [503]);
    assert!(u.retry.may_resend(&http::Method::POST));
    assert_eq!(u.retry.body_buffer, 64 << 10);
    assert_eq!(u.retry.budget, 0.2);
}

#[test]
fn each_bad_upstream_setting_is_rejected_at_its_key() {
    for (extra, key) in [
        ("protocol = \"h3\"", "upstreams[0].protocol"),
        (
            "pool = { idle_timeout = \"0s\" }",
            "upstreams[0].pool.idle_timeout",
        ),
        ("health = { path = \"health\" }", "upstreams[0].health.path"),
        (
            "health = { path = \"/h\", interval = \"1s\", timeout = \"2s\" }",
            "upstreams[0].health.timeout",
        ),
        (
            "health = { path = \"/h\", expect = [\"200-99\"] }",
            "upstreams[0].health.expect[0]",
        ),
        (
            "health = { path = \"/h\", healthy_threshold = 0 }",
            "upstreams[0].health.healthy_threshold",
        ),
        (
            "outlier = { max_ejected_percent = 101 }",
            "upstreams[0].outlier.max_ejected_percent",
        ),
        (
            "outlier = { base_ejection = \"10s\", max_ejection = \"5s\" }",
            "upstreams[0].outlier.max_ejection",
        ),
        ("retry = { attempts = 0 }", "upstreams[0].retry.attempts"),
        (
            "retry = { on = [\"reset\", \"sometimes\"] }",
            "upstreams[0].retry.on[1]",
        ),
        ("retry = { on = [404] }", "upstreams[0].retry.on[0]"),
        (
            "retry = { methods = [\"GE T\"] }",
            "upstreams[0].retry.methods[0]",
        ),
        ("retry = { budget = 1.5 }", "upstreams[0].retry.budget"),
        ("refused_cooldown = \"5s\"", "upstreams[0].refused_cooldown"),
    ] {
        assert_eq!(key_of(&upstream_with(extra)), key, "{extra}");
    }
}

#[test]
fn an_endpoint_listed_twice_in_one_upstream_is_rejected() {
    let text = "[server]\nlisten = \"127.0.0.1:3000\"\n[[upstreams]]\nname = \"api\"\n\
                endpoints = [\"127.0.0.1:3001\", \"127.0.0.1:3001\"]\n";
    assert_eq!(key_of(text), "upstreams[0].endpoints[1]");
}

#[test]
fn http2_limits_take_defaults_and_each_bad_one_is_rejected_at_its_key() {
    let server = "[server]\nlisten = \"127.0.0.1:3000\"\n";
    let m = parse(&format!("{server}{UPSTREAM}")).unwrap();
    assert_eq!(m.server.http2, Http2::default());
    let m = parse(&format!(
        "{server}[server.http2]\nmax_concurrent_streams = 16\nstream_window = \"256KiB\"\n{UPSTREAM}"
    ))
    .unwrap();
    assert_eq!(
        (
            m.server.http2.max_concurrent_streams,
            m.server.http2.stream_window
        ),
        (16, 256 << 10)
    );
    for (table, key) in [
        ("max_concurrent_streams = 0", "max_concurrent_streams"),
        ("stream_window = \"1KiB\"", "stream_window"),
        ("connection_window = \"4GiB\"", "connection_window"),
        ("max_frame_size = \"1KiB\"", "max_frame_size"),
        ("max_frame_size = \"16MiB\"", "max_frame_size"),
        ("max_reset_ratio = 0.0", "max_reset_ratio"),
        ("max_reset_ratio = 1.5", "max_reset_ratio"),
        ("control_frame_budget = 0", "control_frame_budget"),
        ("max_error_resets = 0", "max_error_resets"),
        ("max_streams = 3", "max_streams"),
    ] {
        assert_eq!(
            key_of(&format!("{server}[server.http2]\n{table}\n{UPSTREAM}")),
            format!("server.http2.{key}"),
            "{table}"
        );
    }
}

#[test]
fn the_cache_table_takes_defaults_and_a_second_cache_stage_is_rejected() {
    let server = "[server]\nlisten = \"127.0.0.1:3000\"\n";
    let m = parse(&format!("{server}{UPSTREAM}")).unwrap();
    assert_eq!(m.cache, Cache::default());
    let m = parse(&format!(
        "{server}[cache]\nmax_size = \"1MiB\"\nmax_object_size = \"64KiB\"\nstatus_header = \"\"\n{UPSTREAM}"
    ))
    .unwrap();
    assert_eq!(
        (
            m.cache.max_size,
            m.cache.max_object_size,
            m.cache.status_header
        ),
        (1 << 20, 64 << 10, None)
    );
    for (table, key) in [
        ("max_size = \"0\"", "cache.max_size"),
        (
            "max_size = \"1MiB\"\nmax_object_size = \"2MiB\"",
            "cache.max_object_size",
        ),
        ("status_header = \"x cache\"", "cache.status_header"),
        ("stale_if_error = \"soon\"", "cache.stale_if_error"),
        ("keep_stale = \"1\"", "cache.keep_stale"),
        ("revalidate = \"yes\"", "cache.revalidate"),
        ("ttl = \"1s\"", "cache.ttl"),
    ] {
        assert_eq!(
            key_of(&format!("{server}[cache]\n{table}\n{UPSTREAM}")),
            key,
            "{table}"
        );
    }
    let two =
        "[[pipeline]]\nplugin = \"cache\"\n[[pipeline]]\nplugin = \"cache\"\nname = \"again\"\n";
    assert_eq!(key_of(&format!("{server}{UPSTREAM}{two}")), "pipeline[1]");
}
