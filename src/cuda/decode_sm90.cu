/*
 * decode_sm90.cu - the ETAP split kernel for Hopper (sm_90a).
 *
 * One CTA = one (plan worker, KV head). It walks the worker's KV tiles (64 tokens each)
 * and, for the R = s_q * h_q / h_kv query rows of that KV head, computes the attention
 * transposed so that the KV length fills wgmma's M = 64 and the few query rows sit on N:
 *
 *     S^T [64 tokens x N]  = K [64 x 576]  . Q^T [576 x N]        (wgmma m64nNk16, 36 steps)
 *     softmax along M (tokens), across the threads and warps of warpgroup 0
 *     O^T [512 x N]       += V^T [512 x 64] . P^T [64 x N]        (V^T = the same K tile,
 *                                                                   read MN-major; P^T as
 *                                                                   16-bit hi + lo halves)
 * N = R rounded up to 8: 16 heads give m64n16k16, never a padded m64n64k16.
 *
 * Warp roles (384 threads, three warpgroups):
 *   WG0 (threads   0..127): S^T, the softmax, P^T and its 256 columns of O^T (dims 0..255)
 *   WG1 (threads 128..255): the other 256 columns of O^T (dims 256..511)
 *   WG2 (threads 256..383): producer; one thread issues the bulk tensor copies of the
 *                           KV tiles into a KV_STAGES-deep ring (mbarriers full/empty)
 * docs/cuda-kernel.md has the shared-memory map, the barrier protocol and the fragment
 * layouts in full.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "../plan.h"
#include "cuda_common.cuh"
#include "ptx.cuh"
#include "wgmma_ops.cuh"

/* ---- tile geometry --------------------------------------------------------------------- */

#define KV_TILE_TOKENS 64                                  /* = ETAP_TILE_TOKENS = wgmma M */
#define SWIZZLE_ROW_BYTES 128                              /* 64 bf16: one 128B-swizzle row */
#define QK_COL_BLOCKS 9                                    /* 576 / 64 columns */
#define ROPE_COL_BLOCK 8                                   /* columns 512..575: K only */
#define COL_BLOCK_BYTES (KV_TILE_TOKENS * SWIZZLE_ROW_BYTES) /* 8 KB: one copy box */
#define KV_TILE_BYTES (QK_COL_BLOCKS * COL_BLOCK_BYTES)    /* 72 KB */
#define KV_STAGES 2
#define V_DIMS_PER_WG 256
#define M_BLOCKS_PER_WG (V_DIMS_PER_WG / 64)               /* m64 wgmmas per PV step */
#define QK_K_STEPS (576 / 16)
#define PV_K_STEPS (KV_TILE_TOKENS / 16)
#define THREADS 384
#define CONSUMER_THREADS 256
#define Q_LOADS_IN_FLIGHT 8 /* per thread, when loading Q */
#define STAGE_ROW_BYTES 1040 /* epilogue staging row: 1024 B + 16 B pad against bank conflicts */

static_assert(KV_TILE_TOKENS == ETAP_TILE_TOKENS, "the plan's tile is the kernel's M");

/* Named barrier IDs (0 is __syncthreads). Every one spans both consumer warpgroups and is
 * called from one code site that all 256 threads pass in the same order, so the barrier
 * sequence is identical for every consumer warp (the simplest protocol to check, and the
 * one compute-sanitizer's racecheck reasons about exactly). */
enum { BAR_EXCHANGE = 1, BAR_P_EMPTY = 2, BAR_P_FULL = 3, BAR_CONSUMERS = 4 };

/*
 * Shared memory map for N query rows (byte offsets from a 1024-aligned base). Every
 * operand tile is in the 128B-swizzle layout: rows of 128 bytes, and inside each 1024-byte
 * group of 8 rows the 16-byte chunk c of row r sits at chunk c ^ (r % 8).
 *   kv     [KV_STAGES][9 column blocks][64 tokens][128 B]   K tile; V = column blocks 0..7;
 *                                                           block 8 (RoPE) holds P_lo^T
 *                                                           once S^T is done
 *   q      [9 column blocks][N rows][128 B]                 also the epilogue staging area
 *   p      [N rows][64 tokens * 2 B]                        P^T as wgmma's K-major B
 *   red    [4 warps][N] f32                                 cross-warp max / sum exchange
 *   alpha, row_scale, row_lse  [N] f32
 *   vis_end [N] int                                        keys each row may see (this sequence)
 *   bars   full[KV_STAGES], empty[KV_STAGES]               mbarriers
 */
