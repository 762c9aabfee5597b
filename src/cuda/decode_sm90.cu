/*
 * decode_sm90.cu - the ETAP split kernel for Hopper (sm_90a).
 *
 * One CTA = one (plan worker, KV head, row group). It walks the worker's KV tiles (64
 * tokens each) and, for N of the R = s_q * h_q / h_kv query rows of that KV head (rows
 * group * N .. + N - 1; R > 64 takes several row groups, each reading the tiles),
 * computes the attention transposed so that the KV length fills wgmma's M = 64 and the
 * few query rows sit on N:
 *
 *     S^T [64 tokens x N]  = K [64 x 576]  . Q^T [576 x N]        (wgmma m64nNk16, 36 steps)
 *     softmax along M (tokens), across the threads and warps of warpgroup 0
 *     O^T [512 x N]       += V^T [512 x 64] . P^T [64 x N]        (V^T = the same K tile,
 *                                                                   read MN-major; P^T as
 *                                                                   16-bit hi + lo halves)
 * N = R (or R / row groups) rounded up to 16: 16 heads give m64n16k16, never a padded
 * m64n64k16. At N = 64 the rows fill M themselves and the rows-on-M consumers run instead
 * (consume_rows_on_m below: S = Q K^T, O = P V).
 *
 * Warp roles (384 threads, three warpgroups):
 *   WG0 (threads   0..127): S^T, the softmax, P^T and its 256 columns of O^T (dims 0..255)
 *   WG1 (threads 128..255): the other 256 columns of O^T (dims 256..511)
 *   WG2 (threads 256..383): producer; all 128 threads copy each sequence's Q rows with
 *                           cp.async (mbarriers q_full/q_empty), then one thread issues the
 *                           bulk tensor copies of the KV tiles into a KV_STAGES-deep ring
 *                           (mbarriers full/empty)
 * docs/cuda-kernel.md has the shared-memory map, the barrier protocol and the fragment
 * layouts in full.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "../plan.h"
#include "cuda_common.cuh"
#include "ptx.cuh"
#include "trace.cuh"
#include "wgmma_ops.cuh"

/* ---- tile geometry --------------------------------------------------------------------- */

#define KV_TILE_TOKENS 64                                  /* = ETAP_TILE_TOKENS = wgmma M */
#define SWIZZLE_ROW_BYTES 128                              /* 64 bf16: one 128B-swizzle row */
#define QK_COL_BLOCKS 9                                    /* 576 / 64 columns */
#define ROPE_COL_BLOCK 8                                   /* columns 512..575: K only */
#define COL_BLOCK_BYTES (KV_TILE_TOKENS * SWIZZLE_ROW_BYTES) /* 8 KB: one column block */
#define KV_TILE_BYTES (QK_COL_BLOCKS * COL_BLOCK_BYTES)    /* 72 KB */
#define KV_STAGES 2
#define V_DIMS_PER_WG 256
#define M_BLOCKS_PER_WG (V_DIMS_PER_WG / 64)               /* m64 wgmmas per PV step */
#define QK_K_STEPS (576 / 16)
#define PV_K_STEPS (KV_TILE_TOKENS / 16)
#define THREADS 384
#define CONSUMER_THREADS 256
#define Q_COPY_THREADS 96 /* producer warps 1..3 */
/* Registers per thread after setmaxnreg (the 64K register file: 128 x (producer + 2 x
 * consumer) <= 65536): the consumers need the most at N = 64, the producer's Q copy spills
 * below 56. */
#define CONSUMER_REGS(n) ((n) > 48 ? 232 : 224)
#define PRODUCER_REGS(n) ((n) > 48 ? 40 : 56)

static_assert(KV_TILE_TOKENS == ETAP_TILE_TOKENS, "the plan's tile is the kernel's M");

/* Named barrier IDs (0 is __syncthreads). Every one spans both consumer warpgroups and is
 * called from one code site that all 256 threads pass in the same order, so the barrier
 * sequence is identical for every consumer warp (the simplest protocol to check, and the
 * one compute-sanitizer's racecheck reasons about exactly). */
enum { BAR_EXCHANGE = 1, BAR_P_FULL = 2 };

/* The kernel's mbarriers, in shared memory. */
struct ring_bars {
    uint64_t *full, *empty; /* [KV_STAGES]: a KV tile landed / its stage may be refilled */
    uint64_t *q_full;       /* this sequence's Q rows landed (Q_COPY_THREADS arrivals) */
    uint64_t *q_empty;      /* S^T is done with them (CONSUMER_THREADS arrivals) */
};

/*
 * Shared memory map for N query rows (byte offsets from a 1024-aligned base). Every
 * operand tile is in the 128B-swizzle layout: rows of 128 bytes, and inside each 1024-byte
 * group of 8 rows the 16-byte chunk c of row r sits at chunk c ^ (r % 8).
 *   kv     [KV_STAGES][9 column blocks][64 tokens][128 B]   K tile; V = column blocks 0..7;
 *                                                           for N > 32, block 8 (RoPE) holds
 *                                                           P_lo^T once S^T is done
 *   q      [9 column blocks][N rows][128 B]                 Q^T as wgmma's K-major B
 *   p      [N rows][64 tokens * 2 B]                        P_hi^T as wgmma's K-major B;
 *          (N <= 32: [2N rows], P_lo^T in rows N..2N-1)
 *   red    [4 warps][N] f32                                 cross-warp max / sum exchange
 *   alpha  [N] f32                                          per-row rescale of this tile
 *   vis_end [N] int                                        keys each row may see (this sequence)
 *   x      [2 warpgroups][128 threads][N/4] f32             S^T halves for the other warpgroup
 *   bars   full[KV_STAGES], empty[KV_STAGES], q_full, q_empty   mbarriers
 */
/* N <= 32: P_hi and P_lo are stacked on wgmma's N (one m64n2Nk16 per step reads V once and
 * keeps O_hi, O_lo in separate accumulators, added in the epilogue); above, the registers
 * for 2N columns are not there and P_lo takes the spent RoPE block of the tile instead. */
__host__ __device__ constexpr bool stacked_p(int n) { return n <= 32; }
/* fp32 accumulators per thread for one m64 block of O^T: N/2, or N with the stacked P */
__host__ __device__ constexpr int o_regs(int n) { return stacked_p(n) ? n : n / 2; }
__host__ __device__ constexpr int smem_q_offset(void) { return KV_STAGES * KV_TILE_BYTES; }
__host__ __device__ constexpr int smem_p_offset(int n) { return smem_q_offset() + n * 1152; }
__host__ __device__ constexpr int smem_red_offset(int n)
{
    return smem_p_offset(n) + (stacked_p(n) ? 2 : 1) * n * 128;
}
__host__ __device__ constexpr int smem_alpha_offset(int n) { return smem_red_offset(n) + 16 * n; }
__host__ __device__ constexpr int smem_vis_offset(int n) { return smem_alpha_offset(n) + 4 * n; }
/* S^T halves on their way to the other warpgroup (s_transposed) */
__host__ __device__ constexpr int smem_x_offset(int n) { return smem_vis_offset(n) + 4 * n; }
__host__ __device__ constexpr int smem_bar_offset(int n) { return smem_x_offset(n) + 256 * n; }
__host__ __device__ constexpr int smem_total(int n) { return smem_bar_offset(n) + 8 * (2 * KV_STAGES + 2); }

static_assert(smem_total(ETAP_SM90_MAX_ROWS - ETAP_SM90_ROW_STEP) <= 227 * 1024,
              "shared memory budget of the largest transposed N (48)");
static_assert(smem_q_offset() % 1024 == 0, "q tile must be 1024-aligned for the swizzle");
static_assert(smem_x_offset(16) % 16 == 0 && smem_x_offset(32) % 16 == 0 && smem_x_offset(48) % 16 == 0,
              "the S^T exchange is read as float4");

