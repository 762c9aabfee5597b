/*
 * plan_check.c - see plan_check.h. Written from the format description, not from
 * src/plan.c: the constants below are the documented ones, restated on purpose.
 */
#include "plan_check.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

enum {
    MAGIC = 0x50415445, /* "ETAP" */
    VERSION = 1,
    TILE = 64,
    OVERHEAD = 2,          /* the first cut's fixed cost of a sequence; the bare cut has 0 */
    PIECE = 2,             /* what a piece adds to a worker's load when the cuts are weighed */
    FEWER_SPLITS_ROWS = 16, /* above: equal loads go to the cut with fewer splits */
    MIN_QUOTA = 1,
    HEADER = 16,
    H_MAGIC = 0, H_VERSION, H_BATCH, H_WORKERS, H_TILE, H_OVERHEAD, H_QUOTA_LO, H_QUOTA_HI,
    H_TOTAL_SPLITS, H_STATUS, H_BAD_SEQ, H_BAD_LEN, H_MAX_SPLITS
};

int64_t pc_plan_words(int32_t batch, int32_t num_workers)
{
    return HEADER + 4 * (int64_t)num_workers + (int64_t)batch + 1 + batch;
}

static int fail(char *msg, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, n, fmt, ap);
    va_end(ap);
    return 0;
}

/* A cut with fixed cost `ovh`: its quota, and (weigh != 0) the heaviest worker's load,
 * tiles + PIECE per piece, and the total splits, from each tile unit's owner. */
typedef struct cut {
    int64_t quota, max_load, splits;
} cut;

static int make_cut(const int64_t *tiles, int32_t batch, int32_t num_workers, int64_t ovh,
                    cut *c)
{
    int64_t total = 0, max_cost = 0;
    for (int32_t i = 0; i < batch; i++)
        if (tiles[i] > 0) {
            total += tiles[i] + ovh;
            max_cost = tiles[i] + ovh > max_cost ? tiles[i] + ovh : max_cost;
        }
    int64_t quota = (total + num_workers - 1) / num_workers;
    if (quota < MIN_QUOTA)
        quota = MIN_QUOTA;
    int64_t slack = quota / 32 > ovh ? quota / 32 : ovh;
    if (max_cost > quota && max_cost <= quota + slack) /* no split for that little */
        quota = max_cost;
    c->quota = quota;
    c->max_load = c->splits = 0;
    int64_t *load = calloc((size_t)num_workers, sizeof(int64_t));
    if (!load)
        return 0;
    int64_t p = 0;
    for (int32_t i = 0; i < batch; i++) {
        if (tiles[i] == 0)
            continue;
        /* tile units [p + ovh, p + ovh + tiles): owners a .. z */
        int64_t u = p + ovh, v = p + ovh + tiles[i];
        for (int64_t w = u / quota; w <= (v - 1) / quota; w++) {
            int64_t lo = w * quota > u ? w * quota : u, hi = (w + 1) * quota < v ? (w + 1) * quota : v;
            load[w] += hi - lo + PIECE;
            c->splits++;
        }
        p = v;
    }
    for (int32_t w = 0; w < num_workers; w++)
        c->max_load = load[w] > c->max_load ? load[w] : c->max_load;
    free(load);
    return 1;
}

