//! `--config FILE`: `scale0 config --default` output is a working file, keys act like
//! their flags, flags win, and a bad file is refused naming the file, line and key.

mod common;

use common::{Lines, run, scale0, spawn_lines};

fn default_file(command: &str) -> String {
    let mut c = scale0();
    c.args(["config", "--default", command]);
    let out = run(c);
    assert!(out.status.success(), "config --default {command}");
    String::from_utf8(out.stdout).unwrap()
}

/// Starts `scale0 ARGS...` and returns its `listening` endpoints.
fn listening(args: &[&str], n: usize) -> (common::Proc, Vec<String>) {
    let mut c = scale0();
    c.args(args);
    let (p, lines): (_, Lines) = spawn_lines("server", c);
    let endpoints = lines.listening(n);
    (p, endpoints)
}

#[test]
fn every_default_file_is_accepted_by_its_command() {
    let dir = tempfile::tempdir().unwrap();
    for command in [
        "broker",
        "worker",
        "queue",
        "forwarder",
        "node",
        "vent",
        "work",
        "sink",
        "map",
        "request",
        "status",
    ] {
        let text = default_file(command);
        assert!(text.contains(&format!("scale0 {command}")), "{text}");
        // Every key a command has is there, set or commented, with its help above it.
        assert!(
            text.lines().filter(|l| l.starts_with("# ")).count() > 3,
            "{text}"
        );
        let path = dir.path().join(format!("{command}.toml"));
        std::fs::write(&path, &text).unwrap();
        // The file parses and every value in it passes its flag's check: what is left
        // is clap's own verdict on the merged command line (--help stops it there).
        let mut c = scale0();
        c.args([command, "--config"]).arg(&path).arg("--help");
        let out = run(c);
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The same run does check the file: one unknown key more and it is refused.
        std::fs::write(&path, format!("{text}\nnot-a-key = 1\n")).unwrap();
        let mut c = scale0();
        c.args([command, "--config"]).arg(&path).arg("--help");
        let out = run(c);
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not-a-key"));
    }
}

#[test]
fn keys_act_like_flags_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    let socket = dir.path().join("not-used");
    let mut text = default_file("broker");
    // The file binds an ipc endpoint and adds an events endpoint; the command line's
    // --bind replaces the file's, the events stay.
    text = text.replace(
        "bind = [\"tcp://*:5555\"]",
        &format!("bind = [\"ipc://{}\"]", socket.display()),
    );
    text = text.replace(
        "# events = [\"ENDPOINT\"]",
        "events = [\"tcp://127.0.0.1:*\"]",
    );
    std::fs::write(&path, &text).unwrap();
    let path = path.display().to_string();
    let (_broker, endpoints) = listening(
        &["broker", "--config", &path, "--bind", "tcp://127.0.0.1:*"],
        2,
    );
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    assert!(
        endpoints.iter().all(|e| e.starts_with("tcp://127.0.0.1:")),
        "{endpoints:?}"
    );
    assert!(!socket.exists(), "the file's --bind was overridden");
}

#[test]
fn a_bad_file_names_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "bind = [\"tcp://127.0.0.1:*\"]\nheartbeat-interval-ms = \"soon\"\n",
            ":2: key `heartbeat-interval-ms`",
        ),
        (
            "\n\nbind = [\"tcp://127.0.0.1:*\"]\nheartbeat-liveness = 0\n",
            ":4: key `heartbeat-liveness`",
        ),
        (
            "bind = [\"tcp://127.0.0.1:*\"]\nno_such_thing = 1\n",
            ":2: unknown key `no_such_thing`",
        ),
        (
            "bind = \"tcp://127.0.0.1:*\"\nrepair-log = \"yes\"\n",
            ":2: key `repair-log`: expected true or false",
        ),
        (
            "grace-ms = [1, 2]\n",
            ":1: key `grace-ms`: expected a single value",
        ),
        ("bind = [\"tcp://127.0.0.1:*\"\n", ":1: not valid TOML"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let mut c = scale0();
        c.args(["broker", "--config"]).arg(&path);
        let out = run(c);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert!(out.stdout.is_empty(), "nothing listens: {text:?}");
        assert!(
            err.contains(&format!("{}{expected}", path.display())),
            "{text:?}: {err}"
        );
    }
    let mut c = scale0();
    c.args(["broker", "--config"])
        .arg(dir.path().join("missing.toml"));
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}
