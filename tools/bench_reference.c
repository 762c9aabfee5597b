/*
 * bench_reference.c - the double-precision reference of one decode call, and the
 * comparison of etap's out and lse with it.
 *
 * The reference reads like etap.h's definition: for every query row, scores over the
 * visible keys, a softmax, a weighted sum of the value rows, all in double from the
 * same bf16/fp16 inputs etap saw. It shares nothing with etap's code.
 *
 * Work is split into (sequence, KV head) tasks over a few threads; each task converts a
 * key row to double once and uses it for every query row of that KV head.
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

enum { DQK = ETAP_HEAD_DIM_QK, DV = ETAP_HEAD_DIM_V };

/* ---- visibility ------------------------------------------------------------------ */

/* Keys visible to query position s of a sequence of `len` tokens: t < visible. */
static int64_t visible_keys(const etap_mla_shape *sh, int32_t len, int32_t s)
{
    if (!sh->causal || sh->seqlen_q == 1)
        return len;
    int64_t v = (int64_t)len - sh->seqlen_q + s + 1; /* t <= len - s_q + s */
    return v < 0 ? 0 : (v > len ? len : v);
}

/* ---- statistics of one thread ------------------------------------------------------ */

typedef struct stats {
    double sum_sq, dot, nn_out, nn_ref, max_abs, max_lse;
    int64_t count, bad_elems, bad_lse, nonfinite;
} stats;

static void stats_merge(stats *a, const stats *b)
{
    a->sum_sq += b->sum_sq;
    a->dot += b->dot;
    a->nn_out += b->nn_out;
    a->nn_ref += b->nn_ref;
    a->max_abs = fmax(a->max_abs, b->max_abs);
    a->max_lse = fmax(a->max_lse, b->max_lse);
    a->count += b->count;
    a->bad_elems += b->bad_elems;
    a->bad_lse += b->bad_lse;
    a->nonfinite += b->nonfinite;
}

/* ---- one (sequence, KV head) task ----------------------------------------------------- */

typedef struct ref_job {
    const bench_inputs *in;
    const uint16_t *out;
    const float *lse;
    const int32_t *seqs; /* sequences to check */
    int num_tasks;       /* num seqs * h_kv */
    atomic_int next;
    int failed_alloc;
} ref_job;

static const uint16_t *key_row(const bench_inputs *in, int32_t b, int64_t t, int32_t g)
{
    const etap_mla_shape *sh = &in->shape;
    int32_t page = in->block_table[(int64_t)b * sh->max_pages_per_seq + t / sh->page_size];
    size_t token = (size_t)page * sh->page_size + (size_t)(t % sh->page_size);
    return in->kv + (token * sh->num_heads_kv + (size_t)g) * DQK;
}

static double dot576(const double *a, const double *b)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0; /* four chains: a scalar loop's latency */
    for (int d = 0; d < DQK; d += 4) {
        s0 += a[d] * b[d];
        s1 += a[d + 1] * b[d + 1];
        s2 += a[d + 2] * b[d + 2];
        s3 += a[d + 3] * b[d + 3];
    }
    return (s0 + s1) + (s2 + s3);
}

