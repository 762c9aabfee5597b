/*
 * combine_kernel.cu - merges the fp32 partial results of sequences split across workers.
 *
 * One CTA per (sequence, KV head, query row): at b = 1 the rows of one sequence are reduced
 * by R CTAs in parallel, and inside a CTA the splits are spread over 4 thread groups with
 * several loads in flight each (a dependent walk over 129 splits cost ~30 us at b = 1).
 * For a row with splits k = 0..n-1 (partial out O_k already normalised by its own sum,
 * partial lse L_k = log sum_k exp):   L = log sum_k exp(L_k),  out = sum_k exp(L_k - L) O_k.
 * Sequences with one split were finished by the split kernel; sequences with none get
 * out = 0, lse = +inf; a row whose splits all saw no visible key gets the same.
 * If the plan was built from invalid lengths, or a length exceeds what the block table
 * holds (the split kernel skips such a sequence), the outputs are NaN (etap.h: etap_plan).
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "../plan.h"
#include "cuda_common.cuh"
#include "ptx.cuh"

/* 4 groups of 128 threads; a thread owns 4 of the 512 dims; group g merges the splits
 * k = g, g + 4, ... with UNROLL independent loads in flight, then the groups add up. */
#define COMBINE_GROUPS 4
#define COMBINE_THREADS (COMBINE_GROUPS * 128)
#define COMBINE_UNROLL 4
#define COMBINE_MAX_SPLITS 2048 /* per sequence: at most num_workers + 1, checked on the host */

template <int FP16> __device__ __forceinline__ uint2 pack4(float a, float b, float c, float d);
template <> __device__ __forceinline__ uint2 pack4<0>(float a, float b, float c, float d)
{
    __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
    return make_uint2(*(uint32_t *)&lo, *(uint32_t *)&hi);
}
template <> __device__ __forceinline__ uint2 pack4<1>(float a, float b, float c, float d)
{
    __half2 lo = __floats2half2_rn(a, b), hi = __floats2half2_rn(c, d);
    return make_uint2(*(uint32_t *)&lo, *(uint32_t *)&hi);
}

__device__ __forceinline__ float block_reduce(float v, float *scratch, bool is_max)
{
    for (int d = 16; d > 0; d /= 2) {
        const float o = __shfl_xor_sync(0xffffffffu, v, d);
        v = is_max ? fmaxf(v, o) : v + o;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); /* scratch may still be read by a previous reduction */
    if (lane == 0)
        scratch[warp] = v;
    __syncthreads();
    v = scratch[0];
    for (int w = 1; w < COMBINE_THREADS / 32; w++)
        v = is_max ? fmaxf(v, scratch[w]) : v + scratch[w];
    return v;
}

template <int FP16>
__device__ __forceinline__ void combine_row(const decode_params &p, int seq, int kv_head, int r,
                                            int first, int n, bool bad_plan, float *weight,
                                            float4 (*group_acc)[128], float *scratch);

/* Grid (b * h_kv, ceil(R / rows_per_cta)): few sequences get one CTA per row (parallel over
 * rows), many get one per (sequence, KV head): most of those have a single split and
 * exit at once, and launching b * h_kv * R CTAs to exit cost ~18 us at b = 128. */
template <int FP16>
__global__ void __launch_bounds__(COMBINE_THREADS)
    etap_combine_kernel(const decode_params p, int rows_per_cta)
{
    __shared__ float weight[COMBINE_MAX_SPLITS];
    __shared__ float4 group_acc[COMBINE_GROUPS - 1][128];
    __shared__ float scratch[COMBINE_THREADS / 32];
    /* launched early (programmatic dependent launch): the split kernel's partials, its
     * direct outputs and the plan are only read after this */
    grid_dependency_wait();
    grid_dependents_launch(); /* the next decode call's split kernel may start launching */
    const int seq = blockIdx.x / p.heads_kv, kv_head = blockIdx.x % p.heads_kv;
    const int32_t *split_offset = p.plan + etap_plan_split_offset_offset(p.num_workers);
    const int len = p.seqlens[seq];
    const bool bad_plan = p.plan[ETAP_PLAN_H_STATUS] != ETAP_PLAN_OK || len < 0 || len > p.max_len;
    const int first = split_offset[seq], n = split_offset[seq + 1] - first;
    if (n == 1 && !bad_plan)
        return;
    const int r_end = min(p.rows, (int)(blockIdx.y + 1) * rows_per_cta);
    for (int r = blockIdx.y * rows_per_cta; r < r_end; r++)
        combine_row<FP16>(p, seq, kv_head, r, first, n, bad_plan, weight, group_acc, scratch);
}

