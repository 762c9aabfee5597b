/*
 * combine_kernel.cu - merges the fp32 partial results of sequences split across workers.
 *
 * Two kernels, chosen by etap_launch_combine():
 * - etap_combine_kernel, for few sequences with many splits each (num_workers > 16 b):
 *   one 512-thread CTA per (sequence, KV head, query row): at b = 1 the rows of one sequence
 *   are reduced by R CTAs in parallel, and inside a CTA the splits are spread over 4 thread
 *   groups with several loads in flight each (a dependent walk over 129 splits cost ~30 us
 *   at b = 1).
 * - etap_combine_warp_kernel, for more sequences with fewer splits each (num_workers <= 16 b,
 *   so at most ~17 splits per sequence on average, as splits <= b + num_workers): one warp
 *   per row, 128-thread CTAs, shuffle reductions and no CTA barrier (the block kernel's
 *   waves of 512-thread CTAs, each a chain of loads and barriers, took ~8 us at b = 64),
 *   4 or 8 splits' loads in flight.
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
#include "trace.cuh"

#ifdef ETAP_TRACE
/* src/trace_slots.h names the slots */
__device__ unsigned long long etap_trace_combine[ETAP_TRACE_COMBINE_CTAS][TRACE_COMBINE_SLOTS];
extern "C" __attribute__((visibility("default"))) int etap_debug_combine_trace_copy(void *dst,
                                                                                   size_t bytes)
{
    if (bytes > sizeof etap_trace_combine)
        bytes = sizeof etap_trace_combine;
    return cudaMemcpyFromSymbol(dst, etap_trace_combine, bytes) != cudaSuccess;
}
#endif

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
    ETAP_TRACE_COMBINE(TRACE_COMBINE_ENTRY);
    /* launched early (programmatic dependent launch): the split kernel's partials, its
     * direct outputs and the plan are only read after this */
    grid_dependency_wait();
    ETAP_TRACE_COMBINE(TRACE_COMBINE_DEP_WAIT);
    grid_dependents_launch(); /* the next decode call's split kernel may start launching */
    const int seq = blockIdx.x / p.heads_kv, kv_head = blockIdx.x % p.heads_kv;
    const int32_t *split_offset = p.plan + etap_plan_split_offset_offset(p.num_workers);
    const int len = p.seqlens[seq];
    const bool bad_plan = p.plan[ETAP_PLAN_H_STATUS] != ETAP_PLAN_OK || len < 0 || len > p.max_len;
    const int first = split_offset[seq], n = split_offset[seq + 1] - first;
    if (n == 1 && !bad_plan) {
        ETAP_TRACE_COMBINE(TRACE_COMBINE_EXIT);
        return;
    }
    const int r_end = min(p.rows, (int)(blockIdx.y + 1) * rows_per_cta);
    for (int r = blockIdx.y * rows_per_cta; r < r_end; r++)
        combine_row<FP16>(p, seq, kv_head, r, first, n, bad_plan, weight, group_acc, scratch);
    ETAP_TRACE_COMBINE(TRACE_COMBINE_EXIT);
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

/* ---- warp per row: many sequences with few splits each ---------------------------------
 * One warp per (sequence, KV head, query row), 4 consecutive rows of the flattened index
 * (seq * h_kv + kv_head) * R + r per CTA, no shared memory and no CTA barrier. Lane l owns
 * the dims 4l + 128j + {0..3}, j = 0..3 (a split's row: 4 coalesced float4 per lane). The
 * first UNROLL splits' rows are loaded together with the lse (lane k reads split k, k + 32,
 * ...); max and sum are shuffle reductions, and the splits are merged UNROLL at a time with
 * their weights broadcast from the lane that computed them. */
#define COMBINE_WARP_ROWS 4   /* warps (rows) per CTA */
/* The warp kernel runs when num_workers <= 16 x batch; with UNROLL = 8 splits' loads in
 * flight when num_workers >= 4 x batch (5 or more splits per sequence on average: one
 * round of loads fewer, b = 16 / 32 at 4K 0.5-0.9 us faster), else 4 (b >= 64: fewer
 * registers, more warps resident; 8 was 1 us slower at b = 128). */
#define COMBINE_WARP_RATIO 16
#define COMBINE_WARP_RATIO_UNROLL8 4

