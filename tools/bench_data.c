/*
 * bench_data.c - the inputs etap-bench feeds etap: random, reproducible from the seed,
 * never zeros.
 *
 * Values are approximately normal with standard deviation 1/4 (the randn/4 of the peer
 * measurements): the sum of four uniform 16-bit numbers, centred and scaled. Generation
 * is split into fixed chunks of 2^20 elements, each with its own generator seeded from
 * (seed, stream, chunk), so the data do not depend on the number of threads.
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

/* ---- numbers --------------------------------------------------------------------- */

static uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float bench_half_to_float(uint16_t h, etap_dtype dtype)
{
    if (dtype == ETAP_DTYPE_BF16)
        return bits_float((uint32_t)h << 16);
    /* fp16: 1 sign, 5 exponent (bias 15), 10 mantissa bits */
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    if (exp == 0x1f)
        return bits_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        float v = ldexpf((float)man, -24); /* subnormal (or zero) */
        return sign ? -v : v;
    }
    return bits_float(sign | ((exp + 112) << 23) | (man << 13));
}

/* Round to nearest even, as the GPU's conversions do. */
uint16_t bench_float_to_half(float f, etap_dtype dtype)
{
    uint32_t u = float_bits(f);
    if (dtype == ETAP_DTYPE_BF16) {
        if (isnan(f))
            return (uint16_t)((u >> 16) | 0x40);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (uint16_t)(u >> 16);
    }
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    float a = fabsf(f);
    if (isnan(f))
        return (uint16_t)(sign | 0x7e00);
    if (a >= 65520.0f) /* rounds to infinity */
        return (uint16_t)(sign | 0x7c00);
    if (a < 6.103515625e-05f) {
        /* subnormal: units of 2^-24, nearbyintf rounds half to even */
        return (uint16_t)(sign | (uint16_t)nearbyintf(a * 16777216.0f));
    }
    uint32_t ua = float_bits(a);
    ua += 0xfffu + ((ua >> 13) & 1u); /* round the 13 dropped bits to nearest even */
    uint32_t exp = (ua >> 23) - 112;
    uint32_t man = (ua >> 13) & 0x3ff;
    return (uint16_t)(sign | (exp << 10) | man);
}

int bench_online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n > 1024 ? 1024 : (int)n);
}

/* ---- random numbers -------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Approximately N(0, 1/16): four uniform 16-bit draws have mean 2 * 65535 and variance
 * 4 * (65536^2 - 1) / 12; centre, scale to unit variance, then by 1/4. */
static float randn_quarter(uint64_t *state)
{
    uint64_t r = splitmix64(state);
    double s = (double)(r & 0xffff) + (double)((r >> 16) & 0xffff) +
               (double)((r >> 32) & 0xffff) + (double)(r >> 48);
    const double mean = 2.0 * 65535.0;
    const double inv_sd = 1.0 / sqrt(4.0 * (65536.0 * 65536.0 - 1.0) / 12.0);
    return (float)((s - mean) * inv_sd * 0.25);
}

static uint64_t stream_seed(uint64_t seed, uint64_t stream, uint64_t chunk)
{
    uint64_t s = seed ^ (stream * 0xd1b54a32d192ed03ull);
    uint64_t a = splitmix64(&s);
    s = a ^ (chunk * 0x9e3779b97f4a7c15ull);
    return splitmix64(&s);
}

/* ---- parallel fill of a half-precision array ------------------------------------------ */

#define FILL_CHUNK ((size_t)1 << 20)

typedef struct fill_job {
    uint16_t *dst;
    size_t n;
    etap_dtype dtype;
    uint64_t seed, stream;
    int thread, threads;
} fill_job;

static void *fill_worker(void *arg)
{
    const fill_job *j = arg;
    size_t chunks = (j->n + FILL_CHUNK - 1) / FILL_CHUNK;
    for (size_t c = (size_t)j->thread; c < chunks; c += (size_t)j->threads) {
        uint64_t st = stream_seed(j->seed, j->stream, c);
        size_t end = (c + 1) * FILL_CHUNK < j->n ? (c + 1) * FILL_CHUNK : j->n;
        for (size_t i = c * FILL_CHUNK; i < end; i++)
            j->dst[i] = bench_float_to_half(randn_quarter(&st), j->dtype);
    }
    return NULL;
}

static void fill_random(uint16_t *dst, size_t n, etap_dtype dtype, uint64_t seed,
                        uint64_t stream)
{
    int threads = bench_online_cpus();
    if ((size_t)threads > n / FILL_CHUNK + 1)
        threads = (int)(n / FILL_CHUNK + 1);
    fill_job jobs[1024];
    pthread_t tids[1024];
    int created[1024];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (fill_job){dst, n, dtype, seed, stream, t, threads};
        created[t] = t > 0 && pthread_create(&tids[t], NULL, fill_worker, &jobs[t]) == 0;
    }
    fill_worker(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (created[t])
            pthread_join(tids[t], NULL);
        else
            fill_worker(&jobs[t]); /* no thread: do its chunks here */
    }
}

/* ---- inputs ---------------------------------------------------------------------- */

enum { STREAM_LENS = 1, STREAM_TABLE = 2, STREAM_Q = 3, STREAM_KV = 4 };

