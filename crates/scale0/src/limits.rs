//! File-descriptor limits: every ZeroMQ connection is a descriptor, and a forwarder or a
//! process running many nodes needs thousands.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises the soft limit on open files to the hard limit; returns the limit now in force
/// (`None`: unlimited). Failing to raise it is not an error: the old limit stays.
pub fn raise_fd_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    limit.current
}

/// The soft and hard limits on open files now (`None`: unlimited).
pub fn fd_limits() -> (Option<u64>, Option<u64>) {
    let limit = getrlimit(Resource::Nofile);
    (limit.current, limit.maximum)
}
