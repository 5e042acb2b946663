//! What the load generator measures: one module per scenario (`--phase`).

pub mod admin;
pub mod background;
pub mod backup;
pub mod inbound;
pub mod memory;
pub mod poll_leased;
pub mod pollack;
pub mod push;
pub mod push_slow;
pub mod retention;
pub mod subscriptions;
pub mod tracking;
