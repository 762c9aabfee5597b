/*
 * cpu_backend.c - the CPU backend of etap_decode(): split-KV MLA decode on host memory.
 *
 * docs/cpu-backend.md describes the design; in short:
 *   - work items are (plan worker w, KV head g), handed to threads through an atomic
 *     counter; an item walks the tile ranges the plan gives worker w;
 *   - for one sequence piece the R = s_q * h_q / h_kv query rows of head group g are
 *     converted to fp32 once; each 64-token KV tile then feeds Q.K^T for all rows and
 *     P.V (V = the tile's first 512 columns), either converted in registers straight
 *     from the cache (few rows) or converted once into an fp32 tile (many rows);
 *   - online softmax in the exp2 domain: scores are multiplied by scale * log2(e), so
 *     exp(scale * x) becomes exp2(score) and the running max / sum stay in that domain;
 *   - a sequence with one split is finished by its worker; the others leave normalised
 *     partial results (out / l, natural-log lse) in the workspace, merged by a combine
 *     pass that also fills the sequences with no tile.
 */
#define _POSIX_C_SOURCE 200809L /* pthreads under -std=c11 */

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define CPU_USE_AVX2 1
#else
#define CPU_USE_AVX2 0
#endif

#include "../internal.h"
#include "../plan.h"

/* ---- constants ---- */

enum {
    DQK = ETAP_HEAD_DIM_QK, /* K row width: 512 latent + 64 RoPE */
    DV = ETAP_HEAD_DIM_V,   /* V = the first 512 columns of a K row */
    TILE = ETAP_TILE_TOKENS,
    SCRATCH_ALIGN = 64 /* bytes: a cache line, and more than any vector load needs */
};

/* Plan workers per thread. One worker per thread would leave the slowest thread alone at
 * the end whenever the OS or a sibling process takes a core for a while; a few equal
 * items per thread let the dynamic counter absorb that, for the price of a few more
 * splits (each one an extra R x 512 partial write plus its share of the combine). With a
 * single thread there is nothing to balance, and one worker means no split at all. */
#define CPU_WORKERS_PER_THREAD 4

#define LOG2E 1.4426950408889634
#define LN2 0.69314718055994531

/* ---- fp16 / bf16 <-> fp32 ---- */

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t bits_from_f32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) /* inf / nan: keep the payload */
        return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    if (exp != 0) /* normal: rebias 15 -> 127 */
        return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
    /* zero or subnormal: mant * 2^-24, exact in fp32 */
    float v = (float)mant * 0x1p-24f;
    return sign ? -v : v;
}

/* Round to nearest even; NaN stays a (quiet) NaN. */
static uint16_t f32_to_bf16(float f)
{
    uint32_t u = bits_from_f32(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Round to nearest even, overflow to inf, fp16 subnormals kept; NaN stays a NaN. */
static uint16_t f32_to_f16(float f)
{
    uint32_t u = bits_from_f32(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t x = u & 0x7fffffffu;
    if (x >= 0x7f800000u) /* inf, nan */
        return (uint16_t)(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0u));
    if (x >= 0x477ff000u) /* >= 65520 rounds past the largest half, 65504 */
        return (uint16_t)(sign | 0x7c00u);
    if (x >= 0x38800000u) { /* normal half: >= 2^-14 */
        uint32_t h = (x - 0x38000000u) >> 13; /* rebias 127 -> 15, drop 13 bits */
        uint32_t rem = x & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
            h++;
        return (uint16_t)(sign | h);
    }
    if (x < 0x33000000u) /* <= 2^-25 rounds to zero (2^-25 itself ties to even 0) */
        return sign;
    /* subnormal half: round(value / 2^-24) with value = mant * 2^(e - 150) */
    uint32_t e = x >> 23;
    uint32_t mant = (x & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e; /* 14 .. 24 */
    uint32_t h = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

/* dst[0..n) = src[0..n) as fp32. */
static void row_to_f32(const uint16_t *src, float *dst, int n, etap_dtype dtype)
{
    int d = 0;
#if CPU_USE_AVX2
    if (dtype == ETAP_DTYPE_BF16) {
        for (; d + 8 <= n; d += 8) {
            __m128i h = _mm_loadu_si128((const __m128i *)(src + d));
            __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
            _mm256_storeu_ps(dst + d, _mm256_castsi256_ps(w));
        }
    }
    else {
        for (; d + 8 <= n; d += 8)
            _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + d))));
    }
#endif
    if (dtype == ETAP_DTYPE_BF16)
        for (; d < n; d++)
            dst[d] = bf16_to_f32(src[d]);
    else
        for (; d < n; d++)
            dst[d] = f16_to_f32(src[d]);
}

/* dst[0..DV) = src[0..DV) * mul, converted to the output dtype. */
static void row_from_f32(const float *src, float mul, void *dst, etap_dtype dtype)
{
    uint16_t *o = (uint16_t *)dst;
    if (dtype == ETAP_DTYPE_BF16)
        for (int d = 0; d < DV; d++)
            o[d] = f32_to_bf16(src[d] * mul);
    else
        for (int d = 0; d < DV; d++)
            o[d] = f32_to_f16(src[d] * mul);
}

static void row_zero(void *dst) { memset(dst, 0, DV * sizeof(uint16_t)); }

/* ---- compute kernels ----
 *
 * Two ways through a tile, chosen by the rows per KV head R (see cpu-backend.md):
 *   - R <= FUSED_MAX_ROWS ("fused"): the kernels read the bf16/fp16 cache rows directly
 *     and convert in registers, FUSED_ROW_BLOCK rows at a time. With few rows a K element
 *     feeds only a few FMAs, so an fp32 copy of the tile would cost more cache traffic
 *     (write it, read it twice) than the arithmetic it serves.
 *   - larger R ("tiled"): the tile is converted to fp32 once into scratch, then reused by
 *     all R rows from cache; register-blocked kernels keep the FMA units busy.
 * Without AVX2 + FMA + F16C only the tiled path exists, with plain loops.
 */

/* Tokens of a tile are processed in groups of up to this many; the row-pointer list of a
 * tile is padded to a multiple of it with a zero row, so no kernel needs a token tail. */
enum { TOKEN_PAD = 4 };

#if CPU_USE_AVX2
#define ALWAYS_INLINE inline __attribute__((always_inline))
/* Pins a loaded vector in a register. Without it GCC folds the load into every FMA that
 * uses the value, so a vector meant to be loaded once is loaded once per use. */
#define KEEP_IN_REG(v) __asm__("" : "+x"(v))