__device__ __forceinline__ float warp_max(float v)
{
    for (int d = 16; d > 0; d /= 2)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, d));
    return v;
}
__device__ __forceinline__ float warp_sum(float v)
{
    for (int d = 16; d > 0; d /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, d);
    return v;
}

/* v[u] = this lane's 16 floats of split k + u, for the splits k + u < n */
template <int UNROLL>
__device__ __forceinline__ void warp_load_splits(float4 (*v)[4], const float *src,
                                                 int64_t split_step, int k, int n)
{
#pragma unroll
    for (int u = 0; u < UNROLL; u++)
        if (k + u < n) {
#pragma unroll
            for (int j = 0; j < 4; j++)
                v[u][j] = *(const float4 *)(src + (k + u) * split_step + 128 * j);
        }
}

/* Every branch that a shuffle depends on is warp-uniform (n, bad_plan, lse_max, wsum, k), so
 * the full-mask shuffles are reached by all 32 lanes. */
template <int FP16, int UNROLL>
__device__ __forceinline__ void combine_row_warp(const decode_params &p, int64_t idx)
{
    const int lane = threadIdx.x % 32;
    /* 32-bit division where the index fits (always in practice: 64-bit division is a long
     * subroutine on the way to the first load); b * h_kv fits in int */
    const int seq_kv =
        idx <= INT32_MAX ? (int)((uint32_t)idx / (uint32_t)p.rows) : (int)(idx / p.rows);
    const int r = (int)(idx - (int64_t)seq_kv * p.rows);
    const int seq = seq_kv / p.heads_kv, kv_head = seq_kv - seq * p.heads_kv;
    const int32_t *split_offset = p.plan + etap_plan_split_offset_offset(p.num_workers);
    const int len = p.seqlens[seq];
    const bool bad_plan = p.plan[ETAP_PLAN_H_STATUS] != ETAP_PLAN_OK || len < 0 || len > p.max_len;
    const int first = split_offset[seq], n = split_offset[seq + 1] - first;
    if (n == 1 && !bad_plan)
        return; /* the split kernel wrote this row */
    const int s_pos = r / p.group, head = kv_head * p.group + r % p.group;
    const int64_t row_stride = (int64_t)p.heads_kv * p.rows; /* between splits */
    const int64_t row0 = ((int64_t)first * p.heads_kv + kv_head) * p.rows + r;
    const float *lse_in = p.partial_lse + row0;
    const float *out_in = p.partial_out + row0 * 512 + lane * 4;
    const int m = bad_plan ? 0 : n; /* splits to read: none for a bad plan */

    float4 v[UNROLL][4]; /* splits k .. k + UNROLL - 1 */
    warp_load_splits<UNROLL>(v, out_in, row_stride * 512, 0, m);
    /* lse of splits lane, lane + 32, ...: the first chunk stays in a register */
    const float lse0 = lane < m ? lse_in[lane * row_stride] : -INFINITY;
    float lse_max = lse0;
    for (int k = lane + 32; k < m; k += 32)
        lse_max = fmaxf(lse_max, lse_in[k * row_stride]);
    lse_max = warp_max(lse_max);
    /* all -inf (or no split): every weight 0, not exp(nan) */
    const float w0 = lse_max == -INFINITY ? 0.f : __expf(lse0 - lse_max);
    float wsum = w0;
    for (int k = lane + 32; k < m; k += 32)
        wsum += lse_max == -INFINITY ? 0.f : __expf(lse_in[k * row_stride] - lse_max);
    wsum = warp_sum(wsum);

    float4 acc[4];
#pragma unroll
    for (int j = 0; j < 4; j++)
        acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
    float lse;
    if (bad_plan) {
#pragma unroll
        for (int j = 0; j < 4; j++)
            acc[j] = make_float4(NAN, NAN, NAN, NAN);
        lse = NAN;
    } else if (!(wsum > 0.f)) {
        lse = INFINITY; /* no visible key (or no split): out = 0 */
    } else {
        float w = w0; /* weight of split (k & ~31) + lane */
        for (int k = 0;;) {
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                const float wu = __shfl_sync(0xffffffffu, w, (k + u) % 32);
                if (k + u < n) {
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        acc[j].x += wu * v[u][j].x, acc[j].y += wu * v[u][j].y;
                        acc[j].z += wu * v[u][j].z, acc[j].w += wu * v[u][j].w;
                    }
                }
            }
            k += UNROLL;
            if (k >= n)
                break;
            warp_load_splits<UNROLL>(v, out_in, row_stride * 512, k, n);
            if (k % 32 == 0) /* next chunk of 32 splits (n > 32) */
                w = k + lane < n ? __expf(lse_in[(k + lane) * row_stride] - lse_max) : 0.f;
        }
        const float inv = 1.f / wsum;
