/*
 * etap.h - MLA decode attention (DeepSeek-V3/R1 Multi-head Latent Attention) with the
 * Efficient Transpose Attention Pipeline on Hopper, and a CPU backend.
 *
 * What one decode call computes (FlashMLA's dense-decode semantics):
 *
 *   for each sequence b, query position s, query head h:
 *     g      = h / (h_q / h_kv)                          (the KV head of h)
 *     K_b[t] = kv_cache[page(b, t), t % page_size, g, 0:576]   t < cache_seqlens[b]
 *     V_b[t] = K_b[t][0:512]                             (V is the first 512 columns)
 *     visible(t) = t < len_b                     (not causal, or s_q == 1)
 *                = t <= len_b - s_q + s          (causal: bottom-right aligned)
 *     p_t    = exp(scale * <q[b,s,h,:], K_b[t]>) over visible t, normalised
 *     out[b,s,h,:] = sum_t p_t V_b[t]                        (q's dtype)
 *     lse[b,h,s]   = log(sum_t exp(scale * <q, K_b[t]>))     (fp32, natural log)
 *   A row with no visible key: out = 0, lse = +inf.
 *
 * Two steps, both asynchronous on the caller's stream for the CUDA backend:
 *   1. etap_plan():   split-KV schedule from cache_seqlens. Compute it once per decode
 *                     step; it serves every layer of that step. On CUDA it runs on the
 *                     device (no host synchronisation), so plan + decode can be captured
 *                     in a CUDA graph and replayed with new seqlens.
 *   2. etap_decode(): attention for one layer, using the plan and a caller-owned workspace.
 *
 * Conventions: every function returns an etap_status (0 = ok, negative = error);
 * etap_last_error_message() gives the detailed message of the last failure on the calling
 * thread. The library never prints, never exits, never allocates inside etap_plan() or
 * etap_decode(), and keeps no global mutable state: a handle is immutable after
 * etap_create() and may be shared by threads that use different streams.
 * New enum values are only ever added at the end.
 */
#ifndef ETAP_H
#define ETAP_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  if defined(ETAP_BUILDING_LIBRARY)
#    define ETAP_API __declspec(dllexport)
#  else
#    define ETAP_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__)
#  define ETAP_API __attribute__((visibility("default")))
#else
#  define ETAP_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define ETAP_VERSION_MAJOR 0
#define ETAP_VERSION_MINOR 1
#define ETAP_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH, the value etap_version() returns. */
#define ETAP_VERSION (ETAP_VERSION_MAJOR * 10000 + ETAP_VERSION_MINOR * 100 + ETAP_VERSION_PATCH)

/* The fixed MLA dimensions of DeepSeek-V3/R1. */
#define ETAP_HEAD_DIM_QK 576 /* 512 latent + 64 RoPE */
#define ETAP_HEAD_DIM_V 512  /* V = the first 512 columns of the cache rows */

/* Pass as softmax_scale to get the default 1/sqrt(576). DeepSeek passes its own scale. */
#define ETAP_SOFTMAX_SCALE_DEFAULT 0.0f

typedef enum etap_status {
    ETAP_OK = 0,
    ETAP_ERR_INVALID_ARGUMENT = -1, /* a null pointer, a bad size, stride or value */
    ETAP_ERR_UNSUPPORTED = -2,      /* valid MLA, but this backend cannot run it (yet) */
    ETAP_ERR_WORKSPACE_TOO_SMALL = -3,
    ETAP_ERR_NO_DEVICE = -4,        /* CUDA backend asked for, none usable / not built */
    ETAP_ERR_CUDA = -5,             /* a CUDA runtime or driver call failed */
    ETAP_ERR_OUT_OF_MEMORY = -6,    /* only etap_create() allocates */
    ETAP_ERR_INTERNAL = -7          /* a bug in etap: please report the message */
} etap_status;

typedef enum etap_dtype {
    ETAP_DTYPE_BF16 = 0,
    ETAP_DTYPE_FP16 = 1,
    ETAP_DTYPE_FP8_E4M3 = 2 /* reserved: every backend returns ETAP_ERR_UNSUPPORTED */
} etap_dtype;

typedef enum etap_backend {
    ETAP_BACKEND_AUTO = 0, /* CUDA if built and a device is present, else CPU */
    ETAP_BACKEND_CPU = 1,
    ETAP_BACKEND_CUDA = 2
} etap_backend;

/* Opaque; created by etap_create(), immutable afterwards. */
typedef struct etap_handle_s *etap_handle;

/* Options for etap_create(). Zero-initialise, then set what you need. */
typedef struct etap_options {
    etap_backend backend;
    int device;      /* CUDA device ordinal (CUDA backend); ignored by the CPU backend */
    int num_threads; /* CPU backend worker threads; 0 = all online processors */
} etap_options;

/* The shape of one decode call. Every field is checked by the API layer. */
typedef struct etap_mla_shape {
    int32_t batch;             /* b >= 1 */
    int32_t seqlen_q;          /* s_q >= 1 (query tokens per sequence; > 1 for MTP) */
    int32_t num_heads_q;       /* h_q >= 1, a multiple of num_heads_kv */
    int32_t num_heads_kv;      /* h_kv >= 1 (1 for DeepSeek MLA) */
    int32_t head_dim_qk;       /* must be ETAP_HEAD_DIM_QK */
    int32_t head_dim_v;        /* must be ETAP_HEAD_DIM_V */
    int32_t page_size;         /* tokens per cache page, >= 1 */
    int32_t num_pages;         /* pages in the cache; block table entries are < this */
    int32_t max_pages_per_seq; /* columns of the block table */
    etap_dtype dtype;          /* q, kv_cache and out */
    int32_t causal;            /* 0 or 1; ignored when seqlen_q == 1 */
} etap_mla_shape;

