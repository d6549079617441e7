//! The messages between control planes and workers, decoded from the bus as JSON.
//!
//! Input: `TYPE \n JSON`: which message the bytes are read as (`worker_request`, `worker_reply`,
//! `run_request`, `event_batch`, `control`, `notice`, `run_spec`, `attempt_end`; any other first
//! line tries them all), then the message body as it would arrive on the bus.
//!
//! Properties: no bytes make decoding panic; a message that decodes encodes to JSON that decodes
//! to the same message and encodes to the same bytes again; and splitting a reply into one reply
//! per item never panics, giving exactly as many replies as asked for when it succeeds.
#![no_main]

use autopilot_proto::{
    AttemptEnd, ControlMessage, EventBatch, Notice, RunRequest, RunSpec, WorkerReply, WorkerRequest,
};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fuzz_target!(|data: &[u8]| {
    let (kind, body) = match data.iter().position(|&byte| byte == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&data[..0], data),
    };
    let all = !matches!(
        kind,
        b"worker_request"
            | b"worker_reply"
            | b"run_request"
            | b"event_batch"
            | b"control"
            | b"notice"
            | b"run_spec"
            | b"attempt_end"
    );
    let wants = |name: &[u8]| all || kind == name;
    if wants(b"worker_request") {
        round_trip::<WorkerRequest>(body);
    }
    if wants(b"worker_reply") {
        if let Some(reply) = round_trip::<WorkerReply>(body) {
            for count in [0, 1, 2, 16] {
                if let Ok(replies) = reply.clone().into_each(count) {
                    assert_eq!(replies.len(), count);
                }
            }
        }
    }
    if wants(b"run_request") {
        round_trip::<RunRequest>(body);
    }
    if wants(b"event_batch") {
        round_trip::<EventBatch>(body);
    }
    if wants(b"control") {
        round_trip::<ControlMessage>(body);
    }
    if wants(b"notice") {
        round_trip::<Notice>(body);
    }
    if wants(b"run_spec") {
        round_trip::<RunSpec>(body);
    }
    if wants(b"attempt_end") {
        round_trip::<AttemptEnd>(body);
    }
});

/// Decodes `bytes` as a `T`; one that decodes survives encoding and decoding again unchanged.
fn round_trip<T>(bytes: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let message: T = serde_json::from_slice(bytes).ok()?;
    let encoded = serde_json::to_vec(&message).expect("a decoded message encodes");
    let decoded: T = serde_json::from_slice(&encoded).unwrap_or_else(|err| {
        panic!(
            "its own encoding does not decode ({err}): {}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(decoded, message, "{}", String::from_utf8_lossy(&encoded));
    assert_eq!(
        serde_json::to_vec(&decoded).expect("encodes"),
        encoded,
        "a second encoding differs"
    );
    Some(message)
}
