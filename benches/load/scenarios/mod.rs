//! The scenarios beyond intake, poll + ack, memory and push, one module each.

pub mod admin;
pub mod background;
pub mod backup;
pub mod poll_leased;
pub mod push_slow;
pub mod retention;
pub mod subscriptions;
pub mod tracking;
