//! Webhooks: secret URLs that turn any HTTP delivery into a run, with values from the payload in
//! the prompt. `template` and `signature` are pure (no I/O); `delivery` is the path from request
//! to run, `intake` what requests share (cache, rate limits, queue), `writer` the batched durable
//! write; the services in `crate::services::webhooks` create and change webhooks.

pub mod delivery;
pub mod intake;
pub mod model;
pub mod signature;
pub mod template;
pub mod writer;
