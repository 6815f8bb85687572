//! `flexmig-gres-helper nccl ...`: build, install and inspect the NCCL that flexmig ranks use.
//!
//! `install` takes an NCCL source tree or release tarball, detects its version, applies the
//! embedded flexmig patch (the full patch for 2.21.5, 2.28.9, 2.29.7; the P2P guard for 2.30.x),
//! builds it with the local CUDA for the GPUs present (or `--arch`), installs it under `--prefix`
//! and prints the plugstack `nccl=` argument. Nothing is downloaded. For NCCL >= 2.31 it offers
//! no patch: NVIDIA's own MIG support serves leaves of one GPU. `status` tells whether a libnccl
//! is patched, stock with MIG support (>= 2.31), stock 2.30.x needing the guard patch, or unusable.

pub mod install;
pub mod patch;
pub mod status;
pub mod version;
