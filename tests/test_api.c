/*
 * test_api.c - the validation layer: every check of src/api.c (and the host-side checks
 * of the CPU backend) is hit once with a call that must fail with the right status AND a
 * message naming the problem; the boundary values next to each check must be accepted.
 * Runs on the CPU backend; needs no device.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etap.h"
#include "test_util.h"

static tu_tally T;

/* Checks a call's status and that the thread's message contains `sub` (NULL: any
 * non-empty message; "" for ETAP_OK: no check). */
static void expect(const char *what, etap_status got, etap_status want, const char *sub)
{
    const char *msg = etap_last_error_message();
    if (msg == NULL) {
        tu_fail(&T, "%s: etap_last_error_message() returned NULL", what);
        return;
    }
    if (got != want) {
        tu_fail(&T, "%s: status %d (%s), expected %d (%s); message: \"%s\"", what, (int)got,
                etap_status_string(got), (int)want, etap_status_string(want), msg);
        return;
    }
    if (want != ETAP_OK && sub != NULL && !tu_contains(msg, sub)) {
        tu_fail(&T, "%s: status ok, but the message \"%s\" does not mention \"%s\"", what, msg,
                sub);
        return;
    }
    if (want != ETAP_OK && sub == NULL && msg[0] == 0) {
        tu_fail(&T, "%s: status ok, but the message is empty", what);
        return;
    }
    if (want == ETAP_OK)
        tu_pass(&T, "%s", what);
    else
        tu_pass(&T, "%s -> %s: \"%s\"", what, etap_status_string(got), msg);
}

static void expect_true(int cond, const char *fmt, const char *detail)
{
    if (cond)
        tu_pass(&T, fmt, detail);
    else
        tu_fail(&T, fmt, detail);
}

/* ------------------------------------------------------------------------------------ */
/* a small valid problem with everything needed to call etap_decode() */

typedef struct fixture {
    tu_case c;
    etap_handle h;
    int32_t *plan;
    size_t plan_bytes;
    unsigned char *ws;
    size_t ws_bytes;
} fixture;

static const int32_t fx_lens[] = {5, 20, 0, 70};

static int fixture_init(fixture *f, int num_threads, int32_t batch, int32_t sq, int32_t hq)
{
    memset(f, 0, sizeof *f);
    tu_case_desc d = {0};
    d.batch = batch;
    d.seqlen_q = sq;
    d.num_heads_q = hq;
    d.num_heads_kv = 1;
    d.page_size = 16;
    d.causal = sq > 1;
    d.dtype = ETAP_DTYPE_BF16;
    d.lengths = fx_lens;
    d.out_padded = 1;
    d.extra_pages = 2;
    d.extra_table_cols = 1;
    d.seed = 1234 + (uint64_t)batch;
    if (tu_case_build(&f->c, &d) != 0)
        return -1;
    tu_case_reference(&f->c);
    etap_options o = {ETAP_BACKEND_CPU, 0, num_threads};
    if (etap_create(&f->h, &o) != ETAP_OK)
        return -1;
    if (etap_plan_size(f->h, &f->c.args.shape, &f->plan_bytes) != ETAP_OK ||
        etap_workspace_size(f->h, &f->c.args.shape, &f->ws_bytes) != ETAP_OK)
        return -1;
    f->plan = malloc(f->plan_bytes);
    f->ws = malloc(f->ws_bytes + 64);
    if (!f->plan || !f->ws)
        return -1;
    if (etap_plan(f->h, &f->c.args.shape, f->c.lengths, f->plan, f->plan_bytes, NULL) != ETAP_OK)
        return -1;
    return 0;
}

static void fixture_free(fixture *f)
{
    etap_destroy(f->h);
    free(f->plan);
    free(f->ws);
    tu_case_free(&f->c);
}

static etap_status fx_decode(fixture *f, const etap_mla_args *a)
{
    return etap_decode(f->h, a, f->plan, f->plan_bytes, f->ws, f->ws_bytes, NULL);
}

/* A decode that must succeed and match the reference (args may differ from f->c.args in
 * strides that keep every row inside the buffers). */
static void expect_decode_ok(fixture *f, const char *what, const etap_mla_args *a)
{
    tu_case_poison(&f->c);
    etap_mla_args keep = f->c.args;
    f->c.args = *a;
    tu_case_reference(&f->c); /* the reference of exactly this call */
    etap_status st = fx_decode(f, a);
    char msg[512];
    if (st != ETAP_OK)
        tu_fail(&T, "%s: status %s: %s", what, etap_status_string(st), etap_last_error_message());
    else if (!tu_case_check(&f->c, f->c.out, f->c.lse, msg, sizeof msg))
        tu_fail(&T, "%s: accepted, but the result is wrong: %s", what, msg);
    else
        tu_pass(&T, "%s (%s)", what, msg);
    f->c.args = keep;
    tu_case_reference(&f->c);
}

/* ------------------------------------------------------------------------------------ */

static void *other_thread(void *arg)
{
    (void)arg;
    etap_create(NULL, NULL); /* fails here, must not touch the main thread's message */
    return (void *)(uintptr_t)(etap_last_error_message()[0] != 0);
}

