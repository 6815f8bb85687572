//! The C boundary: shared memory and processes (shm), the CUDA driver (cuda), NCCL (nccl).
//! Every `unsafe` of the crate is here, apart from the two segment slices the chunk protocol
//! hands to the reducer (pipeline.rs, with the protocol's argument).
pub mod cuda;
pub mod nccl;
pub mod shm;
