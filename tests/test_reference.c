/*
 * test_reference.c - tests the testers: the bf16/fp16 conversions, the double-precision
 * reference (against closed-form results and a second, differently written brute force)
 * and the checker (it must catch every kind of wrong output it claims to catch).
 * Needs no backend beyond linking etap.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reference.h"
#include "test_util.h"

static tu_tally T;

#define EXPECT(cond, ...)                                                                 \
    do {                                                                                  \
        if (cond)                                                                         \
            tu_pass(&T, __VA_ARGS__);                                                     \
        else                                                                              \
            tu_fail(&T, __VA_ARGS__);                                                     \
    } while (0)

/* ------------------------------------------------------------------------------------ */

static void test_conversions(void)
{
    /* every non-NaN pattern survives half -> float -> half */
    int bad_bf = 0, bad_fp = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float f = tu_bf16_to_float(h);
        if (!isnan(f) && tu_float_to_bf16(f) != h)
            bad_bf++;
        if (isnan(f) && !isnan(tu_bf16_to_float(tu_float_to_bf16(f))))
            bad_bf++;
        f = tu_fp16_to_float(h);
        if (!isnan(f) && tu_float_to_fp16(f) != h)
            bad_fp++;
        if (isnan(f) && !isnan(tu_fp16_to_float(tu_float_to_fp16(f))))
            bad_fp++;
        if (tu_half_to_float(ETAP_DTYPE_FP16, h) != f && !isnan(f))
            bad_fp++;
    }
    EXPECT(bad_bf == 0, "conversion: bf16 round trip of all 65536 patterns (%d bad)", bad_bf);
    EXPECT(bad_fp == 0, "conversion: fp16 round trip of all 65536 patterns (%d bad)", bad_fp);

    struct {
        float f;
        uint16_t bf, fp;
    } k[] = {
        {1.0f, 0x3F80, 0x3C00},
        {-2.0f, 0xC000, 0xC000},
        {1.0f + 0x1p-8f, 0x3F80, 0x3C04},        /* bf16 tie -> even */
        {1.0f + 3 * 0x1p-8f, 0x3F82, 0x3C0C},    /* bf16 tie -> even (up) */
        {1.0f + 0x1p-11f, 0x3F80, 0x3C00},       /* fp16 tie -> even */
        {1.0f + 3 * 0x1p-11f, 0x3F80, 0x3C02},   /* fp16 tie -> even (up) */
        {65504.0f, 0x477FU + 1, 0x7BFF},         /* fp16 max; bf16 rounds 65504 up */
        {65519.0f, 0x4780, 0x7BFF},
        {65520.0f, 0x4780, 0x7C00},              /* fp16: the tie above max is inf */
        {0x1p-24f, 0x3380, 0x0001},              /* fp16 smallest subnormal */
        {0x1p-25f, 0x3300, 0x0000},              /* tie to zero (even) */
        {0x1.0002p-25f, 0x3300, 0x0001},
        {3 * 0x1p-25f, 0x33C0, 0x0002},          /* tie between 1 and 2 units -> 2 */
        {0x1p-14f, 0x3880, 0x0400},              /* fp16 smallest normal */
        {0x1.ffcp-15f, 0x3880, 0x0400},          /* 1023.5 units: up into the normals */
        {INFINITY, 0x7F80, 0x7C00},
        {-INFINITY, 0xFF80, 0xFC00},
        {-0.0f, 0x8000, 0x8000},
        {3.3895314e38f, 0x7F7F, 0x7C00},         /* bf16 max */
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        uint16_t bf = tu_float_to_bf16(k[i].f), fp = tu_float_to_fp16(k[i].f);
        if (bf != k[i].bf || fp != k[i].fp) {
            printf("  %a: bf16 0x%04x (want 0x%04x), fp16 0x%04x (want 0x%04x)\n",
                   (double)k[i].f, bf, k[i].bf, fp, k[i].fp);
            bad++;
        }
    }
    EXPECT(bad == 0, "conversion: %zu hand-checked roundings (%d bad)", sizeof k / sizeof k[0],
           bad);

