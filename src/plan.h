/*
 * plan.h - the split-KV plan: its format and the integer math that defines it.
 *
 * One source of truth for every backend: the CPU builds the plan with etap_plan_build()
 * (plan.c), the CUDA backend computes the same words on the device with the same inline
 * functions (cuda/plan_kernel.cu), and tests compare the two word for word.
 * docs/plan-format.md explains the design; this header is the definition.
 *
 * The model. A sequence of `len` tokens has tiles = ceil(len / 64) KV tiles and costs
 * cost = tiles + ovh units (0 when tiles == 0), ovh being the cut's overhead: 2 (the fixed
 * work of a sequence: loading Q, the epilogue) or 0 (the tiles alone). The costs of all
 * sequences are laid end to end (prefix sums P[0..b], P[b] = total) and cut into
 * num_workers equal intervals of `quota` units: worker w owns units [w*quota, (w+1)*quota).
 * Inside sequence i, units [P[i], P[i]+ovh) stand for its fixed cost and unit
 * P[i] + ovh + t is KV tile t. A worker processes exactly the tiles whose units it owns,
 * so every tile is covered exactly once, and a sequence is split among the workers
 * f_i..l_i whose intervals hold its tiles: num_splits = l_i - f_i + 1.
 * The plan makes both cuts and keeps one (etap_plan_take_bare): a worker's load is its
 * tiles plus ETAP_PLAN_PIECE_UNITS for every piece (part of a sequence) it holds, and the
 * bare cut (ovh 0) is kept when its busiest worker is lighter, or as light with fewer
 * splits where a split costs more than its units say (more than
 * ETAP_PLAN_FEWER_SPLITS_ROWS query rows per KV head). The header records ovh.
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
    ETAP_PLAN_H_OVERHEAD = 5,      /* the cut kept: a sequence's fixed cost, 2 or 0 units */
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
 * backends alike. OVERHEAD_UNITS is the first cut's fixed cost of a sequence, PIECE_UNITS
 * what a piece adds to a worker's load when the two cuts are weighed, FEWER_SPLITS_ROWS the
 * rows per KV head above which equal loads are decided by the splits (docs/plan-format.md). */
#ifndef ETAP_PLAN_OVERHEAD_UNITS
#define ETAP_PLAN_OVERHEAD_UNITS 2
#endif
#ifndef ETAP_PLAN_PIECE_UNITS
#define ETAP_PLAN_PIECE_UNITS 2
#endif
#ifndef ETAP_PLAN_FEWER_SPLITS_ROWS
#define ETAP_PLAN_FEWER_SPLITS_ROWS 16
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
ETAP_HD int64_t etap_plan_cost(int64_t tiles, int64_t ovh)
{
    return tiles > 0 ? tiles + ovh : 0;
}
/* Units per worker: q = ceil(total / W), at least ETAP_PLAN_MIN_QUOTA; raised to the
 * largest sequence cost when that is at most max(ovh, q / 32) units more: then no
 * sequence needs a split (and the combine) for a worker's load that grows by at most that
 * slack (132 workers: b = 128 x 4K quota 64 -> 66, b = 128 x 16K 251 -> 258, one
 * sequence per worker; docs/plan-format.md). */
ETAP_HD int64_t etap_plan_quota(int64_t total_units, int32_t num_workers, int64_t max_cost,
                                int64_t ovh)
{
    int64_t q = (total_units + num_workers - 1) / num_workers;
    q = q < ETAP_PLAN_MIN_QUOTA ? ETAP_PLAN_MIN_QUOTA : q;
    const int64_t slack = q / 32 > ovh ? q / 32 : ovh;
    return max_cost > q && max_cost <= q + slack ? max_cost : q;
}
/* First and last worker of a sequence with tiles > 0 starting at prefix unit p. */
ETAP_HD int32_t etap_plan_first_worker(int64_t p, int64_t ovh, int64_t quota)
{
    return (int32_t)((p + ovh) / quota);
}
ETAP_HD int32_t etap_plan_last_worker(int64_t p, int64_t tiles, int64_t ovh, int64_t quota)
{
    return (int32_t)((p + ovh + tiles - 1) / quota);
}
/* Tile index inside a sequence (prefix p, `tiles` tiles) of cost unit u, clamped to
 * [0, tiles]: the first tile a worker starting at u takes, or the end of one ending at u. */
