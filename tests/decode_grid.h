/*
 * decode_grid.h - the seeded adversarial decode grid, shared by the CPU and the CUDA
 * numeric tests so that both backends see the same shapes and the same data.
 *
 * The grid crosses dtype {bf16, fp16} x (s_q, causal) {(1,0), (2,0), (2,1), (4,0), (4,1)}
 * x h_q {1, 8, 16, 32, 64, 128} x h_kv {1, 2} (when it divides h_q); each point then gets,
 * by co-prime rotations of its index, a page size {1, 16, 64, 128}, a length profile
 * (varlen with zero-length sequences, lengths below s_q, one or two long sequences split
 * over many workers, many short sequences per worker, ...), q / out / kv layouts, a
 * softmax scale and a CPU thread count. Named special cases follow the grid.
 */
#ifndef ETAP_TEST_DECODE_GRID_H
#define ETAP_TEST_DECODE_GRID_H

#include "test_util.h"

typedef struct dg_case {
    tu_case_desc desc; /* desc.lengths points at lens */
    int32_t *lens;
    int num_threads;   /* CPU backend: the handle's thread count (workers = 4x, or 1) */
    char tag[40];      /* "grid", "long-split", "many-short", ... */
} dg_case;

typedef struct dg_list {
    dg_case *cases;
    int n;
} dg_list;

/* size: tu_test_size() (1 small, 0 default, 2 large). for_cuda: paddings stay multiples of
 * 8 elements (16 bytes) and the CUDA-only large cases are added. */
void dg_build(dg_list *l, int size, int for_cuda, uint64_t seed);
/* `count` random cases (ETAP_TEST_FUZZ): batch 1..320 log-uniform, row counts that the
 * CUDA backend branches on and odd ones between, 1-8 KV heads, s_q up to 8, causal or not,
 * length shapes (equal, spread, one long among short, a few long, below s_q, half zero),
 * random layouts, scales, page sizes, and rising or bursting scores on a quarter of them;
 * the total tokens are bounded by the size's budget, as the grid's. */
void dg_build_fuzz(dg_list *l, int count, int size, int for_cuda, uint64_t seed);
void dg_free(dg_list *l);

#endif /* ETAP_TEST_DECODE_GRID_H */
