//! The libzmq draft-API socket options scale0 needs that the `zmq` crate does not wrap.
//! Each is one `zmq_setsockopt` call; libzmq is built with `ZMQ_BUILD_DRAFT_API` by our
//! `zmq-sys`, without which libzmq refuses these options with EINVAL.

use std::ffi::c_int;

/// `ZMQ_ROUTER_NOTIFY` (zmq_draft.h).
const ZMQ_ROUTER_NOTIFY: c_int = 97;
/// `ZMQ_NOTIFY_DISCONNECT` (zmq_draft.h).
const ZMQ_NOTIFY_DISCONNECT: c_int = 2;

/// Makes a ROUTER `socket` deliver `[routing id, empty frame]` when a peer's connection
/// ends, so the owner learns at once that a peer is gone (a closed REQ socket, a killed
/// process), instead of at its next failed send or heartbeat.
pub fn notify_disconnects(socket: &mut zmq::Socket) -> Result<(), zmq::Error> {
    let value: c_int = ZMQ_NOTIFY_DISCONNECT;
    // SAFETY: the pointer is the live socket `socket` borrows mutably for the call, and
    // the option value points at a c_int of the size passed, alive across the call
    // (libzmq copies it).
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            ZMQ_ROUTER_NOTIFY,
            (&raw const value).cast(),
            std::mem::size_of::<c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: zmq_errno only reads the calling thread's errno.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_router_hears_of_a_peer_that_disconnects() {
        let ctx = zmq::Context::new();
        let mut router = ctx.socket(zmq::ROUTER).unwrap();
        notify_disconnects(&mut router).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = router.get_last_endpoint().unwrap().unwrap();
        let dealer = ctx.socket(zmq::DEALER).unwrap();
        dealer.set_identity(b"peer").unwrap();
        dealer.set_linger(0).unwrap();
        dealer.connect(&endpoint).unwrap();
        dealer.send("hello", 0).unwrap();
        router.set_rcvtimeo(10_000).unwrap();
        assert_eq!(
            router.recv_multipart(0).unwrap(),
            [b"peer".to_vec(), b"hello".to_vec()]
        );
        drop(dealer);
        assert_eq!(
            router.recv_multipart(0).unwrap(),
            [b"peer".to_vec(), Vec::new()],
            "the disconnect notification"
        );
    }

    #[test]
    fn a_socket_that_is_not_a_router_refuses_the_option() {
        let ctx = zmq::Context::new();
        let mut dealer = ctx.socket(zmq::DEALER).unwrap();
        assert!(notify_disconnects(&mut dealer).is_err());
    }
}