__host__ __device__ constexpr int smem_q_offset(void) { return KV_STAGES * KV_TILE_BYTES; }
__host__ __device__ constexpr int smem_p_offset(int n) { return smem_q_offset() + n * 1152; }
__host__ __device__ constexpr int smem_red_offset(int n) { return smem_p_offset(n) + n * 128; }
__host__ __device__ constexpr int smem_alpha_offset(int n) { return smem_red_offset(n) + 16 * n; }
__host__ __device__ constexpr int smem_scale_offset(int n) { return smem_alpha_offset(n) + 4 * n; }
__host__ __device__ constexpr int smem_lse_offset(int n) { return smem_scale_offset(n) + 4 * n; }
__host__ __device__ constexpr int smem_vis_offset(int n) { return smem_lse_offset(n) + 4 * n; }
__host__ __device__ constexpr int smem_bar_offset(int n) { return smem_vis_offset(n) + 4 * n; }
__host__ __device__ constexpr int smem_total(int n) { return smem_bar_offset(n) + 16 * KV_STAGES; }

static_assert(smem_total(ETAP_SM90_MAX_ROWS) <= 227 * 1024, "shared memory budget at N = 64");
static_assert(smem_q_offset() % 1024 == 0, "q tile must be 1024-aligned for the swizzle");
static_assert(STAGE_ROW_BYTES * ETAP_SM90_MAX_ROWS <= 1152 * ETAP_SM90_MAX_ROWS,
              "epilogue staging fits in the q area");

int etap_sm90_smem_bytes(int n_rows) { return smem_total(n_rows); }

/* ---- small helpers --------------------------------------------------------------------- */