ETAP_HD int64_t etap_plan_tile_at(int64_t u, int64_t p, int64_t tiles, int64_t ovh)
{
    int64_t t = u - p - ovh;
    return t < 0 ? 0 : (t > tiles ? tiles : t);
}
/* A worker's load when the cuts are weighed: its tiles and ETAP_PLAN_PIECE_UNITS per
 * piece. */
ETAP_HD int64_t etap_plan_load(int64_t tiles, int64_t pieces)
{
    return tiles + ETAP_PLAN_PIECE_UNITS * pieces;
}
/* Whether the bare cut (ovh 0) replaces the first one (ovh ETAP_PLAN_OVERHEAD_UNITS),
 * given each cut's largest worker load and total splits and the query rows per KV head.
 * At equal lengths the bare cut gives every worker one piece of equal tiles (b = 64 x 4K
 * on 132 workers: 128 pieces of 32 tiles instead of 188 pieces), which pays where a
 * piece's end holds the consumers (32 rows and more: 64 KB of fp32 partials and up) and
 * costs at 16 rows (docs/perf.md, session 18); with mixed lengths it is rarely lighter. */
ETAP_HD int etap_plan_take_bare(int64_t load_first, int64_t splits_first, int64_t load_bare,
                                int64_t splits_bare, int32_t rows)
{
    return load_bare < load_first ||
           (load_bare == load_first && splits_bare < splits_first && rows > ETAP_PLAN_FEWER_SPLITS_ROWS);
}
/* Prefix unit of sequence i in a cut of overhead ovh, from the tiles before it (tiles_before)
 * and the sequences with tiles before it (count_before). */
ETAP_HD int64_t etap_plan_prefix(const int64_t *tiles_before, const int32_t *count_before,
                                 int64_t ovh, int32_t i)
{
    return tiles_before[i] + ovh * count_before[i];
}
/* Largest i in [0, batch) with P[i] <= u (P is non-decreasing, P[0] = 0). */
ETAP_HD int32_t etap_plan_seq_at(const int64_t *tiles_before, const int32_t *count_before,
                                 int64_t ovh, int32_t batch, int64_t u)
{
    int32_t lo = 0, hi = batch - 1;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo + 1) / 2;
        if (etap_plan_prefix(tiles_before, count_before, ovh, mid) <= u)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* The 16 header words (reserved words zero); the quota's two halves as raw 32-bit words. */
ETAP_HD void etap_plan_write_header(int32_t *plan, int32_t batch, int32_t num_workers,
                                    int64_t ovh, int64_t quota, int32_t total_splits,
                                    int32_t status, int32_t bad_seq, int32_t bad_len)
{
    for (int i = 0; i < ETAP_PLAN_HEADER_WORDS; i++)
        plan[i] = 0;
    plan[ETAP_PLAN_H_MAGIC] = ETAP_PLAN_MAGIC;
    plan[ETAP_PLAN_H_VERSION] = ETAP_PLAN_VERSION;
    plan[ETAP_PLAN_H_BATCH] = batch;
    plan[ETAP_PLAN_H_NUM_WORKERS] = num_workers;
    plan[ETAP_PLAN_H_TILE_TOKENS] = ETAP_TILE_TOKENS;
    plan[ETAP_PLAN_H_OVERHEAD] = (int32_t)ovh;
    plan[ETAP_PLAN_H_QUOTA_LO] = (int32_t)(uint32_t)((uint64_t)quota & 0xffffffffu);
    plan[ETAP_PLAN_H_QUOTA_HI] = (int32_t)(uint32_t)((uint64_t)quota >> 32);
    plan[ETAP_PLAN_H_TOTAL_SPLITS] = total_splits;
    plan[ETAP_PLAN_H_STATUS] = status;
    plan[ETAP_PLAN_H_BAD_SEQ] = bad_seq;
    plan[ETAP_PLAN_H_BAD_LEN] = bad_len;
    plan[ETAP_PLAN_H_MAX_SPLITS] = etap_plan_max_splits(batch, num_workers);
}

#endif /* ETAP_PLAN_H */