#pragma unroll
        for (int j = 0; j < 4; j++)
            acc[j].x *= inv, acc[j].y *= inv, acc[j].z *= inv, acc[j].w *= inv;
        lse = lse_max + logf(wsum);
    }
    uint16_t *dst = (uint16_t *)p.out + seq * p.out_stride_batch + s_pos * p.out_stride_seq +
                    head * p.out_stride_head + lane * 4;
#pragma unroll
    for (int j = 0; j < 4; j++)
        *(uint2 *)(dst + 128 * j) = pack4<FP16>(acc[j].x, acc[j].y, acc[j].z, acc[j].w);
    if (lane == 0)
        p.lse[((int64_t)seq * p.heads_q + head) * p.seqlen_q + s_pos] = lse;
}

/* 1-D grid of ceil(b * h_kv * R / 4) CTAs; a warp past the end does nothing. */
template <int FP16, int UNROLL>
__global__ void __launch_bounds__(COMBINE_WARP_ROWS * 32)
    etap_combine_warp_kernel(const decode_params p)
{
    ETAP_TRACE_COMBINE(TRACE_COMBINE_ENTRY);
    /* launched early (programmatic dependent launch): see etap_combine_kernel */
    grid_dependency_wait();
    ETAP_TRACE_COMBINE(TRACE_COMBINE_DEP_WAIT);
    grid_dependents_launch();
    const int64_t idx = (int64_t)blockIdx.x * COMBINE_WARP_ROWS + threadIdx.x / 32;
    if (idx < (int64_t)p.batch * p.heads_kv * p.rows)
        combine_row_warp<FP16, UNROLL>(p, idx);
    ETAP_TRACE_COMBINE(TRACE_COMBINE_EXIT); /* thread 0 gets here on every path */
}

cudaError_t etap_launch_combine(const decode_params &p, int fp16, int num_sms, cudaStream_t stream)
{
    cudaLaunchAttribute attr;
    if (p.num_workers <= COMBINE_WARP_RATIO * p.batch) {
        /* splits <= batch + num_workers: at most ~17 per sequence on average */
        const int64_t warps = (int64_t)p.batch * p.heads_kv * p.rows;
        const cudaLaunchConfig_t config =
            pdl_launch_config(dim3((unsigned)((warps + COMBINE_WARP_ROWS - 1) / COMBINE_WARP_ROWS)),
                              dim3(COMBINE_WARP_ROWS * 32), 0, stream, &attr);
        if (p.num_workers >= COMBINE_WARP_RATIO_UNROLL8 * p.batch)
            return fp16 ? cudaLaunchKernelEx(&config, etap_combine_warp_kernel<1, 8>, p)
                        : cudaLaunchKernelEx(&config, etap_combine_warp_kernel<0, 8>, p);
        return fp16 ? cudaLaunchKernelEx(&config, etap_combine_warp_kernel<1, 4>, p)
                    : cudaLaunchKernelEx(&config, etap_combine_warp_kernel<0, 4>, p);
    }
    /* enough (sequence, KV head) CTAs to fill the GPU twice: one CTA each; else one per row */
    const int rows_per_cta = p.batch * p.heads_kv >= 2 * num_sms ? p.rows : 1;
    const cudaLaunchConfig_t config =
        pdl_launch_config(dim3(p.batch * p.heads_kv, (p.rows + rows_per_cta - 1) / rows_per_cta),
                          dim3(COMBINE_THREADS), 0, stream, &attr);
    return fp16 ? cudaLaunchKernelEx(&config, etap_combine_kernel<1>, p, rows_per_cta)
                : cudaLaunchKernelEx(&config, etap_combine_kernel<0>, p, rows_per_cta);
}