template <int FP16> __device__ __forceinline__ uint16_t to_half_bits(float x);
template <> __device__ __forceinline__ uint16_t to_half_bits<0>(float x)
{
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
template <> __device__ __forceinline__ uint16_t to_half_bits<1>(float x)
{
    return __half_as_ushort(__float2half_rn(x));
}

template <int FP16> __device__ __forceinline__ float round_to_half(float x);
template <> __device__ __forceinline__ float round_to_half<0>(float x)
{
    return __bfloat162float(__float2bfloat16_rn(x));
}
template <> __device__ __forceinline__ float round_to_half<1>(float x)
{
    return __half2float(__float2half_rn(x));
}

/* End (exclusive) of the keys query row n may see: len, or len - s_q + s + 1 when causal
 * (bottom-right aligned, row n = s * group + g); 0 for the padding rows n >= R. */
__device__ __forceinline__ int visible_end(const decode_params &p, int len, int n)
{
    if (n >= p.rows)
        return 0;
    if (!p.causal)
        return len;
    const int end = len - p.seqlen_q + n / p.group + 1;
    return end < 0 ? 0 : (end > len ? len : end);
}

/* wgmma accumulator fragments (m64nN, fp32): a thread holds N/4 query-row columns, slot
 * c = 2j + e standing for column 8j + 2*(lane%4) + e, in registers d[4j + e] (its first
 * row) and d[4j + e + 2] (that row + 8). */
__device__ __forceinline__ int frag_col(int c, int col_base) { return 8 * (c / 2) + col_base + (c & 1); }
__device__ __forceinline__ int frag_reg(int c) { return 4 * (c / 2) + (c & 1); }

/* Byte offset of element (row, col) of a [rows][64] 16-bit tile in the 128B swizzle. */
__device__ __forceinline__ uint32_t swizzled_offset(int row, int col)
{
    return row * SWIZZLE_ROW_BYTES + ((((col >> 3) ^ row) & 7) << 4) + (col & 7) * 2;
}

/* The worker's tile range inside sequence `seq` (plan.h: worker records). */
struct worker_range {
    int first_seq, first_tile, last_seq, end_tile;
};
__device__ __forceinline__ void seq_tiles(const worker_range &w, int seq, int len, int max_len,
                                          int *t0, int *t1)
{
    /* A length the block table cannot hold is skipped, and no range passes the length's
     * own tiles, so the block table row is never read past its end, even with lengths
     * that differ from the plan's; the combine kernel writes NaN for a skipped sequence. */
    const int tiles = len > max_len ? 0 : (int)etap_plan_tiles(len);
    *t0 = seq == w.first_seq ? w.first_tile : 0;
    *t1 = seq == w.last_seq ? min(w.end_tile, tiles) : tiles;
}

/* ---- the kernel ------------------------------------------------------------------------ */

/* The producer: one thread walks the worker's tiles in the consumers' order and keeps
 * KV_STAGES bulk tensor copies ahead of them. */
__device__ __forceinline__ void produce_kv_tiles(const CUtensorMap &kv_map, const decode_params &p,
                                                 const worker_range &wr, uint8_t *smem,
                                                 uint64_t *full, uint64_t *empty)
{
    const int kv_head = blockIdx.y;
    int it = 0;
    for (int seq = wr.first_seq; seq <= wr.last_seq; seq++) {
        int t0, t1;
        seq_tiles(wr, seq, p.seqlens[seq], p.max_len, &t0, &t1);
        const int32_t *pages = p.block_table + (int64_t)seq * p.block_table_stride;
        for (int t = t0; t < t1; t++, it++) {
            const int s = it % KV_STAGES;
            /* the block-table read is issued before the wait for a free stage, so its
             * DRAM round trip overlaps the wait instead of delaying the copy */
            const int64_t token = (int64_t)t * KV_TILE_TOKENS;
            const int32_t page = pages[token / p.page_size];
            const int32_t in_page = (int32_t)(token % p.page_size);
            if (it >= KV_STAGES)
                mbarrier_wait(&empty[s], ((it / KV_STAGES) - 1) & 1);
            mbarrier_arrive_expect_tx(&full[s], KV_TILE_BYTES);
            uint8_t *stage = smem + s * KV_TILE_BYTES;
#pragma unroll
            for (int c = 0; c < QK_COL_BLOCKS; c++)
                tma_load_4d(stage + c * COL_BLOCK_BYTES, &kv_map, &full[s], c * 64, kv_head,
                            in_page, page);
        }
    }
}

/* Writes this thread's O^T fragments, scaled per row, into the staging rows of the q area
 * as [N rows][T] with dims from dim0 (T = the output's 16-bit type, or fp32 partials). */
template <typename T, int N, int FP16>
__device__ __forceinline__ void stage_o(uint8_t *q_tile, const float (&o)[M_BLOCKS_PER_WG][N / 2],
                                        const float (&scale)[N / 4], int dim0, int row0,
                                        int col_base)
{
#pragma unroll
    for (int mb = 0; mb < M_BLOCKS_PER_WG; mb++)
#pragma unroll
        for (int c = 0; c < N / 4; c++) {
            const int i0 = frag_reg(c), dim = dim0 + mb * 64 + row0;
            T *row = (T *)(q_tile + frag_col(c, col_base) * STAGE_ROW_BYTES);
            if constexpr (sizeof(T) == 2) {
                row[dim] = to_half_bits<FP16>(o[mb][i0] * scale[c]);
                row[dim + 8] = to_half_bits<FP16>(o[mb][i0 + 2] * scale[c]);
            } else {
                row[dim] = o[mb][i0] * scale[c];
                row[dim + 8] = o[mb][i0 + 2] * scale[c];
            }
        }
}

/* The two consumer warpgroups (threads 0..255): S^T, softmax and P^T in warpgroup 0,
 * O^T for 256 dims in each, then the epilogue of each (sequence, split). */
template <int N, int FP16>
__device__ __forceinline__ void consume_kv_tiles(const decode_params &p, const worker_range &wr,
                                                 uint8_t *smem, uint64_t *full, uint64_t *empty)
{
    uint8_t *q_tile = smem + smem_q_offset();
    uint8_t *p_tile = smem + smem_p_offset(N);
    float *red = (float *)(smem + smem_red_offset(N));
    float *alpha_smem = (float *)(smem + smem_alpha_offset(N));
    float *row_scale = (float *)(smem + smem_scale_offset(N));
    float *row_lse = (float *)(smem + smem_lse_offset(N));
    int *vis_end = (int *)(smem + smem_vis_offset(N));
    const int32_t *split_offset = p.plan + etap_plan_split_offset_offset(p.num_workers);
    const int32_t *first_worker = p.plan + etap_plan_first_worker_offset(p.batch, p.num_workers);
    const int worker = blockIdx.x, kv_head = blockIdx.y;
    const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
    const int ctid = tid;          /* 0..255 across both consumer warpgroups */
    const bool softmax_wg = wg == 0;
    /* Fragment coordinates (wgmma D layout): this thread holds tokens/dims
     * row0 = 16*warp + lane/4 and row0 + 8, and query-row columns 8j + 2*(lane%4) + {0,1}. */
    const int row0 = 16 * warp + lane / 4;
    const int col_base = 2 * (lane % 4);
    constexpr int COLS = N / 4; /* columns per thread: q = 2j + e  ->  col 8j + col_base + e */
    /* A 16-bit P alone errs by up to 2^-9 (bf16) or 2^-11 (fp16) relative per weight,
     * which shows in out as that fraction of the spread of V: visible with few keys, or
     * with large V values. So P = P_hi + P_lo (both 16-bit) and the PV product runs twice,
     * keeping the weights exact to ~2^-17 (bf16) or ~2^-22 (fp16). */
    constexpr bool SPLIT_P = true;

    float o[M_BLOCKS_PER_WG][N / 2];
    int it = 0;
    for (int seq = wr.first_seq; seq <= wr.last_seq; seq++) {
        const int len = p.seqlens[seq];
        int t0, t1;
        seq_tiles(wr, seq, len, p.max_len, &t0, &t1);
        if (t0 >= t1)
            continue;
        const int n_splits = split_offset[seq + 1] - split_offset[seq];
        const int split = split_offset[seq] + worker - first_worker[seq];

        /* per column: running max (log2 domain) and sum; P enters the PV product as hi + lo
         * 16-bit halves, equal to p within ~2^-17, so one exact sum normalises out and
         * gives lse */
        float m_run[COLS], l_run[COLS], alpha[COLS];
        if (softmax_wg) {
#pragma unroll
            for (int c = 0; c < COLS; c++) {
                m_run[c] = -INFINITY;
                l_run[c] = 0.f;
            }
            /* once per sequence: the division in visible_end stays off the tile loop */
            for (int n = ctid; n < N; n += 128)
                vis_end[n] = visible_end(p, len, n);
            /* Q rows of this (sequence, KV head) into the swizzled q tile; pad rows = 0.
             * Loads go out Q_LOADS_IN_FLIGHT at a time before any store: stored one by one,
             * each load waited for the previous store (the generic pointers may alias), and
             * the 9 round trips of N = 16 took ~8 us per sequence (measured, docs/perf.md). */
            constexpr int Q_CHUNKS = N * 72; /* 16-byte chunks: N rows x 576 x 2 bytes */
            constexpr int Q_ITERS = (Q_CHUNKS + 127) / 128;
#pragma unroll 1
            for (int i0 = 0; i0 < Q_ITERS; i0 += Q_LOADS_IN_FLIGHT) {
                uint4 v[Q_LOADS_IN_FLIGHT];
#pragma unroll
                for (int j = 0; j < Q_LOADS_IN_FLIGHT; j++) {
                    const int idx = ctid + (i0 + j) * 128, n = idx / 72, chunk = idx % 72;
                    v[j] = make_uint4(0, 0, 0, 0);
                    if (i0 + j < Q_ITERS && idx < Q_CHUNKS && n < p.rows) {
                        const int s_pos = n / p.group, head = kv_head * p.group + n % p.group;
                        const uint16_t *src = (const uint16_t *)p.q + seq * p.q_stride_batch +
                                              s_pos * p.q_stride_seq + head * p.q_stride_head;
                        v[j] = __ldg((const uint4 *)(src + chunk * 8));
                    }
                }
#pragma unroll
                for (int j = 0; j < Q_LOADS_IN_FLIGHT; j++) {
                    const int idx = ctid + (i0 + j) * 128, n = idx / 72, chunk = idx % 72;
                    if (i0 + j < Q_ITERS && idx < Q_CHUNKS)
                        *(uint4 *)(q_tile + (chunk / 8) * N * SWIZZLE_ROW_BYTES +
                                   swizzled_offset(n, (chunk % 8) * 8)) = v[j];
                }
            }
            fence_proxy_async_smem();
        }
        named_barrier_sync(BAR_EXCHANGE, CONSUMER_THREADS); /* q tile and vis_end ready */
        /* (zeroed only now: O^T is dead while the Q loads are in flight) */
#pragma unroll
        for (int mb = 0; mb < M_BLOCKS_PER_WG; mb++)
#pragma unroll
            for (int i = 0; i < N / 2; i++)
                o[mb][i] = 0.f;

        for (int t = t0; t < t1; t++, it++) {
            const int s = it % KV_STAGES;
            mbarrier_wait(&full[s], (it / KV_STAGES) & 1);
            uint8_t *stage = smem + s * KV_TILE_BYTES;
            const uint32_t stage_addr = smem_addr(stage);
            /* P_lo lives in the tile's RoPE columns (512..575): S^T is done with them before
             * P is written, and the stage is released only after the PV product. */
            uint8_t *p_lo_tile = stage + ROPE_COL_BLOCK * COL_BLOCK_BYTES;

            float sacc[N / 2];
            if (softmax_wg) {
                /* ---- S^T = K Q^T ---- */
                const uint32_t q_addr = smem_addr(q_tile);
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < QK_K_STEPS; kk++) {
                    const uint32_t k_off = (kk / 4) * COL_BLOCK_BYTES + (kk % 4) * 32;
                    const uint32_t q_off = (kk / 4) * N * SWIZZLE_ROW_BYTES + (kk % 4) * 32;
                    wgmma_op<N, FP16, 0>::run(sacc, smem_desc_sw128(stage_addr + k_off),
                                              smem_desc_sw128(q_addr + q_off), kk > 0);
                }
                wgmma_commit();
                wgmma_wait<0>();
                fence_accumulators(sacc);

                /* ---- online softmax along M: tokens live in lanes (lane/4), in the two
                 * row halves of each thread, and in the 4 warps ---- */
                const int tok0 = t * KV_TILE_TOKENS + row0;
#pragma unroll
                for (int c = 0; c < COLS; c++) {
                    const int i0 = frag_reg(c), i1 = i0 + 2;
                    const int end = vis_end[frag_col(c, col_base)];
                    const float x0 = tok0 < end ? sacc[i0] * p.scale_log2 : -INFINITY;
                    const float x1 = tok0 + 8 < end ? sacc[i1] * p.scale_log2 : -INFINITY;
                    sacc[i0] = x0;
                    sacc[i1] = x1;
                    float mx = fmaxf(x0, x1);
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
                    if (lane < 4)
                        red[warp * N + frag_col(c, col_base)] = mx;
                }
            }
            named_barrier_sync(BAR_EXCHANGE, CONSUMER_THREADS); /* per-warp maxima in red */
            if (softmax_wg) {
#pragma unroll
                for (int c = 0; c < COLS; c++) {
                    const int col = frag_col(c, col_base);
                    const float tile_max = fmaxf(fmaxf(red[col], red[N + col]),
                                                 fmaxf(red[2 * N + col], red[3 * N + col]));
                    const float m_new = fmaxf(m_run[c], tile_max);
                    const float m_use = m_new == -INFINITY ? 0.f : m_new;
                    const int i0 = frag_reg(c), i1 = i0 + 2;
                    alpha[c] = fast_exp2(m_run[c] - m_use);
                    const float p0 = fast_exp2(sacc[i0] - m_use), p1 = fast_exp2(sacc[i1] - m_use);
                    l_run[c] = l_run[c] * alpha[c] + p0 + p1;
                    sacc[i0] = p0;
                    sacc[i1] = p1;
                    m_run[c] = m_new;
                }
            }

            /* Both warpgroups' PV of the previous tile is complete (wgmma_wait below), so
             * P and alpha may be overwritten. */
            if (it > 0)
                named_barrier_sync(BAR_P_EMPTY, CONSUMER_THREADS);
            if (softmax_wg) {
                /* ---- P^T into shared memory (wgmma's B, K-major: row = query row) ---- */
#pragma unroll
                for (int c = 0; c < COLS; c++) {
                    const int col = frag_col(c, col_base);
                    const int i0 = frag_reg(c);
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const float pv = sacc[i0 + 2 * h];
                        const uint32_t off = swizzled_offset(col, row0 + 8 * h);
                        *(uint16_t *)(p_tile + off) = to_half_bits<FP16>(pv);
                        if (SPLIT_P)
                            *(uint16_t *)(p_lo_tile + off) =
                                to_half_bits<FP16>(pv - round_to_half<FP16>(pv));
                    }
                    if (warp == 0 && lane < 4)
                        alpha_smem[col] = alpha[c];
                }
                /* Tokens past the end of the sequence in its last tile hold whatever the
                 * page holds (NaN in the tests): 0 * NaN = NaN in the PV product, so the V
                 * rows themselves are zeroed, not only their P entries. */
                const int valid = len - t * KV_TILE_TOKENS;
                if (valid < KV_TILE_TOKENS) {
                    const int chunks = (KV_TILE_TOKENS - valid) * 8 * 8;
                    for (int idx = ctid; idx < chunks; idx += 128) {
                        const int row = valid + idx / 64, cb = (idx % 64) / 8, ch = idx % 8;
                        *(uint4 *)(stage + cb * COL_BLOCK_BYTES + row * SWIZZLE_ROW_BYTES + ch * 16) =
                            make_uint4(0, 0, 0, 0);
                    }
                }
                fence_proxy_async_smem();
            }
            named_barrier_sync(BAR_P_FULL, CONSUMER_THREADS);
            if (!softmax_wg) {
#pragma unroll
                for (int c = 0; c < COLS; c++)
                    alpha[c] = alpha_smem[frag_col(c, col_base)];
            }

            /* ---- O^T += V^T P^T: this warpgroup's 256 dims, 4 x m64 ---- */
#pragma unroll
            for (int mb = 0; mb < M_BLOCKS_PER_WG; mb++)
#pragma unroll
                for (int c = 0; c < COLS; c++) {
                    const int i0 = frag_reg(c);
                    o[mb][i0] *= alpha[c];
                    o[mb][i0 + 2] *= alpha[c];
                }
            const uint32_t p_addr = smem_addr(p_tile);
            const uint32_t p_lo_addr = stage_addr + ROPE_COL_BLOCK * COL_BLOCK_BYTES;
#pragma unroll
            for (int mb = 0; mb < M_BLOCKS_PER_WG; mb++)
                fence_accumulators(o[mb]);
            wgmma_fence();
#pragma unroll
            for (int mb = 0; mb < M_BLOCKS_PER_WG; mb++) {
                const uint32_t v_addr = stage_addr + (wg * M_BLOCKS_PER_WG + mb) * COL_BLOCK_BYTES;
#pragma unroll
                for (int kk = 0; kk < PV_K_STEPS; kk++)
                    wgmma_op<N, FP16, 1>::run(o[mb], smem_desc_sw128(v_addr + kk * 2048),
                                              smem_desc_sw128(p_addr + kk * 32), 1);
                if (SPLIT_P) {
#pragma unroll
                    for (int kk = 0; kk < PV_K_STEPS; kk++)
                        wgmma_op<N, FP16, 1>::run(o[mb], smem_desc_sw128(v_addr + kk * 2048),
                                                  smem_desc_sw128(p_lo_addr + kk * 32), 1);
                }
            }
            wgmma_commit();
            wgmma_wait<0>();
#pragma unroll
            for (int mb = 0; mb < M_BLOCKS_PER_WG; mb++)
                fence_accumulators(o[mb]);
            mbarrier_arrive(&empty[s]);
        }

        /* ---- epilogue: row sums across warps, 1/l, lse ---- */
        const bool direct = n_splits == 1;
        if (softmax_wg) {
#pragma unroll
            for (int c = 0; c < COLS; c++) {
                float l = l_run[c];
                for (int d = 4; d < 32; d *= 2)
                    l += __shfl_xor_sync(0xffffffffu, l, d);
                if (lane < 4)
                    red[warp * N + frag_col(c, col_base)] = l;
            }
        }
        named_barrier_sync(BAR_EXCHANGE, CONSUMER_THREADS); /* per-warp sums in red */
        if (softmax_wg) {
            if (warp == 0 && lane < 4) {
#pragma unroll
                for (int c = 0; c < COLS; c++) {
                    const int col = frag_col(c, col_base);
                    const float l = red[col] + red[N + col] + red[2 * N + col] + red[3 * N + col];
                    row_scale[col] = l > 0.f ? 1.f / l : 0.f;
                    row_lse[col] = l > 0.f ? (m_run[c] + log2f(l)) * 0.6931471805599453f
                                           : (direct ? INFINITY : -INFINITY);
                }
            }
        }
        named_barrier_sync(BAR_CONSUMERS, CONSUMER_THREADS);
        float scale[COLS];
#pragma unroll
        for (int c = 0; c < COLS; c++)
            scale[c] = row_scale[frag_col(c, col_base)];

        /* ---- O^T -> [rows, 512] through shared memory (the q area), 16-byte stores ---- */
        if (direct) {
            stage_o<uint16_t, N, FP16>(q_tile, o, scale, wg * V_DIMS_PER_WG, row0, col_base);
            named_barrier_sync(BAR_CONSUMERS, CONSUMER_THREADS);
            for (int idx = ctid; idx < p.rows * 64; idx += CONSUMER_THREADS) {
                const int n = idx / 64, chunk = idx % 64;
                const int s_pos = n / p.group, head = kv_head * p.group + n % p.group;
                uint16_t *dst = (uint16_t *)p.out + seq * p.out_stride_batch +
                                s_pos * p.out_stride_seq + head * p.out_stride_head;
                *(uint4 *)(dst + chunk * 8) = *(const uint4 *)(q_tile + n * STAGE_ROW_BYTES + chunk * 16);
            }
            for (int n = ctid; n < p.rows; n += CONSUMER_THREADS) {
                const int s_pos = n / p.group, head = kv_head * p.group + n % p.group;
                p.lse[((int64_t)seq * p.heads_q + head) * p.seqlen_q + s_pos] = row_lse[n];
            }
        } else {
            const int64_t part_row0 = ((int64_t)split * p.heads_kv + kv_head) * p.rows;
            for (int half = 0; half < 2; half++) {
                if (wg == half)
                    stage_o<float, N, FP16>(q_tile, o, scale, 0, row0, col_base);
                named_barrier_sync(BAR_CONSUMERS, CONSUMER_THREADS);
                for (int idx = ctid; idx < p.rows * 64; idx += CONSUMER_THREADS) {
                    const int n = idx / 64, chunk = idx % 64;
                    float *dst = p.partial_out + (part_row0 + n) * 512 + half * V_DIMS_PER_WG;
                    *(float4 *)(dst + chunk * 4) =
                        *(const float4 *)(q_tile + n * STAGE_ROW_BYTES + chunk * 16);
                }
                if (half == 1)
                    break;
                named_barrier_sync(BAR_CONSUMERS, CONSUMER_THREADS);
            }
            for (int n = ctid; n < p.rows; n += CONSUMER_THREADS)
                p.partial_lse[part_row0 + n] = row_lse[n];
        }
        /* The q area is reloaded for the next sequence only after every staging read. */
        named_barrier_sync(BAR_CONSUMERS, CONSUMER_THREADS);
    }
}

