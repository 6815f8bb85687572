# CUDA MPS for the GPU benchmarks, sourced by bench/lib.sh, bench/hostreduce.sh and tests/gpu: one
# control daemon per $WORK (its pipe directory), so that ranks run concurrently on their own SM
# shares as MIG leaves would. MPS is a process: MIG mode, compute mode and clocks stay untouched.
mps_start() {
  export CUDA_MPS_PIPE_DIRECTORY=$WORK/mps-pipe CUDA_MPS_LOG_DIRECTORY=$WORK/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  # If a daemon still runs on this pipe directory (an earlier run of these scripts was killed), stop it.
  echo quit | nvidia-cuda-mps-control >/dev/null 2>&1 && sleep 2
  nvidia-cuda-mps-control -d && sleep 1
}
mps_stop() {
  echo quit | nvidia-cuda-mps-control 2>/dev/null
  sleep 2
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
}