static void test_library(void)
{
    expect_true(etap_last_error_message() != NULL && etap_last_error_message()[0] == 0,
                "library: the message is empty before any failure%s", "");

    char buf[64];
    snprintf(buf, sizeof buf, "%d.%d.%d", ETAP_VERSION_MAJOR, ETAP_VERSION_MINOR,
             ETAP_VERSION_PATCH);
    expect_true(etap_version() == ETAP_VERSION &&
                    ETAP_VERSION == ETAP_VERSION_MAJOR * 10000 + ETAP_VERSION_MINOR * 100 +
                                        ETAP_VERSION_PATCH,
                "library: etap_version() == ETAP_VERSION == MAJOR*10000+MINOR*100+PATCH (%s)", buf);
#if defined(ETAP_TEST_PROJECT_VERSION)
    expect_true(strcmp(buf, ETAP_TEST_PROJECT_VERSION) == 0,
                "library: version macros match the CMake project version " ETAP_TEST_PROJECT_VERSION
                " (%s)",
                buf);
#endif

    struct {
        etap_status s;
        const char *sub;
    } st[] = {{ETAP_OK, "ok"},
              {ETAP_ERR_INVALID_ARGUMENT, "invalid argument"},
              {ETAP_ERR_UNSUPPORTED, "unsupported"},
              {ETAP_ERR_WORKSPACE_TOO_SMALL, "too small"},
              {ETAP_ERR_NO_DEVICE, "device"},
              {ETAP_ERR_CUDA, "CUDA"},
              {ETAP_ERR_OUT_OF_MEMORY, "memory"},
              {ETAP_ERR_INTERNAL, "internal"}};
    int n = (int)(sizeof st / sizeof st[0]);
    for (int i = 0; i < n; i++) {
        const char *s = etap_status_string(st[i].s);
        int distinct = 1;
        for (int j = 0; j < i; j++)
            distinct &= s && strcmp(s, etap_status_string(st[j].s)) != 0;
        char what[128];
        snprintf(what, sizeof what, "library: etap_status_string(%d) = \"%s\"", (int)st[i].s,
                 s ? s : "(null)");
        expect_true(s != NULL && tu_contains(s, st[i].sub) && distinct, "%s", what);
    }
    const etap_status unknown[] = {(etap_status)1, (etap_status)-8, (etap_status)12345,
                                   (etap_status)INT32_MIN};
    for (int i = 0; i < 4; i++) {
        const char *s = etap_status_string(unknown[i]);
        char what[128];
        snprintf(what, sizeof what, "library: etap_status_string(%d) = \"%s\"", (int)unknown[i],
                 s ? s : "(null)");
        expect_true(s != NULL && tu_contains(s, "unknown"), "%s", what);
    }

    expect_true(etap_backend_built(ETAP_BACKEND_CPU) == 1, "library: CPU backend built%s", "");
#if defined(ETAP_WITH_CUDA)
    expect_true(etap_backend_built(ETAP_BACKEND_CUDA) == 1,
                "library: CUDA backend built (ETAP_WITH_CUDA)%s", "");
#else
    expect_true(etap_backend_built(ETAP_BACKEND_CUDA) == 0,
                "library: CUDA backend not built (no ETAP_WITH_CUDA)%s", "");
#endif
    expect_true(etap_backend_built(ETAP_BACKEND_AUTO) == 0 &&
                    etap_backend_built((etap_backend)7) == 0,
                "library: etap_backend_built(AUTO / 7) == 0%s", "");

    /* messages are per thread */
    etap_create(NULL, NULL);
    char mine[512];
    snprintf(mine, sizeof mine, "%s", etap_last_error_message());
    pthread_t th;
    void *ret = NULL;
    int ok = pthread_create(&th, NULL, other_thread, NULL) == 0 && pthread_join(th, &ret) == 0;
    expect_true(ok && ret != NULL && strcmp(mine, etap_last_error_message()) == 0,
                "library: a failure on another thread leaves this thread's message alone%s", "");
}

