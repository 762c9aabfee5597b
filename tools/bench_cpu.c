/*
 * bench_cpu.c - wall-clock helpers and the CPU streaming-read ceiling.
 *
 * The ceiling is what the CPU backend's decode could reach if it did nothing but read
 * its bytes: `threads` threads (the backend's count) each stream through their slice
 * of a buffer far larger than the last-level cache with 16-byte vector loads, XOR-ing
 * them into four independent accumulators whose result is kept live.
 */
#define _DEFAULT_SOURCE /* sysconf(_SC_LEVEL3_CACHE_SIZE) of glibc */

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *values, int n)
{
    if (n <= 0)
        return 0.0;
    qsort(values, (size_t)n, sizeof *values, cmp_double);
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

double bench_min(const double *values, int n)
{
    double m = n > 0 ? values[0] : 0.0;
    for (int i = 1; i < n; i++)
        m = values[i] < m ? values[i] : m;
    return m;
}

/* ---- host memory ------------------------------------------------------------------ */

void *bench_host_alloc(size_t bytes)
{
    size_t rounded = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, rounded ? rounded : 64);
}

size_t bench_llc_bytes(void)
{
#if defined(_SC_LEVEL3_CACHE_SIZE)
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0)
        return (size_t)l3;
#endif
#if defined(_SC_LEVEL2_CACHE_SIZE)
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (l2 > 0)
        return (size_t)l2;
#endif
    return (size_t)32 << 20; /* unknown: assume a large server LLC */
}

/* ---- streaming-read ceiling ----------------------------------------------------------- */

/* 16 bytes: one SSE/NEON register, the width of the loads the ceiling is defined with. */
typedef uint32_t vec16 __attribute__((vector_size(16)));

typedef struct read_slice {
    vec16 *p;
    size_t n;     /* vectors */
    int write;    /* 1: first touch (fill), 0: read */
    vec16 result; /* kept so that the loads cannot be optimised away */
} read_slice;

static void *read_worker(void *arg)
{
    read_slice *s = arg;
    if (s->write) {
        vec16 v = {0x9e3779b9u, 0x7f4a7c15u, 0x85ebca6bu, 0xc2b2ae35u};
        for (size_t i = 0; i < s->n; i++)
            s->p[i] = v + (uint32_t)i;
        return NULL;
    }
    vec16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    size_t i = 0;
    for (; i + 4 <= s->n; i += 4) {
        a0 ^= s->p[i];
        a1 ^= s->p[i + 1];
        a2 ^= s->p[i + 2];
        a3 ^= s->p[i + 3];
    }
    for (; i < s->n; i++)
        a0 ^= s->p[i];
    s->result = (a0 ^ a1) ^ (a2 ^ a3);
    return NULL;
}

/* One pass over the buffer by `threads` threads; returns its wall time in seconds. */
static double read_pass(vec16 *buf, size_t n, int threads, int write, vec16 *sink)
{
    read_slice slices[1024];
    pthread_t tids[1024];
    int created[1024];
    size_t per = n / (size_t)threads;
    double t0 = bench_now();
    for (int t = 0; t < threads; t++) {
        size_t begin = per * (size_t)t, end = t == threads - 1 ? n : begin + per;
        slices[t] = (read_slice){buf + begin, end - begin, write, {0}};
        created[t] = t > 0 && pthread_create(&tids[t], NULL, read_worker, &slices[t]) == 0;
    }
    read_worker(&slices[0]);
    for (int t = 1; t < threads; t++) {
        if (created[t])
            pthread_join(tids[t], NULL);
        else
            read_worker(&slices[t]);
    }
    double dt = bench_now() - t0;
    for (int t = 0; t < threads; t++)
        *sink ^= slices[t].result;
    return dt;
}

volatile uint32_t bench_read_sink; /* the XOR of everything read, so reads stay live */

double bench_cpu_read_ceiling(size_t bytes, int threads, int reps)
{
    if (threads < 1)
        threads = 1;
    if (threads > 1024)
        threads = 1024;
    if (reps < 1)
        reps = 1;
    bytes = bytes / 64 * 64;
    vec16 *buf = bench_host_alloc(bytes);
    if (!buf)
        return -1.0;
    size_t n = bytes / sizeof(vec16);
    vec16 sink = {0};
    read_pass(buf, n, threads, 1, &sink); /* first touch by the readers' own threads */
    read_pass(buf, n, threads, 0, &sink); /* warm-up */
    double times[64];
    if (reps > 64)
        reps = 64;
    for (int r = 0; r < reps; r++)
        times[r] = read_pass(buf, n, threads, 0, &sink);
    bench_read_sink = sink[0] ^ sink[1] ^ sink[2] ^ sink[3];
    free(buf);
    return (double)bytes / bench_median(times, reps) * 1e-9;
}