template <int N, int FP16>
__global__ void __launch_bounds__(THREADS, 1)
    etap_decode_sm90_kernel(const __grid_constant__ CUtensorMap kv_map, const decode_params p)
{
    extern __shared__ __align__(1024) uint8_t smem[];
    uint64_t *full = (uint64_t *)(smem + smem_bar_offset(N));
    uint64_t *empty = full + KV_STAGES;

    const int tid = threadIdx.x;
    if (tid == 0) {
        for (int s = 0; s < KV_STAGES; s++) {
            mbarrier_init(&full[s], 1);
            mbarrier_init(&empty[s], CONSUMER_THREADS);
        }
        mbarrier_init_fence();
        tma_prefetch_descriptor(&kv_map);
    }
    /* Launched with programmatic dependent launch: the kernel before this one in the
     * stream (any kernel: it may have written q, the cache or the plan) may still be
     * running, so no input is read before this wait. */
    grid_dependency_wait();
    grid_dependents_launch(); /* the combine kernel may start its launch now */
    const int32_t *plan = p.plan;
    if (plan[ETAP_PLAN_H_STATUS] != ETAP_PLAN_OK)
        return; /* the combine kernel writes NaN everywhere for an invalid plan */
    const int32_t *rec = plan + etap_plan_worker_offset(blockIdx.x);
    const worker_range wr = {rec[0], rec[1], rec[2], rec[3]};
    __syncthreads();
    if (wr.last_seq < wr.first_seq)
        return; /* idle worker */

    /* One branch per role. Every thread, including the idle producer lanes, meets at the
     * final __syncthreads(), so no thread exits while the counted named barriers of the
     * consumers are in use. */
    if (tid >= CONSUMER_THREADS) {
        setmaxnreg_dec<40>();
        if (tid == CONSUMER_THREADS)
            produce_kv_tiles(kv_map, p, wr, smem, full, empty);
    } else {
        setmaxnreg_inc<232>();
        consume_kv_tiles<N, FP16>(p, wr, smem, full, empty);
    }
    __syncthreads();
}

