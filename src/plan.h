/*
 * plan.h - the split-KV plan: its format and the integer math that defines it.
 *
 * One source of truth for every backend: the CPU builds the plan with etap_plan_build()
 * (plan.c), the CUDA backend computes the same words on the device with the same inline
 * functions (cuda/plan_kernel.cu), and tests compare the two word for word.
 * docs/plan-format.md explains the design; this header is the definition.
 *
 * The model. A sequence of `len` tokens has tiles = ceil(len / 64) KV tiles and costs
 * cost = tiles + overhead units (0 when tiles == 0). The costs of all sequences are laid
 * end to end (prefix sums P[0..b], P[b] = total) and cut into num_workers equal intervals
 * of `quota` units: worker w owns units [w*quota, (w+1)*quota). Inside sequence i, units
 * [P[i], P[i]+overhead) stand for its fixed cost (loading Q, the epilogue) and unit
 * P[i] + overhead + t is KV tile t. A worker processes exactly the tiles whose units it
 * owns, so every tile is covered exactly once, and a sequence is split among the workers
 * f_i..l_i whose intervals hold its tiles: num_splits = l_i - f_i + 1.
 *
 * Plan words (int32, little-endian, 4-byte aligned):
 *   [0..15]                header, ETAP_PLAN_H_* below
 *   [16 .. 16+4W)          per worker w: first_seq, first_tile, last_seq, end_tile
 *                          (tiles [first_tile, tiles) of first_seq, all tiles of the
 *                          sequences between, tiles [0, end_tile) of last_seq; when
 *                          first_seq == last_seq the range is [first_tile, end_tile);
 *                          an idle worker has last_seq < first_seq)
 *   [16+4W .. 16+4W+b+1)   split_offset[b+1]: prefix sum of num_splits; sequence i's
 *                          partial results are splits split_offset[i] .. split_offset[i+1]-1
 *   [.. + b)               first_worker[b]: f_i (-1 when the sequence has no tile)
 * A sequence with exactly one split gets its final out/lse from that worker directly;
 * the combine step handles sequences with 0 splits (out = 0, lse = +inf) or >= 2.
 */
#ifndef ETAP_PLAN_H
#define ETAP_PLAN_H

#include <stdint.h>

#if defined(__CUDACC__)
#define ETAP_HD __host__ __device__ __forceinline__
#else
#define ETAP_HD static inline
#endif

#define ETAP_PLAN_MAGIC 0x50415445 /* "ETAP" read as little-endian bytes */
#define ETAP_PLAN_VERSION 1
#define ETAP_TILE_TOKENS 64 /* KV tokens per tile: wgmma's M on the GPU */
#define ETAP_PLAN_HEADER_WORDS 16
#define ETAP_PLAN_WORKER_WORDS 4

/* Header word indices. */
enum {
    ETAP_PLAN_H_MAGIC = 0,
    ETAP_PLAN_H_VERSION = 1,
    ETAP_PLAN_H_BATCH = 2,
    ETAP_PLAN_H_NUM_WORKERS = 3,
    ETAP_PLAN_H_TILE_TOKENS = 4,
    ETAP_PLAN_H_OVERHEAD = 5,      /* fixed cost of one sequence, in tile units */
    ETAP_PLAN_H_QUOTA_LO = 6,      /* units per worker, int64 split into two words */
    ETAP_PLAN_H_QUOTA_HI = 7,
    ETAP_PLAN_H_TOTAL_SPLITS = 8,  /* split_offset[b] */
    ETAP_PLAN_H_STATUS = 9,        /* ETAP_PLAN_OK or ETAP_PLAN_BAD_* */
    ETAP_PLAN_H_BAD_SEQ = 10,      /* first offending sequence when STATUS != OK */
    ETAP_PLAN_H_BAD_LEN = 11,      /* its length */
    ETAP_PLAN_H_MAX_SPLITS = 12    /* batch + num_workers: the workspace bound */
    /* 13..15 reserved, zero */
};

enum { ETAP_PLAN_OK = 0, ETAP_PLAN_BAD_NEGATIVE_LEN = 1, ETAP_PLAN_BAD_LEN_TOO_LONG = 2 };

/* Tuning knobs of the schedule (in tile units), shared by every backend; a build may
 * override them (-D) to measure another schedule, which changes the plan words of both
 * backends alike. */
#ifndef ETAP_PLAN_OVERHEAD_UNITS
#define ETAP_PLAN_OVERHEAD_UNITS 2
#endif
#ifndef ETAP_PLAN_MIN_QUOTA
#define ETAP_PLAN_MIN_QUOTA 1
#endif

