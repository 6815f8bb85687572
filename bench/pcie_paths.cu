// How fast can bytes cross one GPU's PCIe link, by the path that moves them (the ceiling under
// the collectives between leaves)? Between MIG leaves of one GPU, NCCL's SHM transport moves every
// byte twice over that link: the sender's kernel stores it into pinned host memory (device to
// host) and the receiver's kernel loads it back (host to device), both with SM loads and stores,
// while the copy bandwidth the copy bound uses is what the copy engines reach.
//
//   pcie_paths MODE BLOCKS[:D2H_BLOCKS] [MIB]
//
// MODE: ce_h2d ce_d2h ce_both       cudaMemcpyAsync (copy engines); BLOCKS is ignored
//       smU_h2d smU_d2h smU_both    a kernel of BLOCKS CTAs x 512 threads copying with 16-byte
//                                   loads and stores, U (4 or 8) of them in flight per thread,
//                                   the way NCCL's Simple protocol moves data; h2d loads from
//                                   host memory, d2h stores to it
//       tma_h2d tma_d2h tma_both    BLOCKS CTAs whose one thread moves 32 KiB chunks with Hopper
//                                   bulk copies (cp.async.bulk, 4 stages in shared memory)
//       ce+sm_both sm+ce_both       both directions at once, each by its own path (the first
//                                   named moves host to device): NCCL's SHM transport with
//                                   NCCL_SHM_USE_CUDA_MEMCPY=1 and NCCL_SHM_MEMCPY_MODE=2 (receiver
//                                   side copies) or 1 (sender side) moves bytes this way
// "both" runs the two directions at once on two streams, BLOCKS CTAs each, or BLOCKS for host to
// device and D2H_BLOCKS for device to host.
// Prints one JSON line: the bandwidth of each direction (bytes / the time it took) and the total.
// One mode per process: a failing mode (a kernel fault is sticky) cannot spoil the others.
//
//   pcie_paths loop_DIR FLOWS CHUNK_KIB SECONDS START_MS
//
// Copy engines in a steady stream of CHUNK_KIB copies, as NCCL's SHM transport issues them one
// slice at a time, for SECONDS from START_MS (milliseconds since the epoch): several processes
// given the same START_MS (bench/pcie_paths.sh, under MPS) measure what the link moves for
// several leaves at once. DIR: h2d or d2h (FLOWS streams in that direction), both (FLOWS streams
// each way), pipe (FLOWS pipes, each a device-to-host copy into a host slot followed, on a
// second stream, by the host-to-device copy out of it, the slot reused once that copy is done:
// one SHM connection's dependencies). Each flow has kSlots slots, so up to kSlots copies queued.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <time.h>
#include <unistd.h>

#define CK(x)                                                                                       \
  do {                                                                                              \
    cudaError_t e_ = (x);                                                                           \
    if (e_ != cudaSuccess) {                                                                        \
      printf("{\"error\": \"%s: %s\"}\n", #x, cudaGetErrorString(e_));                            \
      exit(2);                                                                                      \
    }                                                                                               \
  } while (0)

constexpr int kThreads = 512;
constexpr uint32_t kChunk = 32 << 10;
constexpr int kStages = 4;

template <int U>
__global__ void __launch_bounds__(kThreads) copy_v16(const int4* __restrict__ src, int4* __restrict__ dst, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  for (; i + (U - 1) * stride < n; i += U * stride) {
    int4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = src[i + u * stride];
#pragma unroll
    for (int u = 0; u < U; ++u) dst[i + u * stride] = v[u];
  }
  for (; i < n; i += stride) dst[i] = src[i];
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// One thread per CTA streams chunks blockIdx.x, blockIdx.x + gridDim.x, ... through kStages
// shared-memory buffers: bulk load (global -> shared, completion on an mbarrier), then bulk store
// (shared -> global). bytes must be a multiple of kChunk.
__global__ void copy_bulk(const char* __restrict__ src, char* __restrict__ dst, size_t bytes) {
  extern __shared__ __align__(128) char stage[];
  __shared__ __align__(8) uint64_t bar[kStages];
  if (threadIdx.x != 0) return;
  const size_t nchunks = bytes / kChunk;
  const size_t nit = nchunks > blockIdx.x ? (nchunks - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
  for (int s = 0; s < kStages; ++s) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&bar[s])) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  auto chunk = [&](size_t it) { return (blockIdx.x + it * gridDim.x) * (size_t)kChunk; };
  auto load = [&](size_t it) {
    const int s = it % kStages;
    asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1; }" ::"r"(smem_addr(&bar[s])), "r"(kChunk) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_addr(stage + (size_t)s * kChunk)),
                 "l"(src + chunk(it)), "r"(kChunk), "r"(smem_addr(&bar[s]))
                 : "memory");
  };
  for (size_t it = 0; it < nit && it < (size_t)kStages; ++it) load(it);
  for (size_t it = 0; it < nit; ++it) {
    const int s = it % kStages;
    const uint32_t parity = (it / kStages) & 1;
    uint32_t done = 0;
    while (!done)
      asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                   : "=r"(done)
                   : "r"(smem_addr(&bar[s])), "r"(parity)
                   : "memory");
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst + chunk(it)), "r"(smem_addr(stage + (size_t)s * kChunk)), "r"(kChunk)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    if (it + kStages < nit) {
      // The stage is free once the store has read it (the bytes may still be on their way).
      asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
      load(it + kStages);
    }
  }
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}

