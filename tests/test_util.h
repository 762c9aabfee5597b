/*
 * test_util.h - shared helpers of the etap tests: a seeded RNG, bf16/fp16 conversions,
 * the adversarial case builder, output poisoning, the comparison with the reference
 * (FlashMLA's tolerances) and the pass/fail bookkeeping every test binary prints.
 *
 * Nothing here uses src/: the tests see etap only through include/etap.h.
 */
#ifndef ETAP_TEST_UTIL_H
#define ETAP_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "etap.h"

/* ---- random numbers (xoshiro256**, seeded through splitmix64) ---- */

typedef struct tu_rng {
    uint64_t s[4];
} tu_rng;

void tu_rng_seed(tu_rng *r, uint64_t seed);
uint64_t tu_rng_next(tu_rng *r);
double tu_rng_uniform(tu_rng *r);                       /* [0, 1) */
int64_t tu_rng_range(tu_rng *r, int64_t lo, int64_t hi); /* [lo, hi], inclusive */
double tu_rng_normal(tu_rng *r);                         /* N(0, 1) */
void tu_rng_shuffle_i32(tu_rng *r, int32_t *a, int64_t n);

/* ---- 16-bit floating point (round to nearest even, NaN stays NaN) ---- */

uint16_t tu_float_to_bf16(float f);
float tu_bf16_to_float(uint16_t h);
uint16_t tu_float_to_fp16(float f);
float tu_fp16_to_float(uint16_t h);
uint16_t tu_float_to_half(etap_dtype dt, float f);
float tu_half_to_float(etap_dtype dt, uint16_t h);
const char *tu_dtype_name(etap_dtype dt);
/* All 65536 fp16 values as floats (built once, thread-safe). */
const float *tu_fp16_table(void);

/* The NaN bit patterns used as "never written" poison and as "unused cache slot". */
uint16_t tu_half_poison(etap_dtype dt);
uint16_t tu_half_nan(etap_dtype dt);
#define TU_LSE_POISON_BITS 0x7FBADBADu /* a NaN no computation produces */

/* ---- the adversarial decode case ---- */

/* Layout of q (and of out for the padded variants). */
enum {
    TU_LAYOUT_CONTIGUOUS = 0,
    TU_LAYOUT_PADDED = 1,     /* padding after each head, position and sequence */
    TU_LAYOUT_HEAD_MAJOR = 2  /* q only: [b, h, s, 576] order, padded */
};

typedef struct tu_case_desc {
    int32_t batch, seqlen_q, num_heads_q, num_heads_kv, page_size, causal;
    etap_dtype dtype;
    const int32_t *lengths; /* batch entries; may include 0 */
    float softmax_scale;    /* passed as is (0 = ETAP_SOFTMAX_SCALE_DEFAULT) */
    double q_std, kv_std;   /* 0 -> 0.25 */
    double kv_ramp;         /* token t's RoPE key columns (512..575) have std
                             * kv_std * (1 + kv_ramp * t): scores that keep rising along the
                             * sequence while the values stay in range (0: flat) */
    double kv_spike;        /* > 0: the RoPE key columns of the 16 rows from the middle of each
                             * sequence have their std multiplied by it: one burst of large
                             * scores, small ones after */
    int q_layout;           /* TU_LAYOUT_* */
    int out_padded;         /* 0: contiguous out, 1: padded strides */
    int kv_padded;          /* 0: contiguous cache rows, 1: padded token/head/page strides */
    int extra_pages;        /* unused pages in the cache (filled with NaN) */
    int extra_table_cols;   /* block table columns beyond the longest sequence's need */
    int table_stride_pad;   /* block_table_stride - max_pages_per_seq */
    int pad_unit;           /* paddings are multiples of this many elements (0 -> 8) */
    int32_t num_pages;      /* > 0: exactly this many cache pages (>= what the lengths need) */
    int32_t max_pages_per_seq; /* > 0: exactly this many block table columns */
    uint64_t seed;
} tu_case_desc;

typedef struct tu_case {
    tu_case_desc desc;
    int32_t *lengths;     /* owned copy */
    etap_mla_args args;   /* host pointers into the buffers below */
    uint16_t *q;
    size_t q_elems;
    uint16_t *kv;
    size_t kv_elems;
    int32_t *block_table;
    size_t bt_elems;
    uint16_t *out;        /* poisoned by tu_case_poison() */
    size_t out_elems;
    float *lse;
    size_t lse_elems;
    double *ref_out;      /* [b, s_q, h_q, 512] */
    double *ref_lse;      /* [b, h_q, s_q] */
    double *ref_mag;      /* [b, h_q, s_q]: reference.h, ref_mla_decode_mag */
    int64_t total_tokens;
} tu_case;

/* Builds every host buffer; returns 0 on success (-1: out of memory). */
int tu_case_build(tu_case *c, const tu_case_desc *d);
void tu_case_free(tu_case *c);
/* Fills the whole out buffer (padding included) with the poison bits and lse with
 * TU_LSE_POISON_BITS. */
void tu_case_poison(tu_case *c);
/* Runs the double-precision reference into ref_out / ref_lse / ref_mag. */
void tu_case_reference(tu_case *c);
/* A short description "bf16 b=3 sq=2 causal hq=16 hkv=1 page=64 ..." */
void tu_case_describe(const tu_case *c, char *buf, size_t n);

/* Compares out/lse (host copies laid out exactly like c->out and c->lse) with the
 * reference. Returns 1 if everything matches; otherwise 0 with a reason in msg. Also
 * checks that every row element was written and that no padding element was. */
int tu_case_check(const tu_case *c, const uint16_t *out, const float *lse, char *msg,
                  size_t msg_len);

/* FlashMLA's tolerances. */
#define TU_OUT_ABS_TOL 8e-4
#define TU_OUT_REL_TOL (2.01 / 128.0)
#define TU_OUT_COS_TOL 5e-6
#define TU_LSE_ABS_TOL 1e-6
#define TU_LSE_REL_TOL (8.01 / 65536.0)
/* ... or relative to the size of the terms a row's top score sums (ref_mag): an fp32 sum of
 * 576 products is exact to ~n u of sum |terms| at worst (3.4e-5), and where lse is near 0
 * the relative bound above is no bound at all (in 300 random cases 16 rows of the CPU
 * backend missed the other two bounds by errors of up to 4.3e-5, at most 8.1e-7 of ref_mag). */
#define TU_LSE_MAG_TOL (1.0 / 65536.0)

/* ---- bookkeeping: one line per case, a final "N passed, N failed" line ---- */

typedef struct tu_tally {
    int passed, failed, skipped, unsupported;
} tu_tally;

void tu_pass(tu_tally *t, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void tu_fail(tu_tally *t, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Prints the final line(s) and returns the process exit status (0 when none failed). */
int tu_finish(const tu_tally *t);

/* 1 when the tests should use their small sizes (sanitizer builds, ETAP_TEST_SIZE=small),
 * 2 for ETAP_TEST_SIZE=large, 0 for the default. */
int tu_test_size(void);
/* Case-insensitive substring search. */
int tu_contains(const char *haystack, const char *needle);
/* Seconds since an arbitrary point (monotonic). */
double tu_now(void);
/* Base seed: ETAP_TEST_SEED from the environment, else `dflt`. */
uint64_t tu_seed(uint64_t dflt);
/* Random cases to add (decode_grid.h: dg_build_fuzz): ETAP_TEST_FUZZ from the environment,
 * else `dflt`. */
int tu_fuzz_count(int dflt);

#endif /* ETAP_TEST_UTIL_H */
