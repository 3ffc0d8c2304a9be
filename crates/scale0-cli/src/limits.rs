//! The bound on what a server or peer reads of one message, shared by every command.

use scale0::proto::{DEFAULT_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES};

/// `--max-message-bytes` for the commands whose bound is only a cap on what they read.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MessageLimit {
    /// Largest message read from a peer, in bytes (at least 1024): a peer that sends a
    /// larger frame is disconnected before it is stored.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES, value_parser = parse_max_message_bytes)]
    pub(crate) max_message_bytes: usize,
}

/// Parses a message bound: a byte count no smaller than every protocol command needs.
pub(crate) fn parse_max_message_bytes(text: &str) -> Result<usize, String> {
    let n: usize = text
        .parse()
        .map_err(|e| format!("{text:?} is not a byte count: {e}"))?;
    if n < MIN_MAX_MESSAGE_BYTES {
        return Err(format!(
            "{n} is below {MIN_MAX_MESSAGE_BYTES} bytes, too small for the protocol's own commands"
        ));
    }
    Ok(n)
}