/* Measured on Zen 3 (docs/cpu-backend.md): the fused path wins up to 8 rows, ties at 12
 * to 16, and loses from 24 on, when the rows' fp32 Q and accumulators no longer stay in
 * L1 next to the converted K vectors. */
enum { FUSED_MAX_ROWS = 16, FUSED_ROW_BLOCK = 4 };

/* Half h (0 or 1) of 16 cache elements as fp32. fp16: elements 0..7 or 8..15. bf16: the
 * even or the odd elements, which one shift or one mask extracts from the same 32 bytes
 * (widening 8 consecutive elements takes a shuffle and a shift). The fused path keeps Q
 * and its accumulators in this same "blocked" order (row_to_f32_blocked), so dot
 * products and P.V sums are unchanged; unblock_row restores the natural order of the
 * accumulators at the end. */
static ALWAYS_INLINE __m256 half16_f32(const uint16_t *src, int bf16, int h)
{
    if (bf16) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)src);
        if (h == 0)
            return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
        const __m256i high_half = _mm256_set1_epi32(-65536); /* 0xffff0000 */
        return _mm256_and_ps(_mm256_castsi256_ps(x), _mm256_castsi256_ps(high_half));
    }
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 8 * h)));
}

/* dst[0..n) = src[0..n) as fp32 in blocked order (n a multiple of 16). */
static void row_to_f32_blocked(const uint16_t *src, float *dst, int n, etap_dtype dtype)
{
    const int bf16 = dtype == ETAP_DTYPE_BF16;
    for (int d = 0; d < n; d += 16) {
        _mm256_storeu_ps(dst + d, half16_f32(src + d, bf16, 0));
        _mm256_storeu_ps(dst + d + 8, half16_f32(src + d, bf16, 1));
    }
}