static int check_task(ref_job *j, int task, stats *st)
{
    const bench_inputs *in = j->in;
    const etap_mla_shape *sh = &in->shape;
    const int32_t b = j->seqs[task / sh->num_heads_kv];
    const int32_t g = task % sh->num_heads_kv;
    const int32_t group = sh->num_heads_q / sh->num_heads_kv;
    /* row r of this KV head: query position r / group, head g * group + r % group */
    const int32_t rows = sh->seqlen_q * group;
    const int32_t len = in->lens[b];
    const etap_dtype dt = sh->dtype;
    const double scale = (double)(1.0f / sqrtf((float)DQK)); /* what etap resolves 0 to */
    const double rel_tol = BENCH_TOL_OUT_REL_ULPS * (dt == ETAP_DTYPE_BF16 ? 0x1p-7 : 0x1p-10);

    int64_t max_vis = 0;
    for (int32_t s = 0; s < sh->seqlen_q; s++)
        max_vis = visible_keys(sh, len, s) > max_vis ? visible_keys(sh, len, s) : max_vis;

    double *qd = malloc(sizeof(double) * (size_t)rows * DQK);
    double *od = calloc((size_t)rows * DV, sizeof(double));
    double *p = malloc(sizeof(double) * (size_t)rows * (size_t)(max_vis > 0 ? max_vis : 1));
    double kd[DQK];
    if (!qd || !od || !p) {
        free(qd), free(od), free(p);
        return -1;
    }
    for (int32_t r = 0; r < rows; r++) {
        int32_t s = r / group, h = g * group + r % group;
        const uint16_t *q = in->q + (((size_t)b * sh->seqlen_q + s) * sh->num_heads_q + h) * DQK;
        for (int d = 0; d < DQK; d++)
            qd[(size_t)r * DQK + d] = bench_half_to_float(q[d], dt);
    }

    /* scores: p[r][t] = scale * <q_r, K[t]> over the visible keys */
    for (int64_t t = 0; t < max_vis; t++) {
        const uint16_t *k = key_row(in, b, t, g);
        for (int d = 0; d < DQK; d++)
            kd[d] = bench_half_to_float(k[d], dt);
        for (int32_t r = 0; r < rows; r++)
            if (t < visible_keys(sh, len, r / group))
                p[(size_t)r * max_vis + t] = scale * dot576(qd + (size_t)r * DQK, kd);
    }

    /* softmax along t, in place, and the log-sum-exp */
    double *lse_ref = malloc(sizeof(double) * (size_t)rows);
    if (!lse_ref) {
        free(qd), free(od), free(p);
        return -1;
    }
    for (int32_t r = 0; r < rows; r++) {
        int64_t vis = visible_keys(sh, len, r / group);
        double *pr = p + (size_t)r * max_vis;
        if (vis == 0) {
            lse_ref[r] = INFINITY;
            continue;
        }
        double m = -INFINITY, sum = 0;
        for (int64_t t = 0; t < vis; t++)
            m = fmax(m, pr[t]);
        for (int64_t t = 0; t < vis; t++)
            sum += (pr[t] = exp(pr[t] - m));
        for (int64_t t = 0; t < vis; t++)
            pr[t] /= sum;
        lse_ref[r] = m + log(sum);
    }

    /* out[r] = sum_t p[r][t] * V[t], V[t] = K[t][0:512] */
    for (int64_t t = 0; t < max_vis; t++) {
        const uint16_t *v = key_row(in, b, t, g);
        for (int d = 0; d < DV; d++)
            kd[d] = bench_half_to_float(v[d], dt);
        for (int32_t r = 0; r < rows; r++) {
            if (t >= visible_keys(sh, len, r / group))
                continue;
            double w = p[(size_t)r * max_vis + t];
            double *o = od + (size_t)r * DV;
            for (int d = 0; d < DV; d++)
                o[d] += w * kd[d];
        }
    }

    /* compare */
    for (int32_t r = 0; r < rows; r++) {
        int32_t s = r / group, h = g * group + r % group;
        const uint16_t *o = j->out + (((size_t)b * sh->seqlen_q + s) * sh->num_heads_q + h) * DV;
        for (int d = 0; d < DV; d++) {
            double x = bench_half_to_float(o[d], dt), ref = od[(size_t)r * DV + d];
            double err = fabs(x - ref);
            if (!isfinite(x)) {
                st->nonfinite++;
                st->bad_elems++;
                continue;
            }
            st->sum_sq += err * err;
            st->dot += x * ref;
            st->nn_out += x * x;
            st->nn_ref += ref * ref;
            st->max_abs = fmax(st->max_abs, err);
            st->count++;
            if (!(err <= BENCH_TOL_OUT_ABS || err <= rel_tol * fabs(ref)))
                st->bad_elems++;
        }
        double l = j->lse[((size_t)b * sh->num_heads_q + h) * sh->seqlen_q + s];
        if (isinf(lse_ref[r])) {
            if (!(isinf(l) && l > 0))
                st->bad_lse++;
            continue;
        }
        if (!isfinite(l)) {
            st->bad_lse++;
            continue;
        }
        /* fp32 accumulation slack: a sum of n terms drifts by about sqrt(n) ulps */
        double vis = (double)visible_keys(sh, len, s);
        double abs_tol = BENCH_TOL_LSE_ABS + 4.0 * sqrt(vis) * 0x1p-24;
        double err = fabs(l - lse_ref[r]);
        st->max_lse = fmax(st->max_lse, err);
        if (!(err <= abs_tol || err <= BENCH_TOL_LSE_REL * fabs(lse_ref[r])))
            st->bad_lse++;
    }
    free(qd), free(od), free(p), free(lse_ref);
    return 0;
}

typedef struct ref_thread {
    ref_job *job;
    stats st;
} ref_thread;

static void *ref_worker(void *arg)
{
    ref_thread *me = arg;
    for (;;) {
        int task = atomic_fetch_add(&me->job->next, 1);
        if (task >= me->job->num_tasks)
            break;
        if (check_task(me->job, task, &me->st) != 0)
            me->job->failed_alloc = 1;
    }
    return NULL;
}

/* ---- which sequences ---------------------------------------------------------------- */

static double seq_macs(const bench_inputs *in, int32_t b)
{
    const etap_mla_shape *sh = &in->shape;
    double keys = 0;
    for (int32_t s = 0; s < sh->seqlen_q; s++)
        keys += (double)visible_keys(sh, in->lens[b], s);
    return keys * sh->num_heads_q * (DQK + DV);
}

/* The i-th of k evenly spaced picks among `batch` sequences (the first and the last
 * included). */
static int32_t spaced_pick(int i, int k, int32_t batch)
{
    return k == 1 ? 0 : (int32_t)llround((double)i * (batch - 1) / (k - 1));
}

