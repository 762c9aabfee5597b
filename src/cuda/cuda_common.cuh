/*
 * cuda_common.cuh - what the CUDA backend's translation units share: the kernel
 * parameter block and the launchers each .cu file exports to cuda_backend.cu.
 */
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>
#include <stdint.h>

/* Everything the split kernel and the combine kernel read, by value. Strides in elements. */
struct decode_params {
    const void *q;                /* [b, s_q, h_q, 576] */
    int64_t q_stride_batch, q_stride_seq, q_stride_head;
    const int32_t *block_table;   /* [b, max_pages_per_seq] */
    int64_t block_table_stride;
    const int32_t *seqlens;       /* [b] */
    const int32_t *plan;          /* plan.h words */
    void *out;                    /* [b, s_q, h_q, 512] */
    int64_t out_stride_batch, out_stride_seq, out_stride_head;
    float *lse;                   /* [b, h_q, s_q] */
    float *partial_out;           /* [max_splits, h_kv, rows, 512] */
    float *partial_lse;           /* [max_splits, h_kv, rows] */
    int32_t batch, seqlen_q, heads_q, heads_kv;
    int32_t rows;                 /* s_q * h_q / h_kv: query rows of one KV head */
    int32_t group;                /* h_q / h_kv */
    int32_t page_size;
    int32_t causal;               /* already 0 when s_q == 1 */
    int32_t num_workers;
    int32_t max_splits;
    int32_t max_len;              /* max_pages_per_seq * page_size (clamped to int32) */
    float scale_log2;             /* softmax_scale * log2(e) */
};

/* A launch configuration with programmatic dependent launch: the grid is scheduled while
 * the previous kernel in the stream drains, and must call griddepcontrol.wait
 * (grid_dependency_wait) before reading anything that kernel may have written. `attr` is
 * filled here and must outlive the launch call. */
static inline cudaLaunchConfig_t pdl_launch_config(dim3 grid, dim3 block, size_t smem_bytes,
                                                   cudaStream_t stream, cudaLaunchAttribute *attr)
{
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem_bytes;
    config.stream = stream;
    attr->id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr->val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attr;
    config.numAttrs = 1;
    return config;
}

/* Query rows per CTA on the GPU: N, R rounded up to a multiple of ETAP_SM90_ROW_STEP (each
 * consumer warpgroup computes S^T for N/2 of them, and wgmma's N is a multiple of 8). A KV
 * head with more than ETAP_SM90_MAX_ROWS rows is split into equal row groups, one CTA each
 * (grid x = workers x groups, the group fastest). */
#define ETAP_SM90_MAX_ROWS 64
#define ETAP_SM90_ROW_STEP 16

/* decode_sm90.cu */
cudaError_t etap_sm90_set_attributes(void);
cudaError_t etap_sm90_launch_decode(const decode_params &p, const CUtensorMap &kv_map, int n_rows,
                                    int fp16, cudaStream_t stream);
/* combine_kernel.cu */
cudaError_t etap_launch_combine(const decode_params &p, int fp16, cudaStream_t stream);
cudaError_t etap_combine_set_attributes(void);
/* plan_kernel.cu */
cudaError_t etap_launch_plan(const int32_t *seqlens, int32_t *plan, int32_t batch,
                             int32_t num_workers, int32_t max_len, int32_t rows,
                             cudaStream_t stream);
size_t etap_plan_kernel_smem_bytes(int32_t batch);
cudaError_t etap_plan_set_attributes(size_t max_smem_bytes);
