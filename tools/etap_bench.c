/*
 * etap_bench.c - etap-bench: verify one MLA decode call, then time it.
 *
 * For every case: build random inputs, make the plan once, run etap_decode once and
 * compare it with a double-precision reference (bench_reference.c), then time the
 * plan-reused decode on KV caches rotated so that the cache is cold, and report us per
 * call, GB/s, % of a streaming-read ceiling measured in the same run, TFLOP/s, the ratio
 * to the floor and, on CUDA, to the peers of PEERS-H200.md. docs/benchmark.md is the
 * manual.
 */
#define _POSIX_C_SOURCE 200809L

#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "peers_h200.h"
#include "plan.h"
#include "trace_slots.h"

#ifndef ETAP_BENCH_PLOT_SCRIPT /* set by tools/CMakeLists.txt to the absolute path */
#define ETAP_BENCH_PLOT_SCRIPT "tools/plot_grid.py"
#endif

enum { EXIT_VERIFY_FAILED = 1, EXIT_USAGE = 2, EXIT_RUNTIME = 3 };

/* The default cases. The CPU one finishes in a few seconds on two cores. */
static const bench_case kCudaDefault = {16, 1, 16, 1, 65536, 64, ETAP_DTYPE_BF16, 0, 0};
static const bench_case kCpuDefault = {4, 1, 16, 1, 16384, 64, ETAP_DTYPE_BF16, 0, 0};

/* --sweep: shapes the peer grid does not have, where a path of the library that the grid
 * never takes could be slow (b = 2-8 ran the combine in waves until v26, docs/perf.md). */
#define BF ETAP_DTYPE_BF16
static const bench_case kSweep[] = {
    /* few sequences: the block combine (b <= 4) and the warp combine's first batches */
    {2, 1, 16, 1, 8192, 64, BF, 0, 0}, {3, 1, 16, 1, 8192, 64, BF, 0, 0},
    {4, 1, 16, 1, 8192, 64, BF, 0, 0}, {5, 1, 16, 1, 8192, 64, BF, 0, 0},
    {6, 1, 16, 1, 8192, 64, BF, 0, 0}, {7, 1, 16, 1, 8192, 64, BF, 0, 0},
    {8, 1, 16, 1, 8192, 64, BF, 0, 0}, {4, 1, 16, 1, 32768, 64, BF, 0, 0},
    /* more KV heads, 16 rows each */
    {32, 1, 32, 2, 4096, 64, BF, 0, 0}, {16, 1, 64, 4, 4096, 64, BF, 0, 0},
    {8, 1, 128, 8, 8192, 64, BF, 0, 0},
    /* row counts between the kernels' N (16 / 32 / 48 / 64, row groups above) */
    {64, 1, 1, 1, 4096, 64, BF, 0, 0}, {64, 1, 8, 1, 4096, 64, BF, 0, 0},
    {64, 1, 24, 1, 4096, 64, BF, 0, 0}, {64, 1, 40, 1, 4096, 64, BF, 0, 0},
    {64, 1, 48, 1, 4096, 64, BF, 0, 0}, {64, 1, 96, 1, 4096, 64, BF, 0, 0},
    {64, 3, 16, 1, 4096, 64, BF, 1, 0}, {64, 4, 16, 1, 4096, 64, BF, 1, 0},
    /* pages, dtype, random lengths, an odd length */
    {64, 1, 16, 1, 4096, 128, BF, 0, 0}, {64, 1, 16, 1, 4096, 256, BF, 0, 0},
    {64, 1, 16, 1, 4096, 64, ETAP_DTYPE_FP16, 0, 0}, {64, 1, 16, 1, 4096, 64, BF, 0, 1},
    {16, 1, 16, 1, 16384, 64, BF, 0, 1}, {8, 1, 16, 1, 8192, 64, BF, 0, 1},
    {48, 1, 16, 1, 3000, 64, BF, 0, 0},
    /* large batches */
    {256, 1, 16, 1, 4096, 64, BF, 0, 0}, {512, 1, 16, 1, 1024, 64, BF, 0, 0},
    {1024, 1, 16, 1, 2048, 64, BF, 0, 0},
};
#undef BF
#define BENCH_NUM_SWEEP ((int)(sizeof kSweep / sizeof kSweep[0]))

/* KV caches are rotated until at least this many bytes are cycled (and never fewer than
 * two caches): far more than any L2 or LLC, so every call reads its cache from DRAM. */
#define ROTATE_BYTES ((size_t)256 << 20)
#define CUDA_MIN_CALLS_PER_GRAPH 8
#define CUDA_DEFAULT_REPLAYS 30
#define CUDA_LAUNCH_US 2.0 /* the floor's constant: one launch plus a DRAM round trip */
#define CPU_TIME_BUDGET_S 2.0
#define CPU_MIN_ITERS 5
#define CPU_MAX_ITERS 1000
/* CPU ceiling buffer: max(256 MiB, 8 x LLC), at most 1 GiB and 1/8 of the memory. The
 * first touch of every page is most of its cost on small VMs, hence not always 1 GiB. */
#define CPU_CEILING_MIN_BYTES ((size_t)256 << 20)
#define CPU_CEILING_MAX_BYTES ((size_t)1 << 30)
#define CEILING_REPS 7
/* Reference multiply-adds per reference thread before verification takes a subset of
 * the sequences (about a second of double-precision work per thread). */
#define REF_MACS_PER_THREAD 1.5e9

/* ------------------------------------------------------------------------------------ */
/* options                                                                              */

typedef struct options {
    bench_case c;
    int shape_given; /* any shape option on the command line */
    etap_backend backend;
    int device;
    int threads;
    int iters; /* 0 = automatic */
    uint64_t seed;
    int grid;
    int sweep;
    int verify;
    int trace;
    const char *json;
    const char *plot;
} options;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: etap-bench [options]\n"
        "\n"
        "Verifies one etap MLA decode call against a double-precision reference, then\n"
        "times it: us per call, GB/s, %% of the streaming-read ceiling measured in the same\n"
        "run, TFLOP/s, x the floor, and on CUDA the ratio to the peers of PEERS-H200.md.\n"
        "Default case: with a usable CUDA device b=16 s_q=1 h_q=16 h_kv=1 s_k=65536 page 64\n"
        "bf16 (the ETAP paper's case); else the CPU backend on b=4 s_k=16384.\n"
        "\n"
        "shape (each replaces one field of the default case):\n"
        "  --batch N         sequences, 1..4096\n"
        "  --seqlen-q N      query tokens per sequence, 1..1024 (> 1 for MTP)\n"
        "  --heads-q N       query heads, 1..1024\n"
        "  --heads-kv N      KV heads, 1..1024, dividing --heads-q\n"
        "  --seqlen-k N      cached tokens per sequence, 0..16M (suffix K or M: 64K)\n"
        "  --page-size N     tokens per cache page, 1..65536\n"
        "  --dtype T         bf16 or fp16\n"
        "  --causal          causal mask, bottom-right aligned (matters when s_q > 1)\n"
        "  --varlen          random lengths in [1, 2*seqlen-k], about 1 in 8 of them 0\n"
        "run:\n"
        "  --backend B       auto, cpu or cuda (default auto: CUDA when usable)\n"
        "  --device N        CUDA device ordinal (default 0)\n"
        "  --threads N       CPU backend threads, 0 = every processor (default 0)\n"
        "  --iters N         CUDA: graph replays (default %d); CPU: timed calls\n"
        "                    (default: about %.0f s worth, %d..%d)\n"
        "  --seed N          seed of the random inputs (default 1)\n"
        "  --grid            the h_q=16 grid of PEERS-H200.md and its more-query-rows\n"
        "                    cases (no shape options with it)\n"
        "  --sweep           shapes off that grid: 2-8 sequences, 2-8 KV heads, odd head\n"
        "                    counts, s_q 3-4, pages 128/256, fp16, varlen, b up to 1024\n"
        "  --no-verify       skip the check against the reference\n"
        "  --trace           one case, with a library built with -DETAP_TRACE=ON: print the\n"
        "                    CTA timeline of the last timed call (docs/perf.md)\n"
        "  --json FILE       write every result as JSON\n"
        "  --plot FILE       with --grid: draw GB/s against s_k into FILE (PNG, needs\n"
        "                    python3 with matplotlib)\n"
        "  -h, --help        this text\n"
        "\n"
        "exit status: 0 ok, 1 verification failed, 2 bad options, 3 runtime error\n",
        CUDA_DEFAULT_REPLAYS, CPU_TIME_BUDGET_S, CPU_MIN_ITERS, CPU_MAX_ITERS);
}

static int bad_option(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "etap-bench: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, " (etap-bench --help lists the options)\n");
    return -1;
}

/* A decimal integer with an optional K (x1024) or M (x1048576) suffix, in [lo, hi]. */
static int parse_int(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || errno == ERANGE || s[0] == ' ' || s[0] == '\t')
        return bad_option("%s: '%s' is not a number", opt, s);
    long long mult = 1;
    if (*end == 'k' || *end == 'K')
        mult = 1024, end++;
    else if (*end == 'm' || *end == 'M')
        mult = 1024 * 1024, end++;
    if (*end != '\0')
        return bad_option("%s: '%s' is not a number", opt, s);
    if (v > hi / mult || v < lo / mult || v * mult < lo || v * mult > hi) {
        char range[96];
        snprintf(range, sizeof range, "%s: out of range [%lld, %lld]", s, (long long)lo,
                 (long long)hi);
        return bad_option("%s: %s", opt, range);
    }
    *out = v * mult;
    return 0;
}

