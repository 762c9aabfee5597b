/*
 * test_util.c - see test_util.h.
 */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "reference.h"

/* ------------------------------------------------------------------------------------ */
/* RNG                                                                                   */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void tu_rng_seed(tu_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t tu_rng_next(tu_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double tu_rng_uniform(tu_rng *r) { return (double)(tu_rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

int64_t tu_rng_range(tu_rng *r, int64_t lo, int64_t hi)
{
    if (hi <= lo)
        return lo;
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (int64_t)(tu_rng_next(r) % span);
}

double tu_rng_normal(tu_rng *r)
{
    double u1 = tu_rng_uniform(r), u2 = tu_rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void tu_rng_shuffle_i32(tu_rng *r, int32_t *a, int64_t n)
{
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = tu_rng_range(r, 0, i);
        int32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ------------------------------------------------------------------------------------ */
/* 16-bit floats                                                                          */

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t tu_float_to_bf16(float f)
{
    uint32_t u = f2u(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN, sign kept */
    u += 0x7FFFu + ((u >> 16) & 1u);            /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float tu_bf16_to_float(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t tu_float_to_fp16(float f)
{
    uint32_t u = f2u(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) /* NaN: keep the top payload bits, force quiet */
        return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    if (a >= 0x477FF000u) /* >= 65520 (65504 + half a step) rounds to infinity */
        return (uint16_t)(sign | 0x7C00u);
    if (a >= 0x38800000u) { /* normal: >= 2^-14 */
        uint32_t e = (a >> 23) - 127 + 15;
        uint32_t m = a & 0x7FFFFFu;
        uint32_t h = (e << 10) | (m >> 13);
        uint32_t rem = m & 0x1FFFu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
            h++; /* a carry into the exponent is the right answer */
        return (uint16_t)(sign | h);
    }
    if (a <= 0x33000000u) /* <= 2^-25: rounds to zero (2^-25 is a tie, to even) */
        return sign;
    /* subnormal: units of 2^-24 */
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14 .. 24 */
    uint32_t h = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

float tu_fp16_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1Fu;
    uint32_t m = h & 0x3FFu;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f; /* m * 2^-24, exact */
        return sign ? -v : v;
    }
    if (e == 31)
        return u2f(sign | 0x7F800000u | (m << 13));
    return u2f(sign | ((e + 112u) << 23) | (m << 13));
}

static float fp16_table[65536];
static pthread_once_t fp16_once = PTHREAD_ONCE_INIT;
static void fp16_table_init(void)
{
    for (uint32_t i = 0; i < 65536; i++)
        fp16_table[i] = tu_fp16_to_float((uint16_t)i);
}

const float *tu_fp16_table(void)
{
    pthread_once(&fp16_once, fp16_table_init);
    return fp16_table;
}

uint16_t tu_float_to_half(etap_dtype dt, float f)
{
    return dt == ETAP_DTYPE_FP16 ? tu_float_to_fp16(f) : tu_float_to_bf16(f);
}

float tu_half_to_float(etap_dtype dt, uint16_t h)
{
    if (dt == ETAP_DTYPE_FP16) {
        pthread_once(&fp16_once, fp16_table_init);
        return fp16_table[h];
    }
    return tu_bf16_to_float(h);
}

const char *tu_dtype_name(etap_dtype dt)
{
    switch (dt) {
    case ETAP_DTYPE_BF16: return "bf16";
    case ETAP_DTYPE_FP16: return "fp16";
    case ETAP_DTYPE_FP8_E4M3: return "fp8";
    }
    return "?";
}

uint16_t tu_half_poison(etap_dtype dt) { return dt == ETAP_DTYPE_FP16 ? 0x7D5Au : 0x7FA5u; }
uint16_t tu_half_nan(etap_dtype dt) { return dt == ETAP_DTYPE_FP16 ? 0x7E00u : 0x7FC0u; }

/* ------------------------------------------------------------------------------------ */
/* case builder                                                                           */

static int64_t pad_of(tu_rng *r, int unit, int lo, int hi)
{
    return (int64_t)unit * tu_rng_range(r, lo, hi);
}

/* Test data needs many normal numbers fast: 65536 Box-Muller samples drawn once (fixed
 * seed), then picked by 16 random bits each. The 16-bit types keep at most 11 bits of a
 * value, so this empirical distribution is as good as a fresh sample for the tests. */
static float normal_table[65536];
static pthread_once_t normal_once = PTHREAD_ONCE_INIT;
static void normal_table_init(void)
{
    tu_rng r;
    tu_rng_seed(&r, 0x6e6f726d616cull);
    for (int i = 0; i < 65536; i++)
        normal_table[i] = (float)tu_rng_normal(&r);
}

static void fill_row(tu_rng *r, uint16_t *p, int n, double std, etap_dtype dt)
{
    pthread_once(&normal_once, normal_table_init);
    const float sf = (float)std;
    uint64_t bits = 0;
    for (int i = 0; i < n; i++) {
        if ((i & 3) == 0)
            bits = tu_rng_next(r);
        p[i] = tu_float_to_half(dt, sf * normal_table[bits & 0xFFFF]);
        bits >>= 16;
    }
}

static void fill_u16(uint16_t *p, size_t n, uint16_t v)
{
    for (size_t i = 0; i < n; i++)
        p[i] = v;
}

int tu_case_build(tu_case *c, const tu_case_desc *d)
{
    memset(c, 0, sizeof *c);
    c->desc = *d;
    tu_rng r;
    tu_rng_seed(&r, d->seed);
    const int32_t b = d->batch, sq = d->seqlen_q, hq = d->num_heads_q, hkv = d->num_heads_kv;
    const int32_t ps = d->page_size;
    const etap_dtype dt = d->dtype;
    const double q_std = d->q_std > 0 ? d->q_std : 0.25;
    const double kv_std = d->kv_std > 0 ? d->kv_std : 0.25;
    const int unit = d->pad_unit > 0 ? d->pad_unit : 8;
    const uint16_t nan16 = tu_half_nan(dt);

    c->lengths = malloc(sizeof(int32_t) * (size_t)b);
    if (!c->lengths)
        return -1;
    memcpy(c->lengths, d->lengths, sizeof(int32_t) * (size_t)b);

    /* pages: shuffled ids, unused ones left full of NaN */
    int64_t max_need = 0, total_need = 0;
    for (int32_t i = 0; i < b; i++) {
        int64_t need = c->lengths[i] > 0 ? ((int64_t)c->lengths[i] + ps - 1) / ps : 0;
        if (need > max_need)
            max_need = need;
        total_need += need;
        c->total_tokens += c->lengths[i] > 0 ? c->lengths[i] : 0;
    }
    int64_t mpps = max_need + d->extra_table_cols;
    if (mpps < 1)
        mpps = 1;
    if (d->max_pages_per_seq > 0)
        mpps = d->max_pages_per_seq < max_need ? max_need : d->max_pages_per_seq;
    int64_t num_pages = total_need + d->extra_pages;
    if (num_pages < 1)
        num_pages = 1;
    if (d->num_pages > 0)
        num_pages = d->num_pages < total_need ? total_need : d->num_pages;
    int64_t bt_stride = mpps + d->table_stride_pad;
    c->bt_elems = (size_t)(b * bt_stride);
    c->block_table = malloc(sizeof(int32_t) * c->bt_elems);
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)num_pages);
    if (!c->block_table || !perm) {
        free(perm);
        return -1;
    }
    for (int64_t i = 0; i < num_pages; i++)
        perm[i] = (int32_t)i;
    tu_rng_shuffle_i32(&r, perm, num_pages);
    static const int32_t garbage[] = {INT32_MAX, -7, INT32_MIN, -1, 0x40000000, 123456789};
    for (size_t i = 0; i < c->bt_elems; i++)
        c->block_table[i] = garbage[i % (sizeof garbage / sizeof garbage[0])];
    int64_t k = 0;
    for (int32_t i = 0; i < b; i++) {
        int64_t need = c->lengths[i] > 0 ? ((int64_t)c->lengths[i] + ps - 1) / ps : 0;
        for (int64_t j = 0; j < need; j++)
            c->block_table[i * bt_stride + j] = perm[k++];
    }
    /* garbage past the last needed page, but also make the column after it a
     * plausible-but-wrong page id when one exists (a reader that overruns by one page
     * then reads NaN rather than crashing) */
    for (int32_t i = 0; i < b; i++) {
        int64_t need = c->lengths[i] > 0 ? ((int64_t)c->lengths[i] + ps - 1) / ps : 0;
        if (need < mpps && total_need < num_pages && (i & 1))
            c->block_table[i * bt_stride + need] = perm[total_need];
    }

    /* kv cache */
    etap_mla_args *a = &c->args;
    a->shape.batch = b;
    a->shape.seqlen_q = sq;
    a->shape.num_heads_q = hq;
    a->shape.num_heads_kv = hkv;
    a->shape.head_dim_qk = ETAP_HEAD_DIM_QK;
    a->shape.head_dim_v = ETAP_HEAD_DIM_V;
    a->shape.page_size = ps;
    a->shape.num_pages = (int32_t)num_pages;
    a->shape.max_pages_per_seq = (int32_t)mpps;
    a->shape.dtype = dt;
    a->shape.causal = d->causal;
    if (d->kv_padded) {
        a->kv_stride_head = ETAP_HEAD_DIM_QK + pad_of(&r, unit, 1, 3);
        a->kv_stride_token = hkv * a->kv_stride_head + pad_of(&r, unit, 0, 2);
        a->kv_stride_page = ps * a->kv_stride_token + pad_of(&r, unit, 1, 4);
    } else {
        a->kv_stride_head = ETAP_HEAD_DIM_QK;
        a->kv_stride_token = (int64_t)hkv * ETAP_HEAD_DIM_QK;
        a->kv_stride_page = (int64_t)ps * a->kv_stride_token;
    }
    c->kv_elems = (size_t)(num_pages * a->kv_stride_page);
    c->kv = malloc(sizeof(uint16_t) * c->kv_elems);
    if (!c->kv) {
        free(perm);
        return -1;
    }
    fill_u16(c->kv, c->kv_elems, nan16);
    for (int32_t i = 0; i < b; i++)
        for (int64_t t = 0; t < c->lengths[i]; t++) {
            int64_t page = c->block_table[i * bt_stride + t / ps];
            for (int32_t g = 0; g < hkv; g++) {
                uint16_t *row = c->kv + page * a->kv_stride_page + (t % ps) * a->kv_stride_token +
                                g * a->kv_stride_head;
                /* the value columns, then the RoPE key columns with their ramp / spike */
                const int spike = d->kv_spike > 0 && t >= c->lengths[i] / 2 && t < c->lengths[i] / 2 + 16;
                fill_row(&r, row, ETAP_HEAD_DIM_V, kv_std, dt);
                fill_row(&r, row + ETAP_HEAD_DIM_V, ETAP_HEAD_DIM_QK - ETAP_HEAD_DIM_V,
                         kv_std * (1.0 + d->kv_ramp * (double)t) * (spike ? d->kv_spike : 1.0), dt);
            }
        }
    free(perm);

    /* q */
    if (d->q_layout == TU_LAYOUT_PADDED) {
        a->q_stride_head = ETAP_HEAD_DIM_QK + pad_of(&r, unit, 1, 3);
        a->q_stride_seq = hq * a->q_stride_head + pad_of(&r, unit, 0, 3);
        a->q_stride_batch = sq * a->q_stride_seq + pad_of(&r, unit, 1, 3);
    } else if (d->q_layout == TU_LAYOUT_HEAD_MAJOR) {
        a->q_stride_seq = ETAP_HEAD_DIM_QK + pad_of(&r, unit, 0, 2);
        a->q_stride_head = sq * a->q_stride_seq + pad_of(&r, unit, 0, 2);
        a->q_stride_batch = hq * a->q_stride_head + pad_of(&r, unit, 1, 2);
    } else {
        a->q_stride_head = ETAP_HEAD_DIM_QK;
        a->q_stride_seq = (int64_t)hq * ETAP_HEAD_DIM_QK;
        a->q_stride_batch = (int64_t)sq * a->q_stride_seq;
    }
    c->q_elems = (size_t)((b - 1) * a->q_stride_batch + (sq - 1) * a->q_stride_seq +
                          (hq - 1) * a->q_stride_head + ETAP_HEAD_DIM_QK);
    c->q = malloc(sizeof(uint16_t) * c->q_elems);
    if (!c->q)
        return -1;
    fill_u16(c->q, c->q_elems, nan16);
    for (int32_t i = 0; i < b; i++)
        for (int32_t s = 0; s < sq; s++)
            for (int32_t h = 0; h < hq; h++)
                fill_row(&r,
                         c->q + i * a->q_stride_batch + s * a->q_stride_seq +
                             h * a->q_stride_head,
                         ETAP_HEAD_DIM_QK, q_std, dt);

    /* out, lse */
    if (d->out_padded) {
        a->out_stride_head = ETAP_HEAD_DIM_V + pad_of(&r, unit, 1, 3);
        a->out_stride_seq = hq * a->out_stride_head + pad_of(&r, unit, 0, 3);
        a->out_stride_batch = sq * a->out_stride_seq + pad_of(&r, unit, 1, 3);
    } else {
        a->out_stride_head = ETAP_HEAD_DIM_V;
        a->out_stride_seq = (int64_t)hq * ETAP_HEAD_DIM_V;
        a->out_stride_batch = (int64_t)sq * a->out_stride_seq;
    }
    c->out_elems = (size_t)(b * a->out_stride_batch);
    c->lse_elems = (size_t)b * hq * sq;
    c->out = malloc(sizeof(uint16_t) * c->out_elems);
    c->lse = malloc(sizeof(float) * c->lse_elems);
    size_t rows = (size_t)b * sq * hq;
    c->ref_out = malloc(sizeof(double) * rows * ETAP_HEAD_DIM_V);
    c->ref_lse = malloc(sizeof(double) * rows);
    c->ref_mag = malloc(sizeof(double) * rows);
    if (!c->out || !c->lse || !c->ref_out || !c->ref_lse || !c->ref_mag)
        return -1;

    a->q = c->q;
    a->kv_cache = c->kv;
    a->block_table = c->block_table;
    a->block_table_stride = bt_stride;
    a->cache_seqlens = c->lengths;
    a->softmax_scale = d->softmax_scale;
    a->out = c->out;
    a->lse = c->lse;
    tu_case_poison(c);
    return 0;
}

void tu_case_free(tu_case *c)
{
    free(c->lengths);
    free(c->q);
    free(c->kv);
    free(c->block_table);
    free(c->out);
    free(c->lse);
    free(c->ref_out);
    free(c->ref_lse);
    free(c->ref_mag);
    memset(c, 0, sizeof *c);
}

void tu_case_poison(tu_case *c)
{
    fill_u16(c->out, c->out_elems, tu_half_poison(c->desc.dtype));
    uint32_t bits = TU_LSE_POISON_BITS;
    for (size_t i = 0; i < c->lse_elems; i++)
        memcpy(&c->lse[i], &bits, 4);
}

void tu_case_reference(tu_case *c)
{
    ref_mla_decode_mag(&c->args, c->ref_out, c->ref_lse, c->ref_mag, 0);
}

void tu_case_describe(const tu_case *c, char *buf, size_t n)
{
    const tu_case_desc *d = &c->desc;
    int32_t mn = INT32_MAX, mx = 0, zeros = 0;
    for (int32_t i = 0; i < d->batch; i++) {
        if (c->lengths[i] < mn)
            mn = c->lengths[i];
        if (c->lengths[i] > mx)
            mx = c->lengths[i];
        zeros += c->lengths[i] == 0;
    }
    char scale[32];
    if (d->softmax_scale == ETAP_SOFTMAX_SCALE_DEFAULT)
        snprintf(scale, sizeof scale, "default");
    else
        snprintf(scale, sizeof scale, "%g", (double)d->softmax_scale);
    snprintf(buf, n,
             "%s b=%d sq=%d%s hq=%d hkv=%d page=%d len=[%d..%d]%s tokens=%lld scale=%s"
             "%s%s%s seed=%llu",
             tu_dtype_name(d->dtype), (int)d->batch, (int)d->seqlen_q,
             d->seqlen_q > 1 ? (d->causal ? " causal" : " noncausal") : "", (int)d->num_heads_q,
             (int)d->num_heads_kv, (int)d->page_size, (int)mn, (int)mx,
             zeros ? " +zero-len" : "", (long long)c->total_tokens, scale,
             d->q_layout == TU_LAYOUT_PADDED       ? " q=padded"
             : d->q_layout == TU_LAYOUT_HEAD_MAJOR ? " q=head-major"
                                                   : "",
             d->out_padded ? " out=padded" : "", d->kv_padded ? " kv=padded" : "",
             (unsigned long long)d->seed);
}

/* ------------------------------------------------------------------------------------ */
/* comparison                                                                             */

int tu_case_check(const tu_case *c, const uint16_t *out, const float *lse, char *msg,
                  size_t msg_len)
{
    const etap_mla_args *a = &c->args;
    const etap_mla_shape *sh = &a->shape;
    const etap_dtype dt = sh->dtype;
    const uint16_t poison = tu_half_poison(dt);
    const int32_t b = sh->batch, sq = sh->seqlen_q, hq = sh->num_heads_q;
    int64_t bad_out = 0, unwritten = 0, bad_lse = 0, pad_written = 0;
    char first[256] = "";
    double sum_ab = 0.0, sum_sq = 0.0, max_abs = 0.0, max_lse = 0.0;

    unsigned char *mask = calloc(c->out_elems, 1);
    if (!mask) {
        snprintf(msg, msg_len, "out of memory in the checker");
        return 0;
    }
    for (int32_t i = 0; i < b; i++)
        for (int32_t s = 0; s < sq; s++)
            for (int32_t h = 0; h < hq; h++) {
                int64_t row = ((int64_t)i * sq + s) * hq + h;
                const double *ref = c->ref_out + row * ETAP_HEAD_DIM_V;
                const int64_t li = ((int64_t)i * hq + h) * sq + s;
                double ref_l = c->ref_lse[li];
                int empty = isinf(ref_l);
                int64_t base = i * a->out_stride_batch + s * a->out_stride_seq +
                               h * a->out_stride_head;
                for (int d = 0; d < ETAP_HEAD_DIM_V; d++) {
                    mask[base + d] = 1;
                    uint16_t bits = out[base + d];
                    if (bits == poison) {
                        if (unwritten++ == 0 && !first[0])
                            snprintf(first, sizeof first,
                                     "out[b=%d,s=%d,h=%d,d=%d] was never written", (int)i,
                                     (int)s, (int)h, d);
                        continue;
                    }
                    double v = (double)tu_half_to_float(dt, bits);
                    double r = ref[d];
                    int ok;
                    if (!isfinite(v))
                        ok = 0;
                    else if (empty)
                        ok = v == 0.0;
                    else {
                        double diff = fabs(v - r);
                        if (diff > max_abs)
                            max_abs = diff;
                        ok = diff <= TU_OUT_ABS_TOL || diff <= TU_OUT_REL_TOL * fabs(r);
                    }
                    if (isfinite(v)) {
                        sum_ab += v * r;
                        sum_sq += v * v + r * r;
                    }
                    if (!ok && bad_out++ == 0 && !first[0])
                        snprintf(first, sizeof first,
                                 "out[b=%d,s=%d,h=%d,d=%d] = %.7g, reference %.7g%s", (int)i,
                                 (int)s, (int)h, d, v, r,
                                 empty ? " (row with no visible key must be exactly 0)" : "");
                }
                /* lse */
                float lv = lse[((int64_t)i * hq + h) * sq + s];
                uint32_t lbits;
                memcpy(&lbits, &lv, 4);
                int ok;
                if (lbits == TU_LSE_POISON_BITS) {
                    if (unwritten++ == 0 && !first[0])
                        snprintf(first, sizeof first, "lse[b=%d,h=%d,s=%d] was never written",
                                 (int)i, (int)h, (int)s);
                    continue;
                }
                if (empty)
                    ok = isinf(lv) && lv > 0;
                else if (!isfinite(lv))
                    ok = 0;
                else {
                    double diff = fabs((double)lv - ref_l);
                    if (diff > max_lse)
                        max_lse = diff;
                    ok = diff <= TU_LSE_ABS_TOL || diff <= TU_LSE_REL_TOL * fabs(ref_l) ||
                         diff <= TU_LSE_MAG_TOL * c->ref_mag[li];
                }
                if (!ok && bad_lse++ == 0 && !first[0])
                    snprintf(first, sizeof first, "lse[b=%d,h=%d,s=%d] = %.9g, reference %.9g",
                             (int)i, (int)h, (int)s, (double)lv, ref_l);
            }
    for (size_t e = 0; e < c->out_elems; e++)
        if (!mask[e] && out[e] != poison) {
            if (pad_written++ == 0 && !first[0])
                snprintf(first, sizeof first,
                         "out element %zu is padding between rows but was written", e);
        }
    free(mask);
    double cos_diff = sum_sq > 0 ? 1.0 - 2.0 * sum_ab / sum_sq : 0.0;
    int ok = bad_out == 0 && unwritten == 0 && bad_lse == 0 && pad_written == 0 &&
             cos_diff <= TU_OUT_COS_TOL;
    if (ok)
        snprintf(msg, msg_len, "max|dout|=%.2e max|dlse|=%.2e cos_diff=%.2e", max_abs, max_lse,
                 cos_diff);
    else
        snprintf(msg, msg_len,
                 "%s%s[%lld bad out, %lld bad lse, %lld unwritten, %lld padding written, "
                 "max|dout|=%.2e, cos_diff=%.2e%s]",
                 first, first[0] ? " " : "", (long long)bad_out, (long long)bad_lse,
                 (long long)unwritten, (long long)pad_written, max_abs, cos_diff,
                 cos_diff > TU_OUT_COS_TOL ? " > 5e-6" : "");
    return ok;
}

/* ------------------------------------------------------------------------------------ */
/* bookkeeping                                                                            */

void tu_pass(tu_tally *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("PASS ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    t->passed++;
}

void tu_fail(tu_tally *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    t->failed++;
}

int tu_finish(const tu_tally *t)
{
    if (t->unsupported)
        printf("%d unsupported (expected)\n", t->unsupported);
    if (t->skipped)
        printf("%d skipped\n", t->skipped);
    printf("%d passed, %d failed\n", t->passed, t->failed);
    fflush(stdout);
    return t->failed ? 1 : 0;
}

int tu_test_size(void)
{
    const char *e = getenv("ETAP_TEST_SIZE");
    if (e && *e) {
        if (tu_contains(e, "small"))
            return 1;
        if (tu_contains(e, "large"))
            return 2;
        return 0;
    }
#if defined(ETAP_TEST_SMALL_DEFAULT)
    return 1;
#else
    return 0;
#endif
}

int tu_contains(const char *h, const char *n)
{
    if (!h || !n)
        return 0;
    size_t ln = strlen(n);
    for (; *h; h++) {
        size_t i = 0;
        while (i < ln && h[i] && tolower((unsigned char)h[i]) == tolower((unsigned char)n[i]))
            i++;
        if (i == ln)
            return 1;
    }
    return ln == 0;
}

double tu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint64_t tu_seed(uint64_t dflt)
{
    const char *e = getenv("ETAP_TEST_SEED");
    if (e && *e)
        return strtoull(e, NULL, 0);
    return dflt;
}

int tu_fuzz_count(int dflt)
{
    const char *e = getenv("ETAP_TEST_FUZZ");
    if (e && *e) {
        long n = strtol(e, NULL, 10);
        return n < 0 ? 0 : n > 100000 ? 100000 : (int)n;
    }
    return dflt;
}
