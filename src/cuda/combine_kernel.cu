/*
 * combine_kernel.cu - merges the fp32 partial results of sequences split across workers.
 *
 * Two kernels, chosen by etap_launch_combine():
 * - etap_combine_kernel, for few sequences with many splits each (num_workers > 32 b):
 *   one 512-thread CTA per (sequence, KV head, query row, 128 of the 512 dims): at b = 1
 *   4R CTAs share the rows of one sequence, and inside a CTA the splits are spread over 16
 *   warps with 9 loads in flight each, 2 for rows of <= 32 splits (a dependent walk over
 *   129 splits cost ~30 us at b = 1, 4 x 4 loads in flight per row ~10 us); every warp
 *   reduces the row's lse itself, so the one CTA barrier is the final sum.
 * - etap_combine_warp_kernel, for more sequences with fewer splits each (num_workers <= 32 b,
 *   so at most ~33 splits per sequence on average, as splits <= b + num_workers): one warp
 *   per row, shuffle reductions and no CTA barrier (the block kernel's waves of 512-thread
 *   CTAs, each a chain of loads and barriers, took ~8 us at b = 64), 4 or 10 splits' loads
 *   in flight; the rows spread one CTA per SM where they fit (below: why).
 * For a row with splits k = 0..n-1 (partial out O_k already normalised by its own sum,
 * partial lse L_k = log sum_k exp):   L = log sum_k exp(L_k),  out = sum_k exp(L_k - L) O_k.
 * Sequences with one split were finished by the split kernel; sequences with none get
 * out = 0, lse = +inf; a row whose splits all saw no visible key gets the same.
 * If the plan was built from invalid lengths, or a length exceeds what the block table
 * holds (the split kernel skips such a sequence), the outputs are NaN (etap.h: etap_plan).
 * Both kernels read the plan words and the length of their row before griddepcontrol.wait
 * (combine_row_info_of says why that is safe), so after the split kernel ends only the
 * partials are waited for.
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

/* One CTA per (row, 128-dim chunk): 16 warps, warp g merges the splits k = g, g + 16, ...
 * with UNROLL loads in flight, lane l owning the chunk's dims 4l .. 4l + 3; then the warps
 * add up. At b = 1 a row has up to ~130 splits: 4 CTAs per row and 144 splits' loads in
 * flight per CTA (the previous one CTA per row of 4 x 128 threads walked 8 dependent
 * rounds of loads: 10 us of combine at b = 1 16K). Every warp reduces all the row's lse
 * itself (shuffles), so the only CTA barrier is the final sum: the CTA-wide max and sum
 * through shared memory took ~0.6 us after the lse had arrived. */
#define COMBINE_GROUPS 16
#define COMBINE_THREADS (COMBINE_GROUPS * 32)
#define COMBINE_CHUNK_DIMS 128
#define COMBINE_CHUNKS (512 / COMBINE_CHUNK_DIMS)
#ifndef COMBINE_UNROLL /* a test build sets it lower to run the later rounds (docs/testing.md) */
#define COMBINE_UNROLL 9 /* 144 splits per round: one round up to 143 workers */
#endif
static_assert(COMBINE_GROUPS == 16, "round 0 finds split g + 16u in lane g + 16 (u % 2) of w0[u / 2]");

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

/* acc += w * v */
__device__ __forceinline__ void axpy4(float4 &acc, float w, const float4 &v)
{
    acc.x += w * v.x, acc.y += w * v.y, acc.z += w * v.z, acc.w += w * v.w;
}

/* The max and the weight sum of a row's m split lse (lse_in[k * stride]), reduced over the
 * warp: lane l reads the splits l + 32j; the weights exp(lse - max) of the first REGS chunks
 * stay in w[j] (0 past m, and all 0 when no split has a finite lse: not exp(nan)), later
 * chunks are read again. row_value (a partial row value that has arrived) only times the
 * trace's stamps. */
