/*
 * reference.c - the double-precision oracle (see reference.h).
 *
 * Work is cut into items (sequence, KV head, block of up to REF_ROWS query rows of that
 * head); an item converts each key of its sequence to double once and reuses it for all of
 * its rows. Items run on a few POSIX threads; each writes disjoint rows, so the result does
 * not depend on the thread count.
 */
#define _POSIX_C_SOURCE 200809L
#include "reference.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"

#define REF_ROWS 8
#define REF_MAX_THREADS 16

int64_t ref_visible_keys(int32_t len, int32_t seqlen_q, int32_t causal, int32_t s)
{
    if (len <= 0)
        return 0;
    if (!causal || seqlen_q == 1)
        return len;
    int64_t v = (int64_t)len - seqlen_q + s + 1; /* t <= len - s_q + s */
    if (v < 0)
        v = 0;
    if (v > len)
        v = len;
    return v;
}

typedef struct ref_job {
    const etap_mla_args *a;
    double *out, *lse, *mag; /* mag may be NULL */
    double scale;
    int64_t num_items;
    int64_t next; /* guarded by lock */
    pthread_mutex_t lock;
    int failed;   /* out of memory in a worker */
} ref_job;

/* dst[0..n) = src[0..n) as doubles (fp16 through the table, bf16 by a shift). */
static void to_double(const float *fp16, const uint16_t *src, double *dst, int n)
{
    if (fp16) {
        for (int d = 0; d < n; d++)
            dst[d] = (double)fp16[src[d]];
    } else {
        for (int d = 0; d < n; d++) {
            uint32_t u = (uint32_t)src[d] << 16;
            float f;
            memcpy(&f, &u, 4);
            dst[d] = (double)f;
        }
    }
}

/* Address of element 0 of key/value row t of sequence b, KV head g. */
static const uint16_t *kv_row(const etap_mla_args *a, int32_t b, int64_t t, int32_t g)
{
    const etap_mla_shape *s = &a->shape;
    int64_t col = t / s->page_size;
    int64_t page = a->block_table[(int64_t)b * a->block_table_stride + col];
    int64_t off = page * a->kv_stride_page + (t % s->page_size) * a->kv_stride_token +
                  (int64_t)g * a->kv_stride_head;
    return (const uint16_t *)a->kv_cache + off;
}

static int run_item(ref_job *job, int64_t item, double *kbuf, size_t *score_cap, double **scores)
{
    const etap_mla_args *a = job->a;
    const etap_mla_shape *sh = &a->shape;
    const int32_t group = sh->num_heads_q / sh->num_heads_kv;
    const int32_t rows_per_head = sh->seqlen_q * group; /* rows sharing KV head g */
    const int64_t blocks = (rows_per_head + REF_ROWS - 1) / REF_ROWS;
    const int32_t b = (int32_t)(item / ((int64_t)sh->num_heads_kv * blocks));
    const int32_t g = (int32_t)(item / blocks % sh->num_heads_kv);
    const int32_t r0 = (int32_t)(item % blocks) * REF_ROWS;
    const int32_t nr = rows_per_head - r0 < REF_ROWS ? rows_per_head - r0 : REF_ROWS;
    const int32_t len = a->cache_seqlens[b];
    const float *fp16 = sh->dtype == ETAP_DTYPE_FP16 ? tu_fp16_table() : NULL;

    /* q transposed, qt[d][i], so that the score loop runs over rows (independent sums,
     * each still accumulated in the natural d order) */
    double qt[ETAP_HEAD_DIM_QK][REF_ROWS];
    int64_t vis[REF_ROWS];
    int64_t max_vis = 0;
    int32_t rs[REF_ROWS], rh[REF_ROWS];
    memset(qt, 0, sizeof qt);
    for (int32_t i = 0; i < nr; i++) {
        int32_t r = r0 + i;
        rs[i] = r / group;             /* query position */
        rh[i] = g * group + r % group; /* query head */
        const uint16_t *qp = (const uint16_t *)a->q + (int64_t)b * a->q_stride_batch +
                             (int64_t)rs[i] * a->q_stride_seq + (int64_t)rh[i] * a->q_stride_head;
        to_double(fp16, qp, kbuf, ETAP_HEAD_DIM_QK);
        for (int d = 0; d < ETAP_HEAD_DIM_QK; d++)
            qt[d][i] = kbuf[d];
        vis[i] = ref_visible_keys(len, sh->seqlen_q, sh->causal, rs[i]);
        if (vis[i] > max_vis)
            max_vis = vis[i];
    }

    size_t need = (size_t)(max_vis > 0 ? max_vis : 1) * REF_ROWS;
    if (need > *score_cap) {
        free(*scores);
        *scores = malloc(need * sizeof(double));
        if (!*scores) {
            *score_cap = 0;
            return -1;
        }
        *score_cap = need;
    }
    double *sc = *scores; /* sc[t * REF_ROWS + i] */

    /* pass 1: scores */
    for (int64_t t = 0; t < max_vis; t++) {
        const uint16_t *kp = kv_row(a, b, t, g);
        to_double(fp16, kp, kbuf, ETAP_HEAD_DIM_QK);
        double acc[REF_ROWS] = {0};
        for (int d = 0; d < ETAP_HEAD_DIM_QK; d++) {
            const double kd = kbuf[d];
            for (int i = 0; i < REF_ROWS; i++)
                acc[i] += qt[d][i] * kd;
        }
        for (int32_t i = 0; i < nr; i++)
            if (t < vis[i])
                sc[t * REF_ROWS + i] = acc[i] * job->scale;
    }
    /* softmax statistics */
    double mx[REF_ROWS], sum[REF_ROWS], top_mag[REF_ROWS];
    for (int32_t i = 0; i < nr; i++) {
        mx[i] = -INFINITY;
        int64_t top = 0;
        for (int64_t t = 0; t < vis[i]; t++)
            if (sc[t * REF_ROWS + i] > mx[i])
                mx[i] = sc[t * REF_ROWS + i], top = t;
        /* scale x sum |q_d k_d| of the top key: the size of the sums that a backend's
         * scores (and so its lse) are accumulated from */
        top_mag[i] = 0.0;
        if (job->mag && vis[i] > 0) {
            to_double(fp16, kv_row(a, b, top, g), kbuf, ETAP_HEAD_DIM_QK);
            for (int d = 0; d < ETAP_HEAD_DIM_QK; d++)
                top_mag[i] += fabs(qt[d][i] * kbuf[d]);
            top_mag[i] *= job->scale;
        }
        sum[i] = 0.0;
        for (int64_t t = 0; t < vis[i]; t++) {
            double e = exp(sc[t * REF_ROWS + i] - mx[i]);
            sc[t * REF_ROWS + i] = e;
            sum[i] += e;
        }
    }
    /* pass 2: weighted values */
    double acc[REF_ROWS][ETAP_HEAD_DIM_V];
    memset(acc, 0, sizeof acc);
    for (int64_t t = 0; t < max_vis; t++) {
        const uint16_t *vp = kv_row(a, b, t, g);
        to_double(fp16, vp, kbuf, ETAP_HEAD_DIM_V);
        for (int32_t i = 0; i < nr; i++) {
            if (t >= vis[i])
                continue;
            double p = sc[t * REF_ROWS + i];
            for (int d = 0; d < ETAP_HEAD_DIM_V; d++)
                acc[i][d] += p * kbuf[d];
        }
    }
    for (int32_t i = 0; i < nr; i++) {
        double *o = job->out + (((int64_t)b * sh->seqlen_q + rs[i]) * sh->num_heads_q + rh[i]) *
                                   ETAP_HEAD_DIM_V;
        const int64_t li = ((int64_t)b * sh->num_heads_q + rh[i]) * sh->seqlen_q + rs[i];
        double *l = job->lse + li;
        if (job->mag)
            job->mag[li] = top_mag[i];
        if (vis[i] == 0) {
            for (int d = 0; d < ETAP_HEAD_DIM_V; d++)
                o[d] = 0.0;
            *l = INFINITY;
        } else {
            for (int d = 0; d < ETAP_HEAD_DIM_V; d++)
                o[d] = acc[i][d] / sum[i];
            *l = mx[i] + log(sum[i]);
        }
    }
    return 0;
}

