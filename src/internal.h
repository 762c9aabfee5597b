/*
 * internal.h - what the API layer (api.c) and the backends share. Not installed.
 *
 * The API layer validates every argument (shapes, strides, pointers, sizes) before a
 * backend sees it; backends only check what is theirs to refuse (ETAP_ERR_UNSUPPORTED)
 * and what they can see that the API layer cannot (host-side lengths and block table
 * entries on the CPU).
 */
#ifndef ETAP_INTERNAL_H
#define ETAP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "etap.h"

#ifdef __cplusplus
extern "C" {
#endif

struct etap_handle_s {
    etap_backend backend; /* CPU or CUDA, never AUTO */
    int device;           /* CUDA device ordinal */
    int num_threads;      /* CPU worker threads */
    int num_sms;          /* CUDA multiprocessors */
    void *cuda;           /* CUDA backend's immutable per-handle data, or NULL */
};

/* Records `fmt` as this thread's last error message and returns `status`. */
etap_status etap_fail(etap_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Query rows that share one KV head: s_q * h_q / h_kv (row r = s * group + g). */
static inline int32_t etap_rows_per_kv_head(const etap_mla_shape *s)
{
    return s->seqlen_q * (s->num_heads_q / s->num_heads_kv);
}

/* The scale actually applied (ETAP_SOFTMAX_SCALE_DEFAULT resolved). */
float etap_resolved_scale(float softmax_scale);

/*
 * Workspace layout, shared by the backends (fp32, splits = plan max_splits):
 *   partial_out [splits, h_kv, rows, 512]   then   partial_lse [splits, h_kv, rows]
 * lse of a partial is the natural-log sum of exp over that split's keys (-inf if none).
 */
size_t etap_workspace_bytes_for(const etap_mla_shape *shape, int32_t num_workers);

/* ---- plan.c: the host plan builder (the definition every backend must reproduce) ---- */

/* Writes the full plan for `lengths` into plan[0 .. etap_plan_words()); `rows` is the
 * shape's query rows per KV head (etap_rows_per_kv_head), which decides between two
 * equally loaded cuts (plan.h). Lengths must be validated by the caller when status
 * reporting is wanted; invalid ones are recorded in the header (ETAP_PLAN_H_STATUS)
 * exactly as the device kernel records them. */
void etap_plan_build(int32_t batch, int32_t num_workers, int32_t max_len, int32_t rows,
                     const int32_t *lengths, int32_t *plan);

/* ---- CPU backend (cpu/cpu_backend.c) ---- */
int32_t etap_cpu_num_workers(const struct etap_handle_s *h, const etap_mla_shape *shape);
/* Per-thread scratch the CPU backend needs, placed in the workspace after the shared
 * partial-result layout (etap_workspace_bytes_for), 64-byte aligned. */
size_t etap_cpu_scratch_bytes(const struct etap_handle_s *h, const etap_mla_shape *shape);
etap_status etap_cpu_decode(const struct etap_handle_s *h, const etap_mla_args *args,
                            const int32_t *plan, void *workspace, size_t workspace_bytes);

/* ---- CUDA backend (src/cuda/); stubs in cuda_stub.c when built without CUDA ---- */
etap_status etap_cuda_create(struct etap_handle_s *h);
void etap_cuda_destroy(struct etap_handle_s *h);
int32_t etap_cuda_num_workers(const struct etap_handle_s *h, const etap_mla_shape *shape);
etap_status etap_cuda_plan(const struct etap_handle_s *h, const etap_mla_shape *shape,
                           const int32_t *cache_seqlens, int32_t *plan, void *stream);
etap_status etap_cuda_plan_check(const struct etap_handle_s *h, const int32_t *plan,
                                 int32_t *header_out, void *stream);
etap_status etap_cuda_decode(const struct etap_handle_s *h, const etap_mla_args *args,
                             const int32_t *plan, void *workspace, size_t workspace_bytes,
                             void *stream);
int etap_cuda_device_count(void);

#ifdef __cplusplus
}
#endif

#endif /* ETAP_INTERNAL_H */