template <int REGS>
__device__ __forceinline__ void warp_lse_weights(const float *lse_in, int64_t stride, int m, int lane,
                                                 float row_value, float (&w)[REGS], float &lse_max,
                                                 float &wsum)
{
    lse_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < REGS; j++) {
        w[j] = lane + 32 * j < m ? lse_in[(lane + 32 * j) * stride] : -INFINITY;
        lse_max = fmaxf(lse_max, w[j]);
    }
    for (int k = lane + 32 * REGS; k < m; k += 32)
        lse_max = fmaxf(lse_max, lse_in[k * stride]);
    ETAP_TRACE_COMBINE_AFTER(TRACE_COMBINE_LSE, __float_as_int(lse_max));
    ETAP_TRACE_COMBINE_AFTER(TRACE_COMBINE_ROW, __float_as_int(row_value));
    lse_max = warp_max(lse_max);
    ETAP_TRACE_COMBINE(TRACE_COMBINE_MAX);
    const bool none = lse_max == -INFINITY;
    wsum = 0.f;
#pragma unroll
    for (int j = 0; j < REGS; j++) {
        w[j] = none ? 0.f : __expf(w[j] - lse_max);
        wsum += w[j];
    }
    for (int k = lane + 32 * REGS; k < m; k += 32)
        wsum += none ? 0.f : __expf(lse_in[k * stride] - lse_max);
    wsum = warp_sum(wsum);
    ETAP_TRACE_COMBINE(TRACE_COMBINE_WEIGHTS);
}

/* What a combine row needs from the plan and the lengths. These were written before the
 * split kernel passed its own griddepcontrol.wait (by the plan kernel or the caller), and
 * this grid starts only after every split CTA has passed it, so they are read before this
 * grid's wait (through L2: ld.global.cg), off the path after the split kernel ends. */
struct combine_row_info {
    int seq, kv_head, r, first, n;
    bool bad_plan;
};
__device__ __forceinline__ combine_row_info combine_row_info_of(const decode_params &p, int seq_kv, int r)
{
    combine_row_info c;
    c.seq = seq_kv / p.heads_kv;
    c.kv_head = seq_kv - c.seq * p.heads_kv;
    c.r = r;
    const int32_t *split_offset = p.plan + etap_plan_split_offset_offset(p.num_workers);
    const int len = __ldcg(p.seqlens + c.seq);
    c.bad_plan = __ldcg(p.plan + ETAP_PLAN_H_STATUS) != ETAP_PLAN_OK || len < 0 || len > p.max_len;
    c.first = __ldcg(split_offset + c.seq);
    c.n = __ldcg(split_offset + c.seq + 1) - c.first;
    return c;
}

/* The final out of a row (J groups of 4 dims: dim, dim + 128, ...) and, if lse_too, its
 * lse: bad plan -> NaN, no weight -> 0 and +inf, else acc / wsum and lse_max + log(wsum). */
template <int FP16, int J>
__device__ __forceinline__ void write_row(const decode_params &p, const combine_row_info &c, int dim,
                                          const float4 (&acc)[J], float lse_max, float wsum, bool lse_too)
{
    const int s_pos = c.r / p.group, head = c.kv_head * p.group + c.r % p.group;
    /* out = acc * mul + add: NaN for a bad plan, 0 without weight (acc is 0 then) */
    const bool good = !c.bad_plan && wsum > 0.f;
    const float mul = good ? 1.f / wsum : 0.f, add = c.bad_plan ? NAN : 0.f;
    uint16_t *dst = (uint16_t *)p.out + c.seq * p.out_stride_batch + s_pos * p.out_stride_seq +
                    head * p.out_stride_head + dim;
#pragma unroll
    for (int j = 0; j < J; j++)
        *(uint2 *)(dst + 128 * j) = pack4<FP16>(acc[j].x * mul + add, acc[j].y * mul + add,
                                                 acc[j].z * mul + add, acc[j].w * mul + add);
    if (lse_too)
        p.lse[((int64_t)c.seq * p.heads_q + head) * p.seqlen_q + s_pos] =
            c.bad_plan ? NAN : good ? lse_max + logf(wsum) : INFINITY;
}

/* The CTA's chunk of one row, merged from its m splits (m > 0 unless the plan is bad),
 * UNROLL splits' loads in flight per warp: 16 UNROLL splits per round. */