static void test_handle(void)
{
    etap_handle h = (etap_handle)(uintptr_t)0x1;
    etap_options o = {ETAP_BACKEND_CPU, 0, 2};

    expect("create: handle pointer NULL", etap_create(NULL, &o), ETAP_ERR_INVALID_ARGUMENT,
           "handle (the output pointer) is NULL");
    o.backend = (etap_backend)7;
    expect("create: backend 7", etap_create(&h, &o), ETAP_ERR_INVALID_ARGUMENT,
           "options->backend is 7");
    expect_true(h == NULL, "create: a failed create sets *handle = NULL%s", "");
    o.backend = (etap_backend)-1;
    expect("create: backend -1", etap_create(&h, &o), ETAP_ERR_INVALID_ARGUMENT, "options->backend");
    o = (etap_options){ETAP_BACKEND_CPU, 0, -1};
    expect("create: num_threads -1", etap_create(&h, &o), ETAP_ERR_INVALID_ARGUMENT,
           "options->num_threads is -1");
    o.num_threads = 1025;
    expect("create: num_threads 1025", etap_create(&h, &o), ETAP_ERR_INVALID_ARGUMENT,
           "options->num_threads is 1025");
    o = (etap_options){ETAP_BACKEND_CPU, -1, 0};
    expect("create: device -1", etap_create(&h, &o), ETAP_ERR_INVALID_ARGUMENT,
           "options->device is -1");

    o = (etap_options){ETAP_BACKEND_CPU, 0, 1024};
    expect("create: num_threads 1024 accepted", etap_create(&h, &o), ETAP_OK, "");
    etap_backend be = ETAP_BACKEND_AUTO;
    expect("get_backend of a CPU handle", etap_get_backend(h, &be), ETAP_OK, "");
    expect_true(be == ETAP_BACKEND_CPU, "get_backend: CPU handle reports ETAP_BACKEND_CPU%s", "");
    expect("destroy", etap_destroy(h), ETAP_OK, "");

    h = NULL;
    expect("create: options NULL (AUTO) accepted", etap_create(&h, NULL), ETAP_OK, "");
    be = ETAP_BACKEND_AUTO;
    etap_get_backend(h, &be);
    expect_true(be == ETAP_BACKEND_CPU || be == ETAP_BACKEND_CUDA,
                "create: AUTO never reports ETAP_BACKEND_AUTO%s", "");
#if !defined(ETAP_WITH_CUDA)
    expect_true(be == ETAP_BACKEND_CPU, "create: AUTO without CUDA built is the CPU%s", "");
#endif
    etap_destroy(h);

    o = (etap_options){ETAP_BACKEND_CUDA, 0, 0};
    h = NULL;
    etap_status st = etap_create(&h, &o);
#if defined(ETAP_WITH_CUDA)
    if (st == ETAP_OK) {
        tu_pass(&T, "create: CUDA backend (a device is present)");
        etap_destroy(h);
    } else {
        expect("create: CUDA backend without a usable device", st, ETAP_ERR_NO_DEVICE, NULL);
    }
    o.device = 4096; /* no machine has that many */
    expect("create: CUDA device 4096", etap_create(&h, &o), ETAP_ERR_NO_DEVICE, NULL);
#else
    expect("create: CUDA backend in a build without it", st, ETAP_ERR_NO_DEVICE,
           "built without the CUDA backend");
    o = (etap_options){ETAP_BACKEND_AUTO, 5, 0};
    expect("create: AUTO with device 5 and no CUDA falls back to the CPU", etap_create(&h, &o),
           ETAP_OK, "");
    etap_get_backend(h, &be);
    expect_true(be == ETAP_BACKEND_CPU, "create: ... and reports CPU%s", "");
    etap_destroy(h);
#endif

    expect("destroy(NULL) is a no-op", etap_destroy(NULL), ETAP_OK, "");

    /* NULL handle for every entry point */
    etap_mla_shape sh = {1, 1, 1, 1, 576, 512, 64, 1, 1, ETAP_DTYPE_BF16, 0};
    size_t bytes = 0;
    int32_t w = 0, lens[1] = {0};
    int32_t plan[64];
    etap_mla_args a;
    memset(&a, 0, sizeof a);
    expect("get_backend(NULL handle)", etap_get_backend(NULL, &be), ETAP_ERR_INVALID_ARGUMENT,
           "handle is NULL");
    expect("get_num_workers(NULL handle)", etap_get_num_workers(NULL, &sh, &w),
           ETAP_ERR_INVALID_ARGUMENT, "handle is NULL");
    expect("plan_size(NULL handle)", etap_plan_size(NULL, &sh, &bytes), ETAP_ERR_INVALID_ARGUMENT,
           "handle is NULL");
    expect("plan(NULL handle)", etap_plan(NULL, &sh, lens, plan, sizeof plan, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "handle is NULL");
    expect("plan_check(NULL handle)", etap_plan_check(NULL, plan, sizeof plan, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "handle is NULL");
    expect("workspace_size(NULL handle)", etap_workspace_size(NULL, &sh, &bytes),
           ETAP_ERR_INVALID_ARGUMENT, "handle is NULL");
    expect("decode(NULL handle)", etap_decode(NULL, &a, plan, sizeof plan, NULL, 0, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "handle is NULL");

    /* A destroyed handle cannot be touched without a use-after-free (and the sanitizer
     * build would rightly abort), so a handle-sized block of garbage stands for "not a
     * live handle": api.c marks a destroyed handle the same way before freeing it. */
    union {
        unsigned char bytes[256];
        void *align;
    } junk;
    memset(junk.bytes, 0xA5, sizeof junk.bytes);
    etap_handle bad = (etap_handle)(void *)junk.bytes;
    expect("get_backend(garbage handle)", etap_get_backend(bad, &be), ETAP_ERR_INVALID_ARGUMENT,
           "not a live etap handle");
    expect("plan_size(garbage handle)", etap_plan_size(bad, &sh, &bytes),
           ETAP_ERR_INVALID_ARGUMENT, "not a live etap handle");
    expect("decode(garbage handle)", etap_decode(bad, &a, plan, sizeof plan, NULL, 0, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "not a live etap handle");
    expect("destroy(garbage handle)", etap_destroy(bad), ETAP_ERR_INVALID_ARGUMENT,
           "not a live etap handle");

    o = (etap_options){ETAP_BACKEND_CPU, 0, 3};
    etap_create(&h, &o);
    expect("get_backend: output pointer NULL", etap_get_backend(h, NULL), ETAP_ERR_INVALID_ARGUMENT,
           "backend (the output pointer) is NULL");
    expect("get_num_workers: shape NULL", etap_get_num_workers(h, NULL, &w),
           ETAP_ERR_INVALID_ARGUMENT, "shape is NULL");
    expect("get_num_workers: output pointer NULL", etap_get_num_workers(h, &sh, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "num_workers (the output pointer) is NULL");
    w = 0;
    expect("get_num_workers", etap_get_num_workers(h, &sh, &w), ETAP_OK, "");
    char d[64];
    snprintf(d, sizeof d, "%d", (int)w);
    expect_true(w >= 1, "get_num_workers: 3 CPU threads give %s >= 1 workers", d);
    etap_destroy(h);
}

/* Every field of the shape, through etap_plan_size (and the other entry points that
 * take a shape for a few of them). */
static void test_shape(void)
{
    etap_handle h = NULL;
    etap_options o = {ETAP_BACKEND_CPU, 0, 2};
    etap_create(&h, &o);
    const etap_mla_shape good = {4, 2, 16, 1, 576, 512, 64, 100, 8, ETAP_DTYPE_BF16, 1};
    size_t bytes = 0;
    expect("shape: a valid shape is accepted", etap_plan_size(h, &good, &bytes), ETAP_OK, "");
    expect("shape: NULL (plan_size)", etap_plan_size(h, NULL, &bytes), ETAP_ERR_INVALID_ARGUMENT,
           "shape is NULL");
    expect("shape: NULL (workspace_size)", etap_workspace_size(h, NULL, &bytes),
           ETAP_ERR_INVALID_ARGUMENT, "shape is NULL");
    int32_t lens[4] = {1, 2, 3, 4};
    int32_t plan[256];
    expect("shape: NULL (plan)", etap_plan(h, NULL, lens, plan, sizeof plan, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "shape is NULL");
    expect("plan_size: output pointer NULL", etap_plan_size(h, &good, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "plan_bytes (the output pointer) is NULL");
    expect("workspace_size: output pointer NULL", etap_workspace_size(h, &good, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "workspace_bytes (the output pointer) is NULL");

    struct {
        const char *what;
        int field; /* index into the int32 view below */
        int32_t value;
        etap_status st;
        const char *sub;
    } fc[] = {
        {"shape: batch 0", 0, 0, ETAP_ERR_INVALID_ARGUMENT, "batch is 0: it must be >= 1"},
        {"shape: batch -3", 0, -3, ETAP_ERR_INVALID_ARGUMENT, "batch is -3"},
        {"shape: seqlen_q 0", 1, 0, ETAP_ERR_INVALID_ARGUMENT, "seqlen_q is 0"},
        {"shape: seqlen_q -1", 1, -1, ETAP_ERR_INVALID_ARGUMENT, "seqlen_q is -1"},
        {"shape: num_heads_q 0", 2, 0, ETAP_ERR_INVALID_ARGUMENT, "num_heads_q is 0"},
        {"shape: num_heads_kv 0", 3, 0, ETAP_ERR_INVALID_ARGUMENT, "num_heads_kv is 0"},
        {"shape: num_heads_kv -2", 3, -2, ETAP_ERR_INVALID_ARGUMENT, "num_heads_kv is -2"},
        {"shape: h_q 16 % h_kv 3 != 0", 3, 3, ETAP_ERR_INVALID_ARGUMENT,
         "num_heads_q (16) is not a multiple of num_heads_kv (3)"},
        {"shape: h_kv 32 > h_q 16", 3, 32, ETAP_ERR_INVALID_ARGUMENT, "not a multiple"},
        {"shape: head_dim_qk 512", 4, 512, ETAP_ERR_INVALID_ARGUMENT, "head_dim_qk is 512"},
        {"shape: head_dim_qk 577", 4, 577, ETAP_ERR_INVALID_ARGUMENT, "head_dim_qk is 577"},
        {"shape: head_dim_qk 0", 4, 0, ETAP_ERR_INVALID_ARGUMENT, "head_dim_qk"},
        {"shape: head_dim_v 576", 5, 576, ETAP_ERR_INVALID_ARGUMENT, "head_dim_v is 576"},
        {"shape: head_dim_v 128", 5, 128, ETAP_ERR_INVALID_ARGUMENT, "head_dim_v is 128"},
        {"shape: page_size 0", 6, 0, ETAP_ERR_INVALID_ARGUMENT, "page_size is 0"},
        {"shape: page_size -64", 6, -64, ETAP_ERR_INVALID_ARGUMENT, "page_size is -64"},
        {"shape: num_pages 0", 7, 0, ETAP_ERR_INVALID_ARGUMENT, "num_pages is 0"},
        {"shape: max_pages_per_seq 0", 8, 0, ETAP_ERR_INVALID_ARGUMENT, "max_pages_per_seq is 0"},
        {"shape: max_pages_per_seq -1", 8, -1, ETAP_ERR_INVALID_ARGUMENT,
         "max_pages_per_seq is -1"},
        {"shape: dtype FP8_E4M3", 9, ETAP_DTYPE_FP8_E4M3, ETAP_ERR_UNSUPPORTED, "FP8_E4M3"},
        {"shape: dtype 3", 9, 3, ETAP_ERR_INVALID_ARGUMENT, "dtype is 3"},
        {"shape: dtype -1", 9, -1, ETAP_ERR_INVALID_ARGUMENT, "dtype is -1"},
        {"shape: causal 2", 10, 2, ETAP_ERR_INVALID_ARGUMENT, "causal is 2: it must be 0 or 1"},
        {"shape: causal -1", 10, -1, ETAP_ERR_INVALID_ARGUMENT, "causal is -1"},
    };
    for (size_t i = 0; i < sizeof fc / sizeof fc[0]; i++) {
        etap_mla_shape s = good;
        switch (fc[i].field) {
        case 0: s.batch = fc[i].value; break;
        case 1: s.seqlen_q = fc[i].value; break;
        case 2: s.num_heads_q = fc[i].value; break;
        case 3: s.num_heads_kv = fc[i].value; break;
        case 4: s.head_dim_qk = fc[i].value; break;
        case 5: s.head_dim_v = fc[i].value; break;
        case 6: s.page_size = fc[i].value; break;
        case 7: s.num_pages = fc[i].value; break;
        case 8: s.max_pages_per_seq = fc[i].value; break;
        case 9: s.dtype = (etap_dtype)fc[i].value; break;
        case 10: s.causal = fc[i].value; break;
        }
        expect(fc[i].what, etap_plan_size(h, &s, &bytes), fc[i].st, fc[i].sub);
        /* the same check guards the other entry points that take a shape */
        if (i % 4 == 0) {
            char what[160];
            int32_t w;
            snprintf(what, sizeof what, "%s (workspace_size)", fc[i].what);
            expect(what, etap_workspace_size(h, &s, &bytes), fc[i].st, fc[i].sub);
            snprintf(what, sizeof what, "%s (get_num_workers)", fc[i].what);
            expect(what, etap_get_num_workers(h, &s, &w), fc[i].st, fc[i].sub);
            snprintf(what, sizeof what, "%s (plan)", fc[i].what);
            expect(what, etap_plan(h, &s, lens, plan, sizeof plan, NULL), fc[i].st, fc[i].sub);
        }
    }

    /* row count bound */
    etap_mla_shape s = good;
    s.batch = 65536;
    s.seqlen_q = 256;
    s.num_heads_q = 128;
    expect("shape: 65536 x 256 x 128 query rows (> INT32_MAX)", etap_plan_size(h, &s, &bytes),
           ETAP_ERR_INVALID_ARGUMENT, "query rows");
    s.batch = 16384;
    s.seqlen_q = 8;
    s.num_heads_q = 128;
    expect("shape: 16384 x 8 x 128 query rows accepted", etap_plan_size(h, &s, &bytes), ETAP_OK, "");

    /* h_kv == h_q, s_q == 1 with causal = 1: both valid */
    s = good;
    s.num_heads_kv = 16;
    expect("shape: h_kv == h_q accepted", etap_plan_size(h, &s, &bytes), ETAP_OK, "");
    s = good;
    s.seqlen_q = 1;
    s.causal = 1;
    expect("shape: causal with s_q == 1 accepted", etap_plan_size(h, &s, &bytes), ETAP_OK, "");
    etap_destroy(h);
}

static void test_args(void)
{
    fixture f;
    if (fixture_init(&f, 2, 4, 2, 2) != 0) {
        tu_fail(&T, "args: fixture setup failed: %s", etap_last_error_message());
        return;
    }
    const etap_mla_args good = f.c.args;
    etap_mla_args a;

    expect_decode_ok(&f, "decode: the valid fixture call", &good);
    expect("decode: args NULL", fx_decode(&f, NULL), ETAP_ERR_INVALID_ARGUMENT, "args is NULL");

#define NULLPTR(field, sub)                                                               \
    a = good;                                                                             \
    a.field = NULL;                                                                       \
    expect("decode: " #field " NULL", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT, sub)
    NULLPTR(q, "q is NULL");
    NULLPTR(kv_cache, "kv_cache is NULL");
    NULLPTR(block_table, "block_table is NULL");
    NULLPTR(cache_seqlens, "cache_seqlens is NULL");
    NULLPTR(out, "out is NULL");
    NULLPTR(lse, "lse is NULL");
#undef NULLPTR

#define NEG(field, sub)                                                                   \
    a = good;                                                                             \
    a.field = -a.field - 1;                                                               \
    expect("decode: " #field " negative", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT, sub)
    NEG(q_stride_batch, "q strides must be >= 0");
    NEG(q_stride_seq, "q strides must be >= 0");
    NEG(q_stride_head, "q strides must be >= 0");
    NEG(kv_stride_page, "kv_cache strides must be >= 0");
    NEG(kv_stride_token, "kv_cache strides must be >= 0");
    NEG(kv_stride_head, "kv_cache strides must be >= 0");
    NEG(out_stride_batch, "out strides must be >= 0");
    NEG(out_stride_seq, "out strides must be >= 0");
    NEG(out_stride_head, "out strides must be >= 0");
#undef NEG

    a = good;
    a.block_table_stride = a.shape.max_pages_per_seq - 1;
    expect("decode: block_table_stride < max_pages_per_seq", fx_decode(&f, &a),
           ETAP_ERR_INVALID_ARGUMENT, "block_table_stride is");

    /* overlapping out rows */
    a = good;
    a.out_stride_head = 511;
    expect("decode: out_stride_head 511 (rows overlap)", fx_decode(&f, &a),
           ETAP_ERR_INVALID_ARGUMENT, "out_stride_head is 511");
    a = good;
    a.out_stride_head = 512;
    a.out_stride_seq = 1023; /* h_q = 2: needs 512 + 512 */
    expect("decode: out_stride_seq 1023 with h_q 2 (positions overlap)", fx_decode(&f, &a),
           ETAP_ERR_INVALID_ARGUMENT, "out_stride_seq is 1023");
    a = good;
    a.out_stride_batch = (good.shape.seqlen_q - 1) * good.out_stride_seq +
                         (good.shape.num_heads_q - 1) * good.out_stride_head + 511;
    expect("decode: out_stride_batch one short (sequences overlap)", fx_decode(&f, &a),
           ETAP_ERR_INVALID_ARGUMENT, "out_stride_batch is");
    a = good;
    a.out_stride_batch = 0;
    expect("decode: out_stride_batch 0 with batch 4", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT,
           "out_stride_batch is 0");
    /* the tightest legal strides inside the same buffer are accepted */
    a = good;
    a.out_stride_head = 512;
    a.out_stride_seq = 1024;
    a.out_stride_batch = 2048;
    expect_decode_ok(&f, "decode: the tightest non-overlapping out strides", &a);

    /* softmax_scale */
    const float bad_scales[] = {-1.0f, -1e-30f, NAN, INFINITY, -INFINITY};
    const char *names[] = {"-1", "-1e-30", "NaN", "+inf", "-inf"};
    for (int i = 0; i < 5; i++) {
        char what[96];
        snprintf(what, sizeof what, "decode: softmax_scale %s", names[i]);
        a = good;
        a.softmax_scale = bad_scales[i];
        expect(what, fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT, "softmax_scale is");
    }
    a = good;
    a.softmax_scale = 1.0f / 24.0f;
    expect_decode_ok(&f, "decode: explicit softmax_scale 1/24", &a);
    a = good;
    a.softmax_scale = 3.0f;
    expect_decode_ok(&f, "decode: explicit softmax_scale 3", &a);

    /* shape errors reach decode too */
    a = good;
    a.shape.head_dim_qk = 512;
    expect("decode: head_dim_qk 512", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT, "head_dim_qk");
    a = good;
    a.shape.dtype = ETAP_DTYPE_FP8_E4M3;
    expect("decode: dtype FP8_E4M3", fx_decode(&f, &a), ETAP_ERR_UNSUPPORTED, "FP8");
    a = good;
    a.shape.causal = 5;
    expect("decode: causal 5", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT, "causal is 5");
    a = good;
    a.shape.num_heads_kv = 3; /* h_q 2 */
    expect("decode: h_q 2 with h_kv 3", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT,
           "not a multiple");
    fixture_free(&f);

    /* batch 1, h_q 1: strides that only one sequence / head makes legal */
    if (fixture_init(&f, 1, 1, 1, 1) != 0) {
        tu_fail(&T, "args: fixture (batch 1) setup failed: %s", etap_last_error_message());
        return;
    }
    a = f.c.args;
    a.out_stride_batch = 0;
    a.out_stride_seq = 0;
    a.out_stride_head = 0;
    expect_decode_ok(&f, "decode: batch 1, s_q 1, h_q 1 accept out strides of 0", &a);
    a = f.c.args;
    a.block_table_stride = 0;
    expect_decode_ok(&f, "decode: batch 1 accepts block_table_stride 0", &a);
    a = f.c.args;
    a.block_table_stride = -1;
    expect("decode: batch 1 with block_table_stride -1", fx_decode(&f, &a),
           ETAP_ERR_INVALID_ARGUMENT, "block_table_stride is -1: it must be >= 0");
    a = f.c.args;
    a.q_stride_batch = 0; /* q rows may alias: inputs only */
    a.q_stride_seq = 0;
    expect_decode_ok(&f, "decode: q strides of 0 (inputs may alias)", &a);
    fixture_free(&f);
}

static void test_plan_and_workspace(void)
{
    fixture f;
    if (fixture_init(&f, 2, 4, 1, 4) != 0) {
        tu_fail(&T, "plan: fixture setup failed: %s", etap_last_error_message());
        return;
    }
    const etap_mla_args good = f.c.args;
    etap_mla_args a = good;
    const etap_mla_shape *sh = &good.shape;
    char what[160];

    /* etap_plan */
    expect("plan: cache_seqlens NULL", etap_plan(f.h, sh, NULL, f.plan, f.plan_bytes, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "cache_seqlens is NULL");
    expect("plan: plan NULL", etap_plan(f.h, sh, f.c.lengths, NULL, f.plan_bytes, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "plan is NULL");
    unsigned char *raw = malloc(f.plan_bytes + 8);
    expect("plan: misaligned plan pointer",
           etap_plan(f.h, sh, f.c.lengths, raw + 2, f.plan_bytes, NULL), ETAP_ERR_INVALID_ARGUMENT,
           "4-byte aligned");
    free(raw);
    snprintf(what, sizeof what, "plan: plan_bytes %zu, one short", f.plan_bytes - 1);
    expect(what, etap_plan(f.h, sh, f.c.lengths, f.plan, f.plan_bytes - 1, NULL),
           ETAP_ERR_WORKSPACE_TOO_SMALL, "plan buffer is");
    expect("plan: plan_bytes 0", etap_plan(f.h, sh, f.c.lengths, f.plan, 0, NULL),
           ETAP_ERR_WORKSPACE_TOO_SMALL, "etap_plan_size");

    int32_t lens[4];
    memcpy(lens, f.c.lengths, sizeof lens);
    int64_t max_len = (int64_t)sh->max_pages_per_seq * sh->page_size;
    lens[1] = -1;
    expect("plan: cache_seqlens[1] = -1", etap_plan(f.h, sh, lens, f.plan, f.plan_bytes, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "cache_seqlens[1] is -1");
    lens[1] = INT32_MIN;
    expect("plan: cache_seqlens[1] = INT32_MIN", etap_plan(f.h, sh, lens, f.plan, f.plan_bytes, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "lengths must be >= 0");
    lens[1] = f.c.lengths[1];
    lens[3] = (int32_t)max_len + 1;
    snprintf(what, sizeof what, "plan: cache_seqlens[3] = %d > max_pages_per_seq * page_size",
             (int)lens[3]);
    expect(what, etap_plan(f.h, sh, lens, f.plan, f.plan_bytes, NULL), ETAP_ERR_INVALID_ARGUMENT,
           "the block table holds at most");
    lens[3] = INT32_MAX;
    expect("plan: cache_seqlens[3] = INT32_MAX", etap_plan(f.h, sh, lens, f.plan, f.plan_bytes, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "cache_seqlens[3]");
    lens[3] = (int32_t)max_len;
    expect("plan: a length of exactly max_pages_per_seq * page_size is accepted",
           etap_plan(f.h, sh, lens, f.plan, f.plan_bytes, NULL), ETAP_OK, "");

    /* etap_plan_check */
    etap_plan(f.h, sh, f.c.lengths, f.plan, f.plan_bytes, NULL);
    expect("plan_check: a valid plan", etap_plan_check(f.h, f.plan, f.plan_bytes, NULL), ETAP_OK, "");
    expect("plan_check: plan NULL", etap_plan_check(f.h, NULL, f.plan_bytes, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "plan is NULL");
    expect("plan_check: 63 bytes", etap_plan_check(f.h, f.plan, 63, NULL),
           ETAP_ERR_WORKSPACE_TOO_SMALL, "too small");
    int32_t keep0 = f.plan[0];
    f.plan[0] ^= 1;
    expect("plan_check: bad magic", etap_plan_check(f.h, f.plan, f.plan_bytes, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "bad magic or version");
    f.plan[0] = keep0;

    /* etap_decode: plan and workspace */
    expect_decode_ok(&f, "decode: valid call (plan fixture)", &good);
    expect("decode: plan NULL", etap_decode(f.h, &a, NULL, f.plan_bytes, f.ws, f.ws_bytes, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "plan is NULL");
    expect("decode: plan_bytes one short",
           etap_decode(f.h, &a, f.plan, f.plan_bytes - 1, f.ws, f.ws_bytes, NULL),
           ETAP_ERR_WORKSPACE_TOO_SMALL, "plan buffer is");
    expect("decode: workspace_bytes one short",
           etap_decode(f.h, &a, f.plan, f.plan_bytes, f.ws, f.ws_bytes - 1, NULL),
           ETAP_ERR_WORKSPACE_TOO_SMALL, "workspace is");
    expect("decode: workspace_bytes 0",
           etap_decode(f.h, &a, f.plan, f.plan_bytes, f.ws, 0, NULL),
           ETAP_ERR_WORKSPACE_TOO_SMALL, "etap_workspace_size");
    expect("decode: workspace NULL", etap_decode(f.h, &a, f.plan, f.plan_bytes, NULL, f.ws_bytes, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "workspace is NULL");
    expect("decode: misaligned workspace (CPU)",
           etap_decode(f.h, &a, f.plan, f.plan_bytes, f.ws + 2, f.ws_bytes, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "aligned");
    /* the workspace must be 16-byte aligned (etap.h); a bigger one than needed, at a
     * 16-byte offset of a malloc'ed block, is fine */
    {
        unsigned char *big = malloc(f.ws_bytes + 4096);
        expect("decode: workspace at a 4-byte offset",
               etap_decode(f.h, &a, f.plan, f.plan_bytes, big + 4, f.ws_bytes + 1000, NULL),
               ETAP_ERR_INVALID_ARGUMENT, "16-byte aligned");
        tu_case_poison(&f.c);
        etap_status st = etap_decode(f.h, &a, f.plan, f.plan_bytes, big + 16, f.ws_bytes + 1000, NULL);
        char msg[512];
        if (st == ETAP_OK && tu_case_check(&f.c, f.c.out, f.c.lse, msg, sizeof msg))
            tu_pass(&T, "decode: a larger workspace at offset 16 (%s)", msg);
        else
            tu_fail(&T, "decode: a larger workspace at offset 16: %s %s", etap_status_string(st),
                    st == ETAP_OK ? msg : etap_last_error_message());
        free(big);
    }

    /* corrupted plans */
    int32_t *p = f.plan;
    p[0] ^= 0x100;
    expect("decode: plan with a bad magic", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT, "bad magic");
    p[0] ^= 0x100;
    p[1] += 1;
    expect("decode: plan with a bad version", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT,
           "version");
    p[1] -= 1;
    int32_t ks = p[9], kseq = p[10], klen = p[11];
    p[9] = 1; /* ETAP_PLAN_BAD_NEGATIVE_LEN */
    p[10] = 2;
    p[11] = -5;
    expect("decode: plan marked 'negative length'", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT,
           "cache_seqlens[2] is -5: lengths must be >= 0");
    expect("plan_check: plan marked 'negative length'",
           etap_plan_check(f.h, f.plan, f.plan_bytes, NULL), ETAP_ERR_INVALID_ARGUMENT,
           "cache_seqlens[2] is -5");
    p[9] = 2; /* ETAP_PLAN_BAD_LEN_TOO_LONG */
    p[11] = 999999;
    expect("decode: plan marked 'too long'", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT,
           "longer than max_pages_per_seq * page_size");
    expect("plan_check: plan marked 'too long'", etap_plan_check(f.h, f.plan, f.plan_bytes, NULL),
           ETAP_ERR_INVALID_ARGUMENT, "cache_seqlens[2] is 999999");
    p[9] = 77;
    expect("decode: plan with an unknown status", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT,
           "unknown status 77");
    p[9] = ks;
    p[10] = kseq;
    p[11] = klen;

    /* a plan made from other lengths than the call's (the call's block table is valid
     * for the call's lengths, so only the plan is wrong) */
    {
        int32_t *pl = malloc(f.plan_bytes);
        int32_t other_plan[4] = {70, 20, 0, 5}; /* same total, other distribution */
        etap_plan(f.h, sh, other_plan, pl, f.plan_bytes, NULL);
        expect("decode: plan made from other lengths (70,20,0,5 vs 5,20,0,70)",
               etap_decode(f.h, &good, pl, f.plan_bytes, f.ws, f.ws_bytes, NULL),
               ETAP_ERR_INVALID_ARGUMENT, "differ from the lengths the plan was made from");
        other_plan[0] = 5;
        other_plan[2] = 1;
        other_plan[3] = 70; /* sequence 2: empty in the call, one token in the plan */
        etap_plan(f.h, sh, other_plan, pl, f.plan_bytes, NULL);
        expect("decode: plan made with a token in a sequence the call has empty",
               etap_decode(f.h, &good, pl, f.plan_bytes, f.ws, f.ws_bytes, NULL),
               ETAP_ERR_INVALID_ARGUMENT, "differ from the lengths");
        free(pl);
    }
    int32_t other[4];
    /* lengths the plan was not made from but which give the same tiles are legal: the
     * plan depends on ceil(len / 64) only; the result must follow the new lengths */
    memcpy(other, good.cache_seqlens, sizeof other);
    other[1] = 19; /* one token fewer: same tile count, all tokens valid */
    {
        etap_mla_args a19 = good;
        a19.cache_seqlens = other;
        expect_decode_ok(&f, "decode: lengths 20 -> 19 keep the plan (same tiles) and follow the "
                             "new length", &a19);
    }

    /* lengths checked again at decode time (CPU sees them) */
    a = good;
    memcpy(other, good.cache_seqlens, sizeof other);
    other[1] = -1;
    a.cache_seqlens = other;
    expect("decode: cache_seqlens[1] = -1", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT,
           "cache_seqlens[1] is -1");
    other[1] = (int32_t)max_len + 1;
    expect("decode: cache_seqlens[1] longer than the block table", fx_decode(&f, &a),
           ETAP_ERR_INVALID_ARGUMENT, "cache_seqlens[1]");

    /* block table entries the call reads must be pages of the cache */
    a = good;
    int32_t *bt = malloc(sizeof(int32_t) * f.c.bt_elems);
    memcpy(bt, f.c.block_table, sizeof(int32_t) * f.c.bt_elems);
    a.block_table = bt;
    int64_t row3 = 3 * a.block_table_stride; /* sequence 3: 70 tokens, 5 pages of 16 */
    int32_t keep = bt[row3 + 4];
    bt[row3 + 4] = sh->num_pages;
    snprintf(what, sizeof what, "decode: block_table[3][4] = num_pages (%d)", (int)sh->num_pages);
    expect(what, fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT, "block_table[3][4]");
    bt[row3 + 4] = -1;
    expect("decode: block_table[3][4] = -1", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT,
           "block_table[3][4] is -1");
    bt[row3 + 4] = keep;
    bt[row3 + 0] = INT32_MAX;
    expect("decode: block_table[3][0] = INT32_MAX", fx_decode(&f, &a), ETAP_ERR_INVALID_ARGUMENT,
           "block_table[3][0]");
    bt[row3 + 0] = f.c.block_table[row3];
    /* entries past the last page a sequence needs are never read, whatever they hold
     * (the fixture already fills them with INT32_MAX, -7, ...): set them all to garbage */
    for (int32_t i = 0; i < 4; i++) {
        int64_t need = (good.cache_seqlens[i] + sh->page_size - 1) / sh->page_size;
        for (int64_t j = need; j < a.block_table_stride; j++)
            bt[i * a.block_table_stride + j] = (j & 1) ? INT32_MIN : INT32_MAX;
    }
    expect_decode_ok(&f, "decode: garbage in every unused block table entry is ignored", &a);
    free(bt);

    /* a plan from another batch size / another worker count */
    {
        etap_mla_args a3 = good;
        a3.shape.batch = 3;
        expect("decode: plan made for batch 4, call with batch 3", fx_decode(&f, &a3),
               ETAP_ERR_INVALID_ARGUMENT, "plan was made for batch 4");
        etap_handle h1 = NULL;
        etap_options o1 = {ETAP_BACKEND_CPU, 0, 1};
        etap_create(&h1, &o1);
        int32_t w1 = 0, w2 = 0;
        etap_get_num_workers(h1, sh, &w1);
        etap_get_num_workers(f.h, sh, &w2);
        if (w1 != w2) {
            size_t pb1 = 0, wb1 = 0;
            etap_plan_size(h1, sh, &pb1);
            etap_workspace_size(h1, sh, &wb1);
            size_t pb = pb1 > f.plan_bytes ? pb1 : f.plan_bytes;
            int32_t *pl = calloc(1, pb);
            unsigned char *wsb = malloc(wb1 > f.ws_bytes ? wb1 : f.ws_bytes);
            etap_plan(f.h, sh, good.cache_seqlens, pl, pb, NULL);
            snprintf(what, sizeof what,
                     "decode: plan made with %d workers used on a handle with %d", (int)w2, (int)w1);
            expect(what, etap_decode(h1, &good, pl, pb, wsb, wb1, NULL), ETAP_ERR_INVALID_ARGUMENT,
                   "plan was made for");
            free(pl);
            free(wsb);
        } else {
            tu_fail(&T, "decode: handles with 1 and 2 threads have the same worker count %d",
                    (int)w1);
        }
        etap_destroy(h1);
    }
    fixture_free(&f);
}

/* Shapes whose element counts need 64 bits: 128 sequences x 1M tokens, and lengths near
 * INT32_MAX. */
static void test_big_shapes(void)
{
    etap_handle h = NULL;
    etap_options o = {ETAP_BACKEND_CPU, 0, 4};
    etap_create(&h, &o);
    etap_mla_shape s = {128, 1, 128, 1, 576, 512, 64, 128 * 16384, 16384, ETAP_DTYPE_BF16, 0};
    size_t pb = 0, wb = 0;
    int32_t w = 0;
    etap_get_num_workers(h, &s, &w);
    expect("64-bit: plan_size for 128 x 1M tokens", etap_plan_size(h, &s, &pb), ETAP_OK, "");
    expect("64-bit: workspace_size for 128 x 1M tokens", etap_workspace_size(h, &s, &wb), ETAP_OK, "");
    int64_t words = 16 + 4 * (int64_t)w + 2 * 128 + 1;
    char d[160];
    snprintf(d, sizeof d, "%zu bytes = 4 * %lld words", pb, (long long)words);
    expect_true(pb == (size_t)(4 * words), "64-bit: plan_size is %s", d);
    double need = (double)(128 + w) * 128 * 513 * 4;
    snprintf(d, sizeof d, "%zu >= %.0f", wb, need);
    expect_true((double)wb >= need, "64-bit: workspace holds (b + W) partial rows: %s", d);
    int32_t *lens = malloc(sizeof(int32_t) * 128);
    for (int i = 0; i < 128; i++)
        lens[i] = 1 << 20;
    int32_t *plan = malloc(pb);
    expect("64-bit: plan for 128 x 1M tokens", etap_plan(h, &s, lens, plan, pb, NULL), ETAP_OK, "");
    expect("64-bit: plan_check", etap_plan_check(h, plan, pb, NULL), ETAP_OK, "");
    int64_t quota = (int64_t)(((uint64_t)(uint32_t)plan[7] << 32) | (uint32_t)plan[6]);
    int64_t total = 128 * (16384 + 2);
    int64_t want = (total + w - 1) / w;
    snprintf(d, sizeof d, "%lld, expected %lld", (long long)quota, (long long)want);
    expect_true(quota == want && plan[8] <= 128 + w, "64-bit: plan quota %s", d);
    free(plan);

    /* 4096 sequences of INT32_MAX tokens: 2^37 tile units, a quota above 2^32 */
    s = (etap_mla_shape){4096, 1, 1, 1, 576, 512, 65536, INT32_MAX, 65536, ETAP_DTYPE_BF16, 0};
    etap_plan_size(h, &s, &pb);
    etap_get_num_workers(h, &s, &w);
    plan = malloc(pb);
    lens = realloc(lens, sizeof(int32_t) * 4096);
    for (int i = 0; i < 4096; i++)
        lens[i] = INT32_MAX;
    expect("64-bit: plan for 4096 x INT32_MAX tokens", etap_plan(h, &s, lens, plan, pb, NULL),
           ETAP_OK, "");
    quota = (int64_t)(((uint64_t)(uint32_t)plan[7] << 32) | (uint32_t)plan[6]);
    total = 4096 * ((((int64_t)INT32_MAX + 63) / 64) + 2);
    want = (total + w - 1) / w;
    snprintf(d, sizeof d, "%lld, expected %lld (hi word %d)", (long long)quota, (long long)want,
             (int)plan[7]);
    expect_true(quota == want, "64-bit: quota %s", d);
    expect_true(plan[9] == 0 && plan[8] >= 4096 && plan[8] <= 4096 + w,
                "64-bit: status ok and total splits within [b, b + W]%s", "");
    free(plan);
    free(lens);
    etap_destroy(h);
}

int main(void)
{
    test_library();
    test_handle();
    test_shape();
    test_args();
    test_plan_and_workspace();
    test_big_shapes();
    return tu_finish(&T);
}
