//! Default endpoints: the ZeroMQ Guide's ports, so its example programs in every language
//! work against scale0 unchanged. Servers bind every interface; clients connect to the
//! same port on `localhost`.

/// The broker's ROUTER.
pub const BROKER: &str = "tcp://*:5555";
/// Where clients and workers find the broker.
pub const BROKER_CONNECT: &str = "tcp://localhost:5555";
/// The queue device's socket for REQ clients.
pub const QUEUE_FRONTEND: &str = "tcp://*:5559";
/// The queue device's socket for REP servers.
pub const QUEUE_BACKEND: &str = "tcp://*:5560";
/// The queue device's socket for Paranoid Pirate workers.
pub const QUEUE_WORKERS: &str = "tcp://*:5556";
/// The ventilator's (or map's) jobs socket.
pub const VENT: &str = "tcp://*:5557";
/// Its port, which `scale0 work --from HOST` pulls jobs from.
pub const VENT_PORT: u16 = 5557;
/// The sink's (or map's) results socket, at the port after the ventilator's.
pub const SINK: &str = "tcp://*:5558";
/// The forwarder's XSUB, which nodes publish to.
pub const FORWARDER_IN: &str = "tcp://*:5561";
/// The forwarder's XPUB, which nodes subscribe to.
pub const FORWARDER_OUT: &str = "tcp://*:5562";
/// Its port, which `scale0 node --via HOST` publishes to (and subscribes at the next).
pub const FORWARDER_PORT: u16 = 5561;
/// Where nodes publish.
pub const FORWARDER_IN_CONNECT: &str = "tcp://localhost:5561";
/// Where nodes subscribe.
pub const FORWARDER_OUT_CONNECT: &str = "tcp://localhost:5562";
/// Where `scale0 watch` reads a broker's events.
pub const EVENTS_CONNECT: &str = "tcp://localhost:5563";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_endpoints_agree() {
        assert!(VENT.ends_with(&format!(":{VENT_PORT}")));
        assert!(SINK.ends_with(&format!(":{}", VENT_PORT + 1)));
        assert!(FORWARDER_IN.ends_with(&format!(":{FORWARDER_PORT}")));
        assert!(FORWARDER_OUT.ends_with(&format!(":{}", FORWARDER_PORT + 1)));
        for (bind, connect) in [
            (BROKER, BROKER_CONNECT),
            (FORWARDER_IN, FORWARDER_IN_CONNECT),
            (FORWARDER_OUT, FORWARDER_OUT_CONNECT),
        ] {
            assert_eq!(bind.replace('*', "localhost"), connect);
        }
    }
}
