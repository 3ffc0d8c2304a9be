//! Built-in request handlers for `scale0 worker`, and the run-a-command handler.

use bytes::Bytes;
use scale0::HandlerError;
use scale0::proto::Body;
use sha1::{Digest, Sha1};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

/// Replies with the request body unchanged.
pub(crate) fn echo(body: Body) -> Result<Body, HandlerError> {
    Ok(body)
}

/// Replies with the lowercase hex SHA-1 of the request body (all frames, concatenated).
pub(crate) fn sha1(body: Body) -> Result<Body, HandlerError> {
    Ok(vec![Bytes::from(sha1_hex(&body).into_bytes())])
}

/// Lowercase hex SHA-1 of the concatenated frames.
pub(crate) fn sha1_hex(body: &[Bytes]) -> String {
    let mut hasher = Sha1::new();
    for frame in body {
        hasher.update(frame);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sleeps, then echoes: a stand-in for slow work.
pub(crate) fn sleep(ms: u64) -> impl FnMut(Body) -> Result<Body, HandlerError> + Send + Clone {
    move |body| {
        thread::sleep(Duration::from_millis(ms));
        Ok(body)
    }
}

/// Runs `argv` once per request: the body (frames concatenated) on its stdin, its
/// stdout as the reply. A failure to start or a non-zero exit becomes an error reply.
pub(crate) fn command(
    argv: Vec<String>,
) -> impl FnMut(Body) -> Result<Body, HandlerError> + Send + Clone {
    move |body| run_command(&argv, &body)
}

fn run_command(argv: &[String], body: &[Bytes]) -> Result<Body, HandlerError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| HandlerError("no command given".into()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HandlerError(format!("cannot start {program:?}: {e}")))?;
    // Feed stdin from another thread: a command that writes a lot before reading all
    // of its input would otherwise deadlock against us.
    let stdin = child.stdin.take();
    let input: Vec<u8> = body.iter().flat_map(|f| f.iter().copied()).collect();
    let feeder = thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            // A command that exits without reading its input is not an error here.
            let _ = stdin.write_all(&input);
        }
    });
    let mut stderr = child.stderr.take();
    let err_reader = thread::spawn(move || {
        let mut text = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut text);
        }
        text
    });
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut stdout)
            .map_err(|e| HandlerError(format!("reading the output of {program:?}: {e}")))?;
    }
    let status = child
        .wait()
        .map_err(|e| HandlerError(format!("waiting for {program:?}: {e}")))?;
    let _ = feeder.join();
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        let last = stderr.lines().last().unwrap_or("").trim();
        return Err(HandlerError(format!(
            "{program} exited with {status}: {last}"
        )));
    }
    Ok(vec![Bytes::from(stdout)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_the_known_vector() {
        let body = vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc")];
        assert_eq!(sha1_hex(&body), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn command_output_is_the_reply() {
        let mut cat = command(vec!["tr".into(), "a-z".into(), "A-Z".into()]);
        let reply = cat(vec![Bytes::from_static(b"hello")]).unwrap();
        assert_eq!(reply, vec![Bytes::from_static(b"HELLO")]);
    }

    #[test]
    fn command_failure_is_an_error_with_stderr() {
        let mut fail = command(vec![
            "sh".into(),
            "-c".into(),
            "echo boom >&2; exit 3".into(),
        ]);
        let err = fail(vec![]).unwrap_err();
        assert!(err.0.contains("boom"), "{err}");
        assert!(err.0.contains('3'), "{err}");
    }

    #[test]
    fn missing_program_is_an_error() {
        let mut missing = command(vec!["/nonexistent/program".into()]);
        assert!(missing(vec![]).unwrap_err().0.contains("cannot start"));
    }
}