template <int FP16, int UNROLL>
__device__ __forceinline__ void combine_chunk(const decode_params &p, const combine_row_info &c, int m,
                                              float4 (&group_acc)[COMBINE_GROUPS - 1][32])
{
    constexpr int LSE_REGS = (UNROLL * COMBINE_GROUPS + 31) / 32; /* lse per lane, round 0 */
    const int tid = threadIdx.x, group = tid / 32, lane = tid % 32;
    const int dim = blockIdx.y * COMBINE_CHUNK_DIMS + lane * 4;
    const int64_t row_stride = (int64_t)p.heads_kv * p.rows; /* between splits */
    const int64_t row0 = ((int64_t)c.first * p.heads_kv + c.kv_head) * p.rows + c.r;
    const float *base = p.partial_out + row0 * 512 + dim;
    const float *lse_in = p.partial_lse + row0;
    const uint64_t last_read = l2_policy_evict_first(); /* ptx.cuh: the partials' policies */

    /* the first round of partial rows goes out before the lse are reduced */
    float4 v[UNROLL] = {};
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
        const int k = group + u * COMBINE_GROUPS;
        if (k < m)
            v[u] = ld_global_hint((const float4 *)(base + k * row_stride * 512), last_read);
    }
    /* lse max, weights and their sum in every warp (round 0's weights in registers) */
    float w0[LSE_REGS], lse_max, wsum;
    warp_lse_weights<LSE_REGS>(lse_in, row_stride, m, lane, v[0].x, w0, lse_max, wsum);

    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (wsum > 0.f) { /* warp-uniform, as m, lse_max and every k below */
        /* round 0: split group + 16u is lane group + 16 (u % 2) of w0[u / 2] */
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const float w = __shfl_sync(0xffffffffu, w0[u / 2], group + 16 * (u % 2));
            if (group + u * COMBINE_GROUPS < m)
                axpy4(acc, w, v[u]);
        }
        /* further rounds (more than 16 UNROLL splits), weights from the lse again */
        for (int k0 = UNROLL * COMBINE_GROUPS; k0 < m; k0 += UNROLL * COMBINE_GROUPS) {
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                const int k = k0 + group + u * COMBINE_GROUPS;
                if (k < m)
                    v[u] = ld_global_hint((const float4 *)(base + k * row_stride * 512), last_read);
            }
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                const int k = k0 + group + u * COMBINE_GROUPS;
                if (k < m)
                    axpy4(acc, __expf(lse_in[k * row_stride] - lse_max), v[u]);
            }
        }
    }
    if (group > 0)
        group_acc[group - 1][lane] = acc;
    __syncthreads();
    if (group == 0) {
        for (int g = 0; g < COMBINE_GROUPS - 1; g++) {
            const float4 o = group_acc[g][lane];
            acc.x += o.x, acc.y += o.y, acc.z += o.z, acc.w += o.w;
        }
        const float4 out4[1] = {acc};
        ETAP_TRACE_COMBINE(TRACE_COMBINE_MERGED);
        write_row<FP16, 1>(p, c, dim, out4, lse_max, wsum, blockIdx.y == 0 && lane == 0);
    }
}

/* Grid (b * h_kv * R, COMBINE_CHUNKS); MIN_BLOCKS CTAs per SM (etap_launch_combine: 2 where
 * the grid is larger than the SMs). A row with few splits takes the UNROLL = 2 path
 * (one round up to 32 splits): at b = 1 1K (16 splits) it made the call 0.4 us faster than
 * the 9-load path, whose loads were all but one predicated off. */
template <int FP16, int MIN_BLOCKS>
__global__ void __launch_bounds__(COMBINE_THREADS, MIN_BLOCKS)
    etap_combine_kernel(const decode_params p)
{
    __shared__ float4 group_acc[COMBINE_GROUPS - 1][32];
    ETAP_TRACE_COMBINE(TRACE_COMBINE_ENTRY);
    const int seq_kv = (int)(blockIdx.x / (unsigned)p.rows);
    const combine_row_info c = combine_row_info_of(p, seq_kv, (int)(blockIdx.x - (unsigned)seq_kv * p.rows));
    /* launched early (programmatic dependent launch): the split kernel's partials and its
     * direct outputs are only read after this */
    grid_dependency_wait();
    ETAP_TRACE_COMBINE(TRACE_COMBINE_DEP_WAIT);
    grid_dependents_launch(); /* the next decode call's split kernel may start launching */
    ETAP_TRACE_COMBINE_PROBE(p.plan + ETAP_PLAN_H_MAGIC);
    if (c.n == 1 && !c.bad_plan) {
        ETAP_TRACE_COMBINE(TRACE_COMBINE_EXIT);
        return; /* the split kernel wrote this row */
    }
    const int m = c.bad_plan ? 0 : c.n; /* splits to read: none for a bad plan */
    if (m <= 2 * COMBINE_GROUPS) /* CTA-uniform */
        combine_chunk<FP16, 2>(p, c, m, group_acc);
    else
        combine_chunk<FP16, COMBINE_UNROLL>(p, c, m, group_acc);
    ETAP_TRACE_COMBINE(TRACE_COMBINE_EXIT);
}