struct Dir {
  const void* src;
  void* dst;
  cudaStream_t stream;
  cudaEvent_t start, stop;
};

static void launch(const std::string& kind, const Dir& d, int blocks, size_t bytes) {
  if (kind == "ce") {
    CK(cudaMemcpyAsync(d.dst, d.src, bytes, cudaMemcpyDefault, d.stream));
  } else if (kind == "sm4") {
    copy_v16<4><<<blocks, kThreads, 0, d.stream>>>((const int4*)d.src, (int4*)d.dst, bytes / sizeof(int4));
  } else if (kind == "sm8") {
    copy_v16<8><<<blocks, kThreads, 0, d.stream>>>((const int4*)d.src, (int4*)d.dst, bytes / sizeof(int4));
  } else {
    copy_bulk<<<blocks, 32, kStages * kChunk, d.stream>>>((const char*)d.src, (char*)d.dst, bytes);
  }
  CK(cudaGetLastError());
}

constexpr int kSlots = 4;

static double now_ms() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// One flow of loop mode: host slots, device slots, and per slot the event that frees it.
struct Flow {
  bool d2h = false, h2d = false;
  char *host = nullptr, *dsrc = nullptr, *ddst = nullptr;
  cudaStream_t s_d2h = nullptr, s_h2d = nullptr;
  cudaEvent_t mid[kSlots], done[kSlots];
  size_t next = 0;
};

