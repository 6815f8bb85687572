/* A stand-in NCCL (libnccl.so.2) for testing the preloaded library without a GPU: ranks are
 * processes, and every collective goes through files in $FAKE_NCCL_DIR/<unique id>/ (each rank
 * writes its part, then reads every rank's). Blocking and synchronous, as the stand-in CUDA is. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct { char internal[128]; } ncclUniqueId;
struct comm { int rank, nranks; unsigned long seq; char dir[512]; };

enum { ncclSuccess = 0, ncclSystemError = 2, ncclInvalidArgument = 4, ncclRemoteError = 6 };
enum { ncclInt32 = 2, ncclUint8 = 1, ncclFloat32 = 7, ncclFloat64 = 8 };

int ncclCommInitRank(void **out, int nranks, ncclUniqueId id, int rank) {
  const char *root = getenv("FAKE_NCCL_DIR");
  if (!root) return ncclSystemError;
  struct comm *c = calloc(1, sizeof *c);
  c->rank = rank;
  c->nranks = nranks;
  int n = snprintf(c->dir, sizeof c->dir, "%s/", root);
  for (int i = 0; i < 16; i++) n += snprintf(c->dir + n, sizeof c->dir - n, "%02x", (unsigned char)id.internal[i]);
  mkdir(c->dir, 0700);
  *out = c;
  return ncclSuccess;
}
int ncclCommInitRankConfig(void **out, int nranks, ncclUniqueId id, int rank, void *config) {
  (void)config;
  return ncclCommInitRank(out, nranks, id, rank);
}

/* Every rank's `bytes` into recv (rank order). */
static int gather(struct comm *c, const void *send, size_t bytes, void *recv) {
  unsigned long seq = c->seq++;
  char path[600], tmp[620];
  snprintf(path, sizeof path, "%s/%lu.%d", c->dir, seq, c->rank);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f || fwrite(send, 1, bytes, f) != bytes || fclose(f) != 0 || rename(tmp, path) != 0) return ncclSystemError;
  for (int r = 0; r < c->nranks; r++) {
    snprintf(path, sizeof path, "%s/%lu.%d", c->dir, seq, r);
    time_t t0 = time(NULL);
    FILE *g;
    while (!(g = fopen(path, "rb"))) {
      if (time(NULL) - t0 > 60) return ncclRemoteError;
      usleep(1000);
    }
    size_t got = fread((char *)recv + r * bytes, 1, bytes, g);
    fclose(g);
    if (got != bytes) return ncclSystemError;
  }
  return ncclSuccess;
}

int ncclAllGather(const void *send, void *recv, size_t count, int type, void *comm, void *stream) {
  (void)stream;
  if (type != ncclUint8) return ncclInvalidArgument;
  return gather(comm, send, count, recv);
}

/* Sums of int32, fp32 and fp64 (what the tests send to NCCL). */
int ncclAllReduce(const void *send, void *recv, size_t count, int type, int op, void *comm, void *stream) {
  (void)stream;
  struct comm *c = comm;
  size_t es = type == ncclInt32 ? 4 : type == ncclFloat32 ? 4 : type == ncclFloat64 ? 8 : 0;
  if (!es || op != 0) return ncclInvalidArgument;
  char *all = malloc(count * es * c->nranks);
  int rc = gather(c, send, count * es, all);
  for (size_t i = 0; rc == ncclSuccess && i < count; i++) {
    double s = 0;
    for (int r = 0; r < c->nranks; r++) {
      const char *p = all + (r * count + i) * es;
      s += type == ncclInt32 ? *(const int32_t *)p : type == ncclFloat32 ? *(const float *)p : *(const double *)p;
    }
    char *q = (char *)recv + i * es;
    if (type == ncclInt32) *(int32_t *)q = (int32_t)s;
    else if (type == ncclFloat32) *(float *)q = (float)s;
    else *(double *)q = s;
  }
  free(all);
  return rc;
}
/* The ranks of the parent with this color, ordered by (key, parent rank); NULL for a negative
 * color (NCCL_SPLIT_NOCOLOR). */
int ncclCommSplit(void *comm, int color, int key, void **newcomm, void *config) {
  (void)config;
  struct comm *p = comm;
  int mine[2] = {color, key};
  int *all = malloc(sizeof mine * p->nranks);
  unsigned long seq = p->seq;
  int rc = gather(p, mine, sizeof mine, all);
  *newcomm = NULL;
  if (rc == ncclSuccess && color >= 0) {
    struct comm *c = calloc(1, sizeof *c);
    for (int r = 0; r < p->nranks; r++) {
      if (all[2 * r] != color) continue;
      c->nranks++;
      if (all[2 * r + 1] < key || (all[2 * r + 1] == key && r < p->rank)) c->rank++;
    }
    if (snprintf(c->dir, sizeof c->dir, "%s/split%lu-%d", p->dir, seq, color) >= (int)sizeof c->dir) rc = ncclSystemError;
    mkdir(c->dir, 0700);
    *newcomm = c;
  }
  free(all);
  return rc;
}
int ncclCommCount(const void *comm, int *n) { *n = ((const struct comm *)comm)->nranks; return ncclSuccess; }
int ncclCommUserRank(const void *comm, int *r) { *r = ((const struct comm *)comm)->rank; return ncclSuccess; }
int ncclCommDestroy(void *c) { free(c); return ncclSuccess; }
int ncclCommAbort(void *c) { free(c); return ncclSuccess; }
int ncclCommGetAsyncError(void *c, int *e) { (void)c; *e = ncclSuccess; return ncclSuccess; }
int ncclGroupStart(void) { return ncclSuccess; }
int ncclGroupEnd(void) { return ncclSuccess; }
