/*
 * cuda_backend.cu - the host side of the Hopper backend: device checks, the tensor map of
 * the paged KV cache, and the launches of the plan, split and combine kernels.
 *
 * Nothing here synchronises or allocates on the hot path (etap_plan, etap_decode), so
 * both can be captured in a CUDA graph. The API layer (api.c) has already validated the
 * arguments; this file refuses, with ETAP_ERR_UNSUPPORTED, what the kernels do not cover.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../internal.h"
#include "../plan.h"
#include "cuda_common.cuh"

typedef CUresult (*encode_tiled_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                                    const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                                    const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                                    CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

struct cuda_handle_data {
    encode_tiled_fn encode_tiled; /* cuTensorMapEncodeTiled from the driver, no -lcuda */
    int max_plan_batch;           /* the plan kernel keeps prefix sums in shared memory */
};

#define CUDA_TRY(call, what)                                                                 \
    do {                                                                                     \
        cudaError_t err_ = (call);                                                           \
        if (err_ != cudaSuccess)                                                             \
            return etap_fail(ETAP_ERR_CUDA, "%s failed: %s (%s)", what, cudaGetErrorName(err_), \
                             cudaGetErrorString(err_));                                      \
    } while (0)

/* Makes h->device current for the scope of one API call and restores the caller's. */
struct device_scope {
    int previous;
    bool changed;
};
static cudaError_t enter_device(const struct etap_handle_s *h, device_scope *scope)
{
    scope->changed = false;
    cudaError_t err = cudaGetDevice(&scope->previous);
    if (err != cudaSuccess || scope->previous == h->device)
        return err;
    scope->changed = true;
    return cudaSetDevice(h->device);
}
static void leave_device(const device_scope *scope)
{
    if (scope->changed)
        cudaSetDevice(scope->previous);
}

extern "C" int etap_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the non-sticky error */
        return 0;
    }
    return n;
}

extern "C" etap_status etap_cuda_create(struct etap_handle_s *h)
{
    const int count = etap_cuda_device_count();
    if (count == 0)
        return etap_fail(ETAP_ERR_NO_DEVICE, "no CUDA device is visible (driver missing, "
                                             "CUDA_VISIBLE_DEVICES empty, or no GPU)");
    if (h->device >= count)
        return etap_fail(ETAP_ERR_NO_DEVICE, "CUDA device %d requested, but only %d visible",
                         h->device, count);
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, h->device), "cudaGetDeviceProperties");
    if (prop.major != 9 || prop.minor != 0)
        return etap_fail(ETAP_ERR_NO_DEVICE,
                         "CUDA device %d (%s) has compute capability %d.%d: etap's CUDA backend "
                         "is built for Hopper (sm_90a) only; use the CPU backend",
                         h->device, prop.name, prop.major, prop.minor);
    h->num_sms = prop.multiProcessorCount;

    cuda_handle_data *data = (cuda_handle_data *)calloc(1, sizeof *data);
    if (!data)
        return etap_fail(ETAP_ERR_OUT_OF_MEMORY, "cannot allocate the CUDA handle data");
    void *fn = NULL;
    cudaDriverEntryPointQueryResult found;
    cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                                       cudaEnableDefault, &found);
    if (err != cudaSuccess || found != cudaDriverEntryPointSuccess || !fn) {
        free(data);
        return etap_fail(ETAP_ERR_CUDA, "the CUDA driver does not provide cuTensorMapEncodeTiled "
                                        "(driver too old for CUDA 12?)");
    }
    data->encode_tiled = (encode_tiled_fn)fn;
    /* tiles_before[batch + 1] int64 and count_before[batch + 1] int32 in dynamic shared
     * memory, 4 KB kept for the static part */
    data->max_plan_batch =
        (int)((prop.sharedMemPerBlockOptin - 4096) / (sizeof(int64_t) + sizeof(int32_t))) - 1;

    device_scope scope;
    const char *what = "cudaSetDevice";
    err = enter_device(h, &scope);
    if (err == cudaSuccess) {
        what = "raising the split kernel's shared-memory limit";
        err = etap_sm90_set_attributes();
    }
    if (err == cudaSuccess) {
        what = "raising the combine kernel's shared-memory limit";
        err = etap_combine_set_attributes();
    }
    if (err == cudaSuccess) {
        what = "raising the plan kernel's shared-memory limit";
        err = etap_plan_set_attributes(etap_plan_kernel_smem_bytes(data->max_plan_batch));
    }
    leave_device(&scope);
    if (err != cudaSuccess) {
        free(data);
        return etap_fail(ETAP_ERR_CUDA, "%s failed: %s", what, cudaGetErrorString(err));
    }
    h->cuda = data;
    return ETAP_OK;
}