/* Blocked order back to natural order, in place, for a row of DV floats. */
static void unblock_row(float *row, etap_dtype dtype)
{
    if (dtype != ETAP_DTYPE_BF16)
        return; /* fp16 blocks are already in natural order */
    for (int d = 0; d < DV; d += 16) {
        const __m256 even = _mm256_loadu_ps(row + d), odd = _mm256_loadu_ps(row + d + 8);
        /* interleave within 128-bit lanes, then put the lanes in order */
        const __m256 lo = _mm256_unpacklo_ps(even, odd), hi = _mm256_unpackhi_ps(even, odd);
        _mm256_storeu_ps(row + d, _mm256_permute2f128_ps(lo, hi, 0x20));
        _mm256_storeu_ps(row + d + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
}

static ALWAYS_INLINE float hsum8(__m256 v)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* Pulls a cache row of the next tile towards L2 while this tile computes. The hardware
 * prefetchers follow a stream only inside a 4 KiB page and need a few misses to start, so
 * the jump to the next (shuffled) cache page would otherwise leave DRAM idle. */
static ALWAYS_INLINE void prefetch_row(const uint16_t *row)
{
    enum { LINE = 64, ROW_BYTES = DQK * sizeof(uint16_t) };
    for (int off = 0; off < ROW_BYTES; off += LINE)
        _mm_prefetch((const char *)row + off, _MM_HINT_T1);
}

/* ---- fused kernels (R <= FUSED_MAX_ROWS) ---- */

/* s[r][j] = mul * <q[r], K[j]> for RB rows and tokens [0, n_pad), K rows read from the
 * cache, TB (<= 4) at a time; each converted K vector serves RB rows. q is in blocked
 * order. A 16-element block gives two vectors per token; with U = 2 they feed separate
 * accumulators (for RB = 1, which would otherwise have too few chains to cover the FMA
 * latency), with U = 1 the same one. `next` (or NULL) lists the next tile's rows,
 * prefetched along. */
enum { QK_FUSED_MAX_TOKENS = 4 };
static ALWAYS_INLINE void qk_fused_rows(const float *q, int rb, int tb, int u,
                                        const uint16_t *const *rowp, int n_pad,
                                        const uint16_t *const *next, int n_next, float *s,
                                        float mul, int bf16)
{
    for (int j = 0; j < n_pad; j += tb) {
        for (int c = 0; c < tb && next; c++)
            if (j + c < n_next)
                prefetch_row(next[j + c]);
        const uint16_t *k[QK_FUSED_MAX_TOKENS];
        for (int c = 0; c < tb; c++)
            k[c] = rowp[j + c];
        __m256 acc[2][FUSED_ROW_BLOCK][QK_FUSED_MAX_TOKENS];
        for (int x = 0; x < u; x++)
            for (int r = 0; r < rb; r++)
                for (int c = 0; c < tb; c++)
                    acc[x][r][c] = _mm256_setzero_ps();
        for (int d = 0; d < DQK; d += 16) {
            for (int h = 0; h < 2; h++) {
                const int x = u == 2 ? h : 0;
                __m256 qv[FUSED_ROW_BLOCK];
                for (int r = 0; r < rb; r++) {
                    qv[r] = _mm256_loadu_ps(q + r * DQK + d + 8 * h);
                    KEEP_IN_REG(qv[r]);
                }
                for (int c = 0; c < tb; c++) {
                    const __m256 kv = half16_f32(k[c] + d, bf16, h);
                    for (int r = 0; r < rb; r++)
                        acc[x][r][c] = _mm256_fmadd_ps(qv[r], kv, acc[x][r][c]);
                }
            }
        }
        for (int r = 0; r < rb; r++)
            for (int c = 0; c < tb; c++) {
                __m256 sum = acc[0][r][c];
                if (u == 2)
                    sum = _mm256_add_ps(sum, acc[1][r][c]);
                s[r * TILE + j + c] = mul * hsum8(sum);
            }
    }
}

/* acc[r][0..DV) += sum_j p[r][j] * V[j][0..DV) for RB rows, VB (even) vectors of
 * columns at a time, acc in blocked order; V rows are read from the cache and converted
 * once for all RB rows. */
static ALWAYS_INLINE void pv_fused_rows(const float *p, int rb, int vb,
                                        const uint16_t *const *rowp, int n, float *acc,
                                        int bf16)
{
    for (int d = 0; d < DV; d += 8 * vb) {
        __m256 a[FUSED_ROW_BLOCK][8];
        for (int r = 0; r < rb; r++)
            for (int c = 0; c < vb; c++)
                a[r][c] = _mm256_loadu_ps(acc + r * DV + d + 8 * c);
        for (int j = 0; j < n; j++) {
            for (int c = 0; c < vb; c += 2) {
                const __m256 v0 = half16_f32(rowp[j] + d + 8 * c, bf16, 0);
                const __m256 v1 = half16_f32(rowp[j] + d + 8 * c, bf16, 1);
                for (int r = 0; r < rb; r++) {
                    const __m256 pr = _mm256_broadcast_ss(p + r * TILE + j);
                    a[r][c] = _mm256_fmadd_ps(pr, v0, a[r][c]);
                    a[r][c + 1] = _mm256_fmadd_ps(pr, v1, a[r][c + 1]);
                }
            }
        }
        for (int r = 0; r < rb; r++)
            for (int c = 0; c < vb; c++)
                _mm256_storeu_ps(acc + r * DV + d + 8 * c, a[r][c]);
    }
}

/* Register blocks per row count: at least 8 independent accumulators (two FMA pipes of
 * latency 4) and at most 16 live vectors, the bf16 mask included. 3 rows (only ever a
 * remainder block) settle for 6 accumulators to stay within the 16. */
static ALWAYS_INLINE void qk_fused_block(const float *q, int rb, const uint16_t *const *rowp,
                                         int n_pad, const uint16_t *const *next, int n_next,
                                         float *s, float mul, int bf16)
{
    switch (rb) {
    case 1: qk_fused_rows(q, 1, 4, 2, rowp, n_pad, next, n_next, s, mul, bf16); break;
    case 2: qk_fused_rows(q, 2, 4, 1, rowp, n_pad, next, n_next, s, mul, bf16); break;
    case 3: qk_fused_rows(q, 3, 2, 1, rowp, n_pad, next, n_next, s, mul, bf16); break;
    default: qk_fused_rows(q, 4, 2, 1, rowp, n_pad, next, n_next, s, mul, bf16); break;
    }
}

static ALWAYS_INLINE void pv_fused_block(const float *p, int rb, const uint16_t *const *rowp,
                                         int n, float *acc, int bf16)
{
    switch (rb) {
    case 1: pv_fused_rows(p, 1, 8, rowp, n, acc, bf16); break;
    case 2: pv_fused_rows(p, 2, 4, rowp, n, acc, bf16); break;
    case 3: pv_fused_rows(p, 3, 2, rowp, n, acc, bf16); break;
    default: pv_fused_rows(p, 4, 2, rowp, n, acc, bf16); break;
    }
}

/* Scores of the tile into s, FUSED_ROW_BLOCK rows at a time (the first block also
 * prefetches the next tile). */
static void qk_fused(const float *q, int rows, const uint16_t *const *rowp, int n_pad,
                     const uint16_t *const *next, int n_next, float *s, float mul,
                     etap_dtype dtype)
{
    for (int r0 = 0; r0 < rows; r0 += FUSED_ROW_BLOCK) {
        const int rb = rows - r0 < FUSED_ROW_BLOCK ? rows - r0 : FUSED_ROW_BLOCK;
        const float *qb = q + (int64_t)r0 * DQK;
        float *sb = s + (int64_t)r0 * TILE;
        const uint16_t *const *pf = r0 == 0 ? next : NULL;
        if (dtype == ETAP_DTYPE_BF16)
            qk_fused_block(qb, rb, rowp, n_pad, pf, n_next, sb, mul, 1);
        else
            qk_fused_block(qb, rb, rowp, n_pad, pf, n_next, sb, mul, 0);
    }
}

/* acc += P.V for the tile, FUSED_ROW_BLOCK rows at a time. */
static void pv_fused(const float *p, int rows, const uint16_t *const *rowp, int n, float *acc,
                     etap_dtype dtype)
{
    for (int r0 = 0; r0 < rows; r0 += FUSED_ROW_BLOCK) {
        const int rb = rows - r0 < FUSED_ROW_BLOCK ? rows - r0 : FUSED_ROW_BLOCK;
        const float *pb = p + (int64_t)r0 * TILE;
        float *ab = acc + (int64_t)r0 * DV;
        if (dtype == ETAP_DTYPE_BF16)
            pv_fused_block(pb, rb, rowp, n, ab, 1);
        else
            pv_fused_block(pb, rb, rowp, n, ab, 0);
    }
}

/* ---- tiled kernels (fp32 tile in scratch) ---- */

/* s[r][j] = mul * <q[r], k[j]> for rows [0, rows) and tokens [0, n_pad). Token groups of
 * 4 are the outer loop so that a group (9 KiB) stays in L1 while every row pair passes
 * over it; each K and Q vector is loaded once per 2 x 4 block of accumulators. */
static void qk_tile(const float *q, int rows, const float *k, int n_pad,
                    const uint16_t *const *next, int n_next, float *s, float mul)
{
    enum { TB = 4 };
    for (int j = 0; j < n_pad; j += TB) {
        for (int c = 0; c < TB && next; c++)
            if (j + c < n_next)
                prefetch_row(next[j + c]);
        const float *kj = k + (int64_t)j * DQK;
        int r = 0;
        for (; r + 2 <= rows; r += 2) {
            const float *q0 = q + (int64_t)r * DQK, *q1 = q0 + DQK;
            __m256 a0[TB], a1[TB];
            for (int c = 0; c < TB; c++)
                a0[c] = a1[c] = _mm256_setzero_ps();
            for (int d = 0; d < DQK; d += 8) {
                __m256 qv0 = _mm256_loadu_ps(q0 + d), qv1 = _mm256_loadu_ps(q1 + d);
                KEEP_IN_REG(qv0);
                KEEP_IN_REG(qv1);
                for (int c = 0; c < TB; c++) {
                    __m256 kv = _mm256_loadu_ps(kj + c * DQK + d);
                    KEEP_IN_REG(kv);
                    a0[c] = _mm256_fmadd_ps(qv0, kv, a0[c]);
                    a1[c] = _mm256_fmadd_ps(qv1, kv, a1[c]);
                }
            }
            for (int c = 0; c < TB; c++) {
                s[(int64_t)r * TILE + j + c] = mul * hsum8(a0[c]);
                s[(int64_t)(r + 1) * TILE + j + c] = mul * hsum8(a1[c]);
            }
        }
        for (; r < rows; r++) {
            const float *q0 = q + (int64_t)r * DQK;
            __m256 a0[TB];
            for (int c = 0; c < TB; c++)
                a0[c] = _mm256_setzero_ps();
            for (int d = 0; d < DQK; d += 8) {
                __m256 qv0 = _mm256_loadu_ps(q0 + d);
                for (int c = 0; c < TB; c++)
                    a0[c] = _mm256_fmadd_ps(qv0, _mm256_loadu_ps(kj + c * DQK + d), a0[c]);
            }
            for (int c = 0; c < TB; c++)
                s[(int64_t)r * TILE + j + c] = mul * hsum8(a0[c]);
        }
    }
}

/* acc[r][d..d+8*VB) += sum_j p[r][j] * v[j][d..d+8*VB) for RB rows. */
static ALWAYS_INLINE void pv_block(const float *p, int rb, int vb, const float *v, int n,
                                   float *acc, int d)
{
    __m256 a[6][4];
    for (int r = 0; r < rb; r++)
        for (int c = 0; c < vb; c++)
            a[r][c] = _mm256_loadu_ps(acc + r * DV + d + 8 * c);
    for (int j = 0; j < n; j++) {
        const float *vj = v + (int64_t)j * DQK + d;
        __m256 vv[4];
        for (int c = 0; c < vb; c++) {
            vv[c] = _mm256_loadu_ps(vj + 8 * c);
            KEEP_IN_REG(vv[c]);
        }
        for (int r = 0; r < rb; r++) {
            __m256 pr = _mm256_broadcast_ss(p + r * TILE + j);
            for (int c = 0; c < vb; c++)
                a[r][c] = _mm256_fmadd_ps(pr, vv[c], a[r][c]);
        }
    }
    for (int r = 0; r < rb; r++)
        for (int c = 0; c < vb; c++)
            _mm256_storeu_ps(acc + r * DV + d + 8 * c, a[r][c]);
}

/* acc[r][0..DV) += sum_j p[r][j] * v[j][0..DV). Column blocks of 16 are the outer loop:
 * a block of V (64 tokens x 64 bytes) stays in L1 while all row blocks pass over it. */
static void pv_tile(const float *p, int rows, const float *v, int n, float *acc)
{
    enum { VB = 2 };
    for (int d = 0; d < DV; d += 8 * VB) {
        int r = 0;
        for (; r + 6 <= rows; r += 6)
            pv_block(p + (int64_t)r * TILE, 6, VB, v, n, acc + (int64_t)r * DV, d);
        for (; r + 4 <= rows; r += 4)
            pv_block(p + (int64_t)r * TILE, 4, VB, v, n, acc + (int64_t)r * DV, d);
        for (; r + 2 <= rows; r += 2)
            pv_block(p + (int64_t)r * TILE, 2, VB, v, n, acc + (int64_t)r * DV, d);
        for (; r < rows; r++)
            pv_block(p + (int64_t)r * TILE, 1, VB, v, n, acc + (int64_t)r * DV, d);
    }
}

/* 2^x for x <= 0 (or -inf), 8 lanes. x = n + f with n = round(x), |f| <= 1/2; 2^f by its
 * Taylor series e^(f ln2) to degree 6 (relative error < 2e-7), 2^n built in the exponent
 * field. Below -126 the result is flushed to 0; NaN stays NaN. */
static ALWAYS_INLINE __m256 exp2_neg(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-126.0f);
    __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 isnan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 xc = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(xc, n);
    /* c_k = ln2^k / k! */
    __m256 poly = _mm256_set1_ps(1.5403530393381609e-4f);
    poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(1.3333558146428443e-3f));
    poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(9.6181291076284772e-3f));
    poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(5.5504108664821580e-2f));
    poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(2.4022650695910071e-1f));
    poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(6.9314718055994531e-1f));
    poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 r = _mm256_mul_ps(poly, _mm256_castsi256_ps(e));
    r = _mm256_andnot_ps(underflow, r);
    return _mm256_blendv_ps(r, x, isnan);
}
#else /* portable kernels: same math, left to the compiler */

