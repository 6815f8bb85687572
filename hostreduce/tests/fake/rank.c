/* One rank of a test job: the application side of what PyTorch does with NCCL, against the
 * stand-in driver and NCCL, with the library under test preloaded in front of NCCL.
 *   RANK, NRANKS, FAKE_ID (32 hex digits: the unique id every rank shares)
 *   TEST_CALLS: comma-separated DTYPE:OP:COUNT[:group][:oop] (f32 f16 bf16 f64 i32; sum avg)
 *   KILL_RANK, KILL_BEFORE: that rank kills itself (SIGKILL) before call KILL_BEFORE
 *   SPLIT: the calls go to a communicator split from the first with color rank % 2 (a rank
 *     listed in NOCOLOR_RANK takes none), key = rank; PARENT_CALLS are then made on the first
 * Prints "CALL <i> rc=<nccl result> ok=<result right>" per call, then "ASYNC <ncclCommGetAsyncError
 * of the first communicator>" and "DONE". */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { char internal[128]; } ncclUniqueId;
int ncclCommInitRank(void **comm, int nranks, ncclUniqueId id, int rank);
int ncclAllReduce(const void *send, void *recv, size_t count, int type, int op, void *comm, void *stream);
int ncclGroupStart(void);
int ncclGroupEnd(void);
int ncclCommDestroy(void *comm);
int ncclCommSplit(void *comm, int color, int key, void **newcomm, void *config);
int ncclCommCount(const void *comm, int *n);
int ncclCommUserRank(const void *comm, int *r);
int ncclCommGetAsyncError(void *comm, int *err);
int cuMemAlloc_v2(uint64_t *d, size_t n);
int cuMemFree_v2(uint64_t d);
int cuStreamCreate(void **s, unsigned flags);
int cuStreamSynchronize(void *s);

static int type_of(const char *t, size_t *es) {
  if (!strcmp(t, "f32")) return *es = 4, 7;
  if (!strcmp(t, "f16")) return *es = 2, 6;
  if (!strcmp(t, "bf16")) return *es = 2, 9;
  if (!strcmp(t, "f64")) return *es = 8, 8;
  if (!strcmp(t, "i32")) return *es = 4, 2;
  fprintf(stderr, "rank: unknown type %s\n", t);
  exit(2);
}

/* Small integers, exact in every type: each rank's own for sums, the same on all for averages. */
static int value(int rank, size_t i, int avg) { return avg ? (int)(i * 5 % 9) - 4 : (int)((i * 7 + rank * 3) % 17) - 8; }

static void put(int type, void *p, size_t i, int v) {
  switch (type) {
    case 7: ((float *)p)[i] = (float)v; break;
    case 8: ((double *)p)[i] = v; break;
    case 2: ((int32_t *)p)[i] = v; break;
    case 6: ((_Float16 *)p)[i] = (_Float16)v; break;
    case 9: { float f = (float)v; uint32_t b; memcpy(&b, &f, 4); ((uint16_t *)p)[i] = (uint16_t)(b >> 16); break; }
  }
}
static double get(int type, const void *p, size_t i) {
  switch (type) {
    case 7: return ((const float *)p)[i];
    case 8: return ((const double *)p)[i];
    case 2: return ((const int32_t *)p)[i];
    case 6: return ((const _Float16 *)p)[i];
    default: { uint32_t b = (uint32_t)((const uint16_t *)p)[i] << 16; float f; memcpy(&f, &b, 4); return f; }
  }
}

/* Makes the calls of `list` on `comm`; `idx` counts calls over the whole run. */
static void calls(const char *list, void *comm, void *stream, int rank, int nranks, int *idx) {
  int kill_rank = getenv("KILL_RANK") ? atoi(getenv("KILL_RANK")) : -1;
  int kill_before = getenv("KILL_BEFORE") ? atoi(getenv("KILL_BEFORE")) : -1;
  char *copy = strdup(list);
  for (char *spec = strtok(copy, ","); spec; spec = strtok(NULL, ","), (*idx)++) {
    if (atoi(getenv("RANK")) == kill_rank && *idx == kill_before) raise(SIGKILL);
    char t[8], o[8];
    size_t count;
    if (sscanf(spec, "%7[^:]:%7[^:]:%zu", t, o, &count) != 3) exit(2);
    int group = strstr(spec, ":group") != NULL, oop = strstr(spec, ":oop") != NULL, avg = !strcmp(o, "avg");
    size_t es;
    int type = type_of(t, &es);
    uint64_t send, recv;
    cuMemAlloc_v2(&send, count * es);
    recv = send;
    if (oop) cuMemAlloc_v2(&recv, count * es);
    for (size_t i = 0; i < count; i++) put(type, (void *)(uintptr_t)send, i, value(rank, i, avg));
    if (group) ncclGroupStart();
    int rc = ncclAllReduce((void *)(uintptr_t)send, (void *)(uintptr_t)recv, count, type, avg ? 4 : 0, comm, stream);
    if (group) ncclGroupEnd();
    cuStreamSynchronize(stream);
    int ok = rc == 0;
    for (size_t i = 0; ok && i < count; i++) {
      double want = 0;
      for (int r = 0; r < nranks; r++) want += value(r, i, avg);
      if (avg) want /= nranks;
      ok = get(type, (void *)(uintptr_t)recv, i) == want;
    }
    printf("CALL %d rc=%d ok=%d\n", *idx, rc, ok);
    fflush(stdout);
    if (oop) cuMemFree_v2(recv);
    cuMemFree_v2(send);
  }
  free(copy);
}

int main(void) {
  int rank = atoi(getenv("RANK")), nranks = atoi(getenv("NRANKS"));
  const char *hex = getenv("FAKE_ID");
  ncclUniqueId id;
  memset(&id, 0, sizeof id);
  for (int i = 0; i < 16 && hex[2 * i]; i++) sscanf(hex + 2 * i, "%2hhx", (unsigned char *)&id.internal[i]);
  void *comm, *stream;
  cuStreamCreate(&stream, 0);
  int rc = ncclCommInitRank(&comm, nranks, id, rank);
  printf("INIT rc=%d\n", rc);
  fflush(stdout);
  if (rc) return 1;
  int idx = 0;
  if (getenv("SPLIT")) {
    int nocolor = getenv("NOCOLOR_RANK") && atoi(getenv("NOCOLOR_RANK")) == rank;
    void *child;
    rc = ncclCommSplit(comm, nocolor ? -1 : rank % 2, rank, &child, NULL);
    printf("SPLIT rc=%d\n", rc);
    if (rc) return 1;
    if (child) {
      int crank, cn;
      ncclCommUserRank(child, &crank);
      ncclCommCount(child, &cn);
      calls(getenv("TEST_CALLS"), child, stream, crank, cn, &idx);
      ncclCommDestroy(child);
    } else {
      printf("NOCOLOR\n");
    }
    if (getenv("PARENT_CALLS")) calls(getenv("PARENT_CALLS"), comm, stream, rank, nranks, &idx);
  } else {
    calls(getenv("TEST_CALLS"), comm, stream, rank, nranks, &idx);
  }
  int async_err = -1;
  ncclCommGetAsyncError(comm, &async_err);
  printf("ASYNC %d\n", async_err);
  ncclCommDestroy(comm);
  printf("DONE\n");
  return 0;
}