#ifdef ETAP_TRACE
/* src/trace_slots.h names the slots */
__device__ unsigned long long etap_trace_split[ETAP_TRACE_CTAS][ETAP_TRACE_SLOTS];
extern "C" __attribute__((visibility("default"))) int etap_debug_trace_copy(void *dst, size_t bytes)
{
    if (bytes > sizeof etap_trace_split)
        bytes = sizeof etap_trace_split;
    return cudaMemcpyFromSymbol(dst, etap_trace_split, bytes) != cudaSuccess;
}
#endif

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

/* Two weights a, b as 16-bit pairs (a in the low half): hi = round(a, b) and
 * lo = round(a - hi_a, b - hi_b), so that hi + lo equals (a, b) within ~2^-17 (bf16) or
 * ~2^-22 (fp16) relative. Each pair is one packed conversion (cvt.rn.bf16x2.f32 /
 * f16x2), where one conversion per value ran on the slower conversion path. */
template <int FP16> __device__ __forceinline__ uint32_t pack_half2(float a, float b);
template <> __device__ __forceinline__ uint32_t pack_half2<0>(float a, float b)
{
    const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *(const uint32_t *)&v;
}
template <> __device__ __forceinline__ uint32_t pack_half2<1>(float a, float b)
{
    const __half2 v = __floats2half2_rn(a, b);
    return *(const uint32_t *)&v;
}
template <int FP16> __device__ __forceinline__ float2 unpack_half2(uint32_t u);
template <> __device__ __forceinline__ float2 unpack_half2<0>(uint32_t u)
{
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}
template <> __device__ __forceinline__ float2 unpack_half2<1>(uint32_t u)
{
    return __half22float2(*(const __half2 *)&u);
}
template <int FP16>
__device__ __forceinline__ void split_hi_lo(float a, float b, uint32_t *hi, uint32_t *lo)
{
    *hi = pack_half2<FP16>(a, b);
    const float2 r = unpack_half2<FP16>(*hi);
    *lo = pack_half2<FP16>(a - r.x, b - r.y);
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

/* The softmax's reference max moves lazily: a query row's running max m (log2 domain) is
 * raised only when a tile's max exceeds it by more than RESCALE_LOG2 (or at the row's first
 * keys), so most tiles leave every reference where it was and the O accumulators need no
 * rescale. The weights exp2(x - m) then stay below 2^RESCALE_LOG2 instead of 1, which
 * changes nothing else: out = O / l and lse = m + log2(l) hold for any reference m. A
 * build may set it to 0 (raise on every new max) to measure. */
#ifndef ETAP_SM90_RESCALE_LOG2
#define ETAP_SM90_RESCALE_LOG2 8.f
#endif
/* The new reference of a row from the old one and this tile's max; alpha, the factor for
 * what has been accumulated, is exactly 1 when the reference stays, and also at the row's
 * first keys (nothing accumulated: O and l are 0). */
__device__ __forceinline__ float raise_reference(float m_old, float tile_max, float *alpha)
{
    const bool first = m_old == -INFINITY;
    const float m_new = first || tile_max > m_old + ETAP_SM90_RESCALE_LOG2 ? tile_max : m_old;
    *alpha = first || m_new == m_old ? 1.f : fast_exp2(m_old - m_new);
    return m_new;
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

/* The CTA's place: grid x = num_workers x row groups with the row group fastest, so the
 * groups of one worker start side by side and mostly read the same tiles from L2 (with the
 * group on grid z, all group-0 CTAs ran first: b = 128 8K 128 heads 952 -> 893 us). */
__device__ __forceinline__ int cta_worker(const decode_params &p)
{
    return blockIdx.x / (gridDim.x / p.num_workers);
}
__device__ __forceinline__ int cta_group(const decode_params &p)
{
    return blockIdx.x % (gridDim.x / p.num_workers);
}

/* The consumers' waits: this sequence's Q rows (the qi-th copy; cp.async wrote them through
 * the generic proxy and wgmma reads them next), and KV tile `it` of the ring (its stage);
 * each stamps its slot of the timeline (trace builds only). */
__device__ __forceinline__ void wait_q(const ring_bars &b, int qi)
{
    mbarrier_wait(b.q_full, qi & 1);
    fence_proxy_async_smem();
    ETAP_TRACE_SPLIT(TRACE_Q_READY, threadIdx.x == 0 && qi == 0);
}
__device__ __forceinline__ uint8_t *wait_tile(uint8_t *smem, const ring_bars &b, int it)
{
    const int s = it % KV_STAGES;
    mbarrier_wait(&b.full[s], (it / KV_STAGES) & 1);
    ETAP_TRACE_SPLIT(TRACE_TILE_FULL + 2 * it, threadIdx.x == 0 && it < ETAP_TRACE_TILES);
    return smem + s * KV_TILE_BYTES;
}

/* This worker's piece of sequence seq: its tiles [t0, t1) (false when it has none), the
 * length, and where the result goes: out itself when the sequence has one split (direct),
 * else the split's partial rows from part_row0. */
struct seq_piece {
    int len, t0, t1;
    bool direct;
    int64_t part_row0;
};
__device__ __forceinline__ bool piece_of(const decode_params &p, const worker_range &wr, int seq,
                                         int worker, int kv_head, seq_piece *pc)
{
    pc->len = p.seqlens[seq];
    seq_tiles(wr, seq, pc->len, p.max_len, &pc->t0, &pc->t1);
    if (pc->t0 >= pc->t1)
        return false;
    const int32_t *split_offset = p.plan + etap_plan_split_offset_offset(p.num_workers);
    const int32_t *first_worker = p.plan + etap_plan_first_worker_offset(p.batch, p.num_workers);
    pc->direct = split_offset[seq + 1] - split_offset[seq] == 1;
    const int split = split_offset[seq] + worker - first_worker[seq];
    pc->part_row0 = ((int64_t)split * p.heads_kv + kv_head) * p.rows;
    return true;
}

/* ---- the kernel ------------------------------------------------------------------------ */

/* Q rows r0 .. r0 + N - 1 of (seq, this KV head) into the swizzled q tile with cp.async,
 * by Q_COPY_THREADS threads; padding rows (r0 + n >= R) are zero-filled. Thread i copies
 * the 16-byte chunk i % 8 of every 64-column block of rows i / 8, i / 8 + 12, ..., so a
 * row's source is found once per row, not once per chunk (a division by the group size
 * per chunk held the 64-row Q back by ~7 us). ONE_POS: s_q = 1, so row r is head
 * kv_head * group + r, with no division at all (on the way to a one-tile call's S^T). */
#define Q_ROWS_PER_PASS (Q_COPY_THREADS / 8)
template <int N, bool ONE_POS>
__device__ __forceinline__ void copy_q_rows_as(const decode_params &p, int seq, int kv_head,
                                               int r0, uint8_t *q_tile, int qtid)
{
    const uint16_t *q_seq = (const uint16_t *)p.q + seq * p.q_stride_batch;
    const int ch = qtid % 8;
    for (int n = qtid / 8; n < N; n += Q_ROWS_PER_PASS) {
        const int row = r0 + n;
        const bool real = row < p.rows;
        const uint16_t *src = q_seq + ch * 8;
        if (real) {
            const int s_pos = ONE_POS ? 0 : row / p.group, h = ONE_POS ? row : row % p.group;
            src += s_pos * p.q_stride_seq + (kv_head * p.group + h) * p.q_stride_head;
        }
        uint8_t *dst = q_tile + swizzled_offset(n, ch * 8);
#pragma unroll
        for (int cb = 0; cb < QK_COL_BLOCKS; cb++)
            cp_async_16(dst + cb * N * SWIZZLE_ROW_BYTES, src + cb * 64, real ? 16 : 0);
    }
}
static_assert(Q_COPY_THREADS % 8 == 0, "a Q copy thread keeps one 16-byte chunk of each column block");
template <int N>
__device__ __forceinline__ void copy_q_rows(const decode_params &p, int seq, int kv_head,
                                            int r0, uint8_t *q_tile, int qtid)
{
    if (p.seqlen_q == 1)
        copy_q_rows_as<N, true>(p, seq, kv_head, r0, q_tile, qtid);
    else
        copy_q_rows_as<N, false>(p, seq, kv_head, r0, q_tile, qtid);
}

/* Tokens past the end of the sequence in its last tile hold whatever the page holds (NaN
 * in the tests): 0 * NaN = NaN in the PV product, so the V rows themselves (column blocks
 * 0..7) are zeroed, not only their P entries. By the 256 consumer threads (ctid). */
__device__ __forceinline__ void zero_v_tail(uint8_t *stage, int len, int t, int ctid)
{
    const int valid = len - t * KV_TILE_TOKENS;
    if (valid >= KV_TILE_TOKENS)
        return;
    const int chunks = (KV_TILE_TOKENS - valid) * 8 * 8;
    for (int idx = ctid; idx < chunks; idx += CONSUMER_THREADS) {
        const int row = valid + idx / 64, cb = (idx % 64) / 8, ch = idx % 8;
        *(uint4 *)(stage + cb * COL_BLOCK_BYTES + row * SWIZZLE_ROW_BYTES + ch * 16) = make_uint4(0, 0, 0, 0);
    }
}

/* The lse of query row n (< R) from its max (log2 domain) and sum: into lse when the
 * sequence has one split (direct), else into the split's partial row. */
__device__ __forceinline__ void write_lse(const decode_params &p, int seq, int kv_head, int64_t part_row0,
                                          int n, float m, float l, bool direct)
{
    const float lse = l > 0.f ? (m + log2f(l)) * 0.6931471805599453f : (direct ? INFINITY : -INFINITY);
    if (direct) {
        const int s_pos = n / p.group, head = kv_head * p.group + n % p.group;
        p.lse[((int64_t)seq * p.heads_q + head) * p.seqlen_q + s_pos] = lse;
    } else {
        p.partial_lse[part_row0 + n] = lse;
    }
}

/* The producer warpgroup. Warps 1..3 copy each sequence's Q rows of this KV head into the
 * swizzled q tile with cp.async (padding rows zero-filled) as soon as S^T is done with the
 * previous ones; lane 0 of warp 0 walks the KV tiles in the consumers' order and keeps
 * KV_STAGES bulk tensor copies ahead, reading each tile's block-table entry one tile early
 * (the first one of a sequence together with its length). */
template <int N>
__device__ __forceinline__ void produce(const CUtensorMap &kv_map, const decode_params &p,
                                        const worker_range &wr, uint8_t *smem, const ring_bars &b)
{
    const int kv_head = blockIdx.y, r0 = cta_group(p) * N, ptid = threadIdx.x - CONSUMER_THREADS;
    if (ptid >= 32) {
        const int qtid = ptid - 32;
        uint8_t *q_tile = smem + smem_q_offset();
        int qi = 0;
        /* the worker's first sequence almost never turns out empty, so its Q copy goes out
         * before its length is read */
        bool early = true;
        for (int seq = wr.first_seq; seq <= wr.last_seq; seq++) {
            if (early)
                copy_q_rows<N>(p, seq, kv_head, r0, q_tile, qtid);
            int t0, t1;
            seq_tiles(wr, seq, p.seqlens[seq], p.max_len, &t0, &t1);
            if (t0 >= t1) {
                /* the consumers skip it too; an early copy must land before the next one */
                if (early)
                    cp_async_wait_all();
                early = false;
                continue;
            }
            if (!early) {
                if (qi > 0)
                    mbarrier_wait(b.q_empty, (qi - 1) & 1);
                copy_q_rows<N>(p, seq, kv_head, r0, q_tile, qtid);
            }
            early = false;
            cp_async_mbarrier_arrive_noinc(b.q_full);
            qi++;
        }
        return;
    }
    if (ptid != 0)
        return;
    /* Pages in 32-bit unsigned math (64-bit division is a long subroutine on the way to the
     * first copy): a page holds tpp tiles (page_size is a multiple of 64); last_page is the
     * block table row's last entry. */
    const uint32_t tpp = (uint32_t)p.page_size / KV_TILE_TOKENS;
    const int last_page = (int)((uint32_t)p.max_len / (uint32_t)p.page_size) - 1;
    /* The cache is read once per call: its lines go first, so the plan, the block table,
     * the lengths, Q and the partials stay in L2 from one call to the next. */
    const uint64_t policy = l2_policy_evict_first();
    ETAP_TRACE_SPLIT(TRACE_PROD_START, true);
    int it = 0;
    for (int seq = wr.first_seq; seq <= wr.last_seq; seq++) {
        const int32_t *pages = p.block_table + (int64_t)seq * p.block_table_stride;
        /* the first tile's entry is read before the length is known (it stays inside the
         * row), so both DRAM round trips overlap */
        const int first = seq == wr.first_seq ? wr.first_tile : 0;
        int32_t next_page = pages[min((int)((uint32_t)first / tpp), last_page)];
        int t0, t1;
        seq_tiles(wr, seq, p.seqlens[seq], p.max_len, &t0, &t1);
        ETAP_TRACE_SPLIT_AFTER(TRACE_PROD_LEN, it == 0, t1);
        ETAP_TRACE_SPLIT_AFTER(TRACE_PROD_PAGE, it == 0, next_page);
        for (int t = t0; t < t1; t++, it++) {
            const int s = it % KV_STAGES;
            const int32_t page = next_page;
            const int32_t in_page = (int32_t)(((uint32_t)t % tpp) * KV_TILE_TOKENS);
            /* the next tile's entry is read before the wait for a free stage */
            if (t + 1 < t1)
                next_page = pages[((uint32_t)t + 1) / tpp];
            if (it >= KV_STAGES)
                mbarrier_wait(&b.empty[s], ((it / KV_STAGES) - 1) & 1);
            /* All SMs start at once, so the first copies queue behind each other in DRAM:
             * the second tile goes out only once the first has landed (measured: 1-2 us
             * off the middle of the grid). */
            if (it == 1)
                mbarrier_wait(&b.full[0], 0);
            ETAP_TRACE_SPLIT(TRACE_PROD_FREE + 2 * it, it < ETAP_TRACE_PRODUCER_TILES);
            mbarrier_arrive_expect_tx(&b.full[s], KV_TILE_BYTES);
            uint8_t *stage = smem + s * KV_TILE_BYTES;
            tma_load_5d(stage, &kv_map, &b.full[s], 0, in_page, 0, kv_head, page, policy);
            ETAP_TRACE_SPLIT(TRACE_PROD_ISSUED + 2 * it, it < ETAP_TRACE_PRODUCER_TILES);
        }
    }
}

/* Writes this thread's O^T fragments (local rows n = query rows r0 + n), times the row's
 * 1/l, straight from the registers:
 * for a fixed slot the 8 lanes with the same lane % 4 hold 8 consecutive dims of one row,
 * so each store instruction fills whole 16- or 32-byte segments. T is the output's 16-bit
 * type (final out, part_row0 < 0) or float (the split's partial rows from part_row0).
 * With the stacked P (N <= 32) the O_lo accumulators sit N/2 registers after the O_hi
 * ones and are added here. */
template <typename T, int N, int FP16>
__device__ __forceinline__ void store_o(const decode_params &p, int seq, int kv_head,
                                        int64_t part_row0, const float (&o)[M_BLOCKS_PER_WG][o_regs(N)],
                                        const float *red, int r0, int dim0, int col_base)
{
    constexpr int NH = N / 2; /* red: [2 warpgroups][4 warps][NH] partial row sums */
    const uint64_t partial_policy = l2_policy_evict_last(); /* ptx.cuh: the partials' policies */
#pragma unroll
    for (int c = 0; c < N / 4; c++) {
        const int nl = frag_col(c, col_base), n = r0 + nl;
        if (n >= p.rows)
            continue; /* padding row */
        const float *l4 = red + (nl / NH) * 4 * NH + nl % NH;
        const float l = l4[0] + l4[NH] + l4[2 * NH] + l4[3 * NH];
        const float scale = l > 0.f ? 1.f / l : 0.f;
        T *row;
        if constexpr (sizeof(T) == 2) {
            const int s_pos = n / p.group, head = kv_head * p.group + n % p.group;
            row = (T *)p.out + seq * p.out_stride_batch + s_pos * p.out_stride_seq +
                  head * p.out_stride_head;
        } else {
            row = (T *)(p.partial_out + (part_row0 + n) * 512);
        }
#pragma unroll
        for (int mb = 0; mb < M_BLOCKS_PER_WG; mb++) {
            const int i0 = frag_reg(c), dim = dim0 + mb * 64;
            float v0 = o[mb][i0], v1 = o[mb][i0 + 2];
            if constexpr (stacked_p(N)) {
                v0 += o[mb][i0 + N / 2];
                v1 += o[mb][i0 + 2 + N / 2];
            }
            if constexpr (sizeof(T) == 2) {
                row[dim] = to_half_bits<FP16>(v0 * scale);
                row[dim + 8] = to_half_bits<FP16>(v1 * scale);
            } else {
                st_global_hint((float *)row + dim, v0 * scale, partial_policy);
                st_global_hint((float *)row + dim + 8, v1 * scale, partial_policy);
            }
        }
    }
}

/* Half of S^T = K Q^T for all N query rows: the 18 k16 steps of key dims KK0 .. KK0 + 17,
 * into acc (m64nN) and waited for. KK0 is a template argument so that every operand offset
 * is a constant: computed from a run-time first step, the compiler keeps the 36 offsets
 * live across the tile loop, and next to O^T's 128 registers at N = 32 that spills. */
template <int N, int KK0, int FP16>
__device__ __forceinline__ void s_half(float (&acc)[N / 2], uint32_t stage_addr, uint32_t q_addr)
{
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < QK_K_STEPS / 2; k++) {
        const int kk = KK0 + k;
        const uint32_t k_off = (kk / 4) * COL_BLOCK_BYTES + (kk % 4) * 32;
        const uint32_t q_off = (kk / 4) * N * SWIZZLE_ROW_BYTES + (kk % 4) * 32;
        wgmma_op<N, FP16, 0>::run(acc, smem_desc_sw128(stage_addr + k_off), smem_desc_sw128(q_addr + q_off),
                                  k > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_accumulators(acc);
}

/* S^T = K Q^T of one KV tile for warpgroup wg's NH = N/2 query rows (columns wg * NH ..),
 * into sacc in wgmma's fragment layout (m64nNH). Each warpgroup computes S^T of all N rows
 * over half of the 576 key dims, so the K tile is read from shared memory once rather than
 * once per warpgroup (those reads bound this step: at N = 16 S^T took 0.73 us of a 1.86 us
 * tile, split 0.59 of 1.66; docs/perf.md v12b, and at N = 32 / 48 session 7), and the
 * halves are summed through x_buf: column block j (8 rows) is 4 registers from 4j; thread
 * i of one warpgroup trades with thread i of the other. The other warpgroup reads x_buf
 * before it passes the consumers' next barrier, which this one passes before its next
 * tile's writes. */
template <int N, int FP16>
__device__ __forceinline__ void s_transposed(float (&sacc)[N / 4], uint32_t stage_addr, uint32_t q_addr,
                                             int wg, int wtid, float *x_buf)
{
    constexpr int NH = N / 2;
    float sfull[N / 2];
    if (wg == 0)
        s_half<N, 0, FP16>(sfull, stage_addr, q_addr);
    else
        s_half<N, QK_K_STEPS / 2, FP16>(sfull, stage_addr, q_addr);
    float4 *x_out = (float4 *)x_buf + (wg * 128 + wtid) * (NH / 8);
    const float4 *x_in = (const float4 *)x_buf + ((1 - wg) * 128 + wtid) * (NH / 8);
    /* selects, not an index by wg (that would put sfull in local memory) */
#pragma unroll
    for (int i = 0; i < NH / 2; i++)
        sacc[i] = wg ? sfull[i] : sfull[NH / 2 + i]; /* to give */
#pragma unroll
    for (int j = 0; j < NH / 8; j++)
        x_out[j] = make_float4(sacc[4 * j], sacc[4 * j + 1], sacc[4 * j + 2], sacc[4 * j + 3]);
#pragma unroll
    for (int i = 0; i < NH / 2; i++)
        sacc[i] = wg ? sfull[NH / 2 + i] : sfull[i]; /* to keep */
    named_barrier_sync(BAR_EXCHANGE, CONSUMER_THREADS); /* halves in x_buf */
#pragma unroll
    for (int j = 0; j < NH / 8; j++) {
        const float4 v = x_in[j];
        sacc[4 * j] += v.x;
        sacc[4 * j + 1] += v.y;
        sacc[4 * j + 2] += v.z;
        sacc[4 * j + 3] += v.w;
    }
}

/* P^T of a warpgroup's NH = N/2 query rows (rows col0 .. of the p tiles: 64 tokens of 2
 * bytes each, 128B swizzle), hi and lo halves, from the weights in S^T's fragment layout
 * (pw[4j + 2h + e]: token 16 warp + lane / 4 + 8h of query row col0 + 8j + 2 (lane % 4) + e).
 * Each 8 tokens x 8 rows of it is one 8x8 matrix of the warp, stored transposed by
 * stmatrix, four per instruction: NH / 8 instructions where one 16-bit store per weight
 * half took NH. */
template <int N, int FP16>
__device__ __forceinline__ void write_p_transposed(const float (&pw)[N / 4], uint8_t *p_hi, uint8_t *p_lo,
                                                   int col0, int warp, int lane)
{
    constexpr int JB = N / 16; /* blocks of 8 query rows per warpgroup */
    uint32_t half2s[2][JB][2]; /* [hi, lo][row block][token half] */
#pragma unroll
    for (int j = 0; j < JB; j++)
#pragma unroll
        for (int h = 0; h < 2; h++)
            split_hi_lo<FP16>(pw[4 * j + 2 * h], pw[4 * j + 2 * h + 1], &half2s[0][j][h], &half2s[1][j][h]);
    /* matrix k = (part * JB + j) * 2 + h; lane l addresses row l % 8 of matrix 4i + l / 8 */
#pragma unroll
    for (int i = 0; i < JB; i++) {
        const int k = 4 * i + lane / 8, part = k / (2 * JB), j = (k / 2) % JB, h = k % 2;
        const uint32_t addr =
            smem_addr(part ? p_lo : p_hi) + swizzled_offset(col0 + 8 * j + lane % 8, 16 * warp + 8 * h);
#define HALF2_OF(kk) half2s[(kk) / (2 * JB)][((kk) / 2) % JB][(kk) % 2]
        stmatrix_x4_trans(addr, HALF2_OF(4 * i), HALF2_OF(4 * i + 1), HALF2_OF(4 * i + 2), HALF2_OF(4 * i + 3));
#undef HALF2_OF
    }
}

/* The two consumer warpgroups (threads 0..255). Each computes S^T and the softmax for its
 * half of the N query rows (N/2 columns), writes that half of P^T, and then O^T of all N
 * rows for its 256 of the 512 dims; the epilogue of each (sequence, split) follows. */
template <int N, int FP16>
__device__ __forceinline__ void consume_kv_tiles(const decode_params &p, const worker_range &wr,
                                                 uint8_t *smem, const ring_bars &b)
{
    uint8_t *q_tile = smem + smem_q_offset();
    uint8_t *p_tile = smem + smem_p_offset(N);
    float *red = (float *)(smem + smem_red_offset(N));
    float *alpha_smem = (float *)(smem + smem_alpha_offset(N));
    int *vis_end = (int *)(smem + smem_vis_offset(N));
    float *x_buf = (float *)(smem + smem_x_offset(N));
    const int worker = cta_worker(p), kv_head = blockIdx.y, r0 = cta_group(p) * N;
    const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
    const int ctid = tid; /* 0..255 across both consumer warpgroups */
    /* Fragment coordinates (wgmma D layout): this thread holds tokens/dims
     * row0 = 16*warp + lane/4 and row0 + 8, and columns 8j + 2*(lane%4) + {0,1}. */
    const int row0 = 16 * warp + lane / 4;
    const int col_base = 2 * (lane % 4);
    constexpr int NH = N / 2;      /* query rows (S^T columns) of each warpgroup's softmax */
    constexpr int SCOLS = NH / 4;  /* of them per thread: slot c -> col0 + frag_col(c) */
    constexpr int COLS = N / 4;    /* O^T columns per thread */
    const int col0 = wg * NH;      /* this warpgroup's first query row */
    float *red_wg = red + wg * 4 * NH; /* [4 warps][NH] of this warpgroup */
    /* A 16-bit P alone errs by up to 2^-9 (bf16) or 2^-11 (fp16) relative per weight,
     * which shows in out as that fraction of the spread of V: visible with few keys, or
     * with large V values. So P = P_hi + P_lo (both 16-bit) and the PV product covers both,
     * keeping the weights exact to ~2^-17 (bf16) or ~2^-22 (fp16). */
    constexpr bool STACKED = stacked_p(N);

    float o[M_BLOCKS_PER_WG][o_regs(N)];
    int it = 0, qi = 0;
    for (int seq = wr.first_seq; seq <= wr.last_seq; seq++) {
        seq_piece pc;
        if (!piece_of(p, wr, seq, worker, kv_head, &pc))
            continue;
        const int len = pc.len, t0 = pc.t0, t1 = pc.t1;

        /* per column: running max (log2 domain) and sum; P enters the PV product as hi + lo
         * 16-bit halves, equal to p within ~2^-17, so one exact sum normalises out and
         * gives lse */
        float m_run[SCOLS], l_run[SCOLS];
#pragma unroll
        for (int c = 0; c < SCOLS; c++) {
            m_run[c] = -INFINITY;
            l_run[c] = 0.f;
        }
        /* once per sequence: the division in visible_end stays off the tile loop */
        for (int n = ctid; n < N; n += CONSUMER_THREADS)
            vis_end[n] = visible_end(p, len, r0 + n);
        named_barrier_sync(BAR_EXCHANGE, CONSUMER_THREADS); /* vis_end ready */
#pragma unroll
        for (int mb = 0; mb < M_BLOCKS_PER_WG; mb++)
#pragma unroll
            for (int i = 0; i < o_regs(N); i++)
                o[mb][i] = 0.f;
        wait_q(b, qi);

        for (int t = t0; t < t1; t++, it++) {
            const int s = it % KV_STAGES;
            uint8_t *stage = wait_tile(smem, b, it);
            const uint32_t stage_addr = smem_addr(stage);
            /* P_lo: rows N..2N-1 of the p tile (stacked), or the tile's RoPE columns
             * (512..575): S^T is done with them before P is written, and the stage is
             * released only after the PV product. */
            uint8_t *p_lo_tile = STACKED ? p_tile + N * SWIZZLE_ROW_BYTES
                                         : stage + ROPE_COL_BLOCK * COL_BLOCK_BYTES;

            /* ---- S^T = K Q^T for this warpgroup's NH query rows ---- */
            float sacc[NH / 2];
            s_transposed<N, FP16>(sacc, stage_addr, smem_addr(q_tile), wg, tid % 128, x_buf);
            if (t == t1 - 1)
                mbarrier_arrive(b.q_empty); /* the producer may load the next Q */
            ETAP_TRACE_SPLIT(TRACE_T2_S, ctid == 0 && it == 2);

            /* ---- online softmax along M, against the reference each row already has:
             * a thread's tokens are row0 and row0 + 8 of each of its SCOLS columns. The
             * weights stay below 2^RESCALE_LOG2 unless a score passes its row's reference
             * by more than that; the barrier that publishes P^T tells every thread whether
             * any did, and only then are the tile's maxima traded (over the lanes and the 4
             * warps, through red) and P^T made again. A piece's first tile trades them at
             * once: every row's first keys raise its reference. ---- */
            const int tok0 = t * KV_TILE_TOKENS + row0;
            bool raise = false;
#pragma unroll
            for (int c = 0; c < SCOLS; c++) {
                const int i0 = frag_reg(c), i1 = i0 + 2;
                const int end = vis_end[col0 + frag_col(c, col_base)];
                const float x0 = tok0 < end ? sacc[i0] * p.scale_log2 : -INFINITY;
                const float x1 = tok0 + 8 < end ? sacc[i1] * p.scale_log2 : -INFINITY;
                sacc[i0] = x0;
                sacc[i1] = x1;
                const float bound = m_run[c] + ETAP_SM90_RESCALE_LOG2; /* -inf: any key passes */
                raise |= x0 > bound || x1 > bound;
            }
            float alpha[SCOLS], psum[SCOLS], pw[NH / 2];
#pragma unroll
            for (int c = 0; c < SCOLS; c++)
                alpha[c] = 1.f;
            /* P and alpha may be overwritten: every consumer thread waited for its PV of the
             * previous tile (wgmma_wait below) before it reached the barrier in s_transposed,
             * which also says that S^T is done with the tile's V rows. */
            zero_v_tail(stage, len, t, ctid);
            /* whether the references are set from this tile's maxima: at once on a piece's
             * first tile (every row's first keys raise its reference), else after the vote */
            bool exchange = t == t0;
            for (;;) {
                if (exchange) {
                    /* each row's tile max over the lanes that hold its tokens and the 4 warps */
#pragma unroll
                    for (int c = 0; c < SCOLS; c++) {
                        const int i0 = frag_reg(c), i1 = i0 + 2;
                        float mx = fmaxf(sacc[i0], sacc[i1]);
                        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
                        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
                        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
                        if (lane < 4)
                            red_wg[warp * NH + frag_col(c, col_base)] = mx;
                    }
                    named_barrier_sync(BAR_EXCHANGE, CONSUMER_THREADS); /* per-warp maxima in red */
#pragma unroll
                    for (int c = 0; c < SCOLS; c++) {
                        const int col = frag_col(c, col_base);
                        const float tile_max = fmaxf(fmaxf(red_wg[col], red_wg[NH + col]),
                                                     fmaxf(red_wg[2 * NH + col], red_wg[3 * NH + col]));
                        m_run[c] = raise_reference(m_run[c], tile_max, &alpha[c]);
                    }
                }
#pragma unroll
                for (int c = 0; c < SCOLS; c++) {
                    const float m_use = m_run[c] == -INFINITY ? 0.f : m_run[c];
                    const int i0 = frag_reg(c), i1 = i0 + 2;
                    pw[i0] = fast_exp2(sacc[i0] - m_use);
                    pw[i1] = fast_exp2(sacc[i1] - m_use);
                    psum[c] = pw[i0] + pw[i1];
                }
                ETAP_TRACE_SPLIT(TRACE_T2_SOFTMAX, ctid == 0 && it == 2 && !exchange);
                /* ---- P^T into shared memory (wgmma's B, K-major: row = query row) ---- */
                write_p_transposed<N, FP16>(pw, p_tile, p_lo_tile, col0, warp, lane);
                if (exchange) {
#pragma unroll
                    for (int c = 0; c < SCOLS; c++)
                        if (warp == 0 && lane < 4)
                            alpha_smem[col0 + frag_col(c, col_base)] = alpha[c];
                }
                fence_proxy_async_smem();
                if (exchange) {
                    named_barrier_sync(BAR_P_FULL, CONSUMER_THREADS);
                    break;
                }
                if (!named_barrier_any(BAR_P_FULL, CONSUMER_THREADS, raise))
                    break; /* every reference stays: alpha = 1 */
                exchange = true; /* some key passed its reference: P^T again, from the maxima */
            }
#pragma unroll
            for (int c = 0; c < SCOLS; c++)
                l_run[c] = l_run[c] * alpha[c] + psum[c];
            ETAP_TRACE_SPLIT(TRACE_T2_P_FULL, ctid == 0 && it == 2);

            /* ---- O^T += V^T P^T: this warpgroup's 256 dims, 4 x m64, all N rows; where
             * references were raised the accumulators are rescaled first, skipped by a warp
             * whose rows all kept theirs (exchange is the same on every consumer thread) ---- */
            if (exchange) {
                float a[COLS];
                bool rescale = false;
#pragma unroll
                for (int c = 0; c < COLS; c++) {
                    a[c] = alpha_smem[frag_col(c, col_base)];
                    rescale |= a[c] != 1.f;
                }
                if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
                    for (int c = 0; c < COLS; c++)
#pragma unroll
                        for (int mb = 0; mb < M_BLOCKS_PER_WG; mb++)
#pragma unroll
                            for (int h = 0; h < (STACKED ? 2 : 1); h++) {
                                const int i0 = frag_reg(c) + h * (N / 2);
                                o[mb][i0] *= a[c];
                                o[mb][i0 + 2] *= a[c];
                            }
                }
            }
            const uint32_t p_addr = smem_addr(p_tile);
            const uint32_t p_lo_addr = smem_addr(p_lo_tile);
#pragma unroll
            for (int mb = 0; mb < M_BLOCKS_PER_WG; mb++)
                fence_accumulators(o[mb]);
            wgmma_fence();
#pragma unroll
            for (int mb = 0; mb < M_BLOCKS_PER_WG; mb++) {
                const uint32_t v_addr = stage_addr + (wg * M_BLOCKS_PER_WG + mb) * COL_BLOCK_BYTES;
                if constexpr (STACKED) {
                    /* B = [P_hi^T; P_lo^T]: 2N rows read as one operand */
#pragma unroll
                    for (int kk = 0; kk < PV_K_STEPS; kk++)
                        wgmma_op<2 * N, FP16, 1>::run(o[mb], smem_desc_sw128(v_addr + kk * 2048),
                                                      smem_desc_sw128(p_addr + kk * 32), 1);
                } else {
#pragma unroll
                    for (int kk = 0; kk < PV_K_STEPS; kk++)
                        wgmma_op<N, FP16, 1>::run(o[mb], smem_desc_sw128(v_addr + kk * 2048),
                                                  smem_desc_sw128(p_addr + kk * 32), 1);
#pragma unroll
                    for (int kk = 0; kk < PV_K_STEPS; kk++)
                        wgmma_op<N, FP16, 1>::run(o[mb], smem_desc_sw128(v_addr + kk * 2048),
                                                  smem_desc_sw128(p_lo_addr + kk * 32), 1);
                }
            }
            wgmma_commit();
            ETAP_TRACE_SPLIT(TRACE_T2_PV_ISSUED, ctid == 0 && it == 2);
            wgmma_wait<0>();
#pragma unroll
            for (int mb = 0; mb < M_BLOCKS_PER_WG; mb++)
                fence_accumulators(o[mb]);
            mbarrier_arrive(&b.empty[s]);
            ETAP_TRACE_TILE_DONE(it, ctid == 0);
        }
        qi++;

        /* ---- epilogue: row sums across warps, 1/l, lse (each warpgroup its rows) ---- */
        const bool direct = pc.direct;
#pragma unroll
        for (int c = 0; c < SCOLS; c++) {
            float l = l_run[c];
            for (int d = 4; d < 32; d *= 2)
                l += __shfl_xor_sync(0xffffffffu, l, d);
            if (lane < 4)
                red_wg[warp * NH + frag_col(c, col_base)] = l;
        }
        named_barrier_sync(BAR_EXCHANGE, CONSUMER_THREADS); /* per-warp sums in red */
        ETAP_TRACE_SPLIT(TRACE_SUMS, ctid == 0);
        /* lse by the threads that own the row's running max; 1/l by every thread for its
         * own columns (store_o), so no further barrier */
        const int64_t part_row0 = pc.part_row0;
        if (warp == 0 && lane < 4) {
#pragma unroll
            for (int c = 0; c < SCOLS; c++) {
                const int col = frag_col(c, col_base), n = r0 + col0 + col;
                if (n >= p.rows)
                    continue;
                const float l = red_wg[col] + red_wg[NH + col] + red_wg[2 * NH + col] + red_wg[3 * NH + col];
                write_lse(p, seq, kv_head, part_row0, n, m_run[c], l, direct);
            }
        }

        /* ---- O^T -> out (one split) or the split's fp32 partial, from the registers ---- */
        const int dim0 = wg * V_DIMS_PER_WG + row0;
        if (direct)
            store_o<uint16_t, N, FP16>(p, seq, kv_head, -1, o, red, r0, dim0, col_base);
        else
            store_o<float, N, FP16>(p, seq, kv_head, part_row0, o, red, r0, dim0, col_base);
        ETAP_TRACE_SPLIT(TRACE_EPILOGUE, ctid == 0);
        ETAP_TRACE_SPLIT_VALUE(TRACE_SEQS, ctid == 0, (unsigned long long)(seq - wr.first_seq + 1));
    }
}

/* ---- rows on M: the layout for 64 query rows ------------------------------------------
 *
 * With 64 rows per KV head (h_q = 64 on one KV head, or a 64-row group of 128 heads) the
 * query rows fill wgmma's M themselves, and the transposed layout's small-N products
 * (m64n32k16 for S^T, PV twice as m64n64k16) lose to the plain one:
 *
 *     S [64 rows x 64 tokens] = Q [64 x 576] . K^T      each warpgroup 32 tokens, m64n32k16
 *     softmax along N (tokens): within a thread's quad, max exchanged between warpgroups
 *     O [64 x 512]           += P [64 x 64] . V [64 x 512]   each warpgroup 256 dims,
 *                                                      m64n256k16 with P_hi, then P_lo
 *
 * The producer, the ring, the Q tile ([9 column blocks][64 rows][128 B], K-major A here)
 * and the plan walk are the transposed kernel's. Shared memory after the Q tile:
 *   p_lo    [64 rows][64 tokens * 2 B]   P_lo (K-major A); P_hi goes to the tile's spent
 *                                        RoPE block
 *   red_max [2 warpgroups][64] f32       each warpgroup's tile maxima
 *   red_sum [2 warpgroups][64] f32       each warpgroup's row sums (epilogue)
 *   bars    as in the transposed map
 */
#define ROWM_N 64
__host__ __device__ constexpr int rowm_p_lo_offset(void) { return smem_q_offset() + ROWM_N * 1152; }
__host__ __device__ constexpr int rowm_red_offset(void) { return rowm_p_lo_offset() + ROWM_N * 128; }
__host__ __device__ constexpr int rowm_bar_offset(void) { return rowm_red_offset() + 2 * 2 * ROWM_N * 4; }
__host__ __device__ constexpr int rowm_smem_total(void) { return rowm_bar_offset() + 8 * (2 * KV_STAGES + 2); }
static_assert(rowm_smem_total() <= 227 * 1024, "shared memory budget of the rows-on-M kernel");
static_assert(rowm_p_lo_offset() % 1024 == 0, "p_lo must be 1024-aligned for the swizzle");

/* Writes this thread's O fragments (rows row_a and row_a + 8 of the group, 2 x 64 dims of
 * its warpgroup's 256), times 1/l: out (16-bit T) or the split's fp32 partial rows. */
template <typename T, int FP16>
__device__ __forceinline__ void store_o_rowm(const decode_params &p, int seq, int kv_head,
                                             int64_t part_row0, const float (&o)[128],
                                             const float (&inv_l)[2], int r0, int row_a,
                                             int dim0)
{
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int n = r0 + row_a + 8 * h;
        if (n >= p.rows)
            continue; /* padding row */
        const float scale = inv_l[h];
        if constexpr (sizeof(T) == 2) {
            const int s_pos = n / p.group, head = kv_head * p.group + n % p.group;
            uint32_t *row = (uint32_t *)((T *)p.out + seq * p.out_stride_batch +
                                         s_pos * p.out_stride_seq + head * p.out_stride_head + dim0);
#pragma unroll
            for (int j = 0; j < 32; j++)
                row[4 * j] = (uint32_t)to_half_bits<FP16>(o[4 * j + 2 * h] * scale) |
                             ((uint32_t)to_half_bits<FP16>(o[4 * j + 2 * h + 1] * scale) << 16);
        } else {
            float2 *row = (float2 *)(p.partial_out + (part_row0 + n) * 512 + dim0);
            const uint64_t partial_policy = l2_policy_evict_last(); /* ptx.cuh */
#pragma unroll
            for (int j = 0; j < 32; j++)
                st_global_hint(row + 4 * j, make_float2(o[4 * j + 2 * h] * scale, o[4 * j + 2 * h + 1] * scale),
                               partial_policy);
        }
    }
}

template <int FP16>
__device__ __forceinline__ void consume_rows_on_m(const decode_params &p, const worker_range &wr,
                                                  uint8_t *smem, const ring_bars &b)
{
    uint8_t *q_tile = smem + smem_q_offset();
    uint8_t *p_lo_tile = smem + rowm_p_lo_offset();
    float *red_max = (float *)(smem + rowm_red_offset());
    float *red_sum = red_max + 2 * ROWM_N;
    const int worker = cta_worker(p), kv_head = blockIdx.y, r0 = cta_group(p) * ROWM_N;
    const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
    /* fragment coordinates: rows row_a and row_a + 8, columns 8j + col_base + {0,1} */
    const int row_a = 16 * warp + lane / 4, col_base = 2 * (lane % 4);
    const int tok_wg = 32 * wg; /* this warpgroup's 32 tokens of each tile (S columns) */

    float o[128];
    int it = 0, qi = 0;
    for (int seq = wr.first_seq; seq <= wr.last_seq; seq++) {
        seq_piece pc;
        if (!piece_of(p, wr, seq, worker, kv_head, &pc))
            continue;
        const int len = pc.len, t0 = pc.t0, t1 = pc.t1;
        int vend[2];
        float m_run[2], l_run[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            vend[h] = visible_end(p, len, r0 + row_a + 8 * h);
            m_run[h] = -INFINITY;
            l_run[h] = 0.f;
        }
#pragma unroll
        for (int i = 0; i < 128; i++)
            o[i] = 0.f;
        wait_q(b, qi);

        for (int t = t0; t < t1; t++, it++) {
            const int s = it % KV_STAGES;
            uint8_t *stage = wait_tile(smem, b, it);
            uint8_t *p_hi_tile = stage + ROPE_COL_BLOCK * COL_BLOCK_BYTES;
            const uint32_t stage_addr = smem_addr(stage);

            /* ---- S = Q K^T for this warpgroup's 32 tokens ---- */
            float sacc[16];
            const uint32_t q_addr = smem_addr(q_tile);
            const uint32_t k_addr = stage_addr + tok_wg * SWIZZLE_ROW_BYTES;
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < QK_K_STEPS; kk++) {
                const uint32_t q_off = (kk / 4) * ROWM_N * SWIZZLE_ROW_BYTES + (kk % 4) * 32;
                const uint32_t k_off = (kk / 4) * COL_BLOCK_BYTES + (kk % 4) * 32;
                wgmma_op<32, FP16, 0>::run(sacc, smem_desc_sw128(q_addr + q_off),
                                           smem_desc_sw128(k_addr + k_off), kk > 0);
            }
            wgmma_commit();
            wgmma_wait<0>();
            fence_accumulators(sacc);
            ETAP_TRACE_SPLIT(TRACE_T2_S, tid == 0 && it == 2);
            if (t == t1 - 1)
                mbarrier_arrive(b.q_empty);

            /* ---- softmax along the tokens, against the reference each row already has
             * (consume_kv_tiles says why that holds): the barrier that says S is done with
             * the RoPE block tells every thread whether some key passed its row's reference
             * by more than RESCALE_LOG2, and only then are the rows' maxima taken (the
             * thread's 8 per row, its quad, the other warpgroup's 32 through red_max) ---- */
            const int tok0 = t * KV_TILE_TOKENS + tok_wg + col_base;
            bool raise = false;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const float bound = m_run[h] + ETAP_SM90_RESCALE_LOG2;
#pragma unroll
                for (int j = 0; j < 4; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int i = 4 * j + 2 * h + e;
                        const float x = tok0 + 8 * j + e < vend[h] ? sacc[i] * p.scale_log2 : -INFINITY;
                        sacc[i] = x;
                        raise |= x > bound;
                    }
            }
            float alpha[2] = {1.f, 1.f};
            /* a piece's first tile raises every row's reference: no vote */
            if (t == t0 || named_barrier_any(BAR_EXCHANGE, CONSUMER_THREADS, raise)) { /* and S done */
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    float mx = -INFINITY;
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        mx = fmaxf(mx, fmaxf(sacc[4 * j + 2 * h], sacc[4 * j + 2 * h + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    if ((lane & 3) == 0)
                        red_max[wg * ROWM_N + row_a + 8 * h] = mx;
                }
                named_barrier_sync(BAR_EXCHANGE, CONSUMER_THREADS); /* both maxima */
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int row = row_a + 8 * h;
                    m_run[h] = raise_reference(m_run[h], fmaxf(red_max[row], red_max[ROWM_N + row]), &alpha[h]);
                }
            }
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const float m_use = m_run[h] == -INFINITY ? 0.f : m_run[h];
                float sum = 0.f;
#pragma unroll
                for (int j = 0; j < 4; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int i = 4 * j + 2 * h + e;
                        sacc[i] = fast_exp2(sacc[i] - m_use);
                        sum += sacc[i];
                    }
                l_run[h] = l_run[h] * alpha[h] + sum;
            }
            ETAP_TRACE_SPLIT(TRACE_T2_SOFTMAX, tid == 0 && it == 2);
            /* both warpgroups' PV of the previous tile is done with p_lo: every consumer
             * thread waited for its own before it reached the barrier above */
            /* ---- P_hi (RoPE block of the tile) and P_lo, K-major A: row = query row ---- */
            {
                /* each 8 rows x 8 tokens of the warp is one 8x8 matrix of the mma fragment
                 * layout: stmatrix writes four per instruction (matrix k = (part * 4 + j) * 2
                 * + h, lane l addressing row l % 8 of matrix 4i + l / 8) */
                uint32_t half2s[2][4][2]; /* [hi, lo][token block j][row half h] */
#pragma unroll
                for (int j = 0; j < 4; j++)
#pragma unroll
                    for (int h = 0; h < 2; h++)
                        split_hi_lo<FP16>(sacc[4 * j + 2 * h], sacc[4 * j + 2 * h + 1], &half2s[0][j][h],
                                          &half2s[1][j][h]);
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int k = 4 * i + lane / 8, part = k / 8, j = (k / 2) % 4, h = k % 2;
                    const uint32_t addr = smem_addr(part ? p_lo_tile : p_hi_tile) +
                                          swizzled_offset(16 * warp + 8 * h + lane % 8, tok_wg + 8 * j);
#define HALF2_OF(kk) half2s[(kk) / 8][((kk) / 2) % 4][(kk) % 2]
                    stmatrix_x4(addr, HALF2_OF(4 * i), HALF2_OF(4 * i + 1), HALF2_OF(4 * i + 2),
                                HALF2_OF(4 * i + 3));
#undef HALF2_OF
                }
            }
            zero_v_tail(stage, len, t, tid);
            fence_proxy_async_smem();
            named_barrier_sync(BAR_P_FULL, CONSUMER_THREADS);
            ETAP_TRACE_SPLIT(TRACE_T2_P_FULL, tid == 0 && it == 2);

            /* ---- O += P V: this warpgroup's 256 dims (rescaled first where a row of the
             * warp moved its reference) ---- */
            if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
                for (int j = 0; j < 32; j++) {
                    o[4 * j] *= alpha[0];
                    o[4 * j + 1] *= alpha[0];
                    o[4 * j + 2] *= alpha[1];
                    o[4 * j + 3] *= alpha[1];
                }
            }
            fence_accumulators(o);
            const uint32_t v_addr = stage_addr + wg * M_BLOCKS_PER_WG * COL_BLOCK_BYTES;
            const uint32_t p_hi_addr = smem_addr(p_hi_tile), p_lo_addr = smem_addr(p_lo_tile);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < PV_K_STEPS; kk++)
                wgmma_op<256, FP16, 2>::run(o, smem_desc_sw128(p_hi_addr + kk * 32),
                                            smem_desc_sw128_mn(v_addr + kk * 2048, COL_BLOCK_BYTES), 1);