static void make_lengths(int32_t *lens, const bench_case *c, uint64_t seed)
{
    if (!c->varlen) {
        for (int32_t i = 0; i < c->batch; i++)
            lens[i] = c->seqlen_k;
        return;
    }
    uint64_t st = stream_seed(seed, STREAM_LENS, 0);
    uint64_t span = 2 * (uint64_t)c->seqlen_k; /* lengths in [1, 2 * s_k] */
    int zeros = 0;
    for (int32_t i = 0; i < c->batch; i++) {
        lens[i] = span == 0 ? 0 : (int32_t)(1 + splitmix64(&st) % span);
        if (c->batch > 1 && splitmix64(&st) % 8 == 0) {
            lens[i] = 0;
            zeros++;
        }
    }
    if (c->batch > 1 && zeros == 0) /* always at least one empty sequence */
        lens[splitmix64(&st) % (uint64_t)c->batch] = 0;
}

int bench_inputs_make(bench_inputs *in, const bench_case *c, uint64_t seed)
{
    memset(in, 0, sizeof *in);
    int64_t max_len = c->varlen ? 2 * (int64_t)c->seqlen_k : c->seqlen_k;
    int64_t max_pages = (max_len + c->page_size - 1) / c->page_size;
    if (max_pages < 1)
        max_pages = 1;
    int64_t num_pages = max_pages * c->batch;

    etap_mla_shape *s = &in->shape;
    s->batch = c->batch;
    s->seqlen_q = c->seqlen_q;
    s->num_heads_q = c->heads_q;
    s->num_heads_kv = c->heads_kv;
    s->head_dim_qk = ETAP_HEAD_DIM_QK;
    s->head_dim_v = ETAP_HEAD_DIM_V;
    s->page_size = c->page_size;
    s->num_pages = (int32_t)num_pages;
    s->max_pages_per_seq = (int32_t)max_pages;
    s->dtype = c->dtype;
    s->causal = c->causal;

    in->q_elems = (size_t)c->batch * c->seqlen_q * c->heads_q * ETAP_HEAD_DIM_QK;
    in->kv_elems = (size_t)num_pages * c->page_size * c->heads_kv * ETAP_HEAD_DIM_QK;
    in->lens = malloc(sizeof(int32_t) * (size_t)c->batch);
    in->block_table = malloc(sizeof(int32_t) * (size_t)num_pages);
    in->q = bench_host_alloc(sizeof(uint16_t) * in->q_elems);
    in->kv = bench_host_alloc(sizeof(uint16_t) * in->kv_elems);
    if (!in->lens || !in->block_table || !in->q || !in->kv) {
        bench_inputs_free(in);
        return -1;
    }

    make_lengths(in->lens, c, seed);
    in->sum_len = 0;
    for (int32_t i = 0; i < c->batch; i++)
        in->sum_len += in->lens[i];

    /* A random page table: a Fisher-Yates shuffle of every page. */
    uint64_t st = stream_seed(seed, STREAM_TABLE, 0);
    for (int64_t i = 0; i < num_pages; i++)
        in->block_table[i] = (int32_t)i;
    for (int64_t i = num_pages - 1; i > 0; i--) {
        int64_t j = (int64_t)(splitmix64(&st) % (uint64_t)(i + 1));
        int32_t t = in->block_table[i];
        in->block_table[i] = in->block_table[j];
        in->block_table[j] = t;
    }

    fill_random(in->q, in->q_elems, c->dtype, seed, STREAM_Q);
    fill_random(in->kv, in->kv_elems, c->dtype, seed, STREAM_KV);

    /* Poison every slot past a sequence's length: no correct kernel reads them into a
     * result. The permutation gives each page to exactly one (sequence, column). */
    uint16_t nan_bits = bench_float_to_half(NAN, c->dtype);
    size_t token_elems = (size_t)c->heads_kv * ETAP_HEAD_DIM_QK;
    for (int32_t b = 0; b < c->batch; b++) {
        for (int64_t col = 0; col < max_pages; col++) {
            int64_t first = col * c->page_size;
            if (first + c->page_size <= in->lens[b])
                continue;
            int32_t page = in->block_table[b * max_pages + col];
            for (int32_t t = 0; t < c->page_size; t++) {
                if (first + t < in->lens[b])
                    continue;
                uint16_t *row = in->kv + ((size_t)page * c->page_size + (size_t)t) * token_elems;
                for (size_t e = 0; e < token_elems; e++)
                    row[e] = nan_bits;
            }
        }
    }
    return 0;
}

void bench_inputs_free(bench_inputs *in)
{
    free(in->lens);
    free(in->block_table);
    free(in->q);
    free(in->kv);
    memset(in, 0, sizeof *in);
}

double bench_bytes(const bench_inputs *in)
{
    const etap_mla_shape *s = &in->shape;
    double kv = (double)in->sum_len * s->num_heads_kv * ETAP_HEAD_DIM_QK;
    double q_out = (double)s->batch * s->seqlen_q * s->num_heads_q *
                   (ETAP_HEAD_DIM_QK + ETAP_HEAD_DIM_V);
    return (kv + q_out) * 2.0;
}

double bench_flops(const bench_inputs *in)
{
    const etap_mla_shape *s = &in->shape;
    return 2.0 * s->seqlen_q * s->num_heads_q * (double)in->sum_len *
           (ETAP_HEAD_DIM_QK + ETAP_HEAD_DIM_V);
}