#if defined(__FLT16_MAX__)
    /* the compiler's own float -> _Float16 conversion rounds to nearest even too */
    tu_rng r;
    tu_rng_seed(&r, 42);
    int bad16 = 0;
    const int count = tu_test_size() == 1 ? 200000 : 2000000;
    for (int i = 0; i < count; i++) {
        uint32_t u = (uint32_t)tu_rng_next(&r);
        if (i & 1) /* concentrate on the fp16 range, including subnormals */
            u = (u & 0x80000000u) | (0x33000000u + (u % (0x47800000u - 0x33000000u)));
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f))
            continue;
        _Float16 h = (_Float16)f;
        uint16_t hb;
        memcpy(&hb, &h, 2);
        if (hb != tu_float_to_fp16(f) && bad16++ < 5)
            printf("  %a: compiler 0x%04x, ours 0x%04x\n", (double)f, hb, tu_float_to_fp16(f));
    }
    EXPECT(bad16 == 0, "conversion: fp16 rounding agrees with the compiler's _Float16 on %d "
                       "random floats (%d bad)", count, bad16);
#endif
}

/* ------------------------------------------------------------------------------------ */
/* A small hand-made problem: contiguous, one page per sequence. */

typedef struct mini {
    etap_mla_args a;
    uint16_t *q, *kv, *out;
    int32_t bt[4], lens[4];
    float lse[4 * 8 * 4];
    double rout[4 * 4 * 8 * 512], rlse[4 * 8 * 4];
} mini;

static void mini_init(mini *m, etap_dtype dt, int32_t b, int32_t sq, int32_t hq, int32_t hkv,
                      int32_t page, int32_t causal)
{
    memset(m, 0, sizeof *m);
    etap_mla_shape *s = &m->a.shape;
    *s = (etap_mla_shape){b, sq, hq, hkv, 576, 512, page, b, 1, dt, causal};
    m->q = calloc((size_t)b * sq * hq * 576, 2);
    m->kv = calloc((size_t)b * page * hkv * 576, 2);
    for (int i = 0; i < b; i++)
        m->bt[i] = i;
    m->a.q = m->q;
    m->a.q_stride_head = 576;
    m->a.q_stride_seq = (int64_t)hq * 576;
    m->a.q_stride_batch = (int64_t)sq * hq * 576;
    m->a.kv_cache = m->kv;
    m->a.kv_stride_head = 576;
    m->a.kv_stride_token = (int64_t)hkv * 576;
    m->a.kv_stride_page = (int64_t)page * hkv * 576;
    m->a.block_table = m->bt;
    m->a.block_table_stride = 1;
    m->a.cache_seqlens = m->lens;
}

static void mini_free(mini *m)
{
    free(m->q);
    free(m->kv);
}

static uint16_t *mini_key(mini *m, int b, int t, int g)
{
    return m->kv + m->a.kv_stride_page * m->bt[b] + m->a.kv_stride_token * t +
           m->a.kv_stride_head * g;
}
static uint16_t *mini_q(mini *m, int b, int s, int h)
{
    return m->q + m->a.q_stride_batch * b + m->a.q_stride_seq * s + m->a.q_stride_head * h;
}

static int close_to(double a, double b, double tol) { return fabs(a - b) <= tol * (1 + fabs(b)); }

