//! What a pipeline worker does with a job: any [`Task`], such as a closure or a command
//! run once per job ([`CommandTask`]) and stopped at the job's timeout.

use crate::shutdown::Shutdown;
use bytes::Bytes;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How one run of a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskOutcome {
    /// Success, with the job's output.
    Ok(Bytes),
    /// Failure, with why (for a command: its exit status and the end of its stderr).
    Failed(String),
    /// Stopped at the job's timeout.
    TimedOut,
    /// Could not start, for a reason a retry cannot change (no such program, arguments
    /// too long, a NUL byte in one); the map fails the job without running it again.
    Unrunnable(String),
}

/// Runs jobs. Shared by all of a worker's slots, so it runs on several threads at once.
pub trait Task: Send + Sync + 'static {
    /// Runs one job. `timeout` is the job's limit (`None` for none); a task that can stop
    /// early should, and should also stop when `cancel` is triggered.
    fn run(&self, payload: &[u8], timeout: Option<Duration>, cancel: &Shutdown) -> TaskOutcome;
}

impl<F> Task for F
where
    F: Fn(&[u8]) -> Result<Bytes, String> + Send + Sync + 'static,
{
    fn run(&self, payload: &[u8], timeout: Option<Duration>, _cancel: &Shutdown) -> TaskOutcome {
        let started = Instant::now();
        match self(payload) {
            // A closure cannot be stopped: one that overran is reported as timed out.
            _ if timeout.is_some_and(|t| started.elapsed() > t) => TaskOutcome::TimedOut,
            Ok(out) => TaskOutcome::Ok(out),
            Err(why) => TaskOutcome::Failed(why),
        }
    }
}

/// Runs a command per job. An argument containing `{}` gets the job's payload in its
/// place; with no `{}` anywhere, the payload goes to the command's stdin. Its stdout is
/// the output; a non-zero exit is a failure. The command runs in its own process group,
/// and the whole group is killed at the job's timeout or on cancel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandTask {
    argv: Vec<OsString>,
    substitutes: bool,
}

/// Largest stderr kept for a failure message.
const STDERR_TAIL: usize = 2048;

impl CommandTask {
    /// A task running `argv` (program first). Errors if it is empty.
    pub fn new(argv: Vec<String>) -> crate::Result<Self> {
        if argv.is_empty() {
            return Err(crate::Error::InvalidConfig("no command given".into()));
        }
        let substitutes = argv.iter().any(|a| a.contains("{}"));
        Ok(Self {
            argv: argv.into_iter().map(OsString::from).collect(),
            substitutes,
        })
    }

    fn command(&self, payload: &[u8]) -> Command {
        let args: Vec<OsString> = self
            .argv
            .iter()
            .map(|a| {
                if !self.substitutes {
                    return a.clone();
                }
                let bytes = a.clone().into_vec();
                let mut out = Vec::with_capacity(bytes.len() + payload.len());
                let mut rest = &bytes[..];
                while let Some(at) = rest.windows(2).position(|w| w == b"{}") {
                    out.extend_from_slice(&rest[..at]);
                    out.extend_from_slice(payload);
                    rest = &rest[at + 2..];
                }
                out.extend_from_slice(rest);
                OsString::from_vec(out)
            })
            .collect();
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..])
            .stdin(if self.substitutes {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so a timeout kills what a shell script started too.
            .process_group(0);
        cmd
    }
}

/// Whether a failure to start a command would happen again on a retry: a missing or
/// forbidden program, arguments the kernel or Rust refuse (too long, a NUL byte). Not
/// resource shortages (EAGAIN, ENOMEM), which pass.
fn cannot_ever_start(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    const E2BIG: i32 = 7;
    const ENOEXEC: i32 = 8;
    matches!(
        e.kind(),
        ErrorKind::NotFound | ErrorKind::PermissionDenied | ErrorKind::InvalidInput
    ) || matches!(e.raw_os_error(), Some(E2BIG | ENOEXEC))
}