/*
 * Arguments of one decode call. Strides are in elements, not bytes; the last dimension
 * of q, kv_cache and out is contiguous. Pointers are host memory for the CPU backend and
 * device memory for the CUDA backend.
 */
typedef struct etap_mla_args {
    etap_mla_shape shape;
    const void *q;                 /* [b, s_q, h_q, 576] */
    int64_t q_stride_batch, q_stride_seq, q_stride_head;
    const void *kv_cache;          /* [num_pages, page_size, h_kv, 576] */
    int64_t kv_stride_page, kv_stride_token, kv_stride_head;
    const int32_t *block_table;    /* [b, max_pages_per_seq], row stride below */
    int64_t block_table_stride;
    const int32_t *cache_seqlens;  /* [b], the same values the plan was made from */
    float softmax_scale;           /* > 0, or ETAP_SOFTMAX_SCALE_DEFAULT */
    void *out;                     /* [b, s_q, h_q, 512], dtype of q */
    int64_t out_stride_batch, out_stride_seq, out_stride_head;
    float *lse;                    /* [b, h_q, s_q], contiguous fp32 */
} etap_mla_args;

/* ---- library ---- */

/* ETAP_VERSION of the library actually linked. */
ETAP_API int etap_version(void);
/* A constant string for a status value ("ok", "invalid argument", ...). Never NULL. */
ETAP_API const char *etap_status_string(etap_status status);
/* The detailed message of the last failing call on this thread ("" if none). The string
 * stays valid until the next etap call on the same thread. */
ETAP_API const char *etap_last_error_message(void);
/* Which backends this build contains (1 or 0). */
ETAP_API int etap_backend_built(etap_backend backend);

/* ---- handle ---- */

/* Creates a handle for a backend; with AUTO it picks CUDA when possible. Allocates only
 * host memory. For CUDA it reads the device's properties; it does not change the current
 * device of the calling thread. */
ETAP_API etap_status etap_create(etap_handle *handle, const etap_options *options);
ETAP_API etap_status etap_destroy(etap_handle handle);
/* The backend the handle runs on (never AUTO). */
ETAP_API etap_status etap_get_backend(etap_handle handle, etap_backend *backend);
/* Parallel workers the plan spreads a KV head's work over (SMs / num_heads_kv on CUDA,
 * 4 x threads on the CPU). It depends only on the handle and num_heads_kv, never on the
 * lengths, seqlen_q or num_heads_q, so etap_plan_size() depends only on the handle, batch
 * and num_heads_kv. */
ETAP_API etap_status etap_get_num_workers(etap_handle handle, const etap_mla_shape *shape,
                                          int32_t *num_workers);

/* ---- plan (split-KV schedule) ---- */

/* Bytes of the plan buffer for this shape. Depends on batch and the handle, never on the
 * sequence lengths, so a buffer sized once serves every decode step of that batch size.
 * The plan is a documented int32 array (docs/plan-format.md). */
ETAP_API etap_status etap_plan_size(etap_handle handle, const etap_mla_shape *shape,
                                    size_t *plan_bytes);

/* Computes the plan into `plan` (host memory for CPU, device memory for CUDA) from
 * cache_seqlens (same memory space). On CUDA this enqueues one small kernel on `stream`
 * (a cudaStream_t; NULL = legacy default stream) and returns without waiting. On CUDA the
 * lengths are validated on the device: a plan made from a negative length or one longer
 * than max_pages_per_seq * page_size is marked invalid, and every output of a decode run
 * with it is NaN (etap_plan_check() reads that mark, synchronising). */
ETAP_API etap_status etap_plan(etap_handle handle, const etap_mla_shape *shape,
                               const int32_t *cache_seqlens, void *plan, size_t plan_bytes,
                               void *stream);

/* Synchronises `stream`, then returns ETAP_OK if the plan is valid or
 * ETAP_ERR_INVALID_ARGUMENT with the reason. For debugging and tests; never needed on the
 * hot path (the CPU backend validates lengths inside etap_plan() itself). */
ETAP_API etap_status etap_plan_check(etap_handle handle, const void *plan, size_t plan_bytes,
                                     void *stream);

/* ---- decode ---- */

/* Bytes of the workspace etap_decode() needs for this shape (independent of the lengths).
 * May be 0. The workspace must be 16-byte aligned (cudaMalloc and malloc give more). */
ETAP_API etap_status etap_workspace_size(etap_handle handle, const etap_mla_shape *shape,
                                         size_t *workspace_bytes);

/* One decode call: out and lse for every (b, s_q, h_q) row. `plan` must come from
 * etap_plan() with the same handle, batch, rows per KV head (seqlen_q * num_heads_q /
 * num_heads_kv), num_heads_kv and lengths (the rows choose between two schedules of equal
 * balance, docs/plan-format.md; the CPU backend refuses a plan that differs from its own).
 * On CUDA the call is
 * asynchronous on `stream` and safe to capture in a CUDA graph. Its kernels start while
 * the kernel before them on the stream finishes (programmatic dependent launch) and wait
 * for it before reading q, the cache, the lengths or the block table, but read the plan
 * at once: the plan must be complete when the call is enqueued behind it. etap_plan() and
 * stream-ordered copies guarantee that; a kernel of your own that writes the plan must not
 * be the one right before etap_decode() if it lets dependent kernels launch early. */
ETAP_API etap_status etap_decode(etap_handle handle, const etap_mla_args *args,
                                 const void *plan, size_t plan_bytes, void *workspace,
                                 size_t workspace_bytes, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* ETAP_H */