static void test_reference_closed_form(void)
{
    etap_dtype dt = ETAP_DTYPE_BF16;
    mini m;
    /* one key: out = V, lse = scale * <q, k> */
    mini_init(&m, dt, 1, 1, 2, 1, 4, 0);
    m.lens[0] = 1;
    for (int d = 0; d < 576; d++) {
        mini_key(&m, 0, 0, 0)[d] = tu_float_to_bf16((float)((d % 7) - 3) * 0.125f);
        mini_q(&m, 0, 0, 0)[d] = tu_float_to_bf16(d < 512 ? 0.0f : 1.0f); /* RoPE part only */
        mini_q(&m, 0, 0, 1)[d] = tu_float_to_bf16(0.5f);
    }
    m.a.softmax_scale = 0.5f;
    ref_mla_decode(&m.a, m.rout, m.rlse, 1);
    double dot0 = 0, dot1 = 0;
    int ok = 1;
    for (int d = 0; d < 576; d++) {
        double k = (double)((d % 7) - 3) * 0.125;
        dot0 += (d < 512 ? 0.0 : 1.0) * k;
        dot1 += 0.5 * k;
        if (d < 512)
            ok &= m.rout[d] == k && m.rout[512 + d] == k;
    }
    ok &= close_to(m.rlse[0], 0.5 * dot0, 1e-14) && close_to(m.rlse[1], 0.5 * dot1, 1e-14);
    EXPECT(ok, "reference: one key gives out = V and lse = scale * <q, k> (RoPE part counted)");
    mini_free(&m);

    /* n identical keys: out = V, lse = score + log(n); default scale is 1/sqrt(576) */
    mini_init(&m, dt, 1, 1, 1, 1, 64, 0);
    m.lens[0] = 37;
    for (int t = 0; t < 37; t++)
        for (int d = 0; d < 576; d++)
            mini_key(&m, 0, t, 0)[d] = tu_float_to_bf16(d == 3 ? 2.0f : (d == 600 ? 0 : 0.25f));
    for (int d = 0; d < 576; d++)
        mini_q(&m, 0, 0, 0)[d] = tu_float_to_bf16(d == 3 ? 1.5f : 0.0f);
    m.a.softmax_scale = ETAP_SOFTMAX_SCALE_DEFAULT;
    ref_mla_decode(&m.a, m.rout, m.rlse, 1);
    double sc = 3.0 * (double)(1.0f / 24.0f);
    ok = close_to(m.rlse[0], sc + log(37.0), 1e-14) && close_to(m.rout[3], 2.0, 1e-14) &&
         close_to(m.rout[100], 0.25, 1e-14);
    EXPECT(ok, "reference: identical keys give out = V and lse = score + log(n), default scale");
    mini_free(&m);

    /* two keys with scores 0 and log(3): weights 1/4 and 3/4 */
    mini_init(&m, dt, 1, 1, 1, 1, 2, 0);
    m.lens[0] = 2;
    for (int d = 0; d < 576; d++) {
        mini_key(&m, 0, 0, 0)[d] = tu_float_to_bf16(d == 0 ? 0.0f : (d == 1 ? 4.0f : 0.0f));
        mini_key(&m, 0, 1, 0)[d] = tu_float_to_bf16(d == 0 ? 1.0f : (d == 1 ? 8.0f : 0.0f));
        mini_q(&m, 0, 0, 0)[d] = tu_float_to_bf16(d == 0 ? 1.0f : 0.0f);
    }
    m.a.softmax_scale = (float)log(3.0);
    ref_mla_decode(&m.a, m.rout, m.rlse, 1);
    double s1 = (double)(float)log(3.0);
    double w1 = exp(s1) / (1 + exp(s1));
    ok = close_to(m.rout[0], w1, 1e-14) && close_to(m.rout[1], 4 * (1 - w1) + 8 * w1, 1e-14) &&
         close_to(m.rlse[0], log(1 + exp(s1)), 1e-14);
    EXPECT(ok, "reference: two keys give softmax weights exp(s)/sum (out %.6f %.6f)",
           m.rout[0], m.rout[1]);
    mini_free(&m);

    /* huge scores: no overflow (max subtraction) */
    mini_init(&m, dt, 1, 1, 1, 1, 2, 0);
    m.lens[0] = 2;
    for (int d = 0; d < 576; d++) {
        mini_key(&m, 0, 0, 0)[d] = tu_float_to_bf16(d == 0 ? 100.0f : 1.0f);
        mini_key(&m, 0, 1, 0)[d] = tu_float_to_bf16(d == 0 ? 99.0f : 3.0f);
        mini_q(&m, 0, 0, 0)[d] = tu_float_to_bf16(d == 0 ? 100.0f : 0.0f);
    }
    m.a.softmax_scale = 1.0f;
    ref_mla_decode(&m.a, m.rout, m.rlse, 1);
    w1 = 1.0 / (1.0 + exp(100.0));
    ok = close_to(m.rlse[0], 10000.0 + log(1 + exp(-100.0)), 1e-14) &&
         close_to(m.rout[1], 1.0 * (1 - w1) + 3.0 * w1, 1e-14);
    EXPECT(ok, "reference: scores near 1e4 stay finite (lse %.3f)", m.rlse[0]);
    mini_free(&m);

    /* KV head mapping: h_q = 4, h_kv = 2, one key each: head h reads KV head h / 2 */
    mini_init(&m, dt, 1, 1, 4, 2, 1, 0);
    m.lens[0] = 1;
    for (int d = 0; d < 576; d++) {
        mini_key(&m, 0, 0, 0)[d] = tu_float_to_bf16(1.0f);
        mini_key(&m, 0, 0, 1)[d] = tu_float_to_bf16(-1.0f);
    }
    m.a.softmax_scale = 1.0f;
    ref_mla_decode(&m.a, m.rout, m.rlse, 1);
    ok = m.rout[0 * 512] == 1.0 && m.rout[1 * 512] == 1.0 && m.rout[2 * 512] == -1.0 &&
         m.rout[3 * 512 + 511] == -1.0;
    EXPECT(ok, "reference: query head h uses KV head h / (h_q / h_kv)");
    mini_free(&m);
}

