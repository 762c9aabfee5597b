/*
 * reference.h - a naive double-precision MLA decode, written from etap.h's description
 * alone (it shares no code with src/). It is the oracle of every numeric test.
 */
#ifndef ETAP_TEST_REFERENCE_H
#define ETAP_TEST_REFERENCE_H

#include "etap.h"

/*
 * Computes, for every (b, s, h) row of `a` (host pointers; q and kv_cache in a->shape.dtype,
 * read through the strides and the block table exactly as etap.h specifies):
 *   out[((b * s_q + s) * h_q + h) * 512 + d]   (double, contiguous)
 *   lse[(b * h_q + h) * s_q + s]               (double; +inf for a row with no visible key)
 * Rows with no visible key get out = 0. Only block table entries of pages that hold a
 * visible token are read. num_threads <= 0 means "all online processors" (max 16).
 */
void ref_mla_decode(const etap_mla_args *a, double *out, double *lse, int num_threads);
/* The same, and mag[(b * h_q + h) * s_q + s] = softmax_scale x sum_d |q_d k_d| over the
 * 576 dims of the row's top-scoring key (0 for a row with no visible key): how large the
 * terms are that any backend sums into that score, so what its lse error scales with. */
void ref_mla_decode_mag(const etap_mla_args *a, double *out, double *lse, double *mag,
                        int num_threads);

/* Number of keys row (s) of a sequence of length len sees. */
int64_t ref_visible_keys(int32_t len, int32_t seqlen_q, int32_t causal, int32_t s);

#endif /* ETAP_TEST_REFERENCE_H */