static int loop_main(const std::string& dir, int flows, size_t chunk, double seconds, double start_ms) {
  if (dir != "h2d" && dir != "d2h" && dir != "both" && dir != "pipe") {
    fprintf(stderr, "pcie_paths: unknown loop direction %s (h2d, d2h, both or pipe)\n", dir.c_str());
    return 1;
  }
  std::vector<Flow> fs;
  for (int i = 0; i < flows; ++i) {
    if (dir == "pipe") {
      fs.emplace_back();
      fs.back().d2h = fs.back().h2d = true;
      continue;
    }
    if (dir != "d2h") fs.emplace_back(), fs.back().h2d = true;
    if (dir != "h2d") fs.emplace_back(), fs.back().d2h = true;
  }
  const size_t bytes = chunk * kSlots;
  for (Flow& f : fs) {
    CK(cudaHostAlloc((void**)&f.host, bytes, cudaHostAllocDefault));
    memset(f.host, 1, bytes);
    if (f.d2h) {
      CK(cudaMalloc((void**)&f.dsrc, bytes));
      CK(cudaMemset(f.dsrc, 2, bytes));
      CK(cudaStreamCreateWithFlags(&f.s_d2h, cudaStreamNonBlocking));
    }
    if (f.h2d) {
      CK(cudaMalloc((void**)&f.ddst, bytes));
      CK(cudaMemset(f.ddst, 0, bytes));
      CK(cudaStreamCreateWithFlags(&f.s_h2d, cudaStreamNonBlocking));
    }
    for (int s = 0; s < kSlots; ++s) {
      CK(cudaEventCreateWithFlags(&f.mid[s], cudaEventDisableTiming));
      CK(cudaEventCreateWithFlags(&f.done[s], cudaEventDisableTiming));
    }
  }
  // Warm up every path once, then wait for the common start.
  for (Flow& f : fs) {
    if (f.d2h) CK(cudaMemcpyAsync(f.host, f.dsrc, chunk, cudaMemcpyDeviceToHost, f.s_d2h));
    if (f.h2d) CK(cudaMemcpyAsync(f.ddst, f.host, chunk, cudaMemcpyHostToDevice, f.s_h2d));
  }
  CK(cudaDeviceSynchronize());
  const double late = now_ms() - start_ms;
  while (now_ms() < start_ms) usleep(100);
  const double t0 = now_ms(), stop = t0 + seconds * 1e3;
  size_t moved_h2d = 0, moved_d2h = 0;
  while (now_ms() < stop) {
    for (Flow& f : fs) {
      const int s = f.next % kSlots;
      // The slot is free once its last copy is done (for a pipe: the copy out of the host slot).
      if (cudaEventQuery(f.done[s]) != cudaSuccess) continue;
      char* h = f.host + s * chunk;
      if (f.d2h) {
        CK(cudaMemcpyAsync(h, f.dsrc + s * chunk, chunk, cudaMemcpyDeviceToHost, f.s_d2h));
        moved_d2h += chunk;
        CK(cudaEventRecord(f.h2d ? f.mid[s] : f.done[s], f.s_d2h));
      }
      if (f.h2d) {
        if (f.d2h) CK(cudaStreamWaitEvent(f.s_h2d, f.mid[s], 0));
        CK(cudaMemcpyAsync(f.ddst + s * chunk, h, chunk, cudaMemcpyHostToDevice, f.s_h2d));
        moved_h2d += chunk;
        CK(cudaEventRecord(f.done[s], f.s_h2d));
      }
      ++f.next;
    }
  }
  CK(cudaDeviceSynchronize());
  const double secs = (now_ms() - t0) / 1e3;
  // Check the bytes: host slots hold the device source (2), pipes' device slots too, other
  // host-to-device slots the host's 1.
  for (Flow& f : fs) {
    char probe = 0;
    if (f.h2d) CK(cudaMemcpy(&probe, f.ddst + chunk - 1, 1, cudaMemcpyDeviceToHost));
    const char got = f.h2d ? probe : f.host[chunk - 1], want = f.d2h ? 2 : 1;
    if (f.next && got != want) {
      printf("{\"mode\": \"loop_%s\", \"error\": \"wrong bytes at the end of a slot\"}\n", dir.c_str());
      return 3;
    }
  }
  const double gb = 1e9;
  printf("{\"mode\": \"loop_%s\", \"flows\": %d, \"chunk_kib\": %zu, \"procs\": %s, \"mps\": %s, \"start_ms\": %.0f, \"late_ms\": %.1f, \"seconds\": %.3f, "
         "\"h2d_GBps\": %.2f, \"d2h_GBps\": %.2f}\n",
         dir.c_str(), flows, chunk >> 10, getenv("PCIE_PROCS") ? getenv("PCIE_PROCS") : "1", getenv("CUDA_MPS_PIPE_DIRECTORY") ? "true" : "false",
         start_ms, late > 0 ? late : 0.0, secs, moved_h2d / gb / secs, moved_d2h / gb / secs);
  return late > 0 ? 4 : 0;
}

