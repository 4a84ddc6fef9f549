//! HTTP rules shared by the whole gateway, below everything else in the module graph.
//!
//! [`normalize`] holds the one canonical form of a request target: the path and host that
//! the router matches, every policy sees, the access log records and the upstream receives.

pub mod normalize;
