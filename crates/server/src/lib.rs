//! `gapless serve`: the HTTP API, the event consumers and the trigger in one process.
pub mod nats;
pub mod pubsub;
