/*
 * test_plan.c - the split-KV plan: every plan etap_plan() writes is verified word by word
 * against the model (plan_check.c: exactly-once tile coverage in order, worker ownership
 * of units, split_offset / first_worker, the b + W split bound, the balance bound, the
 * header), over many length distributions and worker counts.
 *
 *   - public API: CPU handles with 1, 2, 3, 8 and 33 threads (1, 8, 12, 32, 132 workers);
 *     the plan must also leave the bytes after it untouched and match the internal host
 *     builder etap_plan_build() (compiled in from src/plan.c) word for word;
 *   - the internal builder with worker counts the CPU handles do not give (78, 1024, ...),
 *     quotas above 2^32 and invalid lengths (the header's status words);
 *   - with a CUDA device (library built with CUDA): the device plan equals the host plan
 *     word for word on the same lengths, and invalid lengths mark the device plan invalid.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etap.h"
#include "internal.h" /* etap_plan_build(): the host builder, for arbitrary worker counts */
#include "plan_check.h"
#include "test_util.h"

#if defined(ETAP_WITH_CUDA)
#include "cuda_util.h"
#endif

static tu_tally T;

typedef struct lenset {
    char name[96];
    int32_t batch;
    int32_t *lens;
    int32_t max_len; /* multiple of 64 */
} lenset;

static lenset *sets;
static int num_sets;

