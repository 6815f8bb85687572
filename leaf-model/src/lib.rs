//! The flexmig leaf model.
//!
//! * [`inventory`]: the node inventory (`/etc/slurm/flexmig.toml`), the contract between the
//!   admin helper that writes it and the SPANK plugin that reads it.
//! * [`mig`]: recorded MIG profile tables (profiles, slice counts, legal placements) per GPU
//!   model, shared by the helper's planner and the cluster simulator.
//! * [`layout`]: the leaf layout planner (which 1g instances cut a GPU into leaves).
//! * [`gres_order`]: which leaf gets which Slurm GRES index (flexmig's order, and how Slurm
//!   numbers gres.conf by the slurm.conf `Gres=` type order).
//! * [`atomic`]: writing a file, or a set of files, so that a reader sees the old or the new
//!   content, never half.

pub mod atomic;
pub mod gres_detail;
pub mod gres_order;
pub mod holders;
pub mod hostlist;
pub mod inventory;
pub mod layout;
pub mod mig;

pub use inventory::{Gpu, Inventory, InventoryError, Leaf};