/* causal rows equal a non-causal s_q = 1 problem on the visible prefix */
static void test_reference_causal(void)
{
    int32_t lens[] = {5, 2, 0, 3, 64, 65};
    tu_case_desc d = {0};
    d.batch = 6;
    d.seqlen_q = 3;
    d.num_heads_q = 4;
    d.num_heads_kv = 2;
    d.page_size = 16;
    d.causal = 1;
    d.dtype = ETAP_DTYPE_FP16;
    d.lengths = lens;
    d.softmax_scale = 0.7f;
    d.q_layout = TU_LAYOUT_HEAD_MAJOR;
    d.kv_padded = 1;
    d.extra_pages = 3;
    d.seed = 7;
    tu_case c;
    if (tu_case_build(&c, &d) != 0) {
        tu_fail(&T, "reference: causal (out of memory)");
        return;
    }
    tu_case_reference(&c);
    int bad = 0, empties = 0;
    for (int32_t b = 0; b < 6; b++)
        for (int32_t s = 0; s < 3; s++) {
            int64_t vis = ref_visible_keys(lens[b], 3, 1, s);
            if (vis != (lens[b] - 3 + s + 1 < 0 ? 0 : lens[b] - 3 + s + 1))
                bad++;
            /* the same rows as a one-position, non-causal problem of length vis */
            etap_mla_args one = c.args;
            int32_t len1 = (int32_t)vis;
            one.shape.batch = 1;
            one.shape.seqlen_q = 1;
            one.shape.causal = 0;
            one.q = (const uint16_t *)c.args.q + b * c.args.q_stride_batch +
                    s * c.args.q_stride_seq;
            one.block_table = c.args.block_table + b * c.args.block_table_stride;
            one.cache_seqlens = &len1;
            double o1[4 * 512], l1[4];
            ref_mla_decode(&one, o1, l1, 1);
            for (int h = 0; h < 4; h++) {
                double lc = c.ref_lse[((int64_t)b * 4 + h) * 3 + s];
                if (vis == 0)
                    empties++;
                if (!(lc == l1[h] || (isinf(lc) && isinf(l1[h]))))
                    bad++;
                const double *oc = c.ref_out + (((int64_t)b * 3 + s) * 4 + h) * 512;
                for (int e = 0; e < 512; e++)
                    if (oc[e] != o1[h * 512 + e])
                        bad++;
            }
        }
    EXPECT(bad == 0 && empties > 0,
           "reference: causal row s sees len - s_q + s + 1 keys (%d rows with none, %d bad)",
           empties, bad);

    /* s_q = 1 ignores causal */
    tu_case_desc d1 = d;
    d1.seqlen_q = 1;
    d1.causal = 1;
    tu_case c1, c0;
    d1.causal = 1;
    int okb = tu_case_build(&c1, &d1) == 0;
    d1.causal = 0;
    okb = okb && tu_case_build(&c0, &d1) == 0;
    if (okb) {
        tu_case_reference(&c1);
        tu_case_reference(&c0);
        size_t n = (size_t)6 * 4 * 512;
        EXPECT(memcmp(c1.ref_out, c0.ref_out, n * sizeof(double)) == 0,
               "reference: causal is ignored when s_q == 1");
        tu_case_free(&c1);
        tu_case_free(&c0);
    } else {
        tu_fail(&T, "reference: causal with s_q == 1 (out of memory)");
    }
    tu_case_free(&c);
}