extern "C" void etap_cuda_destroy(struct etap_handle_s *h)
{
    free(h->cuda);
    h->cuda = NULL;
}

/* One CTA per SM: a worker per SM for each KV head. */
extern "C" int32_t etap_cuda_num_workers(const struct etap_handle_s *h, const etap_mla_shape *s)
{
    int32_t w = h->num_sms / s->num_heads_kv;
    return w < 1 ? 1 : w;
}

static int64_t capacity(const etap_mla_shape *s)
{
    int64_t cap = (int64_t)s->max_pages_per_seq * s->page_size;
    return cap > INT32_MAX ? INT32_MAX : cap;
}

extern "C" etap_status etap_cuda_plan(const struct etap_handle_s *h, const etap_mla_shape *s,
                                      const int32_t *cache_seqlens, int32_t *plan, void *stream)
{
    const cuda_handle_data *data = (const cuda_handle_data *)h->cuda;
    if (s->batch > data->max_plan_batch)
        return etap_fail(ETAP_ERR_UNSUPPORTED,
                         "unsupported batch %d: the CUDA plan kernel handles at most %d sequences",
                         (int)s->batch, data->max_plan_batch);
    device_scope scope;
    CUDA_TRY(enter_device(h, &scope), "cudaSetDevice");
    cudaError_t err = etap_launch_plan(cache_seqlens, plan, s->batch, etap_cuda_num_workers(h, s),
                                       (int32_t)capacity(s), etap_rows_per_kv_head(s),
                                       (cudaStream_t)stream);
    leave_device(&scope);
    CUDA_TRY(err, "launching the plan kernel");
    return ETAP_OK;
}

