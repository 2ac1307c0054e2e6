//! The test guests of `guest/testing`, embedded: the default policy with one deliberate fault
//! each, and an honest second version. For the host's tests only.

/// Honest, and says it is version 0.2.0.
pub static HONEST_V2: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/honest-v2.wasm"));
/// Traps (aborts) when a packet's source port is 6666.
pub static TRAP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/trap.wasm"));
/// Loops forever when a packet's source port is 7777.
pub static SPIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/spin.wasm"));
/// Grows memory without bound when a packet's source port is 8888.
pub static HOG: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hog.wasm"));
/// Answers one verdict too few on every batch.
pub static SHORT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/short.wasm"));

/// Answers `allow` to a VPC its configuration does not have for each packet whose source port
/// is 5555.
pub static UNKNOWN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/unknown.wasm"));

/// Judges nothing: answers `drop(unknown-vpc)` for every packet without reading it, so a
/// batch through it costs only the crossing (benchmarks).
pub static NULL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/null.wasm"));

/// Gets the bundled case `ipv6-default-and-not` wrong: judges every ICMPv6 packet
/// `drop(source-not-exposed)`.
pub static WRONG: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/wrong.wasm"));

/// The default policy, handing no state over: the host configures every instance.
pub static UNSHARED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/unshared.wasm"));

/// Hands over the state of another configuration than the one it was given (one VPC, VNI 1,
/// no peering): instances that adopt it judge otherwise than the configured one.
pub static DRIFTING: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/drifting.wasm"));

/// Hands over words that are no state: every instance that tries to adopt them refuses them.
pub static GARBLED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/garbled.wasm"));

/// The example module `guest/examples/deny-list`: TCP to ports 23 and 445 is
/// `drop(denied)` in front of the peering filter.
pub static DENY_LIST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/deny-list.wasm"));

/// The source port that sets off each faulty guest.
pub mod trigger {
    /// [`TRAP`](super::TRAP)'s.
    pub const TRAP: u16 = 6666;
    /// [`SPIN`](super::SPIN)'s.
    pub const SPIN: u16 = 7777;
    /// [`HOG`](super::HOG)'s.
    pub const HOG: u16 = 8888;
    /// [`UNKNOWN`](super::UNKNOWN)'s.
    pub const UNKNOWN: u16 = 5555;
}