/* A second, deliberately different brute force: per row, per key, no max subtraction
 * (fine for the small scores used), pages found by walking the table. */
static void brute(const tu_case *c, double *out, double *lse, double *mag)
{
    const etap_mla_args *a = &c->args;
    const etap_mla_shape *sh = &a->shape;
    int32_t group = sh->num_heads_q / sh->num_heads_kv;
    for (int32_t b = 0; b < sh->batch; b++)
        for (int32_t s = 0; s < sh->seqlen_q; s++)
            for (int32_t h = 0; h < sh->num_heads_q; h++) {
                int32_t len = a->cache_seqlens[b];
                double num[512] = {0}, den = 0, best = -INFINITY, best_mag = 0;
                for (int32_t t = 0; t < len; t++) {
                    if (sh->causal && sh->seqlen_q > 1 && t > len - sh->seqlen_q + s)
                        continue;
                    int32_t col = 0, tok = t;
                    while (tok >= sh->page_size) {
                        tok -= sh->page_size;
                        col++;
                    }
                    const uint16_t *k = (const uint16_t *)a->kv_cache +
                                        a->block_table[b * a->block_table_stride + col] *
                                            a->kv_stride_page +
                                        tok * a->kv_stride_token + (h / group) * a->kv_stride_head;
                    const uint16_t *q = (const uint16_t *)a->q + b * a->q_stride_batch +
                                        s * a->q_stride_seq + h * a->q_stride_head;
                    double dot = 0, abs_dot = 0;
                    for (int e = 575; e >= 0; e--) {
                        const double p = (double)tu_half_to_float(sh->dtype, q[e]) *
                                         (double)tu_half_to_float(sh->dtype, k[e]);
                        dot += p;
                        abs_dot += fabs(p);
                    }
                    double scale = a->softmax_scale == 0 ? (double)(1.0f / 24.0f) : a->softmax_scale;
                    if (dot * scale > best) /* the first of equal maxima, as the reference */
                        best = dot * scale, best_mag = abs_dot * scale;
                    double w = exp(dot * scale);
                    den += w;
                    for (int e = 0; e < 512; e++)
                        num[e] += w * (double)tu_half_to_float(sh->dtype, k[e]);
                }
                double *o = out + (((int64_t)b * sh->seqlen_q + s) * sh->num_heads_q + h) * 512;
                for (int e = 0; e < 512; e++)
                    o[e] = den > 0 ? num[e] / den : 0.0;
                lse[((int64_t)b * sh->num_heads_q + h) * sh->seqlen_q + s] =
                    den > 0 ? log(den) : INFINITY;
                mag[((int64_t)b * sh->num_heads_q + h) * sh->seqlen_q + s] = best_mag;
            }
}