impl Task for CommandTask {
    fn run(&self, payload: &[u8], timeout: Option<Duration>, cancel: &Shutdown) -> TaskOutcome {
        let program = self.argv[0].to_string_lossy().into_owned();
        let mut child = match self.command(payload).spawn() {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cannot start {program:?}: {e}");
                return if cannot_ever_start(&e) {
                    TaskOutcome::Unrunnable(why)
                } else {
                    TaskOutcome::Failed(why)
                };
            }
        };
        let group = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        // The watchdog kills the group at the deadline or on cancel; the child is not
        // reaped until we wait below, so its id cannot be reused meanwhile.
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let cancel = cancel.clone();
        let deadline = timeout.map(|t| Instant::now() + t);
        let watchdog = thread::spawn(move || {
            loop {
                let step = Duration::from_millis(Shutdown::CHECK_INTERVAL_MS);
                let wait = deadline.map_or(step, |d| {
                    d.saturating_duration_since(Instant::now()).min(step)
                });
                match done_rx.recv_timeout(wait) {
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return false,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let expired = deadline.is_some_and(|d| Instant::now() >= d);
                        if expired || cancel.is_triggered() {
                            if let Some(pid) = group {
                                // Already gone is fine: that is what we wanted.
                                let _ = rustix::process::kill_process_group(
                                    pid,
                                    rustix::process::Signal::KILL,
                                );
                            }
                            return expired;
                        }
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        let input = payload.to_vec();
        // Fed from its own thread: a command that writes much before reading all of its
        // input would otherwise deadlock against us.
        let feeder = stdin.map(|mut s| {
            thread::spawn(move || {
                // A command that exits without reading its input is not an error.
                let _ = s.write_all(&input);
            })
        });
        let mut stderr = child.stderr.take();
        let err_reader = thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_end(&mut text);
            }
            let from = text.len().saturating_sub(STDERR_TAIL);
            String::from_utf8_lossy(&text[from..]).into_owned()
        });
        let mut stdout = Vec::new();
        let read = child
            .stdout
            .take()
            .map(|mut out| out.read_to_end(&mut stdout));
        let status = child.wait();
        let _ = done_tx.send(());
        let timed_out = watchdog.join().unwrap_or(false);
        if let Some(f) = feeder {
            let _ = f.join();
        }
        let stderr = err_reader.join().unwrap_or_default();
        if timed_out {
            return TaskOutcome::TimedOut;
        }
        if let Some(Err(e)) = read {
            return TaskOutcome::Failed(format!("reading the output of {program:?}: {e}"));
        }
        match status {
            Ok(s) if s.success() => TaskOutcome::Ok(Bytes::from(stdout)),
            Ok(s) => {
                let last = stderr.trim_end().lines().last().unwrap_or("").trim();
                TaskOutcome::Failed(if last.is_empty() {
                    format!("{program} exited with {s}")
                } else {
                    format!("{program} exited with {s}: {last}")
                })
            }
            Err(e) => TaskOutcome::Failed(format!("waiting for {program:?}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &[&str], payload: &str, timeout_ms: Option<u64>) -> TaskOutcome {
        let task = CommandTask::new(argv.iter().map(|s| s.to_string()).collect()).unwrap();
        task.run(
            payload.as_bytes(),
            timeout_ms.map(Duration::from_millis),
            &Shutdown::new(),
        )
    }

    #[test]
    fn payload_goes_to_stdin_or_in_place_of_braces() {
        assert_eq!(
            run(&["tr", "a-z", "A-Z"], "hello", None),
            TaskOutcome::Ok(Bytes::from_static(b"HELLO"))
        );
        assert_eq!(
            run(&["echo", "<{}>", "{}{}"], "x y", None),
            TaskOutcome::Ok(Bytes::from_static(b"<x y> x yx y\n"))
        );
    }

    #[test]
    fn a_failure_says_the_status_and_the_end_of_stderr() {
        let TaskOutcome::Failed(why) = run(
            &["sh", "-c", "echo first >&2; echo boom >&2; exit 3"],
            "",
            None,
        ) else {
            panic!("should fail");
        };
        assert!(why.contains("boom") && why.contains('3'), "{why}");
        assert!(matches!(
            run(&["/nonexistent/program"], "", None),
            TaskOutcome::Unrunnable(w) if w.contains("cannot start")
        ));
        assert!(
            matches!(run(&["echo", "a\0b"], "", None), TaskOutcome::Unrunnable(_)),
            "a NUL in an argument cannot be passed, now or on a retry"
        );
    }

    #[test]
    fn the_timeout_kills_the_whole_group() {
        // The shell's child holds stdout open: only killing the group ends the read.
        let started = Instant::now();
        let outcome = run(&["sh", "-c", "sleep 30; echo late"], "", Some(200));
        assert_eq!(outcome, TaskOutcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn cancel_stops_a_running_command() {
        let task = CommandTask::new(vec!["sleep".into(), "30".into()]).unwrap();
        let cancel = Shutdown::new();
        let c = cancel.clone();
        let t = thread::spawn(move || task.run(b"", None, &c));
        thread::sleep(Duration::from_millis(50));
        cancel.trigger();
        assert!(matches!(t.join().unwrap(), TaskOutcome::Failed(_)));
    }
}
