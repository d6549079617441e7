//! Loading the configuration: layers, defaults and the errors that name what to fix.

use super::*;

#[test]
fn flags_and_env_win_over_the_file_and_the_file_over_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("autopilot.toml");
    std::fs::write(
        &file,
        "bind = \"127.0.0.1:9000\"\nworker_concurrency = 7\nkill_grace_secs = 3\n",
    )
    .unwrap();
    let args = ConfigArgs {
        config: Some(file),
        data_dir: Some(dir.path().into()),
        worker_concurrency: Some(2),
        ..Default::default()
    };
    let config = Config::load(args).unwrap();
    assert_eq!(config.bind.port(), 9000);
    assert_eq!(config.worker_concurrency, 2);
    assert_eq!(config.kill_grace, Duration::from_secs(3));
    assert!(config.database_url.ends_with("autopilot.db"));
    assert_eq!(config.public_url, "http://127.0.0.1:9000");
}

#[test]
fn unknown_file_keys_and_bad_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "bnd = \"x\"\n").unwrap();
    let err = Config::load(ConfigArgs {
        config: Some(file),
        data_dir: Some(dir.path().into()),
        ..Default::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("bnd"), "{err}");
    let err = Config::load(ConfigArgs {
        data_dir: Some(dir.path().into()),
        database_url: Some("mysql://x".into()),
        ..Default::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("AUTOPILOT_DATABASE_URL"), "{err}");
    let err = Config::load(ConfigArgs {
        data_dir: Some(dir.path().into()),
        database_max_connections: Some(0),
        ..Default::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("AUTOPILOT_DATABASE_MAX_CONNECTIONS"), "{err}");
}

#[test]
fn postgres_connections_default_to_twice_the_cores_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let load = |max: Option<u32>| {
        Config::load(ConfigArgs {
            data_dir: Some(dir.path().into()),
            database_max_connections: max,
            ..Default::default()
        })
        .unwrap()
        .database_max_connections
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
    assert_eq!(load(None), (cores * 2).clamp(2, 16));
    assert_eq!(load(Some(40)), 40);
}

#[test]
fn secrets_are_redacted_in_debug() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(ConfigArgs {
        data_dir: Some(dir.path().into()),
        admin_token: Some("super-secret-token-123".into()),
        database_url: Some("postgres://ap:hunter2@db/ap".into()),
        ..Default::default()
    })
    .unwrap();
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("super-secret") && !shown.contains("hunter2"),
        "{shown}"
    );
}

/// Each setting is one field: its flag, its variable and its file key share its name.
#[test]
fn every_setting_has_its_flag_variable_and_file_key_named_alike() {
    use clap::Args;
    let command = ConfigArgs::augment_args(clap::Command::new("autopilot"));
    let file_keys: Vec<String> = match serde_json::to_value(ConfigArgs::default()).unwrap() {
        serde_json::Value::Object(keys) => keys.keys().cloned().collect(),
        other => panic!("settings serialize as a table, got {other}"),
    };
    let mut flags = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str().to_owned();
        let env = arg
            .get_env()
            .and_then(|env| env.to_str())
            .unwrap_or_default();
        assert_eq!(env, format!("AUTOPILOT_{}", id.to_uppercase()), "{id}");
        assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()), "{id}");
        flags.push(id);
    }
    flags.retain(|id| id != "config");
    flags.sort();
    let mut file_keys = file_keys;
    file_keys.sort();
    assert_eq!(
        flags, file_keys,
        "every flag but --config is a file key too"
    );
    assert!(flags.len() >= 22, "{flags:?}");
}

#[test]
fn allowed_mcp_origins_get_an_explicit_port_and_bad_ones_are_named() {
    for (given, kept) in [
        ("https://App.Example.com", "https://app.example.com:443"),
        ("http://localhost", "http://localhost:80"),
        (
            "https://app.example.com:8443",
            "https://app.example.com:8443",
        ),
        ("http://localhost:*", "http://localhost:*"),
        ("https://[::1]", "https://[::1]:443"),
        ("https://[::1]:9000", "https://[::1]:9000"),
    ] {
        assert_eq!(allowed_origin(given).unwrap(), kept, "{given}");
    }
    for bad in [
        "app.example.com",
        "ftp://app.example.com",
        "https://app.example.com/path",
        "https://user@app.example.com",
        "https://app.example.com:0",
        "https://app.example.com:http",
        "https://",
        "https://[::1]x",
    ] {
        let err = allowed_origin(bad).unwrap_err().to_string();
        assert!(
            err.contains("AUTOPILOT_MCP_ALLOWED_ORIGINS") && err.contains(bad),
            "{bad}: {err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(ConfigArgs {
        data_dir: Some(dir.path().into()),
        mcp_allowed_origins: Some(vec![" https://mcp.example.com ".into(), String::new()]),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(config.mcp_allowed_origins, ["https://mcp.example.com:443"]);
}
