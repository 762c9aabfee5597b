/*
 * plan.c - the host plan builder: the serial reference of the split-KV plan.
 *
 * plan.h defines the model and the integer math; this file only walks it. The CUDA plan
 * kernel computes the same words in parallel, and tests compare the two word for word, so
 * every choice below that plan.h leaves open is spelled out here and in
 * docs/plan-format.md:
 *   - an invalid length (negative, or > max_len) counts as 0 tiles; the header records
 *     the first one (lowest index) in STATUS / BAD_SEQ / BAD_LEN;
 *   - with STATUS == ETAP_PLAN_OK, BAD_SEQ and BAD_LEN are 0;
 *   - an idle worker (one that owns no tile unit) is written as
 *     {first_seq 0, first_tile 0, last_seq -1, end_tile 0};
 *   - a busy worker's first_seq / last_seq are the first / last sequence of which it owns
 *     at least one tile (never a sequence whose overhead units alone fall in its range).
 *
 * The builder must not allocate, so it never materialises the prefix array P[0..b]: a
 * first pass sums the costs and finds the largest (for the quota), a second pass carries
 * P[i] as a running sum.
 * Worker records are filled in the same pass: sequence i touches workers f_i..l_i, and
 * since f_i >= l_{i-1} the walk visits every worker boundary once, O(b + W) in all.
 */
#include "internal.h"
#include "plan.h"

/* ---- header ---- */

/* An idle worker's record: an empty range that no consumer ever walks. */
enum { IDLE_FIRST_SEQ = 0, IDLE_FIRST_TILE = 0, IDLE_LAST_SEQ = -1, IDLE_END_TILE = 0 };

static int valid_length(int32_t len, int32_t max_len) { return len >= 0 && len <= max_len; }

/* Tiles the plan gives a sequence: invalid lengths are scheduled as empty sequences. */
static int64_t plan_tiles_of(int32_t len, int32_t max_len)
{
    return valid_length(len, max_len) ? etap_plan_tiles(len) : 0;
}

/* ---- build ---- */

void etap_plan_build(int32_t batch, int32_t num_workers, int32_t max_len,
                     const int32_t *lengths, int32_t *plan)
{
    /* Pass 1: total and largest cost (for the quota) and the first invalid length. */
    int64_t total = 0, max_cost = 0;
    int32_t status = ETAP_PLAN_OK, bad_seq = 0, bad_len = 0;
    for (int32_t i = 0; i < batch; i++) {
        int32_t len = lengths[i];
        if (status == ETAP_PLAN_OK && !valid_length(len, max_len)) {
            status = len < 0 ? ETAP_PLAN_BAD_NEGATIVE_LEN : ETAP_PLAN_BAD_LEN_TOO_LONG;
            bad_seq = i;
            bad_len = len;
        }
        const int64_t cost = etap_plan_cost(plan_tiles_of(len, max_len));
        total += cost;
        max_cost = cost > max_cost ? cost : max_cost;
    }
    const int64_t quota = etap_plan_quota(total, num_workers, max_cost);

    int32_t *workers = plan + etap_plan_worker_offset(0);
    int32_t *split_offset = plan + etap_plan_split_offset_offset(num_workers);
    int32_t *first_worker = plan + etap_plan_first_worker_offset(batch, num_workers);

    for (int32_t w = 0; w < num_workers; w++) {
        int32_t *rec = workers + (int64_t)ETAP_PLAN_WORKER_WORDS * w;
        rec[0] = IDLE_FIRST_SEQ;
        rec[1] = IDLE_FIRST_TILE;
        rec[2] = IDLE_LAST_SEQ;
        rec[3] = IDLE_END_TILE;
    }

    /* Pass 2: P[i] as a running sum; each sequence claims its workers' records. A worker
     * still marked idle (last_seq == -1) when first reached gets its first_seq here; every
     * later sequence that reaches it moves its last_seq / end_tile forward. */
    int64_t prefix = 0;
    int32_t splits = 0;
    for (int32_t i = 0; i < batch; i++) {
        const int64_t tiles = plan_tiles_of(lengths[i], max_len);
        split_offset[i] = splits;
        if (tiles == 0) {
            first_worker[i] = -1;
            continue;
        }
        const int32_t f = etap_plan_first_worker(prefix, quota);
        const int32_t l = etap_plan_last_worker(prefix, tiles, quota);
        first_worker[i] = f;
        splits += l - f + 1;
        for (int32_t w = f; w <= l; w++) {
            int32_t *rec = workers + (int64_t)ETAP_PLAN_WORKER_WORDS * w;
            if (rec[2] == IDLE_LAST_SEQ) {
                rec[0] = i;
                rec[1] = (int32_t)etap_plan_tile_at((int64_t)w * quota, prefix, tiles);
            }
            rec[2] = i;
            rec[3] = (int32_t)etap_plan_tile_at((int64_t)(w + 1) * quota, prefix, tiles);
        }
        prefix += etap_plan_cost(tiles);
    }
    split_offset[batch] = splits;

    etap_plan_write_header(plan, batch, num_workers, quota, splits, status, bad_seq, bad_len);
}