/* ---- warp per row: many sequences with few splits each ---------------------------------
 * One warp per (sequence, KV head, query row), consecutive rows of the flattened index
 * (seq * h_kv + kv_head) * R + r per CTA, no CTA barrier. Lane l owns
 * the dims 4l + 128j + {0..3}, j = 0..3 (a split's row: 4 coalesced float4 per lane). The
 * first UNROLL splits' rows are loaded together with the lse (lane k reads split k, k + 32,
 * ...); max and sum are shuffle reductions, and the splits are merged UNROLL at a time with
 * their weights broadcast from the lane that computed them: lane l holds split 32c + l's,
 * and a row of more than 32 splits (a long sequence among short ones) computes the next
 * 32 from the lse when the merge reaches split 32(c + 1), which with UNROLL = 10 falls
 * inside a round. Rows of <= 32 splits keep a loop without that step (measured: with it,
 * b = 16 1K was 0.3 us slower). */
#define COMBINE_WARP_ROWS 4   /* warps (rows) per CTA when the rows are not spread */
/*
 * Spreading the rows over the SMs. The combine grid is launched early (programmatic
 * dependent launch), and its CTAs are placed as the split kernel's CTAs leave their SMs
 * (a split CTA holds a whole SM's register file): the first SMs to be free took as many
 * combine CTAs as their registers allowed (2 with UNROLL = 10, 4 with 4), so at b = 16 the
 * 64 CTAs sat on ~32 SMs, each pulling ~150 KB of partials while the rest of the GPU
 * idled (the combine took 2.3-2.8 us after its wait). So where the rows fit, the grid is
 * one CTA per SM with ceil(rows / SMs) warps each, and every CTA asks for more than half
 * an SM's shared memory (it uses none of it), which keeps a second one off its SM.
 */
#define COMBINE_SPREAD_SMEM (116 * 1024)
__host__ __device__ constexpr int combine_warp_max_warps(int unroll) { return unroll >= 10 ? 8 : 16; }
/* The warp kernel runs when num_workers <= 32 x batch (b >= 5 with 132 workers: up to ~28
 * splits per row, three rounds of 10 loads; the block kernel there ran b x R x 4 CTAs of
 * 512 threads in up to four waves: b = 8 8K 29.9 -> 25.6 us, b = 7 1K 13.2 -> 9.5, v26;
 * at b = 3-4, 34-45 splits per row, the block kernel stays faster: 64 was 0.6-2.3 us
 * slower there, and 128, b = 2 with ~67 splits, 1-5 us); with UNROLL = 10 splits' loads in
 * flight when num_workers >= 4 x batch (5 or more splits per sequence on average: b = 16
 * has 9-10, so one round of loads; 8 took two there, 0.6-0.7 us slower at b = 16 4K /
 * 16K, and 4 another 0.5-0.9 us), else 4 (b >= 64: fewer registers, more warps resident;
 * 8 was 1 us slower at b = 128). */
#ifndef COMBINE_WARP_RATIO
#define COMBINE_WARP_RATIO 32
#endif
#define COMBINE_WARP_RATIO_UNROLL10 4

/* v[u] = this lane's 16 floats of split k + u, for the splits k + u < n */
template <int UNROLL>
__device__ __forceinline__ void warp_load_splits(float4 (*v)[4], const float *src,
                                                 int64_t split_step, int k, int n, uint64_t policy)
{
#pragma unroll
    for (int u = 0; u < UNROLL; u++)
        if (k + u < n) {
#pragma unroll
            for (int j = 0; j < 4; j++)
                v[u][j] = ld_global_hint((const float4 *)(src + (k + u) * split_step + 128 * j), policy);
        }
}