/* ---- launch ---------------------------------------------------------------------------- */

/* Every (N, dtype) the backend instantiates: N = 8..64 in steps of 8, bf16 and fp16. */
#define ETAP_SM90_FOR_EACH_INSTANCE(X)                                                      \
    X(8, 0) X(16, 0) X(24, 0) X(32, 0) X(40, 0) X(48, 0) X(56, 0) X(64, 0)                   \
    X(8, 1) X(16, 1) X(24, 1) X(32, 1) X(40, 1) X(48, 1) X(56, 1) X(64, 1)

cudaError_t etap_sm90_set_attributes(void)
{
    cudaError_t err = cudaSuccess;
#define SET_ATTR(n, fp16)                                                                   \
    if (err == cudaSuccess)                                                                 \
        err = cudaFuncSetAttribute(etap_decode_sm90_kernel<n, fp16>,                        \
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, smem_total(n));
    ETAP_SM90_FOR_EACH_INSTANCE(SET_ATTR)
#undef SET_ATTR
    return err;
}

cudaError_t etap_sm90_launch_decode(const decode_params &p, const CUtensorMap &kv_map, int n_rows,
                                    int fp16, cudaStream_t stream)
{
    cudaLaunchAttribute attr;
    cudaLaunchConfig_t config =
        pdl_launch_config(dim3(p.num_workers, p.heads_kv), dim3(THREADS), 0, stream, &attr);
#define LAUNCH(n, f)                                                                        \
    if (n_rows == n && fp16 == f) {                                                         \
        config.dynamicSmemBytes = smem_total(n);                                            \
        return cudaLaunchKernelEx(&config, etap_decode_sm90_kernel<n, f>, kv_map, p);       \
    }
    ETAP_SM90_FOR_EACH_INSTANCE(LAUNCH)
#undef LAUNCH
    return cudaErrorInvalidValue;
}
