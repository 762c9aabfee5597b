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
 * first pass sums the tiles and finds the largest (for the quotas); then one walk per cut
 * (walk_cut) carries P[i] as a running sum, twice to weigh the two cuts (plan.h) and once
 * more to write the kept one. Sequence i touches workers f_i..l_i, and since
 * f_i >= l_{i-1} a walk visits every worker boundary once, O(b + W) in all.
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

/* ---- the two cuts ---- */

/* What pass 1 finds: the tiles, the sequences with tiles, the largest tile count. */
typedef struct plan_sums {
    int64_t tiles, max_tiles;
    int32_t seqs;
} plan_sums;

static int64_t cut_quota(const plan_sums *sum, int32_t num_workers, int64_t ovh)
{
    return etap_plan_quota(sum->tiles + ovh * sum->seqs, num_workers,
                           etap_plan_cost(sum->max_tiles, ovh), ovh);
}

/* One walk over a cut: P[i] as a running sum, each sequence meeting its workers f_i..l_i
 * in increasing order (so one running worker suffices for the load). It returns the
 * largest worker load (etap_plan_load) and the total splits, and with a plan buffer also
 * writes split_offset, first_worker and the worker records: a worker still marked idle
 * (last_seq == -1) when first reached gets its first_seq, and every later sequence that
 * reaches it moves its last_seq / end_tile forward. */
static void walk_cut(int32_t batch, int32_t num_workers, int32_t max_len, const int32_t *lengths,
                     int64_t ovh, int64_t quota, int32_t *plan, int64_t *max_load,
                     int32_t *total_splits)
{
    int32_t *workers = NULL, *split_offset = NULL, *first_worker = NULL;
    if (plan) {
        workers = plan + etap_plan_worker_offset(0);
        split_offset = plan + etap_plan_split_offset_offset(num_workers);
        first_worker = plan + etap_plan_first_worker_offset(batch, num_workers);
        for (int32_t w = 0; w < num_workers; w++) {
            int32_t *rec = workers + (int64_t)ETAP_PLAN_WORKER_WORDS * w;
            rec[0] = IDLE_FIRST_SEQ;
            rec[1] = IDLE_FIRST_TILE;
            rec[2] = IDLE_LAST_SEQ;
            rec[3] = IDLE_END_TILE;
        }
    }
    int64_t prefix = 0, heaviest = 0, tiles_w = 0, pieces_w = 0;
    int32_t splits = 0, cur = -1;
    for (int32_t i = 0; i < batch; i++) {
        const int64_t tiles = plan_tiles_of(lengths[i], max_len);
        if (plan) {
            split_offset[i] = splits;
            first_worker[i] = -1;
        }
        if (tiles == 0)
            continue;
        const int32_t f = etap_plan_first_worker(prefix, ovh, quota);
        const int32_t l = etap_plan_last_worker(prefix, tiles, ovh, quota);
        splits += l - f + 1;
        for (int32_t w = f; w <= l; w++) {
            const int64_t t0 = etap_plan_tile_at((int64_t)w * quota, prefix, tiles, ovh);
            const int64_t t1 = etap_plan_tile_at((int64_t)(w + 1) * quota, prefix, tiles, ovh);
            if (w != cur) {
                const int64_t load = etap_plan_load(tiles_w, pieces_w);
                heaviest = load > heaviest ? load : heaviest;
                cur = w;
                tiles_w = pieces_w = 0;
            }
            tiles_w += t1 - t0;
            pieces_w++;
            if (plan) {
                int32_t *rec = workers + (int64_t)ETAP_PLAN_WORKER_WORDS * w;
                if (rec[2] == IDLE_LAST_SEQ) {
                    rec[0] = i;
                    rec[1] = (int32_t)t0;
                }
                rec[2] = i;
                rec[3] = (int32_t)t1;
            }
        }
        if (plan)
            first_worker[i] = f;
        prefix += etap_plan_cost(tiles, ovh);
    }
    if (plan)
        split_offset[batch] = splits;
    const int64_t load = etap_plan_load(tiles_w, pieces_w);
    *max_load = load > heaviest ? load : heaviest;
    *total_splits = splits;
}

/* ---- build ---- */

void etap_plan_build(int32_t batch, int32_t num_workers, int32_t max_len, int32_t rows,
                     const int32_t *lengths, int32_t *plan)
{
    /* Pass 1: tiles, sequences with tiles, the largest (for the quotas) and the first
     * invalid length. */
    plan_sums sum = {0, 0, 0};
    int32_t status = ETAP_PLAN_OK, bad_seq = 0, bad_len = 0;
    for (int32_t i = 0; i < batch; i++) {
        int32_t len = lengths[i];
        if (status == ETAP_PLAN_OK && !valid_length(len, max_len)) {
            status = len < 0 ? ETAP_PLAN_BAD_NEGATIVE_LEN : ETAP_PLAN_BAD_LEN_TOO_LONG;
            bad_seq = i;
            bad_len = len;
        }
        const int64_t tiles = plan_tiles_of(len, max_len);
        sum.tiles += tiles;
        sum.seqs += tiles > 0;
        sum.max_tiles = tiles > sum.max_tiles ? tiles : sum.max_tiles;
    }

    /* The two cuts weighed, the one kept (plan.h: etap_plan_take_bare) written. */
    const int64_t quota_first = cut_quota(&sum, num_workers, ETAP_PLAN_OVERHEAD_UNITS);
    const int64_t quota_bare = cut_quota(&sum, num_workers, 0);
    int64_t load_first, load_bare;
    int32_t splits_first, splits_bare, splits;
    walk_cut(batch, num_workers, max_len, lengths, ETAP_PLAN_OVERHEAD_UNITS, quota_first, NULL,
             &load_first, &splits_first);
    walk_cut(batch, num_workers, max_len, lengths, 0, quota_bare, NULL, &load_bare, &splits_bare);
    const int bare = etap_plan_take_bare(load_first, splits_first, load_bare, splits_bare, rows);
    const int64_t ovh = bare ? 0 : ETAP_PLAN_OVERHEAD_UNITS;
    const int64_t quota = bare ? quota_bare : quota_first;
    int64_t load;
    walk_cut(batch, num_workers, max_len, lengths, ovh, quota, plan, &load, &splits);

    etap_plan_write_header(plan, batch, num_workers, ovh, quota, splits, status, bad_seq,
                           bad_len);
}