/* acc += the row's m splits times their weights, UNROLL splits at a time, v holding the
 * first round. w: this lane's weight of split 32 * (s / 32) + lane, s the split being
 * merged (the first 32 on entry). LONG (m > 32): the next 32 weights come from the lse
 * wherever s reaches a multiple of 32, with UNROLL = 10 inside a round (splits 30..39 span
 * two chunks); rows of <= 32 splits are compiled without that step. */
template <int UNROLL, bool LONG>
__device__ __forceinline__ void warp_merge(float4 (&acc)[4], float4 (&v)[UNROLL][4], float w,
                                           const float *out_in, const float *lse_in,
                                           int64_t row_stride, int m, int lane, float lse_max,
                                           uint64_t policy)
{
    for (int k = 0;;) {
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int s = k + u;
            if constexpr (LONG) {
                if (s % 32 == 0 && s > 0 && s < m)
                    w = s + lane < m ? __expf(lse_in[(s + lane) * row_stride] - lse_max) : 0.f;
            }
            const float wu = __shfl_sync(0xffffffffu, w, s % 32);
            if (s < m) {
#pragma unroll
                for (int j = 0; j < 4; j++)
                    axpy4(acc[j], wu, v[u][j]);
            }
        }
        k += UNROLL;
        if (k >= m)
            break;
        warp_load_splits<UNROLL>(v, out_in, row_stride * 512, k, m, policy);
    }
}

/* Every branch that a shuffle depends on is warp-uniform (n, bad_plan, lse_max, wsum, k), so
 * the full-mask shuffles are reached by all 32 lanes. */
template <int FP16, int UNROLL>
__device__ __forceinline__ void combine_row_warp(const decode_params &p, const combine_row_info &c)
{
    const int lane = threadIdx.x % 32;
    const int64_t row_stride = (int64_t)p.heads_kv * p.rows; /* between splits */
    const int64_t row0 = ((int64_t)c.first * p.heads_kv + c.kv_head) * p.rows + c.r;
    const float *lse_in = p.partial_lse + row0;
    const float *out_in = p.partial_out + row0 * 512 + lane * 4;
    const int m = c.bad_plan ? 0 : c.n; /* splits to read: none for a bad plan */

    const uint64_t last_read = l2_policy_evict_first(); /* ptx.cuh: the partials' policies */
    float4 v[UNROLL][4]; /* splits k .. k + UNROLL - 1 */
    warp_load_splits<UNROLL>(v, out_in, row_stride * 512, 0, m, last_read);
    /* lse max, weights and their sum (the first 32 splits' weights in a register) */
    float w0[1], lse_max, wsum;
    warp_lse_weights<1>(lse_in, row_stride, m, lane, v[0][0].x, w0, lse_max, wsum);

    float4 acc[4];
#pragma unroll
    for (int j = 0; j < 4; j++)
        acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
    if (wsum > 0.f && m <= 32)
        warp_merge<UNROLL, false>(acc, v, w0[0], out_in, lse_in, row_stride, m, lane, lse_max, last_read);
    else if (wsum > 0.f)
        warp_merge<UNROLL, true>(acc, v, w0[0], out_in, lse_in, row_stride, m, lane, lse_max, last_read);
    ETAP_TRACE_COMBINE(TRACE_COMBINE_MERGED);
    write_row<FP16, 4>(p, c, lane * 4, acc, lse_max, wsum, lane == 0);
}

/* 1-D grid, blockDim.x / 32 rows per CTA; a warp past the end does nothing. */
template <int FP16, int UNROLL>
__global__ void __launch_bounds__(combine_warp_max_warps(UNROLL) * 32)
    etap_combine_warp_kernel(const decode_params p)
{
    ETAP_TRACE_COMBINE(TRACE_COMBINE_ENTRY);
    const int64_t idx = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const bool live = idx < (int64_t)p.batch * p.heads_kv * p.rows;
    /* 32-bit division where the index fits (always in practice: 64-bit division is a long
     * subroutine on the way to the first load); b * h_kv fits in int */
    const int seq_kv = !live ? 0
                       : idx <= INT32_MAX ? (int)((uint32_t)idx / (uint32_t)p.rows)
                                          : (int)(idx / p.rows);
    combine_row_info c = {};
    if (live)
        c = combine_row_info_of(p, seq_kv, (int)(idx - (int64_t)seq_kv * p.rows));
    /* launched early (programmatic dependent launch): see etap_combine_kernel */
    grid_dependency_wait();
    ETAP_TRACE_COMBINE(TRACE_COMBINE_DEP_WAIT);
    grid_dependents_launch();
    ETAP_TRACE_COMBINE_PROBE(p.plan + ETAP_PLAN_H_MAGIC);
    if (live && !(c.n == 1 && !c.bad_plan)) /* else the split kernel wrote this row */
        combine_row_warp<FP16, UNROLL>(p, c);
    ETAP_TRACE_COMBINE(TRACE_COMBINE_EXIT); /* thread 0 gets here on every path */
}