#pragma unroll
            for (int kk = 0; kk < PV_K_STEPS; kk++)
                wgmma_op<256, FP16, 2>::run(o, smem_desc_sw128(p_lo_addr + kk * 32),
                                            smem_desc_sw128_mn(v_addr + kk * 2048, COL_BLOCK_BYTES), 1);
            wgmma_commit();
            ETAP_TRACE_SPLIT(TRACE_T2_PV_ISSUED, tid == 0 && it == 2);
            wgmma_wait<0>();
            fence_accumulators(o);
            mbarrier_arrive(&b.empty[s]);
            ETAP_TRACE_TILE_DONE(it, tid == 0);
        }
        qi++;

        /* ---- epilogue: row sums of both warpgroups, 1/l, lse, O ---- */
        const bool direct = pc.direct;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float l = l_run[h];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            if ((lane & 3) == 0)
                red_sum[wg * ROWM_N + row_a + 8 * h] = l;
        }
        named_barrier_sync(BAR_EXCHANGE, CONSUMER_THREADS); /* both sums */
        const int64_t part_row0 = pc.part_row0;
        float inv_l[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = row_a + 8 * h, n = r0 + row;
            const float l = red_sum[row] + red_sum[ROWM_N + row];
            inv_l[h] = l > 0.f ? 1.f / l : 0.f;
            if (wg == 0 && (lane & 3) == 0 && n < p.rows)
                write_lse(p, seq, kv_head, part_row0, n, m_run[h], l, direct);
        }
        const int dim0 = wg * V_DIMS_PER_WG + col_base;
        if (direct)
            store_o_rowm<uint16_t, FP16>(p, seq, kv_head, -1, o, inv_l, r0, row_a, dim0);
        else
            store_o_rowm<float, FP16>(p, seq, kv_head, part_row0, o, inv_l, r0, row_a, dim0);
        ETAP_TRACE_SPLIT(TRACE_EPILOGUE, tid == 0);
        ETAP_TRACE_SPLIT_VALUE(TRACE_SEQS, tid == 0, (unsigned long long)(seq - wr.first_seq + 1));
    }
}