int pc_verify(const int32_t *plan, int32_t batch, int32_t num_workers, int32_t max_len,
              int32_t rows, const int32_t *lengths, pc_stats *stats, char *msg, size_t n)
{
    pc_stats st = {0};
    int64_t *prefix = malloc(sizeof(int64_t) * ((size_t)batch + 1));
    int64_t *tiles = malloc(sizeof(int64_t) * (size_t)batch);
    int64_t *cursor = malloc(sizeof(int64_t) * (size_t)batch);  /* next tile expected */
    int32_t *pieces = calloc((size_t)batch, sizeof(int32_t));    /* workers that hold tiles */
    int32_t *first_w = malloc(sizeof(int32_t) * (size_t)batch);
    int ok = 1;
    if (!prefix || !tiles || !cursor || !pieces || !first_w) {
        ok = fail(msg, n, "verifier out of memory");
        goto done;
    }

    /* the model: which cut the header says, and the one that should have been kept */
    const int32_t *h = plan;
    const int64_t ovh = h[H_OVERHEAD];
    if (ovh != OVERHEAD && ovh != 0) {
        ok = fail(msg, n, "header: overhead %d, expected %d or 0", (int)ovh, OVERHEAD);
        goto done;
    }
    int32_t status = 0, bad_seq = 0, bad_len = 0;
    prefix[0] = 0;
    for (int32_t i = 0; i < batch; i++) {
        int32_t len = lengths[i];
        int valid = len >= 0 && len <= max_len;
        if (!valid && status == 0) {
            status = len < 0 ? 1 : 2;
            bad_seq = i;
            bad_len = len;
        }
        tiles[i] = valid && len > 0 ? ((int64_t)len + TILE - 1) / TILE : 0;
        prefix[i + 1] = prefix[i] + (tiles[i] > 0 ? tiles[i] + ovh : 0);
        cursor[i] = 0;
        first_w[i] = -1;
        st.total_tiles += tiles[i];
    }
    cut first, bare;
    if (!make_cut(tiles, batch, num_workers, OVERHEAD, &first) ||
        !make_cut(tiles, batch, num_workers, 0, &bare)) {
        ok = fail(msg, n, "verifier out of memory");
        goto done;
    }
    /* the bare cut is kept when its heaviest worker is lighter, or as heavy with fewer
     * splits for more than FEWER_SPLITS_ROWS rows per KV head */
    const int want_bare = bare.max_load < first.max_load ||
                          (bare.max_load == first.max_load && bare.splits < first.splits &&
                           rows > FEWER_SPLITS_ROWS);
    const int64_t total = prefix[batch], quota = ovh ? first.quota : bare.quota;
    st.quota = quota;
    st.overhead = (int32_t)ovh;
    st.max_load = ovh ? first.max_load : bare.max_load;

    /* header */
    int64_t got_quota = (int64_t)(((uint64_t)(uint32_t)h[H_QUOTA_HI] << 32) | (uint32_t)h[H_QUOTA_LO]);
    if (h[H_MAGIC] != MAGIC || h[H_VERSION] != VERSION) {
        ok = fail(msg, n, "header: magic 0x%08x version %d", (unsigned)h[H_MAGIC], (int)h[H_VERSION]);
        goto done;
    }
    if (h[H_BATCH] != batch || h[H_WORKERS] != num_workers || h[H_TILE] != TILE) {
        ok = fail(msg, n, "header: batch %d workers %d tile %d, expected %d %d %d",
                  (int)h[H_BATCH], (int)h[H_WORKERS], (int)h[H_TILE], (int)batch,
                  (int)num_workers, TILE);
        goto done;
    }
    if ((ovh == 0) != want_bare) {
        ok = fail(msg, n,
                  "header: overhead %d, but the %s cut should be kept (heaviest worker %lld / "
                  "%lld units, splits %lld / %lld with overhead %d / 0, %d rows)",
                  (int)ovh, want_bare ? "bare" : "first", (long long)first.max_load,
                  (long long)bare.max_load, (long long)first.splits, (long long)bare.splits,
                  OVERHEAD, (int)rows);
        goto done;
    }
    if (got_quota != quota) {
        ok = fail(msg, n,
                  "header: quota %lld, expected max(ceil(%lld / %d), %d) (or the largest "
                  "cost when at most max(%d, 1/32) above) = %lld",
                  (long long)got_quota, (long long)total, (int)num_workers, MIN_QUOTA,
                  (int)ovh, (long long)quota);
        goto done;
    }
    if (h[H_STATUS] != status || h[H_BAD_SEQ] != bad_seq || h[H_BAD_LEN] != bad_len) {
        ok = fail(msg, n, "header: status %d seq %d len %d, expected %d %d %d", (int)h[H_STATUS],
                  (int)h[H_BAD_SEQ], (int)h[H_BAD_LEN], (int)status, (int)bad_seq, (int)bad_len);
        goto done;
    }
    if (h[H_MAX_SPLITS] != batch + num_workers) {
        ok = fail(msg, n, "header: max_splits %d, expected b + W = %d", (int)h[H_MAX_SPLITS],
                  (int)(batch + num_workers));
        goto done;
    }
    for (int i = 13; i < HEADER; i++)
        if (h[i] != 0) {
            ok = fail(msg, n, "header: reserved word %d is %d, expected 0", i, (int)h[i]);
            goto done;
        }

    /* workers, in order: each piece must continue its sequence exactly where the previous
     * piece ended (exactly-once coverage) and hold only units inside the worker's quota */
    for (int32_t w = 0; w < num_workers; w++) {
        const int32_t *r = plan + HEADER + 4 * (int64_t)w;
        int32_t fs = r[0], ft = r[1], ls = r[2], et = r[3];
        if (ls < fs) { /* idle; every unit of its interval must hold no tile */
            continue;
        }
        if (fs < 0 || ls >= batch) {
            ok = fail(msg, n, "worker %d: sequences %d..%d out of [0, %d)", (int)w, (int)fs,
                      (int)ls, (int)batch);
            goto done;
        }
        int64_t wtiles = 0;
        int32_t touched = 0;
        for (int32_t i = fs; i <= ls; i++) {
            int64_t a = i == fs ? ft : 0;
            int64_t e = i == ls ? et : tiles[i];
            if (tiles[i] == 0 && i != fs && i != ls)
                continue; /* an empty sequence in the middle holds nothing */
            if (a < 0 || e > tiles[i] || a >= e) {
                ok = fail(msg, n,
                          "worker %d: sequence %d gets tiles [%lld, %lld) of %lld (empty or "
                          "out of range)",
                          (int)w, (int)i, (long long)a, (long long)e, (long long)tiles[i]);
                goto done;
            }
            if (a != cursor[i]) {
                ok = fail(msg, n,
                          "worker %d: sequence %d piece starts at tile %lld, but tiles [0, %lld) "
                          "are covered so far (gap or overlap)",
                          (int)w, (int)i, (long long)a, (long long)cursor[i]);
                goto done;
            }
            int64_t u0 = prefix[i] + ovh + a, u1 = prefix[i] + ovh + e - 1;
            if (u0 < (int64_t)w * quota || u1 >= (int64_t)(w + 1) * quota) {
                ok = fail(msg, n,
                          "worker %d: sequence %d tiles [%lld, %lld) are units [%lld, %lld], "
                          "outside the worker's [%lld, %lld)",
                          (int)w, (int)i, (long long)a, (long long)e, (long long)u0,
                          (long long)u1, (long long)w * quota, (long long)(w + 1) * quota);
                goto done;
            }
            cursor[i] = e;
            if (pieces[i]++ == 0)
                first_w[i] = w;
            wtiles += e - a;
            touched++;
        }
        /* the documented balance bound (bare cut: the tiles alone) */
        if (wtiles + ovh * touched > quota + ovh) {
            ok = fail(msg, n, "worker %d: %lld tiles + %d * %d sequences > quota %lld + %d",
                      (int)w, (long long)wtiles, (int)ovh, (int)touched, (long long)quota,
                      (int)ovh);
            goto done;
        }
        st.busy_workers++;
        if (touched > st.max_seqs_of_a_worker)
            st.max_seqs_of_a_worker = touched;
    }
    for (int32_t i = 0; i < batch; i++)
        if (cursor[i] != tiles[i]) {
            ok = fail(msg, n, "sequence %d: tiles [%lld, %lld) are covered by no worker", (int)i,
                      (long long)cursor[i], (long long)tiles[i]);
            goto done;
        }

    /* split_offset / first_worker */
    const int32_t *so = plan + HEADER + 4 * (int64_t)num_workers;
    const int32_t *fw = so + batch + 1;
    if (so[0] != 0) {
        ok = fail(msg, n, "split_offset[0] is %d", (int)so[0]);
        goto done;
    }
    for (int32_t i = 0; i < batch; i++) {
        if (so[i + 1] - so[i] != pieces[i]) {
            ok = fail(msg, n, "sequence %d: split_offset gives %d splits, %d workers hold its tiles",
                      (int)i, (int)(so[i + 1] - so[i]), (int)pieces[i]);
            goto done;
        }
        if (fw[i] != first_w[i]) {
            ok = fail(msg, n, "sequence %d: first_worker %d, expected %d", (int)i, (int)fw[i],
                      (int)first_w[i]);
            goto done;
        }
        /* the workers holding a sequence's tiles are consecutive: f_i .. f_i + splits - 1 */
        if (pieces[i] > st.max_splits_of_a_seq)
            st.max_splits_of_a_seq = pieces[i];
    }
    st.total_splits = so[batch];
    if (h[H_TOTAL_SPLITS] != so[batch]) {
        ok = fail(msg, n, "header total_splits %d != split_offset[b] %d", (int)h[H_TOTAL_SPLITS],
                  (int)so[batch]);
        goto done;
    }
    if ((int64_t)so[batch] > (int64_t)batch + num_workers) {
        ok = fail(msg, n, "total splits %d > b + W = %d", (int)so[batch], (int)(batch + num_workers));
        goto done;
    }
    if (so[batch] != (ovh ? first.splits : bare.splits)) {
        ok = fail(msg, n, "total splits %d, the cut gives %lld", (int)so[batch],
                  (long long)(ovh ? first.splits : bare.splits));
        goto done;
    }
    snprintf(msg, n, "%s cut, quota %lld, %d splits, %d busy workers, max %d splits/seq, max %d seqs/worker",
             ovh ? "first" : "bare", (long long)quota, (int)st.total_splits, (int)st.busy_workers,
             (int)st.max_splits_of_a_seq, (int)st.max_seqs_of_a_worker);
done:
    if (stats)
        *stats = st;
    free(prefix);
    free(tiles);
    free(cursor);
    free(pieces);
    free(first_w);
    return ok;
}
