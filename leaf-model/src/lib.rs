//! The flexmig leaf model.
//!
//! * [`inventory`]: the node inventory (`/etc/slurm/flexmig.toml`), the contract between the
//!   admin helper that writes it and the SPANK plugin that reads it.
//! * [`mig`]: recorded MIG profile tables (profiles, slice counts, legal placements) per GPU
//!   model, shared by the helper's planner and the cluster simulator.
//! * [`atomic`]: writing files so that a reader sees the old or the new content, never half.

pub mod atomic;
pub mod inventory;
pub mod layout;
pub mod mig;

pub use inventory::{Gpu, Inventory, InventoryError, Leaf};