/* ROWM = 1: the rows-on-M consumers (N = 64 only); 0: the transposed ones */
template <int N, int FP16, int ROWM>
__global__ void __launch_bounds__(THREADS, 1)
    etap_decode_sm90_kernel(const __grid_constant__ CUtensorMap kv_map, const decode_params p)
{
    static_assert(!ROWM || N == ROWM_N, "the rows-on-M kernel takes 64-row groups");
    extern __shared__ __align__(1024) uint8_t smem[];
    uint64_t *bars = (uint64_t *)(smem + (ROWM ? rowm_bar_offset() : smem_bar_offset(N)));
    const ring_bars b = {bars, bars + KV_STAGES, bars + 2 * KV_STAGES, bars + 2 * KV_STAGES + 1};

    const int tid = threadIdx.x;
    ETAP_TRACE_SPLIT(TRACE_ENTRY, tid == 0);
    ETAP_TRACE_SPLIT_VALUE(TRACE_SMID, tid == 0, (unsigned long long)smid());
    if (tid == 0) {
        for (int s = 0; s < KV_STAGES; s++) {
            mbarrier_init(&b.full[s], 1);
            mbarrier_init(&b.empty[s], CONSUMER_THREADS);
        }
        mbarrier_init(b.q_full, Q_COPY_THREADS);
        mbarrier_init(b.q_empty, CONSUMER_THREADS);
        mbarrier_init_fence();
        tma_prefetch_descriptor(&kv_map);
    }
    /* The plan status and the worker record, in one round trip (the record lies inside
     * the plan buffer whatever the status says), go out before griddepcontrol.wait: the
     * plan is complete before this grid starts (etap.h: etap_decode; the plan kernel
     * lets no dependent launch before it ends), and read through L2. */
    const int32_t *plan = p.plan;
    const int32_t *rec = plan + etap_plan_worker_offset(cta_worker(p));
    const int32_t status = __ldcg(plan + ETAP_PLAN_H_STATUS);
    const worker_range wr = {__ldcg(rec), __ldcg(rec + 1), __ldcg(rec + 2), __ldcg(rec + 3)};
    /* The first lines that the reads after the wait touch, asked of L2 before it: a hint
     * that reads no value, so the kernel still writing them is no hazard, and their page
     * translations are ready when the block table and the length are read (b = 1 1K 7.7
     * -> 7.4 us, 16K 12.3 -> 12.0 against the same prefetches right after the wait). */
    if (tid >= 32 && tid < 35)
        prefetch_l2(tid == 32 ? (const void *)p.block_table : tid == 33 ? (const void *)p.seqlens : p.q);
    /* the barriers' initialisation is published before the wait, so that no CTA-wide
     * barrier stands between the wait and the first reads (b = 1 1K / 4K -0.1 us, v21) */
    __syncthreads();
    /* Launched with programmatic dependent launch: the kernel before this one in the
     * stream (any kernel: it may have written q, the cache or the lengths) may still be
     * running, so no other input is read before this wait. */
    grid_dependency_wait();
    ETAP_TRACE_SPLIT(TRACE_DEP_WAIT, tid == 0);
    grid_dependents_launch(); /* the combine kernel may start its launch now */
    if (status != ETAP_PLAN_OK)
        return; /* the combine kernel writes NaN everywhere for an invalid plan */
    ETAP_TRACE_SPLIT(TRACE_PLAN, tid == 0);
    if (wr.last_seq < wr.first_seq)
        return; /* idle worker */

    /* One branch per role. Every thread meets at the
     * final __syncthreads(), so no thread exits while the counted named barriers of the
     * consumers are in use. */
    if (tid >= CONSUMER_THREADS) {
        setmaxnreg_dec<PRODUCER_REGS(N)>();
        produce<N>(kv_map, p, wr, smem, b);
    } else {
        setmaxnreg_inc<CONSUMER_REGS(N)>();
        if constexpr (ROWM)
            consume_rows_on_m<FP16>(p, wr, smem, b);
        else
            consume_kv_tiles<N, FP16>(p, wr, smem, b);
    }
    __syncthreads();
    ETAP_TRACE_SPLIT(TRACE_EXIT, tid == 0);
}

