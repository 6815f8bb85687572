//! `flexmig-gres-helper nccl ...`: build, install and inspect the NCCL that flexmig ranks use.
//!
//! `install` takes an NCCL source tree or release tarball, detects its version, applies the
//! embedded flexmig patch (or none for NCCL >= 2.30.3), builds it with the local CUDA for the
//! GPUs present (or `--arch`), installs it under `--prefix` and prints the plugstack `nccl=`
//! argument. Nothing is downloaded. `status` tells whether a libnccl is patched, stock but new
//! enough, or unusable.

pub mod install;
pub mod patch;
pub mod status;
pub mod version;