int main(int argc, char** argv) {
  if (argc >= 6 && strncmp(argv[1], "loop_", 5) == 0) {
    const int flows = atoi(argv[2]);
    const size_t chunk = (size_t)atol(argv[3]) << 10;
    if (flows < 1 || chunk == 0) {
      fprintf(stderr, "pcie_paths: FLOWS and CHUNK_KIB must be >= 1\n");
      return 1;
    }
    return loop_main(argv[1] + 5, flows, chunk, atof(argv[4]), atof(argv[5]));
  }
  if (argc < 3) {
    fprintf(stderr, "usage: %s (ce|sm4|sm8|tma)_(h2d|d2h|both)|A+B_both BLOCKS[:D2H_BLOCKS] [MIB]\n"
                    "       %s loop_(h2d|d2h|both|pipe) FLOWS CHUNK_KIB SECONDS START_MS\n", argv[0], argv[0]);
    return 1;
  }
  const std::string mode = argv[1];
  const auto us = mode.find('_');
  const std::string kind = mode.substr(0, us), dir = us == std::string::npos ? "" : mode.substr(us + 1);
  // The path of each direction: "A+B" moves host to device by A and device to host by B.
  const auto plus = kind.find('+');
  const std::string kind_h2d = kind.substr(0, plus), kind_d2h = plus == std::string::npos ? kind : kind.substr(plus + 1);
  auto known = [](const std::string& k) { return k == "ce" || k == "sm4" || k == "sm8" || k == "tma"; };
  if (!known(kind_h2d) || !known(kind_d2h) || (dir != "h2d" && dir != "d2h" && dir != "both") || (plus != std::string::npos && dir != "both")) {
    fprintf(stderr, "pcie_paths: unknown mode %s\n", mode.c_str());
    return 1;
  }
  const int blocks = atoi(argv[2]);
  const char* colon = strchr(argv[2], ':');
  const int blocks_d2h = colon ? atoi(colon + 1) : blocks;
  const size_t bytes = (size_t)(argc > 3 ? atoi(argv[3]) : 256) << 20;
  if (blocks < 1 || blocks_d2h < 1 || bytes % kChunk) {
    fprintf(stderr, "pcie_paths: BLOCKS and D2H_BLOCKS must be >= 1 and MIB a whole number\n");
    return 1;
  }
  CK(cudaFuncSetAttribute(copy_bulk, cudaFuncAttributeMaxDynamicSharedMemorySize, kStages * kChunk));
  char *hsrc, *hdst, *dsrc, *ddst;
  CK(cudaHostAlloc((void**)&hsrc, bytes, cudaHostAllocMapped));
  CK(cudaHostAlloc((void**)&hdst, bytes, cudaHostAllocMapped));
  CK(cudaMalloc((void**)&dsrc, bytes));
  CK(cudaMalloc((void**)&ddst, bytes));
  memset(hsrc, 1, bytes);
  memset(hdst, 0, bytes);
  CK(cudaMemset(dsrc, 2, bytes));
  Dir dirs[2];
  int n = 0;
  if (dir != "d2h") dirs[n++] = {hsrc, ddst, nullptr, nullptr, nullptr};
  if (dir != "h2d") dirs[n++] = {dsrc, hdst, nullptr, nullptr, nullptr};
  for (int i = 0; i < n; ++i) {
    CK(cudaStreamCreateWithFlags(&dirs[i].stream, cudaStreamNonBlocking));
    CK(cudaEventCreate(&dirs[i].start));
    CK(cudaEventCreate(&dirs[i].stop));
  }
  cudaEvent_t go;
  CK(cudaEventCreate(&go));
  const int warmup = 2, iters = 5;
  double secs[2] = {0, 0}, wall = 0;
  for (int it = 0; it < warmup + iters; ++it) {
    CK(cudaDeviceSynchronize());
    CK(cudaEventRecord(go, 0));
    for (int i = 0; i < n; ++i) {
      CK(cudaStreamWaitEvent(dirs[i].stream, go, 0));
      CK(cudaEventRecord(dirs[i].start, dirs[i].stream));
    }
    for (int i = 0; i < n; ++i) {
      const bool h2d = dirs[i].src == hsrc;
      launch(h2d ? kind_h2d : kind_d2h, dirs[i], h2d ? blocks : blocks_d2h, bytes);
    }
    for (int i = 0; i < n; ++i) CK(cudaEventRecord(dirs[i].stop, dirs[i].stream));
    CK(cudaDeviceSynchronize());
    if (it < warmup) continue;
    float first = 1e30f, last = 0;
    for (int i = 0; i < n; ++i) {
      float ms;
      CK(cudaEventElapsedTime(&ms, dirs[i].start, dirs[i].stop));
      secs[i] += ms / 1e3;
      float t0;
      CK(cudaEventElapsedTime(&t0, go, dirs[i].start));
      first = std::min(first, t0);
      last = std::max(last, t0 + ms);
    }
    wall += (last - first) / 1e3;
  }
  // Check the bytes arrived (the last iteration's copy is what the buffers hold).
  char probe[2] = {0, 0};
  for (int i = 0; i < n; ++i) {
    char* dst = (char*)dirs[i].dst;
    if (dst == hdst) probe[i] = hdst[bytes - 1];
    else CK(cudaMemcpy(&probe[i], dst + bytes - 1, 1, cudaMemcpyDeviceToHost));
    const char want = dst == hdst ? 2 : 1;
    if (probe[i] != want) {
      printf("{\"mode\": \"%s\", \"blocks\": %d, \"error\": \"wrong bytes at the end of the destination\"}\n", mode.c_str(), blocks);
      return 3;
    }
  }
  const double gb = bytes / 1e9;
  double h2d = 0, d2h = 0;
  for (int i = 0; i < n; ++i) (dirs[i].src == hsrc ? h2d : d2h) = gb * iters / secs[i];
  printf("{\"mode\": \"%s\", \"path\": \"%s\", \"direction\": \"%s\", \"blocks\": %d, \"blocks_d2h\": %d, \"mib\": %zu, \"h2d_GBps\": %.2f, \"d2h_GBps\": %.2f, \"total_GBps\": %.2f}\n",
         mode.c_str(), kind.c_str(), dir.c_str(), kind == "ce" ? 0 : blocks, kind == "ce" ? 0 : blocks_d2h, bytes >> 20, h2d, d2h, gb * n * iters / wall);
  return 0;
}