static void test_reference_vs_brute(void)
{
    int32_t lens[] = {0, 1, 17, 64, 130, 3, 200};
    const int32_t pages[] = {1, 16, 64, 128};
    for (int v = 0; v < 8; v++) {
        tu_case_desc d = {0};
        d.batch = 7;
        d.seqlen_q = 1 + v % 3;
        d.num_heads_q = v & 1 ? 6 : 8;
        d.num_heads_kv = v & 2 ? 2 : 1;
        d.page_size = pages[v % 4];
        d.causal = v >= 4;
        d.dtype = v & 1 ? ETAP_DTYPE_FP16 : ETAP_DTYPE_BF16;
        d.lengths = lens;
        d.softmax_scale = v & 4 ? 0.0f : 0.3f;
        d.q_layout = v % 3;
        d.out_padded = v & 1;
        d.kv_padded = (v >> 1) & 1;
        d.pad_unit = v & 1 ? 1 : 8;
        d.extra_pages = v;
        d.extra_table_cols = v % 3;
        d.table_stride_pad = v % 2;
        d.seed = 100 + (uint64_t)v;
        tu_case c;
        char desc[256];
        if (tu_case_build(&c, &d) != 0) {
            tu_fail(&T, "reference vs brute force: out of memory");
            continue;
        }
        tu_case_describe(&c, desc, sizeof desc);
        tu_case_reference(&c);
        size_t rows = (size_t)d.batch * d.seqlen_q * d.num_heads_q;
        double *o = malloc(rows * 512 * sizeof(double)), *l = malloc(rows * sizeof(double));
        double *m = malloc(rows * sizeof(double));
        brute(&c, o, l, m);
        double worst = 0;
        int inf_bad = 0;
        for (size_t i = 0; i < rows * 512; i++)
            if (fabs(o[i] - c.ref_out[i]) > worst)
                worst = fabs(o[i] - c.ref_out[i]);
        for (size_t i = 0; i < rows; i++) {
            if (isinf(l[i]) != isinf(c.ref_lse[i]))
                inf_bad++;
            else if (!isinf(l[i]) && fabs(l[i] - c.ref_lse[i]) > worst)
                worst = fabs(l[i] - c.ref_lse[i]);
        }
        EXPECT(worst < 1e-12 && inf_bad == 0,
               "reference vs brute force: %s (max diff %.1e)", desc, worst);
        /* the checker's lse tolerance scales with ref_mag: it must be the top key's sum */
        int mag_bad = 0, mag_zero = 0;
        for (size_t i = 0; i < rows; i++) {
            mag_bad += fabs(m[i] - c.ref_mag[i]) > 1e-12 * (1.0 + m[i]);
            mag_zero += isinf(c.ref_lse[i]) && c.ref_mag[i] == 0.0;
        }
        EXPECT(mag_bad == 0 && mag_zero > 0,
               "reference: ref_mag is softmax_scale x sum |q k| of each row's top key, 0 for "
               "an empty row (variant %d, %d bad)", v, mag_bad);

        /* the result does not depend on the reference's thread count */
        double *o3 = malloc(rows * 512 * sizeof(double)), *l3 = malloc(rows * sizeof(double));
        ref_mla_decode(&c.args, o3, l3, 3);
        EXPECT(memcmp(o3, c.ref_out, rows * 512 * sizeof(double)) == 0 &&
                   memcmp(l3, c.ref_lse, rows * sizeof(double)) == 0,
               "reference: 3 threads give the same bits as all processors (variant %d)", v);
        free(o3);
        free(l3);
        free(o);
        free(l);
        free(m);
        tu_case_free(&c);
    }
}

/* ------------------------------------------------------------------------------------ */
/* the checker must catch what it claims to catch */

static void fill_out_from_ref(tu_case *c)
{
    const etap_mla_args *a = &c->args;
    const etap_mla_shape *sh = &a->shape;
    for (int32_t b = 0; b < sh->batch; b++)
        for (int32_t s = 0; s < sh->seqlen_q; s++)
            for (int32_t h = 0; h < sh->num_heads_q; h++) {
                int64_t row = ((int64_t)b * sh->seqlen_q + s) * sh->num_heads_q + h;
                for (int d = 0; d < 512; d++)
                    c->out[b * a->out_stride_batch + s * a->out_stride_seq +
                           h * a->out_stride_head + d] =
                        tu_float_to_half(sh->dtype, (float)c->ref_out[row * 512 + d]);
                int64_t li = ((int64_t)b * sh->num_heads_q + h) * sh->seqlen_q + s;
                c->lse[li] = (float)c->ref_lse[li];
            }
}

