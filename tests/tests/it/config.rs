//! The command line as a user meets it: `--config FILE` (TOML, keys = long flag
//! names, flags override it), `--print-config` (round trip), `--help`, and the exit
//! codes: 0 clean stop, 1 failure at run time, 2 bad usage or configuration.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ringrouter_tests::{router_bin, Driver, RouterProc, TempFile};

/// Runs the router binary to completion (for invocations that never start it).
fn run(args: &[&str]) -> Output {
    Command::new(router_bin())
        .args(args)
        .stdin(Stdio::null())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", router_bin().display()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts exit code 2 and that stderr mentions every needle.
fn assert_usage_error(out: &Output, needles: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

#[test]
fn bad_flags_exit_2() {
    assert_usage_error(&run(&["--no-such-flag"]), &["--no-such-flag"]);
    assert_usage_error(&run(&["--shards", "many"]), &["--shards"]);
    assert_usage_error(
        &run(&["--max-frame-bytes", "8ib"]),
        &["--max-frame-bytes", "8ib"],
    );
    assert_usage_error(&run(&["--login-timeout", "soon"]), &["--login-timeout"]);
}

#[test]
fn bad_config_files_exit_2_naming_the_file() {
    let missing = "/nonexistent/ringrouter-config.toml";
    assert_usage_error(&run(&["--config", missing]), &[missing]);

    let not_toml = TempFile::new("bad.toml", b"listen = 127.0.0.1:0\n");
    assert_usage_error(&run(&["--config", not_toml.as_str()]), &[not_toml.as_str()]);

    let bad_value = TempFile::new("value.toml", b"max-pending-bytes = \"8ib\"\n");
    assert_usage_error(
        &run(&["--config", bad_value.as_str()]),
        &[bad_value.as_str(), "max-pending-bytes", "8ib"],
    );
}

#[test]
fn unknown_keys_exit_2_naming_the_key_and_the_file() {
    let f = TempFile::new("unknown.toml", b"shards = 1\nmax-frames = 5\n");
    assert_usage_error(&run(&["--config", f.as_str()]), &[f.as_str(), "max-frames"]);
    // Keys are spelled like the flags (kebab-case); the snake_case spelling is refused
    // with a pointer to the right one.
    let f = TempFile::new("snake.toml", b"max_frame_bytes = 65536\n");
    assert_usage_error(
        &run(&["--config", f.as_str()]),
        &[f.as_str(), "max_frame_bytes", "max-frame-bytes"],
    );
}

#[test]
fn a_refused_configuration_exits_2() {
    // StartError::Config, reached through a config file.
    let f = TempFile::new("jwt.toml", b"auth = \"jwt\"\n");
    let exit = match RouterProc::launch(&["--config", f.as_str()], Driver::Default) {
        Ok(r) => panic!("started with --auth jwt and no secret: {}", r.banner),
        Err(e) => e,
    };
    assert_eq!(exit.code, Some(2), "{exit}");
    assert!(exit.stderr.contains("--jwt-secret-file"), "{exit}");
}

/// The memory budgets are checked against what they must hold: a frame being read
/// (WebSocket: twice) within `--max-input-bytes`, the router itself under `--max-memory`.
#[test]
fn memory_budgets_too_small_to_work_are_refused() {
    assert_usage_error(
        &run(&["--print-config", "--max-input-bytes", "1MiB"]),
        &["--max-input-bytes", "--max-frame-bytes"],
    );
    assert_usage_error(
        &run(&["--print-config", "--max-memory", "8MiB"]),
        &["--max-memory", "64 MiB"],
    );
    assert_usage_error(
        &run(&["--print-config", "--max-memory", "lots"]),
        &["--max-memory"],
    );
    for ok in ["0", "auto", "64MiB"] {
        let out = run(&["--print-config", "--max-memory", ok]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "--max-memory {ok}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn help_and_version_exit_0() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for needle in [
        "Network:",
        "Auth:",
        "Limits:",
        "Timeouts:",
        "Storage:",
        "Logging:",
        "--max-frame-bytes <SIZE>",
        "--login-timeout <DURATION>",
        "--listen <ADDR>",
        "--config <FILE>",
        "--shards <N>",
        "--allow-thp",
        "--argon2-cheap",
        "RUST_LOG",
        "MONOIO_FORCE_LEGACY_DRIVER=1",
        "Exit status",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with("ringrouter "));
}

#[test]
fn print_config_is_toml_that_reads_back_the_same() {
    let out = run(&[
        "--print-config",
        "--shards",
        "3",
        "--max-pending-bytes",
        "64k",
        "--max-frame-bytes",
        "1MB",
        "--heartbeat-interval",
        "1.5",
        "--forget-idle-users-after",
        "7days",
        "--durability",
        "sync",
        "--no-pin",
        "--data-dir",
        "/tmp/a dir with \"quotes\"",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    for line in [
        "shards = 3",
        "max-pending-bytes = \"64k\"  # 65536 bytes",
        "max-frame-bytes = \"1MB\"  # 1000000 bytes",
        "durability = \"sync\"",
        "no-pin = true",
        "log-filter = ",
    ] {
        assert!(
            printed.lines().any(|l| l.starts_with(line)),
            "no line {line:?} in:\n{printed}"
        );
    }
    // Fed back, it prints itself: the same configuration.
    let f = TempFile::new("printed.toml", printed.as_bytes());
    let again = run(&["--print-config", "--config", f.as_str()]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), printed);

    // And the defaults print and read back too.
    let defaults = text(&run(&["--print-config"]).stdout);
    let f = TempFile::new("defaults.toml", defaults.as_bytes());
    assert_eq!(
        text(&run(&["--print-config", "--config", f.as_str()]).stdout),
        defaults
    );
}

#[test]
fn flags_override_the_config_file() {
    let f = TempFile::new(
        "shards.toml",
        b"# a comment\nshards = 3\nlogin-timeout = \"4s\"\nmax-frame-bytes = \"64KiB\"\n",
    );
    let r = RouterProc::start(&["--config", f.as_str()]);
    assert!(r.banner.contains("(3 shards,"), "{}", r.banner);
    let (code, err) = r.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");

    let r = RouterProc::start(&["--config", f.as_str(), "--shards", "1"]);
    assert!(r.banner.contains("(1 shards,"), "{}", r.banner);
    let out = run(&["--config", f.as_str(), "--shards", "2", "--print-config"]);
    let printed = text(&out.stdout);
    assert!(printed.contains("\nshards = 2\n"), "{printed}");
    assert!(printed.contains("\nlogin-timeout = \"4s\"\n"), "{printed}");
}

#[test]
fn clean_sigterm_exits_0() {
    let r = RouterProc::start(&["--shards", "2"]);
    let mut c = r.client("config-bye");
    c.ping().expect("ping");
    let (code, err) = r.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn failures_at_run_time_exit_1() {
    // The address is taken by another router.
    let first = RouterProc::start(&["--shards", "1"]);
    let addr = first.addr.to_string();
    let exit = match RouterProc::launch(&["--listen", &addr, "--shards", "1"], Driver::Default) {
        Ok(r) => panic!("a second router listens on {addr}: {}", r.banner),
        Err(e) => e,
    };
    assert_eq!(exit.code, Some(1), "{exit}");
    assert!(exit.stderr.contains(&addr), "{exit}");

    // The store cannot be opened: its directory is a file.
    let not_a_dir = TempFile::new("not-a-dir", b"");
    let exit = match RouterProc::launch(&["--data-dir", not_a_dir.as_str()], Driver::Default) {
        Ok(r) => panic!("started with a file as data dir: {}", r.banner),
        Err(e) => e,
    };
    assert_eq!(exit.code, Some(1), "{exit}");
}

/// A second router on a data directory another router holds exits 1 and says so (it
/// said `storage error: FjallError: Locked`).
#[test]
fn a_data_directory_in_use_is_named_as_such() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_str().expect("UTF-8 temp path");
    let _first = RouterProc::start(&["--data-dir", path]);
    let exit = match RouterProc::launch(&["--data-dir", path], Driver::Default) {
        Ok(r) => panic!(
            "a second router started on the same data directory: {}",
            r.banner
        ),
        Err(e) => e,
    };
    assert_eq!(exit.code, Some(1), "{exit}");
    assert!(exit.stderr.contains("in use by another process"), "{exit}");
}