/* One query row: merges its n partials (or writes 0 / +inf, or NaN for a bad plan). */
template <int FP16>
__device__ __forceinline__ void combine_row(const decode_params &p, int seq, int kv_head, int r,
                                            int first, int n, bool bad_plan, float *weight,
                                            float4 (*group_acc)[128], float *scratch)
{
    const int tid = threadIdx.x, group = tid / 128, dim4 = tid % 128;
    const int s_pos = r / p.group, head = kv_head * p.group + r % p.group;
    const int64_t row_stride = (int64_t)p.heads_kv * p.rows; /* between splits */
    const int64_t row0 = ((int64_t)first * p.heads_kv + kv_head) * p.rows + r;

    /* lse of every split, its max, the weights exp(lse_k - max) and their sum */
    float local_max = -INFINITY;
    for (int k = tid; k < n; k += COMBINE_THREADS) {
        weight[k] = p.partial_lse[row0 + k * row_stride];
        local_max = fmaxf(local_max, weight[k]);
    }
    const float lse_max = block_reduce(local_max, scratch, true);
    float local_sum = 0.f;
    for (int k = tid; k < n; k += COMBINE_THREADS) {
        weight[k] = lse_max == -INFINITY ? 0.f : __expf(weight[k] - lse_max);
        local_sum += weight[k];
    }
    const float wsum = block_reduce(local_sum, scratch, false); /* also orders weight[] */

    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (!bad_plan && wsum > 0.f) {
        const float *base = p.partial_out + row0 * 512 + dim4 * 4;
        int k = group;
        for (; k + (COMBINE_UNROLL - 1) * COMBINE_GROUPS < n; k += COMBINE_UNROLL * COMBINE_GROUPS) {
            float4 v[COMBINE_UNROLL];
#pragma unroll
            for (int u = 0; u < COMBINE_UNROLL; u++)
                v[u] = *(const float4 *)(base + (k + u * COMBINE_GROUPS) * row_stride * 512);
#pragma unroll
            for (int u = 0; u < COMBINE_UNROLL; u++) {
                const float w = weight[k + u * COMBINE_GROUPS];
                acc.x += w * v[u].x, acc.y += w * v[u].y, acc.z += w * v[u].z, acc.w += w * v[u].w;
            }
        }
        for (; k < n; k += COMBINE_GROUPS) {
            const float4 v = *(const float4 *)(base + k * row_stride * 512);
            const float w = weight[k];
            acc.x += w * v.x, acc.y += w * v.y, acc.z += w * v.z, acc.w += w * v.w;
        }
    }
    if (group > 0)
        group_acc[group - 1][dim4] = acc;
    __syncthreads();
    if (group == 0) {
        for (int g = 0; g < COMBINE_GROUPS - 1; g++) {
            const float4 v = group_acc[g][dim4];
            acc.x += v.x, acc.y += v.y, acc.z += v.z, acc.w += v.w;
        }
        float lse;
        if (bad_plan) {
            acc = make_float4(NAN, NAN, NAN, NAN);
            lse = NAN;
        } else if (!(wsum > 0.f)) {
            lse = INFINITY; /* no visible key (or no split): out = 0 */
        } else {
            const float inv = 1.f / wsum;
            acc.x *= inv, acc.y *= inv, acc.z *= inv, acc.w *= inv;
            lse = lse_max + logf(wsum);
        }
        uint16_t *dst = (uint16_t *)p.out + seq * p.out_stride_batch +
                        s_pos * p.out_stride_seq + head * p.out_stride_head;
        *(uint2 *)(dst + dim4 * 4) = pack4<FP16>(acc.x, acc.y, acc.z, acc.w);
        if (dim4 == 0)
            p.lse[((int64_t)seq * p.heads_q + head) * p.seqlen_q + s_pos] = lse;
    }
    /* one barrier site for every thread (synccheck): group_acc and weight[] are rewritten
     * by the next row */
    __syncthreads();
}

cudaError_t etap_launch_combine(const decode_params &p, int fp16, int num_sms, cudaStream_t stream)
{
    /* enough (sequence, KV head) CTAs to fill the GPU twice: one CTA each; else one per row */
    const int rows_per_cta = p.batch * p.heads_kv >= 2 * num_sms ? p.rows : 1;
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t config =
        pdl_launch_config(dim3(p.batch * p.heads_kv, (p.rows + rows_per_cta - 1) / rows_per_cta),
                          dim3(COMBINE_THREADS), 0, stream, &attr);
    return fp16 ? cudaLaunchKernelEx(&config, etap_combine_kernel<1>, p, rows_per_cta)
                : cudaLaunchKernelEx(&config, etap_combine_kernel<0>, p, rows_per_cta);
}