static void test_checker(void)
{
    int32_t lens[] = {40, 0, 2, 300};
    tu_case_desc d = {0};
    d.batch = 4;
    d.seqlen_q = 4;
    d.num_heads_q = 2;
    d.num_heads_kv = 1;
    d.page_size = 16;
    d.causal = 1;
    d.dtype = ETAP_DTYPE_FP16;
    d.lengths = lens;
    d.out_padded = 1;
    d.seed = 3;
    const etap_dtype dt = ETAP_DTYPE_FP16;
    tu_case c;
    char msg[512];
    if (tu_case_build(&c, &d) != 0) {
        tu_fail(&T, "checker: out of memory");
        return;
    }
    tu_case_reference(&c);
    fill_out_from_ref(&c);
    int ok = tu_case_check(&c, c.out, c.lse, msg, sizeof msg);
    EXPECT(ok, "checker: accepts the reference rounded to fp16 (%s)", msg);

    /* row 0 element 5: 3% off */
    uint16_t keep = c.out[5];
    c.out[5] = tu_float_to_half(dt, tu_half_to_float(dt, keep) * 1.03f + 0.01f);
    EXPECT(!tu_case_check(&c, c.out, c.lse, msg, sizeof msg), "checker: catches a wrong element (%s)", msg);
    c.out[5] = tu_half_poison(dt);
    EXPECT(!tu_case_check(&c, c.out, c.lse, msg, sizeof msg) && tu_contains(msg, "never written"),
           "checker: catches an unwritten element (%s)", msg);
    c.out[5] = tu_half_nan(dt);
    EXPECT(!tu_case_check(&c, c.out, c.lse, msg, sizeof msg), "checker: catches a NaN (%s)", msg);
    c.out[5] = keep;

    /* padding written */
    uint16_t *pad = &c.out[512]; /* out_stride_head > 512: element 512 is padding */
    *pad = 0;
    EXPECT(!tu_case_check(&c, c.out, c.lse, msg, sizeof msg) && tu_contains(msg, "padding"),
           "checker: catches a write into padding (%s)", msg);
    *pad = tu_half_poison(dt);

    /* lse: wrong, unwritten, -inf / finite for an empty row */
    float lk = c.lse[0];
    c.lse[0] = lk + 0.01f;
    EXPECT(!tu_case_check(&c, c.out, c.lse, msg, sizeof msg), "checker: catches a wrong lse (%s)", msg);
    uint32_t pb = TU_LSE_POISON_BITS;
    memcpy(&c.lse[0], &pb, 4);
    EXPECT(!tu_case_check(&c, c.out, c.lse, msg, sizeof msg) && tu_contains(msg, "never written"),
           "checker: catches an unwritten lse (%s)", msg);
    c.lse[0] = lk;
    /* sequence 1 has length 0: its lse must be +inf, out exactly 0 */
    int64_t li = (1 * 2 + 0) * 4 + 0;
    c.lse[li] = -INFINITY;
    EXPECT(!tu_case_check(&c, c.out, c.lse, msg, sizeof msg), "checker: an empty row needs lse = +inf (%s)", msg);
    c.lse[li] = INFINITY;
    int64_t oi = 1 * c.args.out_stride_batch + 7;
    c.out[oi] = tu_float_to_half(dt, 1e-5f);
    EXPECT(!tu_case_check(&c, c.out, c.lse, msg, sizeof msg), "checker: an empty row needs out = 0 exactly (%s)", msg);
    c.out[oi] = 0;
    EXPECT(tu_case_check(&c, c.out, c.lse, msg, sizeof msg), "checker: accepts again after restoring (%s)", msg);

    /* a 1% error on every element passes per element but fails the cosine bound */
    size_t rows = (size_t)4 * 4 * 2;
    int changed = 0;
    for (size_t r = 0; r < rows; r++) {
        int32_t b = (int32_t)(r / 8), s = (int32_t)(r / 2 % 4), h = (int32_t)(r % 2);
        if (isinf(c.ref_lse[((int64_t)b * 2 + h) * 4 + s]))
            continue;
        for (int e = 0; e < 512; e++) {
            int64_t o = b * c.args.out_stride_batch + s * c.args.out_stride_seq +
                        h * c.args.out_stride_head + e;
            double ref = c.ref_out[r * 512 + e];
            c.out[o] = tu_float_to_half(dt, (float)(ref * (e & 1 ? 1.01 : 0.99)));
            changed++;
        }
    }
    EXPECT(!tu_case_check(&c, c.out, c.lse, msg, sizeof msg) && tu_contains(msg, "0 bad out") &&
               tu_contains(msg, "> 5e-6"),
           "checker: a 1%% error on every element fails the cosine bound only (%s)", msg);
    (void)changed;
    tu_case_free(&c);
}

int main(void)
{
    test_conversions();
    test_reference_closed_form();
    test_reference_causal();
    test_reference_vs_brute();
    test_checker();
    return tu_finish(&T);
}