/* ---- launch ---------------------------------------------------------------------------- */

/* Every (N, dtype, layout) the backend instantiates: transposed for N = 16..48 in steps of
 * ETAP_SM90_ROW_STEP (each warpgroup takes N/2 rows, a multiple of 8 for wgmma), rows on M
 * for N = 64; bf16 and fp16. */
#define ETAP_SM90_FOR_EACH_INSTANCE(X)                                                      \
    X(16, 0, 0) X(32, 0, 0) X(48, 0, 0) X(64, 0, 1) X(16, 1, 0) X(32, 1, 0) X(48, 1, 0) X(64, 1, 1)

cudaError_t etap_sm90_set_attributes(void)
{
    cudaError_t err = cudaSuccess;
#define SET_ATTR(n, fp16, rowm)                                                             \
    if (err == cudaSuccess)                                                                 \
        err = cudaFuncSetAttribute(etap_decode_sm90_kernel<n, fp16, rowm>,                  \
                                   cudaFuncAttributeMaxDynamicSharedMemorySize,             \
                                   rowm ? rowm_smem_total() : smem_total(n));
    ETAP_SM90_FOR_EACH_INSTANCE(SET_ATTR)
#undef SET_ATTR
    return err;
}

cudaError_t etap_sm90_launch_decode(const decode_params &p, const CUtensorMap &kv_map, int n_rows,
                                    int fp16, cudaStream_t stream)
{
    cudaLaunchAttribute attr;
    cudaLaunchConfig_t config =
        pdl_launch_config(dim3(p.num_workers * ((p.rows + n_rows - 1) / n_rows), p.heads_kv, 1),
                          dim3(THREADS), 0, stream, &attr);
#define LAUNCH(n, f, rowm)                                                                  \
    if (n_rows == n && fp16 == f) {                                                         \
        config.dynamicSmemBytes = rowm ? rowm_smem_total() : smem_total(n);                 \
        return cudaLaunchKernelEx(&config, etap_decode_sm90_kernel<n, f, rowm>, kv_map, p); \
    }
    ETAP_SM90_FOR_EACH_INSTANCE(LAUNCH)
#undef LAUNCH
    return cudaErrorInvalidValue;
}