static int32_t *add_set(const char *name, int32_t batch, int32_t max_len)
{
    sets = realloc(sets, sizeof(lenset) * (size_t)(num_sets + 1));
    lenset *s = &sets[num_sets++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->batch = batch;
    s->lens = calloc((size_t)batch, sizeof(int32_t));
    s->max_len = max_len;
    return s->lens;
}

/* A set whose sequences all have `len` tokens. */
static void add_equal_set(const char *name, int32_t batch, int32_t max_len, int32_t len)
{
    int32_t *l = add_set(name, batch, max_len);
    for (int i = 0; i < batch; i++)
        l[i] = len;
}

static void make_sets(void)
{
    tu_rng r;
    tu_rng_seed(&r, tu_seed(0x91a2));
    int32_t *l;
    l = add_set("b=8 mixed {0,1,63,64,65,128,0,1000}", 8, 4096);
    const int32_t mixed[8] = {0, 1, 63, 64, 65, 128, 0, 1000};
    memcpy(l, mixed, sizeof mixed);
    add_set("b=5 all zero", 5, 640);
    add_set("b=1 len 0", 1, 64);
    l = add_set("b=1 len 1", 1, 64);
    l[0] = 1;
    l = add_set("b=1 len 1M", 1, 1 << 20);
    l[0] = 1 << 20;
    l = add_set("b=1 len 1M-1", 1, 1 << 20);
    l[0] = (1 << 20) - 1;
    l = add_set("b=4096 random [0, 20000], 10% zero", 4096, 20032);
    for (int i = 0; i < 4096; i++)
        l[i] = tu_rng_uniform(&r) < 0.1 ? 0 : (int32_t)tu_rng_range(&r, 1, 20000);
    l = add_set("b=64 short [0, 100]", 64, 128);
    for (int i = 0; i < 64; i++)
        l[i] = (int32_t)tu_rng_range(&r, 0, 100);
    l = add_set("b=3 x 100K", 3, 100032);
    for (int i = 0; i < 3; i++)
        l[i] = 100000 + i;
    l = add_set("b=33: one 500K, 32 short", 33, 500032);
    l[0] = 500000;
    for (int i = 1; i < 33; i++)
        l[i] = (int32_t)tu_rng_range(&r, 0, 300);
    add_equal_set("b=17 all at max_len", 17, 4096, 4096);
    add_equal_set("b=128 all 4096 (quota raised to one sequence)", 128, 4096, 4096);
    add_equal_set("b=128 all 16384 (quota raised by q/32)", 128, 16384, 16384);
    l = add_set("b=130 near-equal 4000..4096", 130, 4096);
    for (int i = 0; i < 130; i++)
        l[i] = (int32_t)tu_rng_range(&r, 4000, 4096);
    add_equal_set("b=1000 all exactly 64", 1000, 64, 64);
    add_equal_set("b=300 all 1 token", 300, 64, 1);
    l = add_set("b=128 trailing zeros", 128, 8192);
    for (int i = 0; i < 64; i++)
        l[i] = (int32_t)tu_rng_range(&r, 1, 8192);
    l = add_set("b=128 leading zeros", 128, 8192);
    for (int i = 64; i < 128; i++)
        l[i] = (int32_t)tu_rng_range(&r, 1, 8192);
    for (int k = 0; k < 40; k++) {
        char name[96];
        int32_t b = (int32_t)tu_rng_range(&r, 1, k < 20 ? 40 : 600);
        int kind = k % 4;
        int32_t mx = kind == 0 ? 200 : kind == 1 ? 5000 : kind == 2 ? 70000 : 2000;
        snprintf(name, sizeof name, "random #%d b=%d %s", k, (int)b,
                 kind == 0 ? "short" : kind == 1 ? "medium" : kind == 2 ? "long" : "bimodal");
        l = add_set(name, b, (mx + 63) / 64 * 64 + 64 * (int32_t)(k % 3));
        for (int i = 0; i < b; i++) {
            double u = tu_rng_uniform(&r);
            if (u < 0.15)
                l[i] = 0;
            else if (kind == 3)
                l[i] = u < 0.6 ? (int32_t)tu_rng_range(&r, 1, 64) : (int32_t)tu_rng_range(&r, 1500, mx);
            else
                l[i] = (int32_t)tu_rng_range(&r, 1, mx);
        }
    }
}

/* rows query rows per KV head (h_q = rows, one KV head): 16 and 32 weigh the plan's two
 * cuts differently (plan.h) */
static etap_mla_shape shape_for(const lenset *s, int32_t rows)
{
    etap_mla_shape sh = {s->batch, 1, rows, 1, 576, 512, 64, 1 << 30, s->max_len / 64,
                         ETAP_DTYPE_BF16, 0};
    return sh;
}
static const int32_t ROWS[2] = {16, 32};

/* ------------------------------------------------------------------------------------ */

static void test_public(void)
{
    const int threads[] = {1, 2, 3, 8, 33};
    for (size_t ti = 0; ti < sizeof threads / sizeof threads[0]; ti++) {
        etap_handle h = NULL;
        etap_options o = {ETAP_BACKEND_CPU, 0, threads[ti]};
        if (etap_create(&h, &o) != ETAP_OK) {
            tu_fail(&T, "create CPU handle with %d threads: %s", threads[ti],
                    etap_last_error_message());
            continue;
        }
        for (int sri = 0; sri < 2 * num_sets; sri++) {
            const lenset *s = &sets[sri / 2];
            const int32_t rows = ROWS[sri % 2];
            etap_mla_shape sh = shape_for(s, rows);
            int32_t w = 0;
            size_t pb = 0;
            if (etap_get_num_workers(h, &sh, &w) != ETAP_OK ||
                etap_plan_size(h, &sh, &pb) != ETAP_OK) {
                tu_fail(&T, "plan %s: size query failed: %s", s->name, etap_last_error_message());
                continue;
            }
            int64_t words = pc_plan_words(s->batch, w);
            if ((int64_t)pb != 4 * words) {
                tu_fail(&T, "plan %s W=%d: etap_plan_size %zu, format says %lld words", s->name,
                        (int)w, pb, (long long)words);
                continue;
            }
            /* guard bytes after the plan must survive */
            unsigned char *buf = malloc(pb + 256);
            memset(buf, 0xCD, pb + 256);
            int32_t *plan = (int32_t *)(void *)buf;
            etap_status st = etap_plan(h, &sh, s->lens, plan, pb, NULL);
            char msg[512];
            if (st != ETAP_OK) {
                tu_fail(&T, "plan %s W=%d: %s", s->name, (int)w, etap_last_error_message());
                free(buf);
                continue;
            }
            int guard_ok = 1;
            for (size_t i = pb; i < pb + 256; i++)
                guard_ok &= buf[i] == 0xCD;
            int ok = pc_verify(plan, s->batch, w, s->max_len, rows, s->lens, NULL, msg, sizeof msg);
            int32_t *ref = malloc(pb);
            etap_plan_build(s->batch, w, s->max_len, rows, s->lens, ref);
            int same = memcmp(ref, plan, pb) == 0;
            int check = etap_plan_check(h, plan, pb, NULL) == ETAP_OK;
            /* same lengths, same words (no hidden state) */
            int32_t *again = malloc(pb);
            memset(again, 0x5A, pb);
            etap_plan(h, &sh, s->lens, again, pb, NULL);
            int repeat = memcmp(again, plan, pb) == 0;
            if (ok && guard_ok && same && check && repeat)
                tu_pass(&T, "plan %s W=%d rows=%d: %s", s->name, (int)w, (int)rows, msg);
            else
                tu_fail(&T, "plan %s W=%d rows=%d: %s%s%s%s%s", s->name, (int)w, (int)rows, ok ? "" : msg,
                        guard_ok ? "" : "; wrote past plan_bytes",
                        same ? "" : "; differs from etap_plan_build()",
                        check ? "" : "; etap_plan_check() rejects it",
                        repeat ? "" : "; a second etap_plan() gave other words");
            free(again);
            free(ref);
            free(buf);
        }
        /* invalid lengths are refused on the host */
        int32_t bad[3] = {10, -1, 5};
        lenset s = {"", 3, bad, 640};
        etap_mla_shape sh = shape_for(&s, 16);
        int32_t plan[1024];
        etap_status st = etap_plan(h, &sh, bad, plan, sizeof plan, NULL);
        if (st == ETAP_ERR_INVALID_ARGUMENT && tu_contains(etap_last_error_message(), "cache_seqlens[1]"))
            tu_pass(&T, "plan: negative length refused on the host (%d threads)", threads[ti]);
        else
            tu_fail(&T, "plan: negative length: %s (%s)", etap_status_string(st),
                    etap_last_error_message());
        etap_destroy(h);
    }
}

static void test_builder(void)
{
    const int32_t workers[] = {1, 2, 5, 78, 132, 1024, 5000};
    char msg[512];
    for (size_t wi = 0; wi < sizeof workers / sizeof workers[0]; wi++) {
        int32_t w = workers[wi];
        int passed = 0, bare = 0;
        for (int sri = 0; sri < 2 * num_sets; sri++) {
            const lenset *s = &sets[sri / 2];
            const int32_t rows = ROWS[sri % 2];
            int32_t *plan = malloc(sizeof(int32_t) * (size_t)pc_plan_words(s->batch, w));
            etap_plan_build(s->batch, w, s->max_len, rows, s->lens, plan);
            if (pc_verify(plan, s->batch, w, s->max_len, rows, s->lens, NULL, msg, sizeof msg))
                passed++;
            else
                tu_fail(&T, "builder %s W=%d rows=%d: %s", s->name, (int)w, (int)rows, msg);
            bare += plan[5] == 0;
            free(plan);
        }
        if (passed == 2 * num_sets)
            tu_pass(&T, "builder: all %d length sets with W=%d, rows 16 and 32 (%d plans keep the bare cut)",
                    num_sets, (int)w, bare);
    }

    /* quota above 2^32: 4096 sequences of ~INT32_MAX tokens (2^37 tile units) */
    for (int wi = 0; wi < 2; wi++) {
        int32_t b = 4096, w = wi ? 132 : 8;
        int32_t *lens = malloc(sizeof(int32_t) * (size_t)b);
        for (int i = 0; i < b; i++)
            lens[i] = INT32_MAX - i;
        int32_t *plan = malloc(sizeof(int32_t) * (size_t)pc_plan_words(b, w));
        etap_plan_build(b, w, INT32_MAX, 16, lens, plan);
        pc_stats st;
        int ok = pc_verify(plan, b, w, INT32_MAX, 16, lens, &st, msg, sizeof msg);
        if (ok && (w == 132 || st.quota > ((int64_t)1 << 32)))
            tu_pass(&T, "builder: 4096 x ~INT32_MAX tokens, W=%d: %s", (int)w, msg);
        else
            tu_fail(&T, "builder: 4096 x ~INT32_MAX tokens, W=%d: %s (quota %lld)", (int)w, msg,
                    (long long)st.quota);
        free(plan);
        free(lens);
    }

    /* b = 128 on 132 workers: ceil(128 * 66 / 132) = 64 units and one 4K sequence costs 66
     * (2 above: raised); at 16K, 251 and 258 (7 = 251 / 32 above: raised); at 32K, 499 and
     * 514 (15 = 499 / 32 above: raised); b = 100 x 4K: 50 and 66 (not raised). Raised: no
     * sequence is split, so there is no combine work. */
    {
        const struct { int32_t len, b; int64_t quota; } q[] = {
            {4096, 128, 66}, {16384, 128, 258}, {32768, 128, 514}, {4096, 100, 50}};
        for (int k = 0; k < 4; k++) {
            int32_t b = q[k].b, w = 132;
            int32_t *lens = malloc(sizeof(int32_t) * (size_t)b);
            for (int i = 0; i < b; i++)
                lens[i] = q[k].len;
            int32_t *plan = malloc(sizeof(int32_t) * (size_t)pc_plan_words(b, w));
            etap_plan_build(b, w, q[k].len, 16, lens, plan);
            pc_stats st;
            int ok = pc_verify(plan, b, w, q[k].len, 16, lens, &st, msg, sizeof msg);
            int unsplit = q[k].quota >= q[k].len / 64 + 2;
            if (ok && st.quota == q[k].quota && (!unsplit || plan[8] == b))
                tu_pass(&T, "builder: %d x %d tokens, W=132: quota %lld (%s)", (int)b,
                        (int)q[k].len, (long long)st.quota, msg);
            else
                tu_fail(&T, "builder: %d x %d tokens, W=132: quota %lld, %d splits, want %lld (%s)",
                        (int)b, (int)q[k].len, (long long)st.quota, (int)plan[8],
                        (long long)q[k].quota, msg);
            free(plan);
            free(lens);
        }
    }

    /* invalid lengths: counted as empty, the first one (by index) reported */
    {
        int32_t lens[6] = {100, 5000, -5, 70, 99999, -1};
        int32_t w = 4;
        int32_t plan[64];
        etap_plan_build(6, w, 4096, 16, lens, plan);
        int ok = pc_verify(plan, 6, w, 4096, 16, lens, NULL, msg, sizeof msg);
        if (ok && plan[9] == 2 && plan[10] == 1 && plan[11] == 5000)
            tu_pass(&T, "builder: invalid lengths: header status TOO_LONG, seq 1, len 5000 (%s)", msg);
        else
            tu_fail(&T, "builder: invalid lengths: status %d seq %d len %d (%s)", (int)plan[9],
                    (int)plan[10], (int)plan[11], msg);
        lens[1] = 10;
        etap_plan_build(6, w, 4096, 16, lens, plan);
        ok = pc_verify(plan, 6, w, 4096, 16, lens, NULL, msg, sizeof msg);
        if (ok && plan[9] == 1 && plan[10] == 2 && plan[11] == -5)
            tu_pass(&T, "builder: invalid lengths: header status NEGATIVE, seq 2, len -5 (%s)", msg);
        else
            tu_fail(&T, "builder: invalid lengths: status %d seq %d len %d (%s)", (int)plan[9],
                    (int)plan[10], (int)plan[11], msg);
        /* a plan marked invalid is refused by etap_plan_check on the host */
        etap_handle h = NULL;
        etap_options o = {ETAP_BACKEND_CPU, 0, 1};
        etap_create(&h, &o);
        etap_status st = etap_plan_check(h, plan, sizeof plan, NULL);
        if (st == ETAP_ERR_INVALID_ARGUMENT &&
            tu_contains(etap_last_error_message(), "cache_seqlens[2] is -5"))
            tu_pass(&T, "plan_check: reads the invalid mark (%s)", etap_last_error_message());
        else
            tu_fail(&T, "plan_check: invalid mark: %s (%s)", etap_status_string(st),
                    etap_last_error_message());
        etap_destroy(h);
    }

    /* the verifier itself must reject broken plans */
    {
        const lenset *s = &sets[0]; /* b=8 mixed */
        int32_t w = 5;
        int64_t words = pc_plan_words(s->batch, w);
        int32_t *plan = malloc(sizeof(int32_t) * (size_t)words);
        int32_t *bad = malloc(sizeof(int32_t) * (size_t)words);
        etap_plan_build(s->batch, w, s->max_len, 16, s->lens, plan);
        int caught = 0, tried = 0;
        for (int64_t i = 0; i < words; i++) {
            if (i >= 13 && i < 16)
                continue; /* reserved words: covered by the zero check below */
            for (int delta = -1; delta <= 1; delta += 2) {
                memcpy(bad, plan, sizeof(int32_t) * (size_t)words);
                bad[i] += delta;
                /* a change of an idle worker's record may still describe an idle worker */
                int64_t wi = i - 16;
                if (wi >= 0 && wi < 4 * w) {
                    const int32_t *r = plan + 16 + (wi / 4) * 4;
                    if (r[2] < r[0])
                        continue;
                }
                tried++;
                caught += !pc_verify(bad, s->batch, w, s->max_len, 16, s->lens, NULL, msg, sizeof msg);
            }
        }
        memcpy(bad, plan, sizeof(int32_t) * (size_t)words);
        bad[14] = 1;
        tried++;
        caught += !pc_verify(bad, s->batch, w, s->max_len, 16, s->lens, NULL, msg, sizeof msg);
        if (caught == tried)
            tu_pass(&T, "verifier: catches all %d single-word corruptions of a plan", tried);
        else
            tu_fail(&T, "verifier: caught only %d of %d single-word corruptions", caught, tried);
        free(plan);
        free(bad);
    }
}

#if defined(ETAP_WITH_CUDA)
/* One device plan of the lengths of `s` with `rows` rows per KV head: etap_plan's status,
 * etap_plan_check's (when etap_plan succeeded), the words downloaded and the host
 * builder's words for the same input. setup_failed: an allocation or a copy failed. */
typedef struct device_plan {
    etap_status st, chk;
    int32_t w;
    size_t pb;
    int32_t *words, *ref;
    int setup_failed;
} device_plan;

static device_plan run_device_plan(etap_handle h, const lenset *s, int32_t rows)
{
    device_plan d = {ETAP_OK, ETAP_OK, 0, 0, NULL, NULL, 0};
    etap_mla_shape sh = shape_for(s, rows);
    etap_get_num_workers(h, &sh, &d.w);
    etap_plan_size(h, &sh, &d.pb);
    d.words = malloc(d.pb);
    d.ref = malloc(d.pb);
    void *dlens = NULL, *dplan = NULL;
    if (cu_malloc(&dlens, (size_t)s->batch * 4, "cudaMalloc(lens)") ||
        cu_malloc(&dplan, d.pb, "cudaMalloc(plan)") ||
        cu_upload(dlens, s->lens, (size_t)s->batch * 4, "upload lens")) {
        d.setup_failed = 1;
    } else {
        d.st = etap_plan(h, &sh, (const int32_t *)dlens, dplan, d.pb, NULL);
        d.chk = d.st == ETAP_OK ? etap_plan_check(h, dplan, d.pb, NULL) : d.st;
        if (d.st == ETAP_OK && cu_download(d.words, dplan, d.pb, "download plan"))
            d.setup_failed = 1;
        etap_plan_build(s->batch, d.w, s->max_len, rows, s->lens, d.ref);
    }
    cu_free(dlens);
    cu_free(dplan);
    return d;
}

static void device_plan_free(device_plan *d)
{
    free(d->words);
    free(d->ref);
}

static void test_device(void)
{
    if (!cu_device_available()) {
        T.skipped++;
        return;
    }
    etap_handle h = NULL;
    etap_options o = {ETAP_BACKEND_CUDA, 0, 0};
    if (etap_create(&h, &o) != ETAP_OK) {
        tu_fail(&T, "device plan: etap_create(CUDA): %s", etap_last_error_message());
        return;
    }
    char msg[512];
    for (int sri = 0; sri < 2 * num_sets; sri++) {
        const lenset *s = &sets[sri / 2];
        const int32_t rows = ROWS[sri % 2];
        device_plan d = run_device_plan(h, s, rows);
        if (d.setup_failed) {
            tu_fail(&T, "device plan %s: CUDA setup failed", s->name);
        } else if (d.st != ETAP_OK || d.chk != ETAP_OK) {
            tu_fail(&T, "device plan %s W=%d: %s / %s: %s", s->name, (int)d.w,
                    etap_status_string(d.st), etap_status_string(d.chk), etap_last_error_message());
        } else {
            int64_t words = pc_plan_words(s->batch, d.w), first = -1;
            for (int64_t i = 0; i < words && first < 0; i++)
                if (d.words[i] != d.ref[i])
                    first = i;
            int ok = pc_verify(d.words, s->batch, d.w, s->max_len, rows, s->lens, NULL, msg, sizeof msg);
            if (first < 0 && ok)
                tu_pass(&T, "device plan %s W=%d rows=%d equals the host plan word for word (%s)",
                        s->name, (int)d.w, (int)rows, msg);
            else if (first >= 0)
                tu_fail(&T, "device plan %s W=%d rows=%d: word %lld is %d, host plan has %d%s%s",
                        s->name, (int)d.w, (int)rows, (long long)first, (int)d.words[first],
                        (int)d.ref[first], ok ? "" : "; ", ok ? "" : msg);
            else
                tu_fail(&T, "device plan %s W=%d rows=%d: %s", s->name, (int)d.w, (int)rows, msg);
        }
        device_plan_free(&d);
    }

    /* The batch bound of a device plan (docs/plan-format.md: 12 bytes of shared memory per
     * sequence, 4 KB kept for the rest): the largest batch is planned like the host does,
     * one more is refused with a message that names the bound. */
    const int optin = cu_max_smem_optin();
    const int32_t bmax = (int32_t)((optin - 4096) / 12) - 1;
    for (int v = 0; v < 2 && optin > 0; v++) {
        const int32_t b = bmax + v;
        int32_t *lens = malloc(sizeof(int32_t) * (size_t)b);
        for (int32_t i = 0; i < b; i++)
            lens[i] = 1 + (int32_t)((i * 37) % 200);
        const lenset s = {"", b, lens, 256};
        device_plan d = run_device_plan(h, &s, 16);
        char want[64];
        snprintf(want, sizeof want, "at most %d sequences", (int)bmax);
        if (v == 1) {
            if (d.st == ETAP_ERR_UNSUPPORTED && tu_contains(etap_last_error_message(), want))
                tu_pass(&T, "device plan: batch %d refused (%s)", (int)b, etap_last_error_message());
            else
                tu_fail(&T, "device plan: batch %d: %s (%s), want ETAP_ERR_UNSUPPORTED '%s'",
                        (int)b, etap_status_string(d.st), etap_last_error_message(), want);
        } else if (!d.setup_failed && d.st == ETAP_OK && d.chk == ETAP_OK &&
                   memcmp(d.words, d.ref, d.pb) == 0 &&
                   pc_verify(d.words, b, d.w, 256, 16, lens, NULL, msg, sizeof msg)) {
            tu_pass(&T, "device plan: the largest batch, %d, equals the host plan (%s)", (int)b, msg);
        } else {
            tu_fail(&T, "device plan: batch %d: %s / %s (%s)", (int)b, etap_status_string(d.st),
                    etap_status_string(d.chk), etap_last_error_message());
        }
        device_plan_free(&d);
        free(lens);
    }

    /* invalid lengths: the plan is marked, etap_plan_check says why */
    int32_t lens[5] = {100, 64, -3, 100000, 7};
    const lenset s = {"invalid", 5, lens, 4096};
    for (int v = 0; v < 2; v++) {
        if (v == 1)
            lens[2] = 3; /* now the too-long one at index 3 is the first */
        device_plan d = run_device_plan(h, &s, 16);
        const char *want = v == 0 ? "cache_seqlens[2] is -3" : "cache_seqlens[3] is 100000";
        if (!d.setup_failed && d.st == ETAP_OK && d.chk == ETAP_ERR_INVALID_ARGUMENT &&
            tu_contains(etap_last_error_message(), want) && memcmp(d.words, d.ref, d.pb) == 0)
            tu_pass(&T, "device plan: invalid length marked (%s), words equal the host's", want);
        else
            tu_fail(&T, "device plan: invalid length %s: plan %s, check %s (%s)", want,
                    etap_status_string(d.st), etap_status_string(d.chk), etap_last_error_message());
        device_plan_free(&d);
    }
    etap_destroy(h);
}
#endif

int main(void)
{
    make_sets();
    test_public();
    test_builder();
#if defined(ETAP_WITH_CUDA)
    test_device();
#endif
    for (int i = 0; i < num_sets; i++)
        free(sets[i].lens);
    free(sets);
    return tu_finish(&T);
}
