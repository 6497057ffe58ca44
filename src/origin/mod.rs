//! Origins of truth: each produces the model and, as it changes, revisioned change sets.
//!
//! Today: the policy file ([`policy_file`]), loaded at start and reloaded when it changes; and
//! another rolegate ([`upstream`]), followed through its Watch.

pub mod policy_file;
pub mod upstream;