enum { FUSED_MAX_ROWS = 0 }; /* no fused path */

static void qk_tile(const float *q, int rows, const float *k, int n_pad,
                    const uint16_t *const *next, int n_next, float *s, float mul)
{
    (void)next;
    (void)n_next;
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < n_pad; j++) {
            const float *qr = q + (int64_t)r * DQK, *kj = k + (int64_t)j * DQK;
            float sum = 0.0f;
            for (int d = 0; d < DQK; d++)
                sum += qr[d] * kj[d];
            s[(int64_t)r * TILE + j] = sum * mul;
        }
}

static void pv_tile(const float *p, int rows, const float *v, int n, float *acc)
{
    for (int r = 0; r < rows; r++) {
        float *ar = acc + (int64_t)r * DV;
        for (int j = 0; j < n; j++) {
            const float pj = p[(int64_t)r * TILE + j];
            const float *vj = v + (int64_t)j * DQK;
            for (int d = 0; d < DV; d++)
                ar[d] += pj * vj[d];
        }
    }
}
#endif

/* One row's online-softmax step over a tile: s[0..n_pad) holds the scores (log2 domain),
 * the first `vis` of them visible. Turns s into probabilities relative to the new
 * running max (0 where invisible), rescales the accumulator, updates m and l. */
static void softmax_row(float *s, int vis, int n_pad, float *m, float *l, float *acc)
{
    if (vis <= 0) { /* nothing visible for this row in this tile */
        memset(s, 0, (size_t)n_pad * sizeof *s);
        return;
    }
    float mt = s[0];
    for (int j = 1; j < vis; j++)
        mt = s[j] > mt ? s[j] : mt;
    const float m_old = *m;
    const float m_new = m_old > mt ? m_old : mt;
    for (int j = vis; j < n_pad; j++)
        s[j] = -INFINITY;
    float sum = 0.0f;
    int j = 0;
#if CPU_USE_AVX2
    const __m256 vm = _mm256_set1_ps(m_new);
    __m256 vsum = _mm256_setzero_ps();
    for (; j + 8 <= n_pad; j += 8) {
        __m256 pj = exp2_neg(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
        _mm256_storeu_ps(s + j, pj);
        vsum = _mm256_add_ps(vsum, pj);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, vsum);
    for (int c = 0; c < 8; c++)
        sum += lanes[c];
#endif
    for (; j < n_pad; j++) {
        s[j] = exp2f(s[j] - m_new);
        sum += s[j];
    }
    /* m_old == -inf means l == 0 and acc == 0: nothing to rescale. */
    if (m_old != -INFINITY && m_old != m_new) {
        const float alpha = exp2f(m_old - m_new);
        *l *= alpha;
        for (int d = 0; d < DV; d++)
            acc[d] *= alpha;
    }
    *l += sum;
    *m = m_new;
}

/* ---- decode context ---- */

/* A thread's slice of the scratch area (floats, each region SCRATCH_ALIGN aligned). */
typedef struct thread_scratch {
    float *q;   /* [rows, 576]: the query rows of the current piece */
    float *k;   /* [64, 576]: the current KV tile as fp32 (tiled path only) */
    float *s;   /* [rows, 64]: scores, then probabilities */
    float *acc; /* [rows, 512]: un-normalised output */
    float *m;   /* [rows]: running max (log2 domain) */
    float *l;   /* [rows]: running sum of exp2(score - m) */
} thread_scratch;

typedef struct decode_ctx decode_ctx;
typedef struct thread_slot thread_slot;
typedef void (*item_fn)(const decode_ctx *ctx, int tid, int64_t item);

struct decode_ctx {
    const etap_mla_args *a;
    const int32_t *plan;
    int32_t num_workers;
    int32_t rows;  /* R: query rows per KV head */
    int32_t group; /* G: query heads per KV head */
    int causal;    /* causal and s_q > 1 */
    float mul;     /* scale * log2(e): scores land in the exp2 domain */
    float *partial_out;
    float *partial_lse;
    unsigned char *scratch; /* thread t's slice at scratch + t * scratch_stride */
    size_t scratch_stride;
    thread_slot *slots; /* [num_threads]; slot 0 (the caller) unused */
    item_fn fn;
    int64_t num_items;
    atomic_llong next_item;
};

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

static size_t floats_bytes(int64_t n) { return align_up((size_t)n * sizeof(float), SCRATCH_ALIGN); }

/* The fused path reads the cache directly and needs no fp32 tile. */
static int uses_fused_path(int32_t rows) { return rows <= FUSED_MAX_ROWS; }

static size_t tile_bytes(int32_t rows)
{
    return uses_fused_path(rows) ? 0 : floats_bytes((int64_t)TILE * DQK);
}

static size_t thread_scratch_bytes(int32_t rows)
{
    return floats_bytes((int64_t)rows * DQK) + tile_bytes(rows) +
           floats_bytes((int64_t)rows * TILE) + floats_bytes((int64_t)rows * DV) +
           2 * floats_bytes(rows);
}

static thread_scratch scratch_of(const decode_ctx *ctx, int tid)
{
    unsigned char *p = ctx->scratch + (size_t)tid * ctx->scratch_stride;
    const int32_t rows = ctx->rows;
    thread_scratch t;
    t.q = (float *)p;
    p += floats_bytes((int64_t)rows * DQK);
    t.k = (float *)p; /* empty on the fused path */
    p += tile_bytes(rows);
    t.s = (float *)p;
    p += floats_bytes((int64_t)rows * TILE);
    t.acc = (float *)p;
    p += floats_bytes((int64_t)rows * DV);
    t.m = (float *)p;
    p += floats_bytes(rows);
    t.l = (float *)p;
    return t;
}

static const int32_t *split_offsets(const decode_ctx *ctx)
{
    return ctx->plan + etap_plan_split_offset_offset(ctx->num_workers);
}

static const int32_t *first_workers(const decode_ctx *ctx)
{
    return ctx->plan + etap_plan_first_worker_offset(ctx->a->shape.batch, ctx->num_workers);
}

/* Output row (b, s, h) of query row r of KV head g. */
static void *out_row(const decode_ctx *ctx, int32_t b, int32_t r, int32_t g)
{
    const etap_mla_args *a = ctx->a;
    const int32_t s = r / ctx->group, h = g * ctx->group + r % ctx->group;
    return (uint16_t *)a->out + b * a->out_stride_batch + s * a->out_stride_seq +
           h * a->out_stride_head;
}

static float *lse_at(const decode_ctx *ctx, int32_t b, int32_t r, int32_t g)
{
    const etap_mla_shape *sh = &ctx->a->shape;
    const int32_t s = r / ctx->group, h = g * ctx->group + r % ctx->group;
    return ctx->a->lse + ((int64_t)b * sh->num_heads_q + h) * sh->seqlen_q + s;
}

/* Partial results of split `split`, KV head g (the workspace layout of internal.h). */
static float *partial_out_at(const decode_ctx *ctx, int32_t split, int32_t g)
{
    const int64_t rows = ctx->rows;
    return ctx->partial_out + (((int64_t)split * ctx->a->shape.num_heads_kv + g) * rows) * DV;
}

static float *partial_lse_at(const decode_ctx *ctx, int32_t split, int32_t g)
{
    const int64_t rows = ctx->rows;
    return ctx->partial_lse + ((int64_t)split * ctx->a->shape.num_heads_kv + g) * rows;
}

/* ---- attention over one sequence piece ---- */

/* Stands in for the tokens that pad a tile to a multiple of TOKEN_PAD: a zero K row
 * gives a finite score (masked anyway) and a zero V row adds nothing. */
static const uint16_t zero_row[DQK];

/* Cache rows of tokens [tok0, tok0 + n) of sequence b, KV head g, padded with zero_row
 * to n_pad. Looks up only the pages of those tokens, all < len. */
static void tile_rows(const decode_ctx *ctx, int32_t b, int32_t g, int64_t tok0, int n,
                      int n_pad, const uint16_t **rowp)
{
    const etap_mla_args *a = ctx->a;
    const int32_t page_size = a->shape.page_size;
    const int32_t *bt = a->block_table + b * a->block_table_stride;
    const uint16_t *kv = (const uint16_t *)a->kv_cache + g * a->kv_stride_head;
    for (int j = 0; j < n; j++) {
        const int64_t tok = tok0 + j;
        const int64_t page = bt[tok / page_size];
        rowp[j] = kv + page * a->kv_stride_page + (tok % page_size) * a->kv_stride_token;
    }
    for (int j = n; j < n_pad; j++)
        rowp[j] = zero_row;
}

/* Masks, then runs the online-softmax step of every row over the tile's scores. */
static void softmax_tile(const decode_ctx *ctx, const thread_scratch *ts, int64_t len,
                         int64_t tok0, int n, int n_pad)
{
    const int32_t group = ctx->group, seqlen_q = ctx->a->shape.seqlen_q;
    for (int32_t r = 0; r < ctx->rows; r++) {
        /* visible tokens: t < len, and with causal t <= len - s_q + s */
        const int64_t end = ctx->causal ? len - seqlen_q + r / group + 1 : len;
        int64_t vis = end - tok0;
        vis = vis < 0 ? 0 : (vis > n ? n : vis);
        softmax_row(ts->s + (int64_t)r * TILE, (int)vis, n_pad, &ts->m[r], &ts->l[r],
                    ts->acc + (int64_t)r * DV);
    }
}

/* A worker's share of one sequence: tiles [t0, t1) of sequence b (b < 0: none). */
typedef struct piece {
    int32_t b;
    int64_t t0, t1;
} piece;

/* Tokens of tile t of a sequence of len tokens, and that count padded to TOKEN_PAD. */
static int tile_tokens(int64_t len, int64_t t)
{
    const int64_t left = len - t * TILE;
    return (int)(left < TILE ? left : TILE);
}

static int padded_tokens(int n) { return (n + TOKEN_PAD - 1) / TOKEN_PAD * TOKEN_PAD; }

/* Runs the tiles of piece p for KV head g, by worker w; `after` is the worker's next
 * piece (b < 0: none), whose first tile is prefetched during p's last one. Finishes the
 * rows itself when the sequence has one split, else stores this split's partial results. */
static void attend_piece(const decode_ctx *ctx, const thread_scratch *ts, const piece *p,
                         const piece *after, int32_t g, int32_t w)
{
    const etap_mla_args *a = ctx->a;
    const etap_mla_shape *sh = &a->shape;
    const int32_t rows = ctx->rows, group = ctx->group, b = p->b;
    const int64_t len = a->cache_seqlens[b];

    for (int32_t r = 0; r < rows; r++) {
        const int32_t s = r / group, h = g * group + r % group;
        const uint16_t *src = (const uint16_t *)a->q + b * a->q_stride_batch +
                              s * a->q_stride_seq + h * a->q_stride_head;
        float *dst = ts->q + (int64_t)r * DQK;
#if CPU_USE_AVX2
        if (uses_fused_path(rows))
            row_to_f32_blocked(src, dst, DQK, sh->dtype);
        else
#endif
            row_to_f32(src, dst, DQK, sh->dtype);
        ts->m[r] = -INFINITY;
        ts->l[r] = 0.0f;
    }
    memset(ts->acc, 0, (size_t)rows * DV * sizeof(float));

    /* Row pointers of the current tile and of the next one (prefetched meanwhile). */
    const uint16_t *rows_a[TILE], *rows_b[TILE];
    const uint16_t **cur = rows_a, **next = rows_b;
    int n = tile_tokens(len, p->t0), n_pad = padded_tokens(n);
    tile_rows(ctx, b, g, p->t0 * TILE, n, n_pad, cur);
    for (int64_t t = p->t0; t < p->t1; t++) {
        const int64_t tok0 = t * TILE;
        int n_next = 0;
        if (t + 1 < p->t1) {
            n_next = tile_tokens(len, t + 1);
            tile_rows(ctx, b, g, tok0 + TILE, n_next, padded_tokens(n_next), next);
        } else if (after->b >= 0) {
            n_next = tile_tokens(a->cache_seqlens[after->b], after->t0);
            tile_rows(ctx, after->b, g, after->t0 * TILE, n_next, padded_tokens(n_next), next);
        }
#if CPU_USE_AVX2
        if (uses_fused_path(rows)) {
            qk_fused(ts->q, rows, cur, n_pad, next, n_next, ts->s, ctx->mul, sh->dtype);
            softmax_tile(ctx, ts, len, tok0, n, n_pad);
            pv_fused(ts->s, rows, cur, n, ts->acc, sh->dtype);
        } else
#endif
        {
            for (int j = 0; j < n_pad; j++)
                row_to_f32(cur[j], ts->k + (int64_t)j * DQK, DQK, sh->dtype);
            qk_tile(ts->q, rows, ts->k, n_pad, next, n_next, ts->s, ctx->mul);
            softmax_tile(ctx, ts, len, tok0, n, n_pad);
            pv_tile(ts->s, rows, ts->k, n, ts->acc);
        }
        const uint16_t **tmp = cur;
        cur = next;
        next = tmp;
        n = n_next;
        n_pad = padded_tokens(n_next);
    }
#if CPU_USE_AVX2
    if (uses_fused_path(rows))
        for (int32_t r = 0; r < rows; r++)
            unblock_row(ts->acc + (int64_t)r * DV, sh->dtype);
#endif

    const int32_t *so = split_offsets(ctx);
    if (so[b + 1] - so[b] == 1) { /* the only split: final out and lse */
        for (int32_t r = 0; r < rows; r++) {
            void *o = out_row(ctx, b, r, g);
            float *lse = lse_at(ctx, b, r, g);
            if (ts->l[r] > 0.0f) {
                row_from_f32(ts->acc + (int64_t)r * DV, 1.0f / ts->l[r], o, sh->dtype);
                *lse = (float)(ts->m[r] * LN2) + logf(ts->l[r]);
            } else {
                row_zero(o);
                *lse = INFINITY;
            }
        }
        return;
    }
    const int32_t split = so[b] + (w - first_workers(ctx)[b]);
    float *po = partial_out_at(ctx, split, g);
    float *pl = partial_lse_at(ctx, split, g);
    for (int32_t r = 0; r < rows; r++) {
        float *dst = po + (int64_t)r * DV;
        const float *src = ts->acc + (int64_t)r * DV;
        if (ts->l[r] > 0.0f) {
            const float inv = 1.0f / ts->l[r];
            for (int d = 0; d < DV; d++)
                dst[d] = src[d] * inv;
            pl[r] = (float)(ts->m[r] * LN2) + logf(ts->l[r]);
        } else {
            memset(dst, 0, DV * sizeof(float));
            pl[r] = -INFINITY;
        }
    }
}

/* The first non-empty piece of worker record rec at or after sequence b (b < 0: none).
 * Sequences between a record's first and last may have no tile. */
static piece piece_from(const decode_ctx *ctx, const int32_t *rec, int32_t b)
{
    const int32_t first_seq = rec[0], first_tile = rec[1], last_seq = rec[2], end_tile = rec[3];
    for (; b <= last_seq; b++) {
        const int64_t t0 = b == first_seq ? first_tile : 0;
        const int64_t t1 = b == last_seq ? end_tile : etap_plan_tiles(ctx->a->cache_seqlens[b]);
        if (t0 < t1) {
            piece p = {b, t0, t1};
            return p;
        }
    }
    piece none = {-1, 0, 0};
    return none;
}

/* Work item of the attention pass: worker w = item / h_kv, KV head g = item % h_kv. */
static void attend_item(const decode_ctx *ctx, int tid, int64_t item)
{
    const int32_t h_kv = ctx->a->shape.num_heads_kv;
    const int32_t w = (int32_t)(item / h_kv), g = (int32_t)(item % h_kv);
    const int32_t *rec = ctx->plan + etap_plan_worker_offset(w);
    const thread_scratch ts = scratch_of(ctx, tid);
    piece p = piece_from(ctx, rec, rec[0]);
    while (p.b >= 0) {
        const piece after = piece_from(ctx, rec, p.b + 1);
        attend_piece(ctx, &ts, &p, &after, g, w);
        p = after;
    }
}

/* ---- combine ---- */

/* Work item of the combine pass: sequence b = item / h_kv, KV head g = item % h_kv.
 * Sequences with one split were finished by their worker. With no split every row is
 * empty; otherwise the splits' normalised outputs are weighted by exp(lse_k - max). */
static void combine_item(const decode_ctx *ctx, int tid, int64_t item)
{
    (void)tid;
    const int32_t h_kv = ctx->a->shape.num_heads_kv;
    const int32_t b = (int32_t)(item / h_kv), g = (int32_t)(item % h_kv);
    const int32_t *so = split_offsets(ctx);
    const int32_t first = so[b], nsplits = so[b + 1] - so[b];
    const etap_dtype dtype = ctx->a->shape.dtype;
    if (nsplits == 1)
        return;
    for (int32_t r = 0; r < ctx->rows; r++) {
        void *o = out_row(ctx, b, r, g);
        float *lse = lse_at(ctx, b, r, g);
        float mx = -INFINITY;
        for (int32_t k = 0; k < nsplits; k++) {
            const float lk = partial_lse_at(ctx, first + k, g)[r];
            mx = lk > mx ? lk : mx;
        }
        if (mx == -INFINITY) { /* no split saw a visible key (or no split at all) */
            row_zero(o);
            *lse = INFINITY;
            continue;
        }
        float acc[DV];
        float total = 0.0f;
        memset(acc, 0, sizeof acc);
        for (int32_t k = 0; k < nsplits; k++) {
            const float wk = expf(partial_lse_at(ctx, first + k, g)[r] - mx);
            const float *pk = partial_out_at(ctx, first + k, g) + (int64_t)r * DV;
            total += wk;
            for (int d = 0; d < DV; d++)
                acc[d] += wk * pk[d];
        }
        row_from_f32(acc, 1.0f / total, o, dtype);
        *lse = mx + logf(total);
    }
}

/* ---- threads ---- */

/* One helper thread's bookkeeping; the slots live in the workspace, not on the stack,
 * so that a call with many threads stays light on the caller's stack. */
struct thread_slot {
    pthread_t id;
    decode_ctx *ctx;
    int tid;
    int started;
};

static void run_items(decode_ctx *ctx, int tid)
{
    for (;;) {
        int64_t item = atomic_fetch_add_explicit(&ctx->next_item, 1, memory_order_relaxed);
        if (item >= ctx->num_items)
            return;
        ctx->fn(ctx, tid, item);
    }
}

static void *thread_main(void *arg)
{
    thread_slot *slot = (thread_slot *)arg;
    run_items(slot->ctx, slot->tid);
    return NULL;
}

/* Runs fn over items [0, num_items) on up to max_threads threads (the caller is thread 0).
 * If the system refuses a thread, the ones that started share its items. Joining is the
 * barrier: every item's writes are visible to the caller afterwards. */
static void run_parallel(decode_ctx *ctx, item_fn fn, int64_t num_items, int max_threads)
{
    ctx->fn = fn;
    ctx->num_items = num_items;
    atomic_store_explicit(&ctx->next_item, 0, memory_order_relaxed);
    const int nthreads = max_threads < num_items ? max_threads : (int)num_items;
    for (int t = 1; t < nthreads; t++) {
        thread_slot *slot = &ctx->slots[t];
        slot->ctx = ctx;
        slot->tid = t;
        slot->started = pthread_create(&slot->id, NULL, thread_main, slot) == 0;
    }
    run_items(ctx, 0);
    for (int t = 1; t < nthreads; t++)
        if (ctx->slots[t].started)
            pthread_join(ctx->slots[t].id, NULL);
}

/* ---- validation ---- */

static int32_t max_len_of(const etap_mla_shape *s)
{
    int64_t cap = (int64_t)s->max_pages_per_seq * s->page_size;
    return cap > INT32_MAX ? INT32_MAX : (int32_t)cap;
}

/* The sequence a worker record difference points at: the lowest one named by a field
 * that differs. */
static int32_t record_diff_seq(const int32_t *got, const int32_t *want)
{
    int32_t seq = INT32_MAX;
    if (got[0] != want[0] || got[1] != want[1]) {
        seq = want[2] >= 0 ? want[0] : seq;
        seq = got[2] >= 0 && got[0] < seq ? got[0] : seq;
    }
    if (got[2] != want[2] || got[3] != want[3]) {
        seq = want[2] >= 0 && want[2] < seq ? want[2] : seq;
        seq = got[2] >= 0 && got[2] < seq ? got[2] : seq;
    }
    return seq;
}

/* The plan must be exactly the one these lengths (and rows per KV head, which choose
 * between two cuts) give: the decode walks its tile ranges and split indices, so any other
 * plan would read tokens past a length or leave splits unwritten. The reference plan is
 * rebuilt into scratch (O(b + W)) and compared. */
static etap_status check_plan_matches(const etap_mla_args *a, const int32_t *plan,
                                      int32_t num_workers, int32_t *expected)
{
    const int32_t batch = a->shape.batch;
    etap_plan_build(batch, num_workers, max_len_of(&a->shape), etap_rows_per_kv_head(&a->shape),
                    a->cache_seqlens, expected);
    const int64_t words = etap_plan_words(batch, num_workers);
    if (memcmp(plan, expected, (size_t)words * sizeof *plan) == 0)
        return ETAP_OK;

    int32_t seq = INT32_MAX;
    const int64_t so = etap_plan_split_offset_offset(num_workers);
    const int64_t fw = etap_plan_first_worker_offset(batch, num_workers);
    for (int32_t i = 0; i < batch && seq == INT32_MAX; i++)
        if (plan[so + i + 1] != expected[so + i + 1] || plan[fw + i] != expected[fw + i])
            seq = i;
    for (int32_t w = 0; w < num_workers; w++) {
        const int64_t off = etap_plan_worker_offset(w);
        int32_t s = record_diff_seq(plan + off, expected + off);
        seq = s < seq ? s : seq;
    }
    if (seq == INT32_MAX || seq < 0 || seq >= batch) { /* only the header differs */
        const int64_t got_quota = (int64_t)(((uint64_t)(uint32_t)plan[ETAP_PLAN_H_QUOTA_HI] << 32) |
                                            (uint32_t)plan[ETAP_PLAN_H_QUOTA_LO]);
        const int64_t want_quota =
            (int64_t)(((uint64_t)(uint32_t)expected[ETAP_PLAN_H_QUOTA_HI] << 32) |
                      (uint32_t)expected[ETAP_PLAN_H_QUOTA_LO]);
        return etap_fail(ETAP_ERR_INVALID_ARGUMENT,
                         "cache_seqlens differ from the lengths the plan was made from, or the "
                         "rows per KV head (seqlen_q * num_heads_q / num_heads_kv = %d) from "
                         "the plan's shape (the plan's quota is %lld tile units per worker, this "
                         "call gives %lld): call etap_plan() again with this call's shape and "
                         "cache_seqlens",
                         (int)etap_rows_per_kv_head(&a->shape), (long long)got_quota,
                         (long long)want_quota);
    }
    return etap_fail(ETAP_ERR_INVALID_ARGUMENT,
                     "cache_seqlens differ from the lengths the plan was made from (sequence %d, "
                     "cache_seqlens[%d] = %d): call etap_plan() again with this call's "
                     "cache_seqlens",
                     (int)seq, (int)seq, (int)a->cache_seqlens[seq]);
}

static etap_status check_lengths_and_pages(const etap_mla_args *a)
{
    const etap_mla_shape *sh = &a->shape;
    const int64_t max_len = (int64_t)sh->max_pages_per_seq * sh->page_size;
    for (int32_t b = 0; b < sh->batch; b++) {
        const int32_t len = a->cache_seqlens[b];
        if (len < 0 || len > max_len)
            return etap_fail(ETAP_ERR_INVALID_ARGUMENT,
                             "cache_seqlens[%d] is %d: it must be in [0, max_pages_per_seq * "
                             "page_size = %lld]",
                             (int)b, (int)len, (long long)max_len);
    }
    for (int32_t b = 0; b < sh->batch; b++) {
        const int32_t len = a->cache_seqlens[b];
        const int64_t pages = ((int64_t)len + sh->page_size - 1) / sh->page_size;
        const int32_t *bt = a->block_table + b * a->block_table_stride;
        for (int64_t p = 0; p < pages; p++)
            if (bt[p] < 0 || bt[p] >= sh->num_pages)
                return etap_fail(ETAP_ERR_INVALID_ARGUMENT,
                                 "block_table[%d][%lld] is %d: sequence %d reads this page "
                                 "(cache_seqlens[%d] = %d), so it must be in [0, num_pages = %d)",
                                 (int)b, (long long)p, (int)bt[p], (int)b, (int)b, (int)len,
                                 (int)sh->num_pages);
    }
    return ETAP_OK;
}

/* ---- entry points ---- */

int32_t etap_cpu_num_workers(const struct etap_handle_s *h, const etap_mla_shape *shape)
{
    (void)shape;
    return h->num_threads <= 1 ? 1 : h->num_threads * CPU_WORKERS_PER_THREAD;
}

/* Scratch after the shared partial-result layout:
 *   [reference plan, for check_plan_matches] [thread slots] [thread 0] [thread 1] ...
 * plus SCRATCH_ALIGN bytes of slack to align the start, whatever the workspace offset. */
static size_t plan_copy_bytes(const struct etap_handle_s *h, const etap_mla_shape *shape)
{
    return align_up((size_t)etap_plan_words(shape->batch, etap_cpu_num_workers(h, shape)) *
                        sizeof(int32_t),
                    SCRATCH_ALIGN);
}

static size_t slots_bytes(const struct etap_handle_s *h)
{
    return align_up((size_t)h->num_threads * sizeof(thread_slot), SCRATCH_ALIGN);
}

size_t etap_cpu_scratch_bytes(const struct etap_handle_s *h, const etap_mla_shape *shape)
{
    return SCRATCH_ALIGN + plan_copy_bytes(h, shape) + slots_bytes(h) +
           (size_t)h->num_threads * thread_scratch_bytes(etap_rows_per_kv_head(shape));
}

etap_status etap_cpu_decode(const struct etap_handle_s *h, const etap_mla_args *args,
                            const int32_t *plan, void *workspace, size_t workspace_bytes)
{
    const etap_mla_shape *sh = &args->shape;
    const int32_t num_workers = etap_cpu_num_workers(h, sh);
    const size_t shared = etap_workspace_bytes_for(sh, num_workers);
    if (((uintptr_t)workspace & (sizeof(float) - 1)) != 0)
        return etap_fail(ETAP_ERR_INVALID_ARGUMENT,
                         "workspace is not 4-byte aligned: the CPU backend stores fp32 there");
    (void)workspace_bytes; /* the API layer checked it against etap_workspace_size() */

    etap_status st = check_lengths_and_pages(args);
    if (st != ETAP_OK)
        return st;

    unsigned char *base = (unsigned char *)workspace;
    uintptr_t scratch_addr = align_up((uintptr_t)(base + shared), SCRATCH_ALIGN);
    unsigned char *scratch = (unsigned char *)scratch_addr;
    st = check_plan_matches(args, plan, num_workers, (int32_t *)scratch);
    if (st != ETAP_OK)
        return st;

    const int32_t rows = etap_rows_per_kv_head(sh);
    const int64_t splits = etap_plan_max_splits(sh->batch, num_workers);
    decode_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.a = args;
    ctx.plan = plan;
    ctx.num_workers = num_workers;
    ctx.rows = rows;
    ctx.group = sh->num_heads_q / sh->num_heads_kv;
    ctx.causal = sh->causal && sh->seqlen_q > 1;
    ctx.mul = (float)(etap_resolved_scale(args->softmax_scale) * LOG2E);
    ctx.partial_out = (float *)workspace;
    ctx.partial_lse = ctx.partial_out + splits * sh->num_heads_kv * rows * DV;
    ctx.slots = (thread_slot *)(scratch + plan_copy_bytes(h, sh));
    ctx.scratch = scratch + plan_copy_bytes(h, sh) + slots_bytes(h);
    ctx.scratch_stride = thread_scratch_bytes(rows);

    run_parallel(&ctx, attend_item, (int64_t)num_workers * sh->num_heads_kv, h->num_threads);

    /* The combine pass only has work when some sequence does not have exactly one split. */
    const int32_t *so = plan + etap_plan_split_offset_offset(num_workers);
    int need_combine = 0;
    for (int32_t b = 0; b < sh->batch && !need_combine; b++)
        need_combine = so[b + 1] - so[b] != 1;
    if (need_combine)
        run_parallel(&ctx, combine_item, (int64_t)sh->batch * sh->num_heads_kv, h->num_threads);
    return ETAP_OK;
}
