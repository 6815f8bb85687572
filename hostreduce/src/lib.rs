//! flexmig's host-side all-reduce between the MIG leaves of one node (see README.md): each rank
//! copies its buffer down into one shared host segment, CPU threads of all ranks reduce it, each
//! rank copies the result back up.
//!
//! - [`reduce`]: the CPU reduction (fp32, bf16, fp16; sum, average), vectorised and exact;
//! - [`ffi::shm`]: the per-communicator shared segment and its layout;
//! - [`pipeline`]: the chunk protocol (counters, slots, reducer threads, dead peers);
//! - [`select`]: the measured table behind `FLEXMIG_HOSTREDUCE=auto`;
//! - [`config`]: environment, the ranks' agreement at communicator creation;
//! - [`numa`]: the reducer threads' CPUs (the GPU's NUMA node);
//! - `interpose` with [`ffi::nccl`] and [`ffi::cuda`]: the preloaded NCCL entry points;
//! - [`sim`]: the GPU side simulated with threads, for tests without a GPU;
//! - [`trace`]: a timeline of the pipeline's counters, for finding where a call's time goes.
pub mod config;
pub mod ffi;
mod interpose;
pub mod numa;
pub mod pipeline;
pub mod reduce;
pub mod select;
pub mod sim;
pub mod trace;