/* k evenly spaced sequences plus every empty one (free to check), ascending. */
static int pick_spaced(const bench_inputs *in, int k, int32_t *seqs)
{
    int n = 0, i = 0;
    for (int32_t b = 0; b < in->shape.batch; b++) {
        int take = in->lens[b] == 0;
        for (; i < k && spaced_pick(i, k, in->shape.batch) <= b; i++)
            take |= spaced_pick(i, k, in->shape.batch) == b;
        if (take)
            seqs[n++] = b;
    }
    return n;
}

static int pick_sequences(const bench_inputs *in, double budget, int32_t *seqs, int *subset)
{
    int32_t batch = in->shape.batch;
    double total = 0;
    for (int32_t b = 0; b < batch; b++)
        total += seq_macs(in, b);
    *subset = 0;
    if (total <= budget || batch <= 2) {
        for (int32_t b = 0; b < batch; b++)
            seqs[b] = b;
        return batch;
    }
    *subset = 1;
    int best = 2;
    for (int k = 3; k < batch; k++) { /* the largest evenly spaced set within budget */
        int n = pick_spaced(in, k, seqs);
        double cost = 0;
        for (int i = 0; i < n; i++)
            cost += seq_macs(in, seqs[i]);
        if (cost > budget)
            break;
        best = k;
    }
    return pick_spaced(in, best, seqs);
}

/* ---- entry --------------------------------------------------------------------------- */

void bench_verify_run(const bench_inputs *in, const uint16_t *out, const float *lse,
                      double budget_macs, int threads, bench_verify *v)
{
    double t0 = bench_now();
    const etap_mla_shape *sh = &in->shape;
    memset(v, 0, sizeof *v);
    int32_t *seqs = malloc(sizeof(int32_t) * (size_t)sh->batch);
    if (!seqs) {
        snprintf(v->seqs_checked, sizeof v->seqs_checked, "none (out of memory)");
        return;
    }
    int subset = 0;
    int n = pick_sequences(in, budget_macs, seqs, &subset);
    v->num_seqs_checked = n;
    if (!subset) {
        snprintf(v->seqs_checked, sizeof v->seqs_checked, "all %d sequence%s", (int)sh->batch,
                 sh->batch == 1 ? "" : "s");
    } else if (n <= 8) {
        size_t at = 0;
        for (int i = 0; i < n && at < sizeof v->seqs_checked; i++)
            at += (size_t)snprintf(v->seqs_checked + at, sizeof v->seqs_checked - at, "%s%d",
                                   i ? "," : "sequences ", (int)seqs[i]);
        if (at < sizeof v->seqs_checked)
            snprintf(v->seqs_checked + at, sizeof v->seqs_checked - at, " of %d",
                     (int)sh->batch);
    } else {
        int empty = 0;
        for (int i = 0; i < n; i++)
            empty += in->lens[seqs[i]] == 0;
        snprintf(v->seqs_checked, sizeof v->seqs_checked, "%d of %d sequences, evenly spaced%s",
                 n, (int)sh->batch, empty ? ", with every empty one" : "");
    }

    ref_job job = {in, out, lse, seqs, n * sh->num_heads_kv, 0, 0};
    atomic_init(&job.next, 0);
    if (threads > job.num_tasks)
        threads = job.num_tasks > 0 ? job.num_tasks : 1;
    if (threads > 256)
        threads = 256;
    ref_thread th[256];
    pthread_t tids[256];
    int created[256];
    for (int t = 0; t < threads; t++) {
        memset(&th[t], 0, sizeof th[t]);
        th[t].job = &job;
        created[t] = t > 0 && pthread_create(&tids[t], NULL, ref_worker, &th[t]) == 0;
    }
    ref_worker(&th[0]);
    stats all;
    memset(&all, 0, sizeof all);
    for (int t = 0; t < threads; t++) {
        if (t > 0 && created[t])
            pthread_join(tids[t], NULL);
        stats_merge(&all, &th[t].st);
    }
    free(seqs);

    v->rmse = all.count ? sqrt(all.sum_sq / (double)all.count) : 0.0;
    v->max_abs_err = all.max_abs;
    v->max_lse_err = all.max_lse;
    if (all.nn_ref == 0.0 && all.nn_out == 0.0)
        v->cos_diff = 0.0;
    else if (all.nn_ref == 0.0 || all.nn_out == 0.0)
        v->cos_diff = 1.0;
    else
        v->cos_diff = 1.0 - all.dot / sqrt(all.nn_out * all.nn_ref);
    v->bad_elems = all.bad_elems;
    v->bad_lse = all.bad_lse;
    v->nonfinite = all.nonfinite;
    v->pass = !job.failed_alloc && all.bad_elems == 0 && all.bad_lse == 0 &&
              all.nonfinite == 0 && v->cos_diff <= BENCH_TOL_COS_DIFF;
    if (job.failed_alloc)
        snprintf(v->seqs_checked, sizeof v->seqs_checked, "incomplete (out of memory)");
    v->seconds = bench_now() - t0;
}
