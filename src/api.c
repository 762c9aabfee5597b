/*
 * api.c - the public API: every argument check lives here, then dispatch to a backend.
 *
 * Messages name the offending field and say what would be valid, so that a user can fix
 * the call from the message alone.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"
#include "plan.h"

/* ------------------------------------------------------------------------------------ */
/* errors                                                                                */

static _Thread_local char tls_message[512];

etap_status etap_fail(etap_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_message, sizeof tls_message, fmt, ap);
    va_end(ap);
    return status;
}

const char *etap_last_error_message(void) { return tls_message; }

const char *etap_status_string(etap_status status)
{
    switch (status) {
    case ETAP_OK: return "ok";
    case ETAP_ERR_INVALID_ARGUMENT: return "invalid argument";
    case ETAP_ERR_UNSUPPORTED: return "unsupported by this backend";
    case ETAP_ERR_WORKSPACE_TOO_SMALL: return "workspace or plan buffer too small";
    case ETAP_ERR_NO_DEVICE: return "no usable CUDA device";
    case ETAP_ERR_CUDA: return "CUDA error";
    case ETAP_ERR_OUT_OF_MEMORY: return "out of memory";
    case ETAP_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

int etap_version(void) { return ETAP_VERSION; }

float etap_resolved_scale(float softmax_scale)
{
    return softmax_scale == ETAP_SOFTMAX_SCALE_DEFAULT ? 1.0f / sqrtf((float)ETAP_HEAD_DIM_QK)
                                                       : softmax_scale;
}

/* ------------------------------------------------------------------------------------ */
/* validation                                                                            */

#define CHECK(cond, ...)                                                                  \
    do {                                                                                  \
        if (!(cond))                                                                      \
            return etap_fail(ETAP_ERR_INVALID_ARGUMENT, __VA_ARGS__);                     \
    } while (0)

static etap_status check_handle(etap_handle h)
{
    CHECK(h != NULL, "handle is NULL: create one with etap_create()");
    CHECK(h->backend == ETAP_BACKEND_CPU || h->backend == ETAP_BACKEND_CUDA,
          "handle is not a live etap handle (destroyed or corrupted?)");
    return ETAP_OK;
}

static etap_status check_shape(const etap_mla_shape *s)
{
    CHECK(s != NULL, "shape is NULL");
    CHECK(s->batch >= 1, "batch is %d: it must be >= 1", (int)s->batch);
    CHECK(s->seqlen_q >= 1, "seqlen_q is %d: it must be >= 1", (int)s->seqlen_q);
    CHECK(s->num_heads_q >= 1, "num_heads_q is %d: it must be >= 1", (int)s->num_heads_q);
    CHECK(s->num_heads_kv >= 1, "num_heads_kv is %d: it must be >= 1", (int)s->num_heads_kv);
    CHECK(s->num_heads_q % s->num_heads_kv == 0,
          "num_heads_q (%d) is not a multiple of num_heads_kv (%d)", (int)s->num_heads_q,
          (int)s->num_heads_kv);
    CHECK(s->head_dim_qk == ETAP_HEAD_DIM_QK,
          "head_dim_qk is %d: MLA decode needs %d (512 latent + 64 RoPE)", (int)s->head_dim_qk,
          ETAP_HEAD_DIM_QK);
    CHECK(s->head_dim_v == ETAP_HEAD_DIM_V,
          "head_dim_v is %d: MLA decode needs %d (the latent part of the cache rows)",
          (int)s->head_dim_v, ETAP_HEAD_DIM_V);
    CHECK(s->page_size >= 1, "page_size is %d: it must be >= 1", (int)s->page_size);
    CHECK(s->num_pages >= 1, "num_pages is %d: it must be >= 1", (int)s->num_pages);
    CHECK(s->max_pages_per_seq >= 1, "max_pages_per_seq is %d: it must be >= 1",
          (int)s->max_pages_per_seq);
    CHECK(s->causal == 0 || s->causal == 1, "causal is %d: it must be 0 or 1", (int)s->causal);
    if (s->dtype == ETAP_DTYPE_FP8_E4M3)
        return etap_fail(ETAP_ERR_UNSUPPORTED,
                         "unsupported dtype FP8_E4M3: reserved, not implemented yet; use BF16 or FP16");
    CHECK(s->dtype == ETAP_DTYPE_BF16 || s->dtype == ETAP_DTYPE_FP16,
          "dtype is %d: it must be ETAP_DTYPE_BF16 (0) or ETAP_DTYPE_FP16 (1)", (int)s->dtype);
    /* Every row index (b, s, h) fits comfortably in 64 bits; bound the row count so
     * that per-row loops may use int32 counters. */
    CHECK((int64_t)s->batch * s->seqlen_q * s->num_heads_q <= INT32_MAX,
          "batch * seqlen_q * num_heads_q = %lld query rows: at most %d are supported",
          (long long)s->batch * s->seqlen_q * s->num_heads_q, INT32_MAX);
    return ETAP_OK;
}

/* Strides of an output that must not overlap itself: nested row-major with padding. */
static etap_status check_out_strides(const etap_mla_args *a)
{
    const etap_mla_shape *s = &a->shape;
    CHECK(a->out_stride_batch >= 0 && a->out_stride_seq >= 0 && a->out_stride_head >= 0,
          "out strides must be >= 0 (got batch %lld, seq %lld, head %lld)",
          (long long)a->out_stride_batch, (long long)a->out_stride_seq,
          (long long)a->out_stride_head);
    CHECK(s->num_heads_q == 1 || a->out_stride_head >= ETAP_HEAD_DIM_V,
          "out_stride_head is %lld: rows of out would overlap (need >= %d)",
          (long long)a->out_stride_head, ETAP_HEAD_DIM_V);
    int64_t head_span = s->num_heads_q == 1 ? ETAP_HEAD_DIM_V
                                           : (int64_t)(s->num_heads_q - 1) * a->out_stride_head +
                                                 ETAP_HEAD_DIM_V;
    CHECK(s->seqlen_q == 1 || a->out_stride_seq >= head_span,
          "out_stride_seq is %lld: positions of out would overlap (need >= %lld)",
          (long long)a->out_stride_seq, (long long)head_span);
    int64_t seq_span = s->seqlen_q == 1 ? head_span
                                        : (int64_t)(s->seqlen_q - 1) * a->out_stride_seq + head_span;
    CHECK(s->batch == 1 || a->out_stride_batch >= seq_span,
          "out_stride_batch is %lld: sequences of out would overlap (need >= %lld)",
          (long long)a->out_stride_batch, (long long)seq_span);
    return ETAP_OK;
}

static etap_status check_args(const etap_mla_args *a)
{
    CHECK(a != NULL, "args is NULL");
    etap_status st = check_shape(&a->shape);
    if (st != ETAP_OK)
        return st;
    const etap_mla_shape *s = &a->shape;
    CHECK(a->q != NULL, "q is NULL");
    CHECK(a->kv_cache != NULL, "kv_cache is NULL");
    CHECK(a->block_table != NULL, "block_table is NULL");
    CHECK(a->cache_seqlens != NULL, "cache_seqlens is NULL");
    CHECK(a->out != NULL, "out is NULL");
    CHECK(a->lse != NULL, "lse is NULL");
    CHECK(a->q_stride_batch >= 0 && a->q_stride_seq >= 0 && a->q_stride_head >= 0,
          "q strides must be >= 0 (got batch %lld, seq %lld, head %lld)",
          (long long)a->q_stride_batch, (long long)a->q_stride_seq, (long long)a->q_stride_head);
    CHECK(a->kv_stride_page >= 0 && a->kv_stride_token >= 0 && a->kv_stride_head >= 0,
          "kv_cache strides must be >= 0 (got page %lld, token %lld, head %lld)",
          (long long)a->kv_stride_page, (long long)a->kv_stride_token,
          (long long)a->kv_stride_head);
    CHECK(s->batch == 1 || a->block_table_stride >= s->max_pages_per_seq,
          "block_table_stride is %lld: it must be >= max_pages_per_seq (%d)",
          (long long)a->block_table_stride, (int)s->max_pages_per_seq);
    CHECK(a->block_table_stride >= 0, "block_table_stride is %lld: it must be >= 0",
          (long long)a->block_table_stride);
    float sc = a->softmax_scale;
    CHECK(sc == ETAP_SOFTMAX_SCALE_DEFAULT || (isfinite(sc) && sc > 0.0f),
          "softmax_scale is %g: it must be finite and > 0, or ETAP_SOFTMAX_SCALE_DEFAULT (0) "
          "for 1/sqrt(576)",
          (double)sc);
    return check_out_strides(a);
}

static int32_t num_workers_for(etap_handle h, const etap_mla_shape *s)
{
    return h->backend == ETAP_BACKEND_CUDA ? etap_cuda_num_workers(h, s)
                                           : etap_cpu_num_workers(h, s);
}

static int64_t plan_bytes_for(etap_handle h, const etap_mla_shape *s)
{
    return 4 * etap_plan_words(s->batch, num_workers_for(h, s));
}

size_t etap_workspace_bytes_for(const etap_mla_shape *s, int32_t num_workers)
{
    int64_t splits = etap_plan_max_splits(s->batch, num_workers);
    int64_t rows = (int64_t)s->num_heads_kv * etap_rows_per_kv_head(s);
    int64_t bytes = splits * rows * (ETAP_HEAD_DIM_V + 1) * (int64_t)sizeof(float);
    return (size_t)((bytes + 63) / 64 * 64);
}

/* The shared partial-result layout, plus the CPU backend's per-thread scratch. */
static size_t workspace_bytes_for(etap_handle h, const etap_mla_shape *s)
{
    size_t bytes = etap_workspace_bytes_for(s, num_workers_for(h, s));
    if (h->backend == ETAP_BACKEND_CPU)
        bytes += etap_cpu_scratch_bytes(h, s);
    return bytes;
}

/* ------------------------------------------------------------------------------------ */
/* handle                                                                                */

int etap_backend_built(etap_backend backend)
{
    switch (backend) {
    case ETAP_BACKEND_CPU: return 1;
#if defined(ETAP_WITH_CUDA)
    case ETAP_BACKEND_CUDA: return 1;
#endif
    default: return 0;
    }
}

etap_status etap_create(etap_handle *handle, const etap_options *options)
{
    CHECK(handle != NULL, "handle (the output pointer) is NULL");
    *handle = NULL;
    etap_options opt = {ETAP_BACKEND_AUTO, 0, 0};
    if (options)
        opt = *options;
    CHECK(opt.backend == ETAP_BACKEND_AUTO || opt.backend == ETAP_BACKEND_CPU ||
              opt.backend == ETAP_BACKEND_CUDA,
          "options->backend is %d: use ETAP_BACKEND_AUTO, _CPU or _CUDA", (int)opt.backend);
    CHECK(opt.num_threads >= 0 && opt.num_threads <= 1024,
          "options->num_threads is %d: use 0 (all processors) or 1..1024", opt.num_threads);
    CHECK(opt.device >= 0, "options->device is %d: it must be >= 0", opt.device);

    struct etap_handle_s *h = calloc(1, sizeof *h);
    if (!h)
        return etap_fail(ETAP_ERR_OUT_OF_MEMORY, "cannot allocate an etap handle");
    h->device = opt.device;
    h->num_threads = opt.num_threads;
    if (h->num_threads == 0) {
        long n = 1;
#if defined(_SC_NPROCESSORS_ONLN)
        n = sysconf(_SC_NPROCESSORS_ONLN);
#endif
        h->num_threads = n < 1 ? 1 : (n > 1024 ? 1024 : (int)n);
    }

    etap_backend want = opt.backend;
    if (want == ETAP_BACKEND_AUTO)
        want = (etap_backend_built(ETAP_BACKEND_CUDA) && etap_cuda_device_count() > opt.device)
                   ? ETAP_BACKEND_CUDA
                   : ETAP_BACKEND_CPU;
    h->backend = want;
    if (want == ETAP_BACKEND_CUDA) {
        etap_status st = etap_cuda_create(h);
        if (st != ETAP_OK) {
            free(h);
            return st;
        }
    }
    *handle = h;
    return ETAP_OK;
}

etap_status etap_destroy(etap_handle h)
{
    if (h == NULL)
        return ETAP_OK;
    etap_status st = check_handle(h);
    if (st != ETAP_OK)
        return st;
    if (h->backend == ETAP_BACKEND_CUDA)
        etap_cuda_destroy(h);
    h->backend = (etap_backend)-1; /* a second destroy or a late use fails loudly */
    free(h);
    return ETAP_OK;
}

etap_status etap_get_backend(etap_handle h, etap_backend *backend)
{
    etap_status st = check_handle(h);
    if (st != ETAP_OK)
        return st;
    CHECK(backend != NULL, "backend (the output pointer) is NULL");
    *backend = h->backend;
    return ETAP_OK;
}

etap_status etap_get_num_workers(etap_handle h, const etap_mla_shape *shape, int32_t *num_workers)
{
    etap_status st = check_handle(h);
    if (st == ETAP_OK)
        st = check_shape(shape);
    if (st != ETAP_OK)
        return st;
    CHECK(num_workers != NULL, "num_workers (the output pointer) is NULL");
    *num_workers = num_workers_for(h, shape);
    return ETAP_OK;
}

/* ------------------------------------------------------------------------------------ */
/* plan                                                                                  */

etap_status etap_plan_size(etap_handle h, const etap_mla_shape *shape, size_t *plan_bytes)
{
    etap_status st = check_handle(h);
    if (st == ETAP_OK)
        st = check_shape(shape);
    if (st != ETAP_OK)
        return st;
    CHECK(plan_bytes != NULL, "plan_bytes (the output pointer) is NULL");
    *plan_bytes = (size_t)plan_bytes_for(h, shape);
    return ETAP_OK;
}

static int64_t max_len_for(const etap_mla_shape *s)
{
    int64_t cap = (int64_t)s->max_pages_per_seq * s->page_size;
    return cap > INT32_MAX ? INT32_MAX : cap;
}

etap_status etap_plan(etap_handle h, const etap_mla_shape *shape, const int32_t *cache_seqlens,
                      void *plan, size_t plan_bytes, void *stream)
{
    etap_status st = check_handle(h);
    if (st == ETAP_OK)
        st = check_shape(shape);
    if (st != ETAP_OK)
        return st;
    CHECK(cache_seqlens != NULL, "cache_seqlens is NULL");
    CHECK(plan != NULL, "plan is NULL");
    CHECK(((uintptr_t)plan & 3) == 0, "plan must be 4-byte aligned");
    int64_t need = plan_bytes_for(h, shape);
    if ((int64_t)plan_bytes < need)
        return etap_fail(ETAP_ERR_WORKSPACE_TOO_SMALL,
                         "plan buffer is %zu bytes: this shape needs %lld (etap_plan_size)",
                         plan_bytes, (long long)need);
    if (h->backend == ETAP_BACKEND_CUDA)
        return etap_cuda_plan(h, shape, cache_seqlens, (int32_t *)plan, stream);

    int64_t max_len = max_len_for(shape);
    for (int32_t i = 0; i < shape->batch; i++) {
        CHECK(cache_seqlens[i] >= 0, "cache_seqlens[%d] is %d: lengths must be >= 0", (int)i,
              (int)cache_seqlens[i]);
        CHECK(cache_seqlens[i] <= max_len,
              "cache_seqlens[%d] is %d: the block table holds at most max_pages_per_seq * "
              "page_size = %lld tokens",
              (int)i, (int)cache_seqlens[i], (long long)max_len);
    }
    etap_plan_build(shape->batch, num_workers_for(h, shape), (int32_t)max_len,
                    etap_rows_per_kv_head(shape), cache_seqlens,
                    (int32_t *)plan);
    return ETAP_OK;
}

static etap_status explain_plan_header(const int32_t *hdr)
{
    if (hdr[ETAP_PLAN_H_MAGIC] != ETAP_PLAN_MAGIC || hdr[ETAP_PLAN_H_VERSION] != ETAP_PLAN_VERSION)
        return etap_fail(ETAP_ERR_INVALID_ARGUMENT,
                         "plan was not written by etap_plan() (bad magic or version)");
    switch (hdr[ETAP_PLAN_H_STATUS]) {
    case ETAP_PLAN_OK: return ETAP_OK;
    case ETAP_PLAN_BAD_NEGATIVE_LEN:
        return etap_fail(ETAP_ERR_INVALID_ARGUMENT,
                         "cache_seqlens[%d] is %d: lengths must be >= 0",
                         (int)hdr[ETAP_PLAN_H_BAD_SEQ], (int)hdr[ETAP_PLAN_H_BAD_LEN]);
    case ETAP_PLAN_BAD_LEN_TOO_LONG:
        return etap_fail(ETAP_ERR_INVALID_ARGUMENT,
                         "cache_seqlens[%d] is %d: longer than max_pages_per_seq * page_size",
                         (int)hdr[ETAP_PLAN_H_BAD_SEQ], (int)hdr[ETAP_PLAN_H_BAD_LEN]);
    }
    return etap_fail(ETAP_ERR_INVALID_ARGUMENT, "plan header has an unknown status %d",
                     (int)hdr[ETAP_PLAN_H_STATUS]);
}

etap_status etap_plan_check(etap_handle h, const void *plan, size_t plan_bytes, void *stream)
{
    etap_status st = check_handle(h);
    if (st != ETAP_OK)
        return st;
    CHECK(plan != NULL, "plan is NULL");
    if (plan_bytes < 4 * ETAP_PLAN_HEADER_WORDS)
        return etap_fail(ETAP_ERR_WORKSPACE_TOO_SMALL, "plan buffer is %zu bytes: too small",
                         plan_bytes);
    int32_t hdr[ETAP_PLAN_HEADER_WORDS];
    if (h->backend == ETAP_BACKEND_CUDA) {
        st = etap_cuda_plan_check(h, (const int32_t *)plan, hdr, stream);
        if (st != ETAP_OK)
            return st;
    } else {
        for (int i = 0; i < ETAP_PLAN_HEADER_WORDS; i++)
            hdr[i] = ((const int32_t *)plan)[i];
    }
    return explain_plan_header(hdr);
}

/* ------------------------------------------------------------------------------------ */
/* decode                                                                                */

etap_status etap_workspace_size(etap_handle h, const etap_mla_shape *shape, size_t *bytes)
{
    etap_status st = check_handle(h);
    if (st == ETAP_OK)
        st = check_shape(shape);
    if (st != ETAP_OK)
        return st;
    CHECK(bytes != NULL, "workspace_bytes (the output pointer) is NULL");
    *bytes = workspace_bytes_for(h, shape);
    return ETAP_OK;
}

etap_status etap_decode(etap_handle h, const etap_mla_args *args, const void *plan,
                        size_t plan_bytes, void *workspace, size_t workspace_bytes, void *stream)
{
    etap_status st = check_handle(h);
    if (st == ETAP_OK)
        st = check_args(args);
    if (st != ETAP_OK)
        return st;
    CHECK(plan != NULL, "plan is NULL: make one with etap_plan()");
    int64_t need_plan = plan_bytes_for(h, &args->shape);
    if ((int64_t)plan_bytes < need_plan)
        return etap_fail(ETAP_ERR_WORKSPACE_TOO_SMALL,
                         "plan buffer is %zu bytes: this shape needs %lld (etap_plan_size)",
                         plan_bytes, (long long)need_plan);
    size_t need_ws = workspace_bytes_for(h, &args->shape);
    if (workspace_bytes < need_ws)
        return etap_fail(ETAP_ERR_WORKSPACE_TOO_SMALL,
                         "workspace is %zu bytes: this shape needs %zu (etap_workspace_size)",
                         workspace_bytes, need_ws);
    CHECK(need_ws == 0 || workspace != NULL, "workspace is NULL but %zu bytes are needed",
          need_ws);
    CHECK(need_ws == 0 || ((uintptr_t)workspace & 15) == 0,
          "workspace must be 16-byte aligned (got %p): partial results are stored there as "
          "fp32 vectors",
          workspace);

    if (h->backend == ETAP_BACKEND_CUDA)
        return etap_cuda_decode(h, args, (const int32_t *)plan, workspace, workspace_bytes,
                                stream);

    /* CPU: the plan is host memory, so it can be checked against this call. */
    const int32_t *p = (const int32_t *)plan;
    st = explain_plan_header(p);
    if (st != ETAP_OK)
        return st;
    CHECK(p[ETAP_PLAN_H_BATCH] == args->shape.batch &&
              p[ETAP_PLAN_H_NUM_WORKERS] == num_workers_for(h, &args->shape),
          "plan was made for batch %d with %d workers, this call has batch %d with %d: "
          "make the plan with the same handle and shape",
          (int)p[ETAP_PLAN_H_BATCH], (int)p[ETAP_PLAN_H_NUM_WORKERS], (int)args->shape.batch,
          (int)num_workers_for(h, &args->shape));
    return etap_cpu_decode(h, args, p, workspace, workspace_bytes);
}