static void *worker(void *arg)
{
    ref_job *job = arg;
    double kbuf[ETAP_HEAD_DIM_QK];
    double *scores = NULL;
    size_t cap = 0;
    for (;;) {
        pthread_mutex_lock(&job->lock);
        int64_t item = job->next++;
        pthread_mutex_unlock(&job->lock);
        if (item >= job->num_items)
            break;
        if (run_item(job, item, kbuf, &cap, &scores) != 0) {
            pthread_mutex_lock(&job->lock);
            job->failed = 1;
            pthread_mutex_unlock(&job->lock);
            break;
        }
    }
    free(scores);
    return NULL;
}

void ref_mla_decode(const etap_mla_args *a, double *out, double *lse, int num_threads)
{
    ref_mla_decode_mag(a, out, lse, NULL, num_threads);
}

void ref_mla_decode_mag(const etap_mla_args *a, double *out, double *lse, double *mag,
                        int num_threads)
{
    const etap_mla_shape *sh = &a->shape;
    float scale_f = a->softmax_scale == ETAP_SOFTMAX_SCALE_DEFAULT
                        ? 1.0f / sqrtf((float)ETAP_HEAD_DIM_QK)
                        : a->softmax_scale;
    ref_job job;
    job.a = a;
    job.out = out;
    job.lse = lse;
    job.mag = mag;
    job.scale = (double)scale_f;
    int32_t rows_per_head = sh->seqlen_q * (sh->num_heads_q / sh->num_heads_kv);
    int64_t blocks = (rows_per_head + REF_ROWS - 1) / REF_ROWS;
    job.num_items = (int64_t)sh->batch * sh->num_heads_kv * blocks;
    job.next = 0;
    job.failed = 0;
    pthread_mutex_init(&job.lock, NULL);

    if (num_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        num_threads = n < 1 ? 1 : (int)n;
    }
    if (num_threads > REF_MAX_THREADS)
        num_threads = REF_MAX_THREADS;
    if (num_threads > job.num_items)
        num_threads = (int)job.num_items;
    pthread_t th[REF_MAX_THREADS];
    int started = 0;
    for (int i = 1; i < num_threads; i++)
        if (pthread_create(&th[started], NULL, worker, &job) == 0)
            started++;
    worker(&job);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&job.lock);
    if (job.failed) { /* make the failure impossible to miss */
        size_t nout = (size_t)sh->batch * sh->seqlen_q * sh->num_heads_q * ETAP_HEAD_DIM_V;
        for (size_t i = 0; i < nout; i++)
            out[i] = NAN;
    }
}