static int parse_u64(const char *opt, const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    if (s[0] < '0' || s[0] > '9')
        return bad_option("%s: '%s' is not a non-negative integer", opt, s);
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || errno == ERANGE)
        return bad_option("%s: '%s' is not a non-negative 64-bit integer", opt, s);
    *out = v;
    return 0;
}

/* Returns 0 to run, 1 after --help, -1 on a bad option (already reported). */
static int parse_options(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof *o);
    o->backend = ETAP_BACKEND_AUTO;
    o->seed = 1;
    o->verify = 1;
    int given_batch = 0, given_sq = 0, given_hq = 0, given_hkv = 0, given_sk = 0,
        given_page = 0, given_dtype = 0, given_causal = 0, given_varlen = 0;
    bench_case set = {0};

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
            return 1;
        }
        if (strncmp(arg, "--", 2) != 0)
            return bad_option("unexpected argument '%s'%s", arg, "");
        /* split "--name=value" */
        char name[64];
        const char *eq = strchr(arg, '=');
        size_t n = eq ? (size_t)(eq - arg) : strlen(arg);
        if (n >= sizeof name)
            return bad_option("unknown option '%s'%s", arg, "");
        memcpy(name, arg, n);
        name[n] = '\0';

        /* flags */
        int *flag = NULL;
        if (strcmp(name, "--causal") == 0)
            flag = &given_causal;
        else if (strcmp(name, "--varlen") == 0)
            flag = &given_varlen;
        else if (strcmp(name, "--grid") == 0)
            flag = &o->grid;
        else if (strcmp(name, "--sweep") == 0)
            flag = &o->sweep;
        else if (strcmp(name, "--trace") == 0)
            flag = &o->trace;
        if (flag || strcmp(name, "--no-verify") == 0) {
            if (eq)
                return bad_option("%s takes no value (got '%s')", name, eq + 1);
            if (flag)
                *flag = 1;
            else
                o->verify = 0;
            continue;
        }

        /* options with a value */
        static const char *const valued[] = {
            "--batch", "--seqlen-q", "--heads-q", "--heads-kv", "--seqlen-k", "--page-size",
            "--dtype", "--backend", "--device", "--threads", "--iters", "--seed", "--json",
            "--plot"};
        int known = 0;
        for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++)
            known |= strcmp(name, valued[k]) == 0;
        if (!known)
            return bad_option("unknown option '%s'%s", name, "");
        const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!val)
            return bad_option("%s needs a value%s", name, "");
        int64_t v = 0;
        if (strcmp(name, "--batch") == 0) {
            if (parse_int(name, val, 1, 4096, &v))
                return -1;
            set.batch = (int32_t)v, given_batch = 1;
        } else if (strcmp(name, "--seqlen-q") == 0) {
            if (parse_int(name, val, 1, 1024, &v))
                return -1;
            set.seqlen_q = (int32_t)v, given_sq = 1;
        } else if (strcmp(name, "--heads-q") == 0) {
            if (parse_int(name, val, 1, 1024, &v))
                return -1;
            set.heads_q = (int32_t)v, given_hq = 1;
        } else if (strcmp(name, "--heads-kv") == 0) {
            if (parse_int(name, val, 1, 1024, &v))
                return -1;
            set.heads_kv = (int32_t)v, given_hkv = 1;
        } else if (strcmp(name, "--seqlen-k") == 0) {
            if (parse_int(name, val, 0, 16 << 20, &v))
                return -1;
            set.seqlen_k = (int32_t)v, given_sk = 1;
        } else if (strcmp(name, "--page-size") == 0) {
            if (parse_int(name, val, 1, 65536, &v))
                return -1;
            set.page_size = (int32_t)v, given_page = 1;
        } else if (strcmp(name, "--dtype") == 0) {
            if (strcmp(val, "bf16") == 0)
                set.dtype = ETAP_DTYPE_BF16;
            else if (strcmp(val, "fp16") == 0)
                set.dtype = ETAP_DTYPE_FP16;
            else
                return bad_option("--dtype: '%s' is not bf16 or fp16%s", val, "");
            given_dtype = 1;
        } else if (strcmp(name, "--backend") == 0) {
            if (strcmp(val, "auto") == 0)
                o->backend = ETAP_BACKEND_AUTO;
            else if (strcmp(val, "cpu") == 0)
                o->backend = ETAP_BACKEND_CPU;
            else if (strcmp(val, "cuda") == 0)
                o->backend = ETAP_BACKEND_CUDA;
            else
                return bad_option("--backend: '%s' is not auto, cpu or cuda%s", val, "");
        } else if (strcmp(name, "--device") == 0) {
            if (parse_int(name, val, 0, 1023, &v))
                return -1;
            o->device = (int)v;
        } else if (strcmp(name, "--threads") == 0) {
            if (parse_int(name, val, 0, 1024, &v))
                return -1;
            o->threads = (int)v;
        } else if (strcmp(name, "--iters") == 0) {
            if (parse_int(name, val, 1, 1000000, &v))
                return -1;
            o->iters = (int)v;
        } else if (strcmp(name, "--seed") == 0) {
            if (parse_u64(name, val, &o->seed))
                return -1;
        } else if (strcmp(name, "--json") == 0) {
            if (!val[0])
                return bad_option("--json needs a file name%s%s", "", "");
            o->json = val;
        } else if (strcmp(name, "--plot") == 0) {
            if (!val[0])
                return bad_option("--plot needs a file name%s%s", "", "");
            o->plot = val;
        }
    }

    o->shape_given = given_batch | given_sq | given_hq | given_hkv | given_sk | given_page |
                     given_dtype | given_causal | given_varlen;
    if (o->grid && o->sweep)
        return bad_option("--grid and --sweep are two runs: pick one%s%s", "", "");
    if ((o->grid || o->sweep) && o->shape_given)
        return bad_option("%s runs fixed shapes: drop the shape options%s", o->grid ? "--grid" : "--sweep", "");
    if (o->trace && (o->grid || o->sweep))
        return bad_option("--trace prints one case's timeline: drop %s%s", o->grid ? "--grid" : "--sweep", "");
    if (o->plot && !o->grid)
        return bad_option("--plot draws the grid: add --grid%s%s", "", "");
    if (o->plot && strchr(o->plot, '\''))
        return bad_option("--plot: file name '%s' must not contain a quote%s", o->plot, "");
    if (o->json && o->plot && strchr(o->json, '\''))
        return bad_option("--json: file name '%s' must not contain a quote%s", o->json, "");

    /* The base case is chosen in main (it depends on the backend); remember the
     * overrides in o->c with a marker per field: -1 = not given. */
    o->c.batch = given_batch ? set.batch : -1;
    o->c.seqlen_q = given_sq ? set.seqlen_q : -1;
    o->c.heads_q = given_hq ? set.heads_q : -1;
    o->c.heads_kv = given_hkv ? set.heads_kv : -1;
    o->c.seqlen_k = given_sk ? set.seqlen_k : -1;
    o->c.page_size = given_page ? set.page_size : -1;
    o->c.dtype = given_dtype ? set.dtype : (etap_dtype)-1;
    o->c.causal = given_causal;
    o->c.varlen = given_varlen;
    return 0;
}

/* The default case of the backend with the command line's fields put over it. */
static bench_case apply_overrides(bench_case base, const bench_case *over)
{
    if (over->batch >= 0) base.batch = over->batch;
    if (over->seqlen_q >= 0) base.seqlen_q = over->seqlen_q;
    if (over->heads_q >= 0) base.heads_q = over->heads_q;
    if (over->heads_kv >= 0) base.heads_kv = over->heads_kv;
    if (over->seqlen_k >= 0) base.seqlen_k = over->seqlen_k;
    if (over->page_size >= 0) base.page_size = over->page_size;
    if ((int)over->dtype >= 0) base.dtype = over->dtype;
    base.causal = over->causal;
    base.varlen = over->varlen;
    return base;
}