cudaError_t etap_launch_combine(const decode_params &p, int fp16, cudaStream_t stream)
{
    cudaLaunchAttribute attr;
    if (p.num_workers <= COMBINE_WARP_RATIO * p.batch) {
        /* splits <= batch + num_workers: at most ~33 per sequence on average */
        const int64_t warps = (int64_t)p.batch * p.heads_kv * p.rows;
        const bool unroll10 = p.num_workers >= COMBINE_WARP_RATIO_UNROLL10 * p.batch;
        /* the split kernel's workers: one per SM and KV head (etap_cuda_num_workers) */
        const int64_t sms = (int64_t)p.num_workers * p.heads_kv;
        const int64_t per_sm = (warps + sms - 1) / sms;
        const bool spread = per_sm <= combine_warp_max_warps(unroll10 ? 10 : 4);
        const int per_cta = spread ? (int)per_sm : COMBINE_WARP_ROWS;
        const cudaLaunchConfig_t config =
            pdl_launch_config(dim3((unsigned)((warps + per_cta - 1) / per_cta)), dim3(per_cta * 32),
                              spread ? COMBINE_SPREAD_SMEM : 0, stream, &attr);
        if (unroll10)
            return fp16 ? cudaLaunchKernelEx(&config, etap_combine_warp_kernel<1, 10>, p)
                        : cudaLaunchKernelEx(&config, etap_combine_warp_kernel<0, 10>, p);
        return fp16 ? cudaLaunchKernelEx(&config, etap_combine_warp_kernel<1, 4>, p)
                    : cudaLaunchKernelEx(&config, etap_combine_warp_kernel<0, 4>, p);
    }
    /* few sequences (b <= 4 with 132 workers): one CTA per (row, 128-dim chunk); two CTAs
     * per SM (at most 64 registers a thread; ptxas spills 8 bytes there, fewer loads in
     * flight spilled as much or more, except 4) where there are more CTAs than SMs, so that
     * b = 3-4 at 16 rows runs in one wave instead of two (9.0 -> 7.7 and 9.4 -> 7.8 us at
     * 1K, v26), else one (the 64-register build was 1.3-1.5 us slower at b = 1 8K / 16K,
     * with 64 CTAs) */
    const int64_t rows = (int64_t)p.batch * p.heads_kv * p.rows;
    const cudaLaunchConfig_t config = pdl_launch_config(dim3((unsigned)rows, COMBINE_CHUNKS),
                                                        dim3(COMBINE_THREADS), 0, stream, &attr);
    if (rows * COMBINE_CHUNKS > (int64_t)p.num_workers * p.heads_kv)
        return fp16 ? cudaLaunchKernelEx(&config, etap_combine_kernel<1, 2>, p)
                    : cudaLaunchKernelEx(&config, etap_combine_kernel<0, 2>, p);
    return fp16 ? cudaLaunchKernelEx(&config, etap_combine_kernel<1, 1>, p)
                : cudaLaunchKernelEx(&config, etap_combine_kernel<0, 1>, p);
}

cudaError_t etap_combine_set_attributes(void)
{
    cudaError_t err = cudaSuccess;
#define SET_ATTR(f, u)                                                                      \
    if (err == cudaSuccess)                                                                 \
        err = cudaFuncSetAttribute(etap_combine_warp_kernel<f, u>,                          \
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, COMBINE_SPREAD_SMEM);
    SET_ATTR(0, 4) SET_ATTR(1, 4) SET_ATTR(0, 10) SET_ATTR(1, 10)
#undef SET_ATTR
    return err;
}
