/*
 * combine_kernel.cu - merges the fp32 partial results of sequences split across workers.
 *
 * One CTA per (sequence, KV head, query row), 128 threads, each owning 4 of the 512 output
 * dims: at b = 1 the rows of one sequence are reduced by R CTAs in parallel, not one.
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

#define COMBINE_THREADS 128

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

template <int FP16>
__global__ void __launch_bounds__(COMBINE_THREADS) etap_combine_kernel(const decode_params p)
{
    const int seq = blockIdx.x / p.heads_kv, kv_head = blockIdx.x % p.heads_kv;
    const int r = blockIdx.y, tid = threadIdx.x;
    const int32_t *split_offset = p.plan + etap_plan_split_offset_offset(p.num_workers);
    const int len = p.seqlens[seq];
    const bool bad_plan = p.plan[ETAP_PLAN_H_STATUS] != ETAP_PLAN_OK || len < 0 || len > p.max_len;
    const int first = split_offset[seq], n = split_offset[seq + 1] - first;
    if (n == 1 && !bad_plan)
        return;

    {
        const int s_pos = r / p.group, head = kv_head * p.group + r % p.group;
        float lse_max = -INFINITY;
        for (int k = 0; k < n; k++)
            lse_max = fmaxf(lse_max, p.partial_lse[((int64_t)(first + k) * p.heads_kv + kv_head) * p.rows + r]);
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        float lse;
        if (bad_plan) {
            acc = make_float4(NAN, NAN, NAN, NAN);
            lse = NAN;
        } else if (lse_max == -INFINITY) {
            lse = INFINITY; /* no visible key: out = 0 */
        } else {
            float wsum = 0.f;
            for (int k = 0; k < n; k++) {
                const int64_t row = ((int64_t)(first + k) * p.heads_kv + kv_head) * p.rows + r;
                const float w = __expf(p.partial_lse[row] - lse_max);
                const float4 v = *(const float4 *)(p.partial_out + row * 512 + tid * 4);
                wsum += w;
                acc.x += w * v.x;
                acc.y += w * v.y;
                acc.z += w * v.z;
                acc.w += w * v.w;
            }
            const float inv = 1.f / wsum;
            acc.x *= inv;
            acc.y *= inv;
            acc.z *= inv;
            acc.w *= inv;
            lse = lse_max + logf(wsum);
        }
        uint16_t *dst = (uint16_t *)p.out + seq * p.out_stride_batch + s_pos * p.out_stride_seq +
                        head * p.out_stride_head;
        *(uint2 *)(dst + tid * 4) = pack4<FP16>(acc.x, acc.y, acc.z, acc.w);
        if (tid == 0)
            p.lse[((int64_t)seq * p.heads_q + head) * p.seqlen_q + s_pos] = lse;
    }
}

cudaError_t etap_launch_combine(const decode_params &p, int fp16, cudaStream_t stream)
{
    const dim3 grid(p.batch * p.heads_kv, p.rows);
    if (fp16)
        etap_combine_kernel<1><<<grid, COMBINE_THREADS, 0, stream>>>(p);
    else
        etap_combine_kernel<0><<<grid, COMBINE_THREADS, 0, stream>>>(p);
    return cudaGetLastError();
}