/* Checks what the option ranges alone cannot; returns 0 or reports and returns -1. */
static int check_case(const bench_case *c)
{
    char a[64], b[64];
    if (c->heads_q % c->heads_kv != 0) {
        snprintf(a, sizeof a, "%d", (int)c->heads_q);
        snprintf(b, sizeof b, "%d", (int)c->heads_kv);
        return bad_option("--heads-q %s is not a multiple of --heads-kv %s", a, b);
    }
    int64_t max_len = c->varlen ? 2 * (int64_t)c->seqlen_k : c->seqlen_k;
    int64_t pages = (max_len + c->page_size - 1) / c->page_size;
    if ((pages < 1 ? 1 : pages) * c->batch > INT32_MAX) {
        snprintf(a, sizeof a, "%lld", (long long)(pages * c->batch));
        return bad_option("the KV cache would have %s pages: at most 2^31-1%s", a, "");
    }
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* the run's environment                                                                */

typedef struct bench_env {
    etap_handle h;
    etap_backend backend;
    int cpu_threads;   /* CPU backend threads (also the CPU ceiling's) */
    int iters;         /* 0 = automatic */
    uint64_t seed;
    int verify;
    int ref_threads;
    double ceiling_gbps;
    double ceiling_first_gbps; /* CUDA grid: measured before the cases ... */
    double ceiling_again_gbps; /* ... and after them (0: not measured); the higher is used */
    size_t ceiling_bytes;
    void *stream;      /* CUDA */
    char device_name[256];
    size_t rotate_bytes;
} bench_env;

static int on_cuda(const bench_env *e) { return e->backend == ETAP_BACKEND_CUDA; }

/* ---- memory of the backend: host for the CPU, device for CUDA ---------------------- */

static void *buf_alloc(const bench_env *e, size_t bytes)
{
#if defined(ETAP_BENCH_WITH_CUDA)
    if (on_cuda(e))
        return bench_cuda_malloc(bytes);
#endif
    (void)e;
    return bench_host_alloc(bytes);
}

static void buf_free(const bench_env *e, void *p)
{
#if defined(ETAP_BENCH_WITH_CUDA)
    if (on_cuda(e)) {
        bench_cuda_free(p);
        return;
    }
#endif
    (void)e;
    free(p);
}

/* dir: 0 host to backend, 1 backend to host, 2 backend to backend */
static int buf_copy(const bench_env *e, void *dst, const void *src, size_t bytes, int dir)
{
#if defined(ETAP_BENCH_WITH_CUDA)
    if (on_cuda(e))
        return dir == 0 ? bench_cuda_upload(dst, src, bytes)
                        : dir == 1 ? bench_cuda_download(dst, src, bytes)
                                   : bench_cuda_copy(dst, src, bytes);
#endif
    (void)e, (void)dir;
    memcpy(dst, src, bytes);
    return 0;
}

static int buf_set(const bench_env *e, void *dst, int value, size_t bytes)
{
#if defined(ETAP_BENCH_WITH_CUDA)
    if (on_cuda(e))
        return bench_cuda_memset(dst, value, bytes);
#endif
    (void)e;
    memset(dst, value, bytes);
    return 0;
}

static const char *backend_error(const bench_env *e)
{
#if defined(ETAP_BENCH_WITH_CUDA)
    if (on_cuda(e))
        return bench_cuda_error();
#endif
    (void)e;
    return "out of host memory";
}

/* ------------------------------------------------------------------------------------ */
/* one case                                                                             */

/* UNSUPPORTED: the backend refused the shape (ETAP_ERR_UNSUPPORTED); in a grid that is
 * reported, not an error of the run. */
enum { CASE_OK, CASE_FAILED, CASE_ERROR, CASE_UNSUPPORTED };

typedef struct case_result {
    bench_case c;
    int status;
    char error[600];
    int64_t sum_len;
    int empty_seqs;
    double kv_mb; /* one cache, MB = 1e6 bytes */
    int32_t num_workers, total_splits;
    int verified;
    bench_verify v;
    int timed;
    double us, us_min;
    int samples;         /* CUDA: replays; CPU: calls */
    int calls_per_graph; /* CUDA */
    int kv_caches;
    double bytes, flops, gbps, pct_ceiling, tflops, floor_us, x_floor;
    const bench_peer_row *peer;
} case_result;

static const char *dtype_name(etap_dtype d) { return d == ETAP_DTYPE_FP16 ? "fp16" : "bf16"; }

static void describe(const bench_case *c, char *buf, size_t n)
{
    snprintf(buf, n, "b=%d s_q=%d h_q=%d h_kv=%d s_k=%d page=%d %s%s%s", (int)c->batch,
             (int)c->seqlen_q, (int)c->heads_q, (int)c->heads_kv, (int)c->seqlen_k,
             (int)c->page_size, dtype_name(c->dtype), c->causal ? " causal" : "",
             c->varlen ? " varlen" : "");
}

/* The PEERS-H200.md row measured on exactly this case, or NULL. */
static const bench_peer_row *find_peer(const bench_case *c)
{
    if (c->heads_kv != 1 || c->page_size != BENCH_PEERS_PAGE_SIZE ||
        c->dtype != ETAP_DTYPE_BF16 || c->varlen || c->causal != (c->seqlen_q > 1))
        return NULL;
    for (int i = 0; i < BENCH_NUM_PEER_ROWS; i++) {
        const bench_peer_row *p = &bench_peers_h200[i];
        if (p->batch == c->batch && p->seqlen_q == c->seqlen_q && p->heads_q == c->heads_q &&
            p->seqlen_k == c->seqlen_k)
            return p;
    }
    return NULL;
}

typedef struct decode_ctx {
    etap_handle h;
    etap_mla_args args;
    void **caches;
    int num_caches;
    const void *plan;
    size_t plan_bytes;
    void *ws;
    size_t ws_bytes;
    etap_status status;
} decode_ctx;

static etap_status decode_call(decode_ctx *d, int call, void *stream)
{
    d->args.kv_cache = d->caches[call % d->num_caches];
    d->status = etap_decode(d->h, &d->args, d->plan, d->plan_bytes, d->ws, d->ws_bytes, stream);
    return d->status;
}

#if defined(ETAP_BENCH_WITH_CUDA)
static int enqueue_decode(void *ctx, int call, void *stream)
{
    return decode_call(ctx, call, stream) != ETAP_OK;
}
#endif

static int case_error(case_result *r, const char *what, etap_status st)
{
    snprintf(r->error, sizeof r->error, "%s: %s: %s", what, etap_status_string(st),
             etap_last_error_message());
    r->status = st == ETAP_ERR_UNSUPPORTED ? CASE_UNSUPPORTED : CASE_ERROR;
    return -1;
}

/* How many distinct KV caches to cycle: enough for rotate_bytes, at least two, as many
 * as memory allows (`room` bytes). */
static int caches_to_rotate(size_t cache_bytes, size_t rotate_bytes, size_t room)
{
    size_t want = (rotate_bytes + cache_bytes - 1) / (cache_bytes ? cache_bytes : 1);
    if (want < 2)
        want = 2;
    size_t fit = room / (cache_bytes ? cache_bytes : 1);
    if (want > fit)
        want = fit;
    return (int)(want > 4096 ? 4096 : want);
}

static void time_cpu(const bench_env *e, decode_ctx *d, case_result *r)
{
    /* One untimed call warms the threads and tells how many calls fit the budget. */
    double t0 = bench_now();
    if (decode_call(d, 1, NULL) != ETAP_OK) {
        case_error(r, "etap_decode", d->status);
        return;
    }
    double first = bench_now() - t0;
    int iters = e->iters;
    if (iters == 0) {
        double fit = CPU_TIME_BUDGET_S / (first > 1e-9 ? first : 1e-9);
        iters = fit < CPU_MIN_ITERS   ? CPU_MIN_ITERS
                : fit > CPU_MAX_ITERS ? CPU_MAX_ITERS
                                      : (int)fit;
    }
    double *t = malloc(sizeof(double) * (size_t)iters);
    if (!t) {
        snprintf(r->error, sizeof r->error, "out of host memory");
        r->status = CASE_ERROR;
        return;
    }
    for (int i = 0; i < iters; i++) {
        double a = bench_now();
        if (decode_call(d, i, NULL) != ETAP_OK) {
            free(t);
            case_error(r, "etap_decode", d->status);
            return;
        }
        t[i] = (bench_now() - a) * 1e6;
    }
    r->us_min = bench_min(t, iters);
    r->us = bench_median(t, iters);
    r->samples = iters;
    r->timed = 1;
    free(t);
}

#if defined(ETAP_BENCH_WITH_CUDA)
static void time_cuda(const bench_env *e, decode_ctx *d, case_result *r)
{
    int calls = d->num_caches > CUDA_MIN_CALLS_PER_GRAPH ? d->num_caches : CUDA_MIN_CALLS_PER_GRAPH;
    int replays = e->iters ? e->iters : CUDA_DEFAULT_REPLAYS;
    double *ms = malloc(sizeof(double) * (size_t)replays);
    if (!ms) {
        snprintf(r->error, sizeof r->error, "out of host memory");
        r->status = CASE_ERROR;
        return;
    }
    /* One eager call first, so that etap's first call (and lazy module loading) never
     * happens inside the capture, even with --no-verify. */
    if (decode_call(d, 0, e->stream) != ETAP_OK) {
        free(ms);
        case_error(r, "etap_decode", d->status);
        return;
    }
    if (bench_cuda_stream_sync(e->stream) != 0) {
        free(ms);
        snprintf(r->error, sizeof r->error, "etap_decode: %s", bench_cuda_error());
        r->status = CASE_ERROR;
        return;
    }
    int rc = bench_cuda_time_graph(e->stream, calls, replays, enqueue_decode, d, ms);
    if (rc == -2) {
        case_error(r, "etap_decode (during graph capture)", d->status);
    } else if (rc != 0) {
        snprintf(r->error, sizeof r->error, "timing: %s", bench_cuda_error());
        r->status = CASE_ERROR;
    } else {
        r->us = bench_median(ms, replays) * 1e3 / calls;
        r->us_min = bench_min(ms, replays) * 1e3 / calls;
        r->samples = replays;
        r->calls_per_graph = calls;
        r->timed = 1;
    }
    free(ms);
}
#endif

/* % of the ceiling, the floor and x floor of a timed case (again when the ceiling moves) */
static void set_ceiling_ratios(const bench_env *e, case_result *r)
{
    r->pct_ceiling = 100.0 * r->gbps / e->ceiling_gbps;
    r->floor_us = r->bytes / (e->ceiling_gbps * 1e9) * 1e6 + (on_cuda(e) ? CUDA_LAUNCH_US : 0.0);
    r->x_floor = r->us / r->floor_us;
}

static void run_case(const bench_env *e, const bench_case *c, case_result *r)
{
    memset(r, 0, sizeof *r);
    r->c = *c;
    r->status = CASE_OK;

    bench_inputs in;
    if (bench_inputs_make(&in, c, e->seed) != 0) {
        snprintf(r->error, sizeof r->error, "out of host memory for the inputs");
        r->status = CASE_ERROR;
        return;
    }
    const etap_mla_shape *sh = &in.shape;
    r->sum_len = in.sum_len;
    for (int32_t i = 0; i < sh->batch; i++)
        r->empty_seqs += in.lens[i] == 0;
    r->bytes = bench_bytes(&in);
    r->flops = bench_flops(&in);
    r->peer = on_cuda(e) ? find_peer(c) : NULL;

    const size_t kv_bytes = in.kv_elems * sizeof(uint16_t);
    const size_t q_bytes = in.q_elems * sizeof(uint16_t);
    const size_t rows = (size_t)sh->batch * sh->seqlen_q * sh->num_heads_q;
    const size_t out_bytes = rows * ETAP_HEAD_DIM_V * sizeof(uint16_t);
    const size_t lse_bytes = rows * sizeof(float);
    const size_t table_bytes = (size_t)sh->num_pages * sizeof(int32_t);
    const size_t lens_bytes = (size_t)sh->batch * sizeof(int32_t);
    r->kv_mb = (double)kv_bytes * 1e-6;

    size_t plan_bytes = 0, ws_bytes = 0;
    etap_status st;
    if ((st = etap_plan_size(e->h, sh, &plan_bytes)) != ETAP_OK ||
        (st = etap_workspace_size(e->h, sh, &ws_bytes)) != ETAP_OK ||
        (st = etap_get_num_workers(e->h, sh, &r->num_workers)) != ETAP_OK) {
        case_error(r, "etap_plan_size / etap_workspace_size", st);
        bench_inputs_free(&in);
        return;
    }

    /* Memory for the rotated caches: on CUDA what is free after everything else, with
     * a margin; on the CPU a bound of a quarter of the physical memory. */
    size_t room = 0;
#if defined(ETAP_BENCH_WITH_CUDA)
    if (on_cuda(e)) {
        size_t others = q_bytes + out_bytes + lse_bytes + table_bytes + lens_bytes +
                        plan_bytes + ws_bytes + ((size_t)64 << 20);
        size_t free_b = 0, total_b = 0;
        if (bench_cuda_mem_info(&free_b, &total_b) == 0)
            room = free_b / 10 * 9 > others ? free_b / 10 * 9 - others : 0;
    }
#endif
    if (!on_cuda(e)) { /* cache 0 is the inputs' own copy, already there */
        long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        room = pages > 0 && page > 0 ? (size_t)pages * (size_t)page / 4 : ((size_t)4 << 30);
        room = room > kv_bytes ? room : kv_bytes;
    }
    int n_caches = caches_to_rotate(kv_bytes, e->rotate_bytes, room);
    if (n_caches < 1)
        n_caches = 1; /* try anyway: the allocation reports what is short */

    void **caches = calloc((size_t)n_caches, sizeof(void *));
    void *d_q = NULL, *d_out = NULL, *d_table = NULL, *d_lens = NULL, *plan = NULL, *ws = NULL;
    float *d_lse = NULL;
    uint16_t *h_out = NULL;
    float *h_lse = NULL;
    if (!caches)
        goto oom;
    if (on_cuda(e)) {
        if (!(d_q = buf_alloc(e, q_bytes)) || !(d_table = buf_alloc(e, table_bytes)) ||
            !(d_lens = buf_alloc(e, lens_bytes)))
            goto oom;
        if (buf_copy(e, d_q, in.q, q_bytes, 0) ||
            buf_copy(e, d_table, in.block_table, table_bytes, 0) ||
            buf_copy(e, d_lens, in.lens, lens_bytes, 0))
            goto backend_fail;
    } else {
        d_q = in.q, d_table = in.block_table, d_lens = in.lens;
    }
    if (!(d_out = buf_alloc(e, out_bytes)) || !(d_lse = buf_alloc(e, lse_bytes)) ||
        !(plan = buf_alloc(e, plan_bytes)) || !(ws = buf_alloc(e, ws_bytes ? ws_bytes : 64)))
        goto oom;
    /* Cache 0 holds the inputs; the others are copies of it at other addresses. */
    for (int i = 0; i < n_caches; i++) {
        if (i == 0 && !on_cuda(e)) {
            caches[0] = in.kv;
            continue;
        }
        if (!(caches[i] = buf_alloc(e, kv_bytes))) {
            if (i >= 2 || (i == 1 && kv_bytes >= e->rotate_bytes)) {
                n_caches = i; /* fewer caches, still more bytes than any cache level */
                break;
            }
            goto oom;
        }
        if (buf_copy(e, caches[i], i == 0 ? (const void *)in.kv : caches[0], kv_bytes,
                     i == 0 ? 0 : (on_cuda(e) ? 2 : 0)))
            goto backend_fail;
    }
    r->kv_caches = n_caches;

    decode_ctx d = {0};
    d.h = e->h;
    d.caches = caches;
    d.num_caches = n_caches;
    d.plan = plan;
    d.plan_bytes = plan_bytes;
    d.ws = ws;
    d.ws_bytes = ws_bytes;
    etap_mla_args *a = &d.args;
    a->shape = *sh;
    a->q = d_q;
    a->q_stride_head = ETAP_HEAD_DIM_QK;
    a->q_stride_seq = (int64_t)sh->num_heads_q * ETAP_HEAD_DIM_QK;
    a->q_stride_batch = (int64_t)sh->seqlen_q * a->q_stride_seq;
    a->kv_cache = caches[0];
    a->kv_stride_head = ETAP_HEAD_DIM_QK;
    a->kv_stride_token = (int64_t)sh->num_heads_kv * ETAP_HEAD_DIM_QK;
    a->kv_stride_page = (int64_t)sh->page_size * a->kv_stride_token;
    a->block_table = d_table;
    a->block_table_stride = sh->max_pages_per_seq;
    a->cache_seqlens = d_lens;
    a->softmax_scale = ETAP_SOFTMAX_SCALE_DEFAULT;
    a->out = d_out;
    a->out_stride_head = ETAP_HEAD_DIM_V;
    a->out_stride_seq = (int64_t)sh->num_heads_q * ETAP_HEAD_DIM_V;
    a->out_stride_batch = (int64_t)sh->seqlen_q * a->out_stride_seq;
    a->lse = d_lse;

    /* The plan: once, outside everything timed. */
    if ((st = etap_plan(e->h, sh, d_lens, plan, plan_bytes, e->stream)) != ETAP_OK ||
        (st = etap_plan_check(e->h, plan, plan_bytes, e->stream)) != ETAP_OK) {
        case_error(r, "etap_plan", st);
        goto done;
    }
    {
        int32_t header[ETAP_PLAN_HEADER_WORDS];
        if (buf_copy(e, header, plan, sizeof header, 1))
            goto backend_fail;
        r->total_splits = header[ETAP_PLAN_H_TOTAL_SPLITS];
    }

    /* Verify: out and lse start as NaN, so a row etap never writes cannot pass. */
    if (e->verify) {
        h_out = malloc(out_bytes);
        h_lse = malloc(lse_bytes);
        if (!h_out || !h_lse)
            goto oom;
        if (buf_set(e, d_out, 0xff, out_bytes) || buf_set(e, d_lse, 0xff, lse_bytes))
            goto backend_fail;
        if (decode_call(&d, 0, e->stream) != ETAP_OK) {
            case_error(r, "etap_decode", d.status);
            goto done;
        }
#if defined(ETAP_BENCH_WITH_CUDA)
        if (on_cuda(e) && bench_cuda_stream_sync(e->stream))
            goto backend_fail;
#endif
        if (buf_copy(e, h_out, d_out, out_bytes, 1) || buf_copy(e, h_lse, d_lse, lse_bytes, 1))
            goto backend_fail;
        double budget = REF_MACS_PER_THREAD * e->ref_threads;
        bench_verify_run(&in, h_out, h_lse, budget, e->ref_threads, &r->v);
        r->verified = 1;
        if (!r->v.pass) {
            r->status = CASE_FAILED;
            goto done;
        }
    }

#if defined(ETAP_BENCH_WITH_CUDA)
    if (on_cuda(e))
        time_cuda(e, &d, r);
    else
#endif
        time_cpu(e, &d, r);

    if (r->timed) {
        double s = r->us * 1e-6;
        r->gbps = r->bytes / s * 1e-9;
        r->tflops = r->flops / s * 1e-12;
        set_ceiling_ratios(e, r);
    }
    goto done;

oom:
    snprintf(r->error, sizeof r->error, "out of %s memory (%s; one KV cache is %.1f MB)",
             on_cuda(e) ? "device" : "host", backend_error(e), r->kv_mb);
    r->status = CASE_ERROR;
    goto done;
backend_fail:
    snprintf(r->error, sizeof r->error, "%s", backend_error(e));
    r->status = CASE_ERROR;
done:
    free(h_out);
    free(h_lse);
    if (caches)
        for (int i = on_cuda(e) ? 0 : 1; i < n_caches; i++)
            buf_free(e, caches[i]);
    free(caches);
    buf_free(e, d_out);
    buf_free(e, d_lse);
    buf_free(e, plan);
    buf_free(e, ws);
    if (on_cuda(e)) {
        buf_free(e, d_q);
        buf_free(e, d_table);
        buf_free(e, d_lens);
    }
    bench_inputs_free(&in);
}

/* ------------------------------------------------------------------------------------ */
/* output                                                                               */

static const char *check_word(const case_result *x)
{
    switch (x->status) {
    case CASE_ERROR: return "ERROR";
    case CASE_UNSUPPORTED: return "unsupported";
    case CASE_FAILED: return "FAIL";
    }
    return x->verified ? "PASS" : "not checked";
}

static void print_ratio(double peer_us, double us)
{
    if (peer_us > 0 && us > 0)
        printf(" %10.2fx", peer_us / us);
    else
        printf(" %11s", "-");
}

/* What sets a case apart from page 64, bf16 and equal lengths ("" if nothing). */
static const char *case_notes(const bench_case *c, char *buf, size_t n)
{
    buf[0] = '\0';
    if (c->page_size != 64)
        snprintf(buf + strlen(buf), n - strlen(buf), "page %d ", (int)c->page_size);
    if (c->dtype == ETAP_DTYPE_FP16)
        snprintf(buf + strlen(buf), n - strlen(buf), "fp16 ");
    if (c->varlen)
        snprintf(buf + strlen(buf), n - strlen(buf), "varlen ");
    if (buf[0])
        buf[strlen(buf) - 1] = '\0';
    return buf;
}

static void print_table(const bench_env *e, const case_result *r, int n)
{
    int peers = 0, notes = 0;
    char nb[64];
    for (int i = 0; i < n; i++) {
        peers |= r[i].peer != NULL;
        notes |= case_notes(&r[i].c, nb, sizeof nb)[0] != '\0';
    }
    printf("%5s %4s %4s %4s %7s %6s %8s %10s %8s %6s %8s %9s %7s", "b", "s_q", "h_q", "h_kv",
           "s_k", "causal", "KV MB", "us", "GB/s", "%ceil", "TFLOP/s", "floor us", "x floor");
    if (peers)
        printf(" %11s %11s %11s", "vs FlashMLA", "vs ETAP", "vs FA3");
    if (notes)
        printf("  %-5s %s\n", "check", "case");
    else
        printf("  %s\n", "check");
    for (int i = 0; i < n; i++) {
        const case_result *x = &r[i];
        const bench_case *c = &x->c;
        printf("%5d %4d %4d %4d %7d %6s %8.1f", (int)c->batch, (int)c->seqlen_q,
               (int)c->heads_q, (int)c->heads_kv, (int)c->seqlen_k, c->causal ? "yes" : "no",
               (double)x->sum_len * c->heads_kv * ETAP_HEAD_DIM_QK * 2 * 1e-6);
        if (x->timed)
            printf(" %10.1f %8.1f %6.1f %8.2f %9.1f %7.2f", x->us, x->gbps, x->pct_ceiling,
                   x->tflops, x->floor_us, x->x_floor);
        else
            printf(" %10s %8s %6s %8s %9s %7s", "-", "-", "-", "-", "-", "-");
        if (peers) {
            const bench_peer_row *p = x->peer;
            double us = x->timed ? x->us : -1;
            print_ratio(p ? p->flashmla_us : -1, us);
            print_ratio(p ? p->etap_us : -1, us);
            print_ratio(p ? p->fa3_us : -1, us);
        }
        if (case_notes(c, nb, sizeof nb)[0])
            printf("  %-5s %s\n", check_word(x), nb);
        else
            printf("  %s\n", check_word(x));
    }
    printf("KV MB: the keys read (sum of lengths x h_kv x 576 x 2 bytes); GB/s and %%ceil count "
           "q and out too.\n");
    printf("floor = bytes / %.0f GB/s (the ceiling measured above)%s; x floor = us / floor.\n",
           e->ceiling_gbps, on_cuda(e) ? " + 2 us" : "");
    if (peers)
        printf("vs X = X's time on an H200 (PEERS-H200.md) / etap's time: above 1, etap is "
               "faster.\n");
}

static void print_accuracy(const case_result *r, int n)
{
    printf("%5s %4s %4s %7s  %-40s %9s %11s %12s %9s  %s\n", "b", "s_q", "h_q", "s_k",
           "checked", "RMSE", "max|err|", "max|lse err|", "cos diff", "result");
    for (int i = 0; i < n; i++) {
        const case_result *x = &r[i];
        if (!x->verified)
            continue;
        printf("%5d %4d %4d %7d  %-40s %9.2e %11.2e %12.2e %9.2e  %s\n", (int)x->c.batch,
               (int)x->c.seqlen_q, (int)x->c.heads_q, (int)x->c.seqlen_k, x->v.seqs_checked,
               x->v.rmse, x->v.max_abs_err, x->v.max_lse_err, x->v.cos_diff,
               x->v.pass ? "PASS" : "FAIL");
    }
}

static void print_verify(const case_result *x)
{
    const bench_verify *v = &x->v;
    printf("verify    %s, every head and query position (%.2f s)\n", v->seqs_checked,
           v->seconds);
    printf("          RMSE %.2e  max|out err| %.2e  max|lse err| %.2e  cos diff %.2e  -> %s\n",
           v->rmse, v->max_abs_err, v->max_lse_err, v->cos_diff, v->pass ? "PASS" : "FAIL");
    if (!v->pass)
        printf("          %lld out elements outside abs %.0e / rel %.2f ulp, %lld of them "
               "NaN/inf; %lld lse values outside abs %.0e / rel %.2e; cos diff limit %.0e\n",
               (long long)v->bad_elems, BENCH_TOL_OUT_ABS, BENCH_TOL_OUT_REL_ULPS,
               (long long)v->nonfinite, (long long)v->bad_lse, BENCH_TOL_LSE_ABS,
               BENCH_TOL_LSE_REL, BENCH_TOL_COS_DIFF);
}

/* ---- JSON ------------------------------------------------------------------------------ */

/* Integers (counts, bytes) exactly; measurements to 6 significant digits; null for
 * what JSON cannot hold. */
static void json_num(FILE *f, const char *key, double v, int last)
{
    if (!isfinite(v))
        fprintf(f, "\"%s\": null", key);
    else if (v == floor(v) && fabs(v) < 9007199254740992.0)
        fprintf(f, "\"%s\": %.0f", key, v);
    else
        fprintf(f, "\"%s\": %.6g", key, v);
    fprintf(f, "%s", last ? "" : ", ");
}

static void json_bool(FILE *f, const char *key, int v, int last)
{
    fprintf(f, "\"%s\": %s%s", key, v ? "true" : "false", last ? "" : ", ");
}

static void json_str(FILE *f, const char *key, const char *s, int last)
{
    fprintf(f, "\"%s\": \"", key);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fprintf(f, "\"%s", last ? "" : ", ");
}

static int write_json(const char *path, const bench_env *e, const case_result *r, int n)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "etap-bench: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "{\n  ");
    json_str(f, "tool", "etap-bench", 0);
    json_num(f, "etap_version", etap_version(), 0);
    json_str(f, "backend", on_cuda(e) ? "cuda" : "cpu", 0);
    json_str(f, "device", e->device_name, 0);
    json_num(f, "cpu_threads", on_cuda(e) ? 0 : e->cpu_threads, 0);
    fprintf(f, "\"seed\": %llu", (unsigned long long)e->seed);
    fprintf(f, ",\n  \"ceiling\": {");
    json_num(f, "gbps", e->ceiling_gbps, 0);
    if (e->ceiling_again_gbps > 0) {
        json_num(f, "gbps_before_cases", e->ceiling_first_gbps, 0);
        json_num(f, "gbps_after_cases", e->ceiling_again_gbps, 0);
    }
    json_num(f, "buffer_bytes", (double)e->ceiling_bytes, 0);
    json_str(f, "method",
             on_cuda(e) ? "16-byte loads, grid-stride kernel, fastest of the timed passes "
                          "(a grid: the higher of a measurement before and after the cases)"
                        : "16-byte loads, one slice per thread, median wall clock",
             1);
    fprintf(f, "},\n  \"peers_source\": \"PEERS-H200.md (H200, 2026-11-21)\",\n");
    fprintf(f, "  \"cases\": [");
    for (int i = 0; i < n; i++) {
        const case_result *x = &r[i];
        const bench_case *c = &x->c;
        fprintf(f, "%s\n    {", i ? "," : "");
        json_num(f, "batch", c->batch, 0);
        json_num(f, "seqlen_q", c->seqlen_q, 0);
        json_num(f, "heads_q", c->heads_q, 0);
        json_num(f, "heads_kv", c->heads_kv, 0);
        json_num(f, "seqlen_k", c->seqlen_k, 0);
        json_num(f, "page_size", c->page_size, 0);
        json_str(f, "dtype", dtype_name(c->dtype), 0);
        json_bool(f, "causal", c->causal, 0);
        json_bool(f, "varlen", c->varlen, 0);
        json_num(f, "sum_seqlen_k", (double)x->sum_len, 0);
        json_num(f, "empty_seqs", x->empty_seqs, 0);
        if (x->status == CASE_ERROR || x->status == CASE_UNSUPPORTED)
            json_str(f, "error", x->error, 0);
        json_num(f, "bytes", x->bytes, 0);
        json_num(f, "flops", x->flops, 0);
        json_num(f, "num_workers", x->num_workers, 0);
        json_num(f, "total_splits", x->total_splits, 0);
        json_num(f, "kv_caches_rotated", x->kv_caches, 0);
        if (x->timed) {
            json_num(f, "us", x->us, 0);
            json_num(f, "us_min", x->us_min, 0);
            json_num(f, on_cuda(e) ? "replays" : "calls", x->samples, 0);
            if (on_cuda(e))
                json_num(f, "calls_per_graph", x->calls_per_graph, 0);
            json_num(f, "gbps", x->gbps, 0);
            json_num(f, "pct_ceiling", x->pct_ceiling, 0);
            json_num(f, "tflops", x->tflops, 0);
            json_num(f, "floor_us", x->floor_us, 0);
            json_num(f, "x_floor", x->x_floor, 0);
        }
        if (x->verified) {
            fprintf(f, "\n     \"verify\": {");
            json_bool(f, "pass", x->v.pass, 0);
            json_str(f, "checked", x->v.seqs_checked, 0);
            json_num(f, "rmse", x->v.rmse, 0);
            json_num(f, "max_abs_err", x->v.max_abs_err, 0);
            json_num(f, "max_lse_err", x->v.max_lse_err, 0);
            json_num(f, "cos_diff", x->v.cos_diff, 0);
            json_num(f, "bad_elems", (double)x->v.bad_elems, 0);
            json_num(f, "bad_lse", (double)x->v.bad_lse, 1);
            fprintf(f, "}, ");
        }
        if (x->peer) {
            const bench_peer_row *p = x->peer;
            const double us = x->timed ? x->us : NAN;
            fprintf(f, "\n     \"peers\": {");
            json_num(f, "floor_us_4450", p->floor_us, 0);
            json_num(f, "flashmla_us", p->flashmla_us > 0 ? p->flashmla_us : NAN, 0);
            json_num(f, "etap_paper_us", p->etap_us > 0 ? p->etap_us : NAN, 0);
            json_num(f, "fa3_us", p->fa3_us > 0 ? p->fa3_us : NAN, 0);
            json_num(f, "speedup_vs_flashmla", p->flashmla_us > 0 ? p->flashmla_us / us : NAN, 0);
            json_num(f, "speedup_vs_etap_paper", p->etap_us > 0 ? p->etap_us / us : NAN, 0);
            json_num(f, "speedup_vs_fa3", p->fa3_us > 0 ? p->fa3_us / us : NAN, 1);
            fprintf(f, "}, ");
        }
        json_str(f, "check", check_word(x), 1);
        fprintf(f, "}");
    }
    fprintf(f, "\n  ]\n}\n");
    if (fclose(f) != 0) {
        fprintf(stderr, "etap-bench: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- plot ------------------------------------------------------------------------------ */

static void plot_command(char *buf, size_t n, const char *json, const char *png)
{
    snprintf(buf, n, "python3 '%s' '%s' '%s'", ETAP_BENCH_PLOT_SCRIPT, json, png);
}

/* ------------------------------------------------------------------------------------ */
/* main                                                                                 */

/* --trace, the balance of the CTAs: when each one's last tile was done against its tile and
 * sequence counts, and its steady tile period (first to last PV), with the slowest and the
 * fastest CTAs and their SMs. */
static void print_trace_balance(unsigned long long (*tr)[ETAP_TRACE_SLOTS], int ctas,
                                unsigned long long base, unsigned long long window)
{
    enum { MAX_TILES = 64, MAX_SEQS = 4 };
    double sum[MAX_TILES][MAX_SEQS] = {{0}}, mx[MAX_TILES][MAX_SEQS] = {{0}};
    int cnt[MAX_TILES][MAX_SEQS] = {{0}}, order[ETAP_TRACE_CTAS], n = 0;
    double last[ETAP_TRACE_CTAS], period[ETAP_TRACE_CTAS];
    for (int w = 0; w < ctas; w++) {
        const unsigned long long *r = tr[w];
        const unsigned long long t0 = r[TRACE_TILE_DONE], tl = r[TRACE_LAST_TILE];
        if (r[TRACE_TILES] < 1 || t0 < base || tl < t0 || tl - base >= window)
            continue;
        last[w] = (double)(tl - base) * 1e-3;
        period[w] = r[TRACE_TILES] > 1 ? (double)(tl - t0) * 1e-3 / (double)(r[TRACE_TILES] - 1) : 0;
        order[n++] = w;
        const int t = r[TRACE_TILES] < MAX_TILES ? (int)r[TRACE_TILES] : MAX_TILES - 1;
        const int q = r[TRACE_SEQS] < MAX_SEQS ? (int)r[TRACE_SEQS] : MAX_SEQS - 1;
        sum[t][q] += last[w], cnt[t][q]++;
        mx[t][q] = last[w] > mx[t][q] ? last[w] : mx[t][q];
    }
    printf("  last tile PV done by (tiles, sequences): mean / max (CTAs)\n");
    for (int t = 0; t < MAX_TILES; t++)
        for (int q = 0; q < MAX_SEQS; q++)
            if (cnt[t][q])
                printf("    %2d tiles %d seqs  %8.2f %8.2f  (%d)\n", t, q, sum[t][q] / cnt[t][q],
                       mx[t][q], cnt[t][q]);
    for (int i = 1; i < n; i++) /* by last tile done, insertion sort */
        for (int j = i; j > 0 && last[order[j]] < last[order[j - 1]]; j--) {
            const int x = order[j];
            order[j] = order[j - 1], order[j - 1] = x;
        }
    printf("  CTAs by last tile done (worker smid tiles seqs tile0-landed period last):\n");
    for (int i = 0; i < n; i++) {
        if (i >= 5 && i < n - 8 && !getenv("ETAP_BENCH_TRACE_ALL"))
            continue;
        const int w = order[i];
        const unsigned long long *r = tr[w];
        printf("    %4d %4llu %3llu %llu %8.2f %6.3f %8.2f\n", w, r[TRACE_SMID], r[TRACE_TILES],
               r[TRACE_SEQS], (double)(r[TRACE_TILE_FULL] - base) * 1e-3, period[w], last[w]);
    }
}

/* --trace: the timeline the kernels of a -DETAP_TRACE=ON library stamped during the last
 * call (src/trace_slots.h): per slot the mean and the max over the CTAs that wrote it, in
 * us from the first CTA's entry. */
static int print_trace(const case_result *x)
{
    typedef int (*copy_fn)(void *, size_t);
    void *self = dlopen(NULL, RTLD_LAZY);
    copy_fn split_copy = NULL, combine_copy = NULL;
    if (self) {
        *(void **)&split_copy = dlsym(self, "etap_debug_trace_copy");
        *(void **)&combine_copy = dlsym(self, "etap_debug_combine_trace_copy");
    }
    static unsigned long long tr[ETAP_TRACE_CTAS][ETAP_TRACE_SLOTS];
    static unsigned long long ct[ETAP_TRACE_COMBINE_CTAS][TRACE_COMBINE_SLOTS];
    if (!split_copy || !combine_copy || split_copy(tr, sizeof tr) || combine_copy(ct, sizeof ct)) {
        fprintf(stderr, "etap-bench: --trace: this libetap has no timeline (build it with "
                        "-DETAP_TRACE=ON, CUDA backend)\n");
        return -1;
    }
    const int ctas = x->num_workers < ETAP_TRACE_CTAS ? x->num_workers : ETAP_TRACE_CTAS;
    unsigned long long base = ~0ull;
    for (int w = 0; w < ctas; w++)
        if (tr[w][TRACE_ENTRY] && tr[w][TRACE_ENTRY] < base)
            base = tr[w][TRACE_ENTRY];
    const unsigned long long window = 1000000000ull; /* stamps of the last call: < 1 s */
    static const char *const slot_names[ETAP_TRACE_SLOTS] = {
        [TRACE_ENTRY] = "entry",
        [TRACE_DEP_WAIT] = "griddepcontrol.wait done",
        [TRACE_PLAN] = "plan read",
        [TRACE_EXIT] = "exit",
        [TRACE_Q_READY] = "first Q ready",
        [TRACE_LAST_TILE] = "last tile PV done",
        [TRACE_EPILOGUE] = "last epilogue done",
        [TRACE_TILES] = "tiles (count)",
        [TRACE_SEQS] = "sequences (count)",
        [TRACE_T2_S] = "tile 2 S^T done",
        [TRACE_T2_SOFTMAX] = "tile 2 softmax done",
        [TRACE_T2_P_FULL] = "tile 2 P^T written",
        [TRACE_T2_PV_ISSUED] = "tile 2 PV issued",
        [TRACE_SUMS] = "last epilogue sums",
        [TRACE_PROD_START] = "producer started",
        [TRACE_PROD_LEN] = "first length read",
        [TRACE_PROD_PAGE] = "first page entry read",
    };
    printf("\ntimeline  last call, %d CTAs of KV head 0; us from the first entry (mean, max)\n",
           ctas);
    for (int k = 0; k < ETAP_TRACE_SLOTS; k++) {
        char name[48];
        if (k >= TRACE_TILE_FULL && k < TRACE_TILE_FULL + 2 * ETAP_TRACE_TILES)
            snprintf(name, sizeof name, "tile %d %s", (k - TRACE_TILE_FULL) / 2,
                     (k - TRACE_TILE_FULL) % 2 ? "PV done" : "landed");
        else if (k >= TRACE_PROD_FREE && k < TRACE_PROD_FREE + 2 * ETAP_TRACE_PRODUCER_TILES)
            snprintf(name, sizeof name, "copy %d %s", (k - TRACE_PROD_FREE) / 2,
                     (k - TRACE_PROD_FREE) % 2 ? "issued" : "stage free");
        else if (slot_names[k])
            snprintf(name, sizeof name, "%s", slot_names[k]);
        else
            continue;
        const int count = k == TRACE_TILES || k == TRACE_SEQS;
        double sum = 0, mx = 0;
        int m = 0;
        for (int w = 0; w < ctas; w++) {
            const unsigned long long v = tr[w][k];
            double d;
            if (count)
                d = (double)v;
            else if (v >= base && v - base < window)
                d = (double)(v - base) * 1e-3;
            else
                continue;
            sum += d, m++;
            mx = d > mx ? d : mx;
        }
        if (m)
            printf("  %-26s %9.2f %9.2f  (%d CTAs)\n", name, sum / m, mx, m);
    }
    print_trace_balance(tr, ctas, base, window);
    unsigned long long first = ~0ull, wait = ~0ull, last = 0;
    int m = 0;
    for (int i = 0; i < ETAP_TRACE_COMBINE_CTAS; i++) {
        const unsigned long long *c = ct[i];
        if (c[TRACE_COMBINE_ENTRY] < base || c[TRACE_COMBINE_ENTRY] - base >= window)
            continue;
        m++;
        first = c[TRACE_COMBINE_ENTRY] < first ? c[TRACE_COMBINE_ENTRY] : first;
        wait = c[TRACE_COMBINE_DEP_WAIT] < wait ? c[TRACE_COMBINE_DEP_WAIT] : wait;
        last = c[TRACE_COMBINE_EXIT] > last ? c[TRACE_COMBINE_EXIT] : last;
    }
    if (m)
        printf("  combine: %d CTAs, first entry %.2f, first wait done %.2f, last exit %.2f\n", m,
               (double)(first - base) * 1e-3, (double)(wait - base) * 1e-3,
               (double)(last - base) * 1e-3);
    /* per merging CTA, from its own wait: weights known, rows merged, exit (mean, max) */
    double sum[7] = {0}, mx[7] = {0};
    int merged = 0;
    for (int i = 0; i < ETAP_TRACE_COMBINE_CTAS; i++) {
        const unsigned long long *c = ct[i];
        if (c[TRACE_COMBINE_ENTRY] < base || c[TRACE_COMBINE_ENTRY] - base >= window ||
            c[TRACE_COMBINE_MERGED] < c[TRACE_COMBINE_DEP_WAIT] ||
            c[TRACE_COMBINE_MERGED] - c[TRACE_COMBINE_DEP_WAIT] >= window)
            continue;
        const int slot[7] = {TRACE_COMBINE_WEIGHTS, TRACE_COMBINE_MERGED, TRACE_COMBINE_EXIT,
                             TRACE_COMBINE_PROBE, TRACE_COMBINE_LSE, TRACE_COMBINE_ROW,
                             TRACE_COMBINE_MAX};
        for (int k = 0; k < 7; k++) {
            const double d = (double)(c[slot[k]] - c[TRACE_COMBINE_DEP_WAIT]) * 1e-3;
            sum[k] += d;
            mx[k] = d > mx[k] ? d : mx[k];
        }
        merged++;
    }
    if (merged)
        printf("  combine, from each CTA's wait (mean/max, %d merging CTAs): weights %.2f/%.2f, "
               "merged %.2f/%.2f, exit %.2f/%.2f; a plan word through L2 %.2f/%.2f\n",
               merged, sum[0] / merged, mx[0], sum[1] / merged, mx[1], sum[2] / merged, mx[2],
               sum[3] / merged, mx[3]);
    if (merged)
        printf("  combine, thread 0 from its CTA's wait: first lse arrived %.2f/%.2f, first "
               "partial row arrived %.2f/%.2f, lse max known %.2f/%.2f\n",
               sum[4] / merged, mx[4], sum[5] / merged, mx[5], sum[6] / merged, mx[6]);
    return 0;
}

/* A CUDA grid measures the ceiling again after its cases and keeps the higher rate: the
 * card's state moves during a run (fastest pass 4266 GB/s before the cases of one run,
 * which then read 4380 GB/s themselves), and a ceiling is the best the card gave. */
static void remeasure_ceiling(bench_env *e, case_result *results, int n)
{
#if defined(ETAP_BENCH_WITH_CUDA)
    double again = 0;
    size_t bytes = 0;
    if (bench_cuda_read_ceiling(CEILING_REPS, &again, &bytes) != 0)
        return; /* keep the first measurement */
    e->ceiling_again_gbps = again;
    printf("ceiling   again after the cases: %.0f GB/s; the table uses %.0f GB/s (the higher)\n",
           again, again > e->ceiling_gbps ? again : e->ceiling_gbps);
    if (again <= e->ceiling_gbps)
        return;
    e->ceiling_gbps = again;
    for (int i = 0; i < n; i++)
        if (results[i].timed)
            set_ceiling_ratios(e, &results[i]);
#else
    (void)e, (void)results, (void)n;
#endif
}

static int measure_ceiling(bench_env *e)
{
#if defined(ETAP_BENCH_WITH_CUDA)
    if (on_cuda(e)) {
        if (bench_cuda_read_ceiling(CEILING_REPS, &e->ceiling_gbps, &e->ceiling_bytes) != 0) {
            fprintf(stderr, "etap-bench: read ceiling: %s\n", bench_cuda_error());
            return -1;
        }
        printf("ceiling   streaming read of %.0f MB with 16-byte loads: %.0f GB/s "
               "(fastest of %d kernels)\n",
               (double)e->ceiling_bytes * 1e-6, e->ceiling_gbps, CEILING_REPS);
        e->ceiling_first_gbps = e->ceiling_gbps;
        return 0;
    }
#endif
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    size_t phys = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : ((size_t)8 << 30);
    size_t want = 8 * bench_llc_bytes();
    want = want < CPU_CEILING_MIN_BYTES ? CPU_CEILING_MIN_BYTES : want;
    want = want > CPU_CEILING_MAX_BYTES ? CPU_CEILING_MAX_BYTES : want;
    e->ceiling_bytes = want < phys / 8 ? want : phys / 8;
    e->ceiling_gbps = bench_cpu_read_ceiling(e->ceiling_bytes, e->cpu_threads, CEILING_REPS);
    if (e->ceiling_gbps <= 0) {
        fprintf(stderr, "etap-bench: read ceiling: out of host memory for %zu bytes\n",
                e->ceiling_bytes);
        return -1;
    }
    printf("ceiling   %d thread%s streaming %.0f MB with 16-byte loads: %.1f GB/s "
           "(median of %d passes)\n",
           e->cpu_threads, e->cpu_threads == 1 ? "" : "s", (double)e->ceiling_bytes * 1e-6,
           e->ceiling_gbps, CEILING_REPS);
    return 0;
}

int main(int argc, char **argv)
{
    options o;
    int pr = parse_options(argc, argv, &o);
    if (pr != 0)
        return pr > 0 ? 0 : EXIT_USAGE;
    if (!o.grid && !o.sweep) {
        bench_case probe = apply_overrides(kCudaDefault, &o.c); /* shape checks only */
        if (check_case(&probe))
            return EXIT_USAGE;
    }

    bench_env e;
    memset(&e, 0, sizeof e);
    e.iters = o.iters;
    e.seed = o.seed;
    e.verify = o.verify;
    e.ref_threads = bench_online_cpus();
    e.rotate_bytes = ROTATE_BYTES;

    etap_options eo = {o.backend, o.device, o.threads};
    etap_status st = etap_create(&e.h, &eo);
    if (st != ETAP_OK) {
        fprintf(stderr, "etap-bench: etap_create(backend %s): %s: %s\n",
                o.backend == ETAP_BACKEND_CUDA  ? "cuda"
                : o.backend == ETAP_BACKEND_CPU ? "cpu"
                                                : "auto",
                etap_status_string(st), etap_last_error_message());
        return EXIT_RUNTIME;
    }
    etap_get_backend(e.h, &e.backend);
    e.cpu_threads = o.threads ? o.threads : bench_online_cpus();

    int v = etap_version();
    printf("etap-bench  etap %d.%d.%d, ", v / 10000, v / 100 % 100, v % 100);
    if (on_cuda(&e)) {
#if defined(ETAP_BENCH_WITH_CUDA)
        bench_cuda_info info;
        if (bench_cuda_init(o.device, &info) != 0 || bench_cuda_stream_create(&e.stream) != 0) {
            fprintf(stderr, "etap-bench: %s\n", bench_cuda_error());
            etap_destroy(e.h);
            return EXIT_RUNTIME;
        }
        snprintf(e.device_name, sizeof e.device_name, "%s", info.name);
        if ((size_t)info.l2_bytes * 4 > e.rotate_bytes)
            e.rotate_bytes = (size_t)info.l2_bytes * 4;
        printf("CUDA backend on %s (sm_%d%d, %d SMs, %.0f MB L2, %.1f GB free)\n", info.name,
               info.major, info.minor, info.sm_count, info.l2_bytes * 1e-6,
               (double)info.free_bytes * 1e-9);
#else
        fprintf(stderr, "etap-bench: etap has the CUDA backend but etap-bench was built without "
                        "CUDA: reconfigure so that ETAP_WITH_CUDA is on\n");
        etap_destroy(e.h);
        return EXIT_RUNTIME;
#endif
    } else {
        snprintf(e.device_name, sizeof e.device_name, "CPU, %d threads", e.cpu_threads);
        printf("CPU backend, %d thread%s\n", e.cpu_threads, e.cpu_threads == 1 ? "" : "s");
    }

    /* the cases */
    bench_case cases[BENCH_NUM_PEER_ROWS > BENCH_NUM_SWEEP ? BENCH_NUM_PEER_ROWS : BENCH_NUM_SWEEP];
    int n = 0;
    const int many = o.grid || o.sweep; /* a table of fixed cases, progress on stderr */
    if (o.sweep) {
        for (int i = 0; i < BENCH_NUM_SWEEP; i++)
            cases[n++] = kSweep[i];
        if (!on_cuda(&e))
            fprintf(stderr, "etap-bench: note: the sweep on the CPU backend is slow (its largest "
                            "case reads 2.4 GB per call)\n");
    } else if (o.grid) {
        for (int i = 0; i < BENCH_NUM_PEER_ROWS; i++) {
            const bench_peer_row *p = &bench_peers_h200[i];
            cases[n++] = (bench_case){p->batch, p->seqlen_q, p->heads_q, 1, p->seqlen_k,
                                      BENCH_PEERS_PAGE_SIZE, ETAP_DTYPE_BF16,
                                      p->seqlen_q > 1, 0};
        }
        if (!on_cuda(&e))
            fprintf(stderr, "etap-bench: note: the grid on the CPU backend is slow (its largest "
                            "case reads 2.4 GB per call)\n");
    } else {
        cases[n++] = apply_overrides(on_cuda(&e) ? kCudaDefault : kCpuDefault, &o.c);
        if (!o.shape_given) {
            const char *why;
            if (on_cuda(&e))
                why = "a CUDA device is in use, so the ETAP paper's case";
            else if (o.backend == ETAP_BACKEND_CPU)
                why = "--backend cpu, so the CPU default (the paper's b=16 s_k=65536 would "
                      "take minutes on a CPU)";
            else if (!etap_backend_built(ETAP_BACKEND_CUDA))
                why = "this etap was built without CUDA, so the CPU backend on its smaller "
                      "default (the paper's b=16 s_k=65536 is the CUDA default)";
            else
                why = "no usable CUDA device, so the CPU backend on its smaller default (the "
                      "paper's b=16 s_k=65536 is the CUDA default)";
            char d[160];
            describe(&cases[0], d, sizeof d);
            printf("default   %s: %s\n", d, why);
        }
    }

    if (measure_ceiling(&e) != 0) {
        etap_destroy(e.h);
        return EXIT_RUNTIME;
    }

    case_result *results = calloc((size_t)n, sizeof *results);
    if (!results) {
        fprintf(stderr, "etap-bench: out of host memory\n");
        return EXIT_RUNTIME;
    }
    int failed = 0, errors = 0, unsupported = 0;
    double t_start = bench_now();
    for (int i = 0; i < n; i++) {
        char d[160];
        describe(&cases[i], d, sizeof d);
        if (many)
            fprintf(stderr, "[%2d/%d] %s ...", i + 1, n, d);
        fflush(stderr);
        run_case(&e, &cases[i], &results[i]);
        case_result *x = &results[i];
        failed += x->status == CASE_FAILED;
        errors += x->status == CASE_ERROR;
        unsupported += x->status == CASE_UNSUPPORTED;
        if (many) {
            if (x->status == CASE_ERROR || x->status == CASE_UNSUPPORTED)
                fprintf(stderr, " %s: %s\n", check_word(x), x->error);
            else if (x->status == CASE_FAILED)
                fprintf(stderr, " FAIL: cos diff %.2e, %lld bad out elements, %lld bad lse\n",
                        x->v.cos_diff, (long long)x->v.bad_elems, (long long)x->v.bad_lse);
            else
                fprintf(stderr, " %s%.1f us, %.1f GB/s  (%.0f s so far)\n",
                        x->verified ? "PASS, " : "", x->us, x->gbps, bench_now() - t_start);
            continue;
        }
        /* one case: the details first */
        printf("case      %s, one KV cache %.1f MB\n", d, x->kv_mb);
        if (x->c.varlen)
            printf("varlen    lengths random in [1, %d], %d of %d empty, sum %lld (seed %llu)\n",
                   2 * (int)x->c.seqlen_k, x->empty_seqs, (int)x->c.batch,
                   (long long)x->sum_len, (unsigned long long)e.seed);
        if (x->num_workers)
            printf("plan      %d workers, %d splits\n", (int)x->num_workers, (int)x->total_splits);
        if (x->verified)
            print_verify(x);
        if (x->status == CASE_ERROR || x->status == CASE_UNSUPPORTED)
            fprintf(stderr, "etap-bench: %s\n", x->error);
        if (x->timed) {
            if (on_cuda(&e))
                printf("time      median of %d graph replays / %d calls per graph (plan "
                       "reused), %d KV caches rotated (%.0f MB): min %.1f us\n",
                       x->samples, x->calls_per_graph, x->kv_caches, x->kv_caches * x->kv_mb,
                       x->us_min);
            else
                printf("time      median of %d calls, wall clock (plan reused), %d KV caches "
                       "rotated (%.0f MB): min %.1f us\n",
                       x->samples, x->kv_caches, x->kv_caches * x->kv_mb, x->us_min);
        }
    }

    if (many && on_cuda(&e))
        remeasure_ceiling(&e, results, n);
    printf("\n");
    print_table(&e, results, n);
    if (n == 1 && results[0].peer && results[0].timed) {
        const bench_peer_row *p = results[0].peer;
        printf("peers     on an H200 (PEERS-H200.md): FlashMLA %.1f us, ETAP %.1f us, FA3 ",
               p->flashmla_us, p->etap_us);
        if (p->fa3_us > 0)
            printf("%.1f us\n", p->fa3_us);
        else
            printf("not measured\n");
    }
    if (o.trace && n == 1 && results[0].timed && print_trace(&results[0]) != 0)
        return EXIT_RUNTIME;
    if (many && e.verify) {
        printf("\n");
        print_accuracy(results, n);
    }

    const char *json_path = o.json;
    char derived[1024];
    if (o.plot && !json_path) {
        snprintf(derived, sizeof derived, "%s", o.plot);
        char *dot = strrchr(derived, '.');
        char *slash = strrchr(derived, '/');
        if (dot && (!slash || dot > slash))
            *dot = '\0';
        strncat(derived, ".json", sizeof derived - strlen(derived) - 1);
        json_path = derived;
    }
    if (json_path && write_json(json_path, &e, results, n) == 0)
        fprintf(stderr, "etap-bench: wrote %s\n", json_path);
    if (o.grid) {
        char cmd[2400];
        if (o.plot) {
            plot_command(cmd, sizeof cmd, json_path, o.plot);
            fprintf(stderr, "etap-bench: %s\n", cmd);
            fflush(stdout);
            fflush(stderr);
            int rc = system(cmd);
            if (rc != 0)
                fprintf(stderr, "etap-bench: the plot command failed (status %d)\n", rc);
        } else {
            plot_command(cmd, sizeof cmd, json_path ? json_path : "results.json", "grid.png");
            fprintf(stderr, "etap-bench: to plot: %s%s\n",
                    json_path ? "" : "add --json results.json, then ", cmd);
        }
    }

#if defined(ETAP_BENCH_WITH_CUDA)
    bench_cuda_stream_destroy(e.stream);
#endif
    etap_destroy(e.h);
    free(results);
    if (failed) {
        fprintf(stderr, "etap-bench: verification FAILED for %d case%s\n", failed,
                failed > 1 ? "s" : "");
        return EXIT_VERIFY_FAILED;
    }
    if (unsupported && many)
        fprintf(stderr, "etap-bench: %d %s case%s unsupported by this backend (see the table)\n",
                unsupported, o.grid ? "grid" : "sweep", unsupported > 1 ? "s" : "");
    return errors || (unsupported && !many) ? EXIT_RUNTIME : 0;
}
