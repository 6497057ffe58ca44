//! Origins of truth: each produces the model and, as it changes, revisioned change sets.
//!
//! Today: the policy file ([`policy_file`]), loaded at start and reloaded when it changes.

pub mod policy_file;
