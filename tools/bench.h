/*
 * bench.h - what the pieces of etap-bench share. Not installed, not part of the API.
 *
 *   etap_bench.c      options, the case loop, the table and the JSON
 *   bench_data.c      random inputs: lengths, page tables, q and KV caches
 *   bench_reference.c the double-precision reference and the comparison with etap
 *   bench_cpu.c       wall-clock timing helpers and the CPU streaming-read ceiling
 *   bench_cuda.c      the CUDA runtime side: memory, graph timing, the read ceiling
 *   read_ceiling.cu   the streaming-read kernel and its C-callable launcher
 */
#ifndef ETAP_BENCH_H
#define ETAP_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "etap.h"

/* ---- one benchmark case ---------------------------------------------------------- */

typedef struct bench_case {
    int32_t batch;
    int32_t seqlen_q;
    int32_t heads_q;
    int32_t heads_kv;
    int32_t seqlen_k;  /* every sequence, or the mean length with varlen */
    int32_t page_size;
    etap_dtype dtype;
    int causal;
    int varlen;        /* lengths random in [1, 2*seqlen_k], about 1 in 8 of them 0 */
} bench_case;

/* Host copies of everything one decode call reads. Element type of q and kv: uint16_t
 * holding bf16 or fp16 bits. */
typedef struct bench_inputs {
    etap_mla_shape shape;
    int32_t *lens;        /* [b] cache_seqlens */
    int32_t *block_table; /* [b, max_pages_per_seq], a random permutation of the pages */
    uint16_t *q;          /* [b, s_q, h_q, 576] */
    uint16_t *kv;         /* [num_pages, page_size, h_kv, 576]; slots past a sequence's
                             length hold NaN, so a kernel that reads them shows it */
    size_t q_elems;
    size_t kv_elems;
    int64_t sum_len;      /* sum of lens: the keys actually read, per KV head */
} bench_inputs;

/* Builds the inputs of a case from `seed`; returns 0, or -1 when memory is short. */
int bench_inputs_make(bench_inputs *in, const bench_case *c, uint64_t seed);
void bench_inputs_free(bench_inputs *in);

/* bytes = (sum_len * h_kv * 576 + b * s_q * h_q * (576 + 512)) * 2
 * flops = 2 * s_q * h_q * sum_len * (576 + 512)
 * which are PEERS-H200.md's formulas (sum_len = b * s_k without varlen). */
double bench_bytes(const bench_inputs *in);
double bench_flops(const bench_inputs *in);

/* ---- numbers --------------------------------------------------------------------- */

float bench_half_to_float(uint16_t h, etap_dtype dtype);
uint16_t bench_float_to_half(float f, etap_dtype dtype);
/* Online processors (>= 1). */
int bench_online_cpus(void);

/* ---- reference and verification ---------------------------------------------------- */

typedef struct bench_verify {
    int pass;
    int num_seqs_checked;
    char seqs_checked[160];  /* "all 16" or "0, 5, 10, 15 of 16" */
    double rmse;             /* of out against the reference */
    double max_abs_err;      /* largest |out - ref| */
    double max_lse_err;      /* largest |lse - ref| over finite lse */
    double cos_diff;         /* 1 - cos(out, ref) over every checked element */
    int64_t bad_elems;       /* out elements outside abs 8e-4 / rel 2.01 ulp */
    int64_t bad_lse;         /* lse values outside their tolerance (or non-finite) */
    int64_t nonfinite;       /* NaN or inf in out */
    double seconds;          /* time the reference took */
} bench_verify;

/* Tolerances of the verification (docs/benchmark.md explains them). */
#define BENCH_TOL_OUT_ABS 8e-4
#define BENCH_TOL_OUT_REL_ULPS 2.01 /* times 2^-7 (bf16) or 2^-10 (fp16) */
#define BENCH_TOL_LSE_ABS 1e-6
#define BENCH_TOL_LSE_REL (8.01 / 65536.0)
#define BENCH_TOL_COS_DIFF 5e-6

/* Compares out ([b, s_q, h_q, 512], dtype bits) and lse ([b, h_q, s_q]) of one decode of
 * `in` against a double-precision reference computed on `threads` threads. Checks every
 * sequence when the reference costs at most `budget_macs` multiply-adds, else an evenly
 * spaced subset (always the first and the last, and every empty one). */
void bench_verify_run(const bench_inputs *in, const uint16_t *out, const float *lse,
                      double budget_macs, int threads, bench_verify *v);

/* ---- timing and the CPU read ceiling ------------------------------------------------- */

/* Host memory, 64-byte aligned (free with free()). */
void *bench_host_alloc(size_t bytes);
/* Size of the last-level cache (32 MiB when the system does not say). */
size_t bench_llc_bytes(void);

double bench_now(void); /* seconds, CLOCK_MONOTONIC */
double bench_median(double *values, int n); /* sorts values */
double bench_min(const double *values, int n);

/* Streaming read of a buffer of `bytes` (>> LLC) by `threads` threads with 16-byte
 * loads; GB/s (1e9) as the median of `reps` passes. Returns < 0 when memory is short. */
double bench_cpu_read_ceiling(size_t bytes, int threads, int reps);

/* ---- CUDA side (bench_cuda.c; only when built with CUDA) ------------------------------ */

#if defined(ETAP_BENCH_WITH_CUDA)
typedef struct bench_cuda_info {
    char name[256];
    int major, minor;
    int sm_count;
    int l2_bytes;
    size_t free_bytes, total_bytes;
} bench_cuda_info;

/* Each returns 0 on success, else -1 with the reason in bench_cuda_error(). */
const char *bench_cuda_error(void);
int bench_cuda_init(int device, bench_cuda_info *info);
int bench_cuda_mem_info(size_t *free_bytes, size_t *total_bytes);
void *bench_cuda_malloc(size_t bytes); /* NULL on failure */
void bench_cuda_free(void *p);
int bench_cuda_upload(void *dst, const void *src, size_t bytes);
int bench_cuda_download(void *dst, const void *src, size_t bytes);
int bench_cuda_copy(void *dst, const void *src, size_t bytes); /* device to device */
int bench_cuda_memset(void *dst, int value, size_t bytes);
int bench_cuda_stream_create(void **stream);
void bench_cuda_stream_destroy(void *stream);
int bench_cuda_stream_sync(void *stream);

/* The streaming-read ceiling: min(8 GB, free/4) read with 16-byte loads, median of
 * `reps` kernels timed with events. */
int bench_cuda_read_ceiling(int reps, double *gbps, size_t *buffer_bytes);

/* Enqueues call number `call` of a graph on `stream`; returns 0, or non-zero on failure
 * (the callback keeps its own message). */
typedef int (*bench_cuda_enqueue_fn)(void *ctx, int call, void *stream);

/* Captures `calls` enqueues into one CUDA graph, replays it to warm up, then `replays`
 * times back to back (behind one untimed replay) with an event between replays;
 * ms_per_replay[i] gets the time of replay i. Returns 0, -1 for a CUDA failure, -2 when
 * the callback failed. */
int bench_cuda_time_graph(void *stream, int calls, int replays, bench_cuda_enqueue_fn fn,
                          void *ctx, double *ms_per_replay);
#endif

#endif /* ETAP_BENCH_H */