extern "C" etap_status etap_cuda_plan_check(const struct etap_handle_s *h, const int32_t *plan,
                                            int32_t *header_out, void *stream)
{
    device_scope scope;
    CUDA_TRY(enter_device(h, &scope), "cudaSetDevice");
    cudaError_t err = cudaMemcpyAsync(header_out, plan, 4 * ETAP_PLAN_HEADER_WORDS,
                                      cudaMemcpyDeviceToHost, (cudaStream_t)stream);
    if (err == cudaSuccess)
        err = cudaStreamSynchronize((cudaStream_t)stream);
    leave_device(&scope);
    CUDA_TRY(err, "reading the plan header");
    return ETAP_OK;
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* What the kernels cannot run yet, with a message that says what would work. */
static etap_status check_supported(const etap_mla_args *a)
{
    const etap_mla_shape *s = &a->shape;
    if (s->page_size % 64 != 0)
        return etap_fail(ETAP_ERR_UNSUPPORTED,
                         "unsupported page_size %d: the CUDA backend needs a multiple of 64 (64 is what "
                         "FlashMLA uses); use the CPU backend for other page sizes",
                         (int)s->page_size);
    if (!aligned16(a->q) || a->q_stride_batch % 8 || a->q_stride_seq % 8 || a->q_stride_head % 8)
        return etap_fail(ETAP_ERR_UNSUPPORTED,
                         "unsupported q layout: q must be 16-byte aligned with strides that are multiples of 8 "
                         "elements for the CUDA backend");
    if (!aligned16(a->out) || a->out_stride_batch % 8 || a->out_stride_seq % 8 ||
        a->out_stride_head % 8)
        return etap_fail(ETAP_ERR_UNSUPPORTED,
                         "unsupported out layout: out must be 16-byte aligned with strides that are multiples of 8 "
                         "elements for the CUDA backend");
    if (!aligned16(a->kv_cache) || a->kv_stride_page % 8 || a->kv_stride_token % 8 ||
        (s->num_heads_kv > 1 && a->kv_stride_head % 8))
        return etap_fail(ETAP_ERR_UNSUPPORTED,
                         "unsupported kv_cache layout: kv_cache must be 16-byte aligned with strides that are multiples of 8 "
                         "elements for the CUDA backend (the bulk tensor copy engine needs it)");
    return ETAP_OK;
}

/* The paged cache for the copy engine as a 5-D tensor {64 columns, page_size tokens, 9
 * column blocks, h_kv, num_pages} (innermost first; the column block's stride, 128 bytes,
 * is the smallest): one box = 64 x 64 x 9 = one 72 KB tile, which lands in shared memory as
 * [9 column blocks][64 tokens][128 B], each block 128B-swizzled, in one copy.
 * No L2 promotion: a box row is 128 bytes of a 1152-byte token row, and promoting it to
 * 256 bytes cost 9% at large batches (b = 128, 16K: 591 -> 551 us without, docs/perf.md). */
static etap_status make_kv_map(const cuda_handle_data *data, const etap_mla_args *a, CUtensorMap *map)
{
    const etap_mla_shape *s = &a->shape;
    const int64_t head_stride = s->num_heads_kv > 1 ? a->kv_stride_head : ETAP_HEAD_DIM_QK;
    cuuint64_t dims[5] = {64, (cuuint64_t)s->page_size, ETAP_HEAD_DIM_QK / 64,
                          (cuuint64_t)s->num_heads_kv, (cuuint64_t)s->num_pages};
    cuuint64_t strides[4] = {(cuuint64_t)a->kv_stride_token * 2, 128, (cuuint64_t)head_stride * 2,
                             (cuuint64_t)a->kv_stride_page * 2};
    cuuint32_t box[5] = {64, 64, ETAP_HEAD_DIM_QK / 64, 1, 1};
    cuuint32_t elem_strides[5] = {1, 1, 1, 1, 1};
    CUresult r = data->encode_tiled(
        map, s->dtype == ETAP_DTYPE_FP16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        5, (void *)a->kv_cache, dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return etap_fail(ETAP_ERR_UNSUPPORTED,
                         "unsupported KV cache layout: it cannot be described to the copy engine (strides "
                         "page %lld, token %lld, head %lld elements; error %d)",
                         (long long)a->kv_stride_page, (long long)a->kv_stride_token,
                         (long long)a->kv_stride_head, (int)r);
    return ETAP_OK;
}

extern "C" etap_status etap_cuda_decode(const struct etap_handle_s *h, const etap_mla_args *a,
                                        const int32_t *plan, void *workspace,
                                        size_t workspace_bytes, void *stream)
{
    (void)workspace_bytes; /* checked by the API layer */
    etap_status st = check_supported(a);
    if (st != ETAP_OK)
        return st;
    const etap_mla_shape *s = &a->shape;
    const cuda_handle_data *data = (const cuda_handle_data *)h->cuda;
    CUtensorMap map;
    st = make_kv_map(data, a, &map);
    if (st != ETAP_OK)
        return st;

    decode_params p;
    memset(&p, 0, sizeof p);
    p.q = a->q;
    p.q_stride_batch = a->q_stride_batch;
    p.q_stride_seq = a->q_stride_seq;
    p.q_stride_head = a->q_stride_head;
    p.block_table = a->block_table;
    p.block_table_stride = a->block_table_stride;
    p.seqlens = a->cache_seqlens;
    p.plan = plan;
    p.out = a->out;
    p.out_stride_batch = a->out_stride_batch;
    p.out_stride_seq = a->out_stride_seq;
    p.out_stride_head = a->out_stride_head;
    p.lse = a->lse;
    p.batch = s->batch;
    p.seqlen_q = s->seqlen_q;
    p.heads_q = s->num_heads_q;
    p.heads_kv = s->num_heads_kv;
    p.rows = etap_rows_per_kv_head(s);
    p.group = s->num_heads_q / s->num_heads_kv;
    p.page_size = s->page_size;
    p.causal = s->causal && s->seqlen_q > 1;
    p.num_workers = etap_cuda_num_workers(h, s);
    p.max_splits = etap_plan_max_splits(s->batch, p.num_workers);
    p.max_len = (int32_t)capacity(s);
    p.scale_log2 = etap_resolved_scale(a->softmax_scale) * 1.4426950408889634f;
    p.partial_out = (float *)workspace;
    p.partial_lse = p.partial_out + (int64_t)p.max_splits * p.heads_kv * p.rows * ETAP_HEAD_DIM_V;

    /* R > ETAP_SM90_MAX_ROWS: the fewest row groups of at most that many rows, equal in
     * size (R = 80: two groups of 40, each run as N = 48) */
    const int groups = (p.rows + ETAP_SM90_MAX_ROWS - 1) / ETAP_SM90_MAX_ROWS;
    const int group_rows = (p.rows + groups - 1) / groups;
    const int n_rows = (group_rows + ETAP_SM90_ROW_STEP - 1) / ETAP_SM90_ROW_STEP * ETAP_SM90_ROW_STEP;
    const int fp16 = s->dtype == ETAP_DTYPE_FP16;
    device_scope scope;
    CUDA_TRY(enter_device(h, &scope), "cudaSetDevice");
    cudaError_t err = etap_sm90_launch_decode(p, map, n_rows, fp16, (cudaStream_t)stream);
    if (err == cudaSuccess)
        err = etap_launch_combine(p, fp16, (cudaStream_t)stream);
    leave_device(&scope);
    CUDA_TRY(err, "launching the decode kernels");
    return ETAP_OK;
}