ETAP_HD int64_t etap_plan_words(int32_t batch, int32_t num_workers)
{
    return ETAP_PLAN_HEADER_WORDS + (int64_t)ETAP_PLAN_WORKER_WORDS * num_workers +
           (int64_t)(batch + 1) + (int64_t)batch;
}
ETAP_HD int64_t etap_plan_worker_offset(int32_t w)
{
    return ETAP_PLAN_HEADER_WORDS + (int64_t)ETAP_PLAN_WORKER_WORDS * w;
}
ETAP_HD int64_t etap_plan_split_offset_offset(int32_t num_workers)
{
    return ETAP_PLAN_HEADER_WORDS + (int64_t)ETAP_PLAN_WORKER_WORDS * num_workers;
}
ETAP_HD int64_t etap_plan_first_worker_offset(int32_t batch, int32_t num_workers)
{
    return etap_plan_split_offset_offset(num_workers) + batch + 1;
}
/* Upper bound of split_offset[b]: each worker boundary cuts at most one sequence. */
ETAP_HD int32_t etap_plan_max_splits(int32_t batch, int32_t num_workers)
{
    return batch + num_workers;
}

ETAP_HD int64_t etap_plan_tiles(int32_t len)
{
    return len <= 0 ? 0 : ((int64_t)len + ETAP_TILE_TOKENS - 1) / ETAP_TILE_TOKENS;
}
ETAP_HD int64_t etap_plan_cost(int64_t tiles)
{
    return tiles > 0 ? tiles + ETAP_PLAN_OVERHEAD_UNITS : 0;
}
/* Units per worker: q = ceil(total / W), at least ETAP_PLAN_MIN_QUOTA; raised to the
 * largest sequence cost when that is at most max(OVERHEAD, q / 32) units more: then no
 * sequence needs a split (and the combine) for a worker's load that grows by at most that
 * slack (132 workers: b = 128 x 4K quota 64 -> 66, b = 128 x 16K 251 -> 258, one
 * sequence per worker; docs/plan-format.md). */
ETAP_HD int64_t etap_plan_quota(int64_t total_units, int32_t num_workers, int64_t max_cost)
{
    int64_t q = (total_units + num_workers - 1) / num_workers;
    q = q < ETAP_PLAN_MIN_QUOTA ? ETAP_PLAN_MIN_QUOTA : q;
    const int64_t slack = q / 32 > ETAP_PLAN_OVERHEAD_UNITS ? q / 32 : ETAP_PLAN_OVERHEAD_UNITS;
    return max_cost > q && max_cost <= q + slack ? max_cost : q;
}
/* First and last worker of a sequence with tiles > 0 starting at prefix unit p. */
ETAP_HD int32_t etap_plan_first_worker(int64_t p, int64_t quota)
{
    return (int32_t)((p + ETAP_PLAN_OVERHEAD_UNITS) / quota);
}
ETAP_HD int32_t etap_plan_last_worker(int64_t p, int64_t tiles, int64_t quota)
{
    return (int32_t)((p + ETAP_PLAN_OVERHEAD_UNITS + tiles - 1) / quota);
}
/* Tile index inside a sequence (prefix p, `tiles` tiles) of cost unit u, clamped to
 * [0, tiles]: the first tile a worker starting at u takes, or the end of one ending at u. */
ETAP_HD int64_t etap_plan_tile_at(int64_t u, int64_t p, int64_t tiles)
{
    int64_t t = u - p - ETAP_PLAN_OVERHEAD_UNITS;
    return t < 0 ? 0 : (t > tiles ? tiles : t);
}
/* Largest i in [0, batch) with prefix[i] <= u (prefix is non-decreasing, prefix[0] = 0). */
ETAP_HD int32_t etap_plan_seq_at(const int64_t *prefix, int32_t batch, int64_t u)
{
    int32_t lo = 0, hi = batch - 1;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo + 1) / 2;
        if (prefix[mid] <= u)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* The 16 header words (reserved words zero); the quota's two halves as raw 32-bit words. */
ETAP_HD void etap_plan_write_header(int32_t *plan, int32_t batch, int32_t num_workers,
                                    int64_t quota, int32_t total_splits, int32_t status,
                                    int32_t bad_seq, int32_t bad_len)
{
    for (int i = 0; i < ETAP_PLAN_HEADER_WORDS; i++)
        plan[i] = 0;
    plan[ETAP_PLAN_H_MAGIC] = ETAP_PLAN_MAGIC;
    plan[ETAP_PLAN_H_VERSION] = ETAP_PLAN_VERSION;
    plan[ETAP_PLAN_H_BATCH] = batch;
    plan[ETAP_PLAN_H_NUM_WORKERS] = num_workers;
    plan[ETAP_PLAN_H_TILE_TOKENS] = ETAP_TILE_TOKENS;
    plan[ETAP_PLAN_H_OVERHEAD] = ETAP_PLAN_OVERHEAD_UNITS;
    plan[ETAP_PLAN_H_QUOTA_LO] = (int32_t)(uint32_t)((uint64_t)quota & 0xffffffffu);
    plan[ETAP_PLAN_H_QUOTA_HI] = (int32_t)(uint32_t)((uint64_t)quota >> 32);
    plan[ETAP_PLAN_H_TOTAL_SPLITS] = total_splits;
    plan[ETAP_PLAN_H_STATUS] = status;
    plan[ETAP_PLAN_H_BAD_SEQ] = bad_seq;
    plan[ETAP_PLAN_H_BAD_LEN] = bad_len;
    plan[ETAP_PLAN_H_MAX_SPLITS] = etap_plan_max_splits(batch, num_workers);
}

#endif /* ETAP_PLAN_H */
