//! Origins of truth: each produces the model and, as it changes, revisioned change sets.
//!
//! The policy file ([`policy_file`]), loaded at start and reloaded when it changes; the embedded
//! store ([`embedded`]), a writable origin on local disk; and another rolegate ([`upstream`]),
//! followed through its Watch.

pub mod embedded;
pub mod policy_file;
pub(crate) mod record;
pub mod upstream;
