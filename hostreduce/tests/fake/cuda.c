/* A stand-in CUDA driver (libcuda.so.1) for testing the preloaded library without a GPU: "device"
 * memory is host memory (a device pointer is the host address), and every stream operation runs
 * at once on the calling thread, in the order it was enqueued. That keeps stream order (all this
 * library relies on) but not concurrency; a wait blocks the caller until the value is reached,
 * which the library's reducer threads and the other ranks' copies provide. */
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int CUresult;
typedef uint64_t CUdeviceptr;

static int context_token;

CUresult cuCtxGetCurrent(void **ctx) {
  *ctx = getenv("FAKE_CUDA_NO_CONTEXT") ? NULL : &context_token;
  return 0;
}
CUresult cuCtxGetDevice(int *dev) { *dev = 0; return 0; }
/* A bus id with no sysfs entry: the reducer threads stay unpinned. */
CUresult cuDeviceGetPCIBusId(char *s, int len, int dev) { (void)dev; snprintf(s, len, "0000:ff:1f.7"); return 0; }
CUresult cuStreamCreate(void **s, unsigned flags) { (void)flags; *s = malloc(1); return 0; }
CUresult cuStreamDestroy_v2(void *s) { free(s); return 0; }
CUresult cuStreamSynchronize(void *s) { (void)s; return 0; }
CUresult cuStreamIsCapturing(void *s, int *status) { (void)s; *status = getenv("FAKE_CUDA_CAPTURING") ? 1 : 0; return 0; }
CUresult cuStreamWaitEvent(void *s, void *e, unsigned flags) { (void)s; (void)e; (void)flags; return 0; }
CUresult cuStreamWaitValue64_v2(void *s, CUdeviceptr addr, uint64_t value, unsigned flags) {
  (void)s; (void)flags;
  volatile uint64_t *p = (volatile uint64_t *)(uintptr_t)addr;
  time_t t0 = time(NULL);
  while (__atomic_load_n(p, __ATOMIC_ACQUIRE) < value) {
    if (time(NULL) - t0 > 60) {
      fprintf(stderr, "fake cuda: a stream wait never ended\n");
      abort();
    }
    sched_yield();
  }
  return 0;
}
CUresult cuStreamWriteValue64_v2(void *s, CUdeviceptr addr, uint64_t value, unsigned flags) {
  (void)s; (void)flags;
  __atomic_store_n((uint64_t *)(uintptr_t)addr, value, __ATOMIC_RELEASE);
  return 0;
}
CUresult cuEventCreate(void **e, unsigned flags) { (void)flags; *e = malloc(1); return 0; }
CUresult cuEventDestroy_v2(void *e) { free(e); return 0; }
CUresult cuEventRecord(void *e, void *s) { (void)e; (void)s; return 0; }
CUresult cuMemHostRegister_v2(void *p, size_t n, unsigned flags) { (void)p; (void)n; (void)flags; return 0; }
CUresult cuMemHostUnregister(void *p) { (void)p; return 0; }
CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr *d, void *p, unsigned flags) { (void)flags; *d = (uintptr_t)p; return 0; }
CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, void *s) {
  (void)s;
  memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
  return 0;
}
CUresult cuMemAlloc_v2(CUdeviceptr *d, size_t n) {
  void *p = malloc(n);
  if (!p) return 2; /* CUDA_ERROR_OUT_OF_MEMORY */
  *d = (uintptr_t)p;
  return 0;
}
CUresult cuMemFree_v2(CUdeviceptr d) { free((void *)(uintptr_t)d); return 0; }
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void *s, size_t n) { memcpy((void *)(uintptr_t)d, s, n); return 0; }
CUresult cuMemcpyDtoH_v2(void *d, CUdeviceptr s, size_t n) { memcpy(d, (const void *)(uintptr_t)s, n); return 0; }
CUresult cuGetErrorName(CUresult e, const char **s) { (void)e; *s = "FAKE_CUDA_ERROR"; return 0; }
