/*
 * test_decode_cpu.c - numerics of the CPU backend against the double-precision reference,
 * on the shared adversarial grid (decode_grid.c) plus:
 *   - one plan serving two "layers" (two caches with the same lengths);
 *   - 64-bit offsets: a cache of 2^21 pages (~150 GB of address space, reserved with
 *     mmap(MAP_NORESERVE), only the used pages touched) whose pages sit at the top, and
 *     q / out with batch strides above 2^31 elements.
 * Inputs must come back unchanged; the workspace and the plan buffer start as garbage.
 * ETAP_TEST_SIZE=small|large scales the grid; ETAP_TEST_SEED changes the data.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, MAP_NORESERVE */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "decode_grid.h"
#include "etap.h"
#include "test_util.h"

static tu_tally T;

#define MAX_HANDLES 4
static const int handle_threads[MAX_HANDLES] = {1, 2, 3, 8};
static etap_handle handles[MAX_HANDLES];

static etap_handle handle_for(int threads)
{
    for (int i = 0; i < MAX_HANDLES; i++)
        if (handle_threads[i] == threads) {
            if (!handles[i]) {
                etap_options o = {ETAP_BACKEND_CPU, 0, threads};
                if (etap_create(&handles[i], &o) != ETAP_OK)
                    return NULL;
            }
            return handles[i];
        }
    return NULL;
}

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_inputs(const tu_case *c)
{
    return hash_bytes(c->q, c->q_elems * 2) ^ 3 * hash_bytes(c->kv, c->kv_elems * 2) ^
           5 * hash_bytes(c->block_table, c->bt_elems * 4) ^
           7 * hash_bytes(c->lengths, (size_t)c->desc.batch * 4);
}

typedef struct buffers {
    int32_t *plan;
    size_t plan_bytes;
    void *ws;
    size_t ws_bytes;
    int32_t workers;
} buffers;

static int buffers_for(etap_handle h, const etap_mla_shape *sh, buffers *b)
{
    memset(b, 0, sizeof *b);
    if (etap_plan_size(h, sh, &b->plan_bytes) != ETAP_OK ||
        etap_workspace_size(h, sh, &b->ws_bytes) != ETAP_OK ||
        etap_get_num_workers(h, sh, &b->workers) != ETAP_OK)
        return -1;
    b->plan = malloc(b->plan_bytes);
    b->ws = malloc(b->ws_bytes ? b->ws_bytes : 1);
    if (!b->plan || !b->ws)
        return -1;
    memset(b->plan, 0xAB, b->plan_bytes); /* garbage: the plan must overwrite it all */
    memset(b->ws, 0xFF, b->ws_bytes);     /* NaN everywhere: nothing may be read unwritten */
    return 0;
}

static void buffers_free(buffers *b)
{
    free(b->plan);
    free(b->ws);
}

static void run_case(const dg_case *dc)
{
    tu_case c;
    char desc[320], msg[512];
    if (tu_case_build(&c, &dc->desc) != 0) {
        tu_fail(&T, "[%s] out of memory building the case", dc->tag);
        return;
    }
    tu_case_describe(&c, desc, sizeof desc);
    etap_handle h = handle_for(dc->num_threads);
    buffers b;
    if (!h || buffers_for(h, &c.args.shape, &b) != 0) {
        tu_fail(&T, "[%s] %s: setup failed: %s", dc->tag, desc, etap_last_error_message());
        tu_case_free(&c);
        return;
    }
    tu_case_reference(&c);
    uint64_t before = hash_inputs(&c);
    double t0 = tu_now();
    etap_status st = etap_plan(h, &c.args.shape, c.lengths, b.plan, b.plan_bytes, NULL);
    if (st == ETAP_OK)
        st = etap_decode(h, &c.args, b.plan, b.plan_bytes, b.ws, b.ws_bytes, NULL);
    double t1 = tu_now();
    if (st != ETAP_OK) {
        tu_fail(&T, "[%s] %s threads=%d: %s: %s", dc->tag, desc, dc->num_threads,
                etap_status_string(st), etap_last_error_message());
    } else if (!tu_case_check(&c, c.out, c.lse, msg, sizeof msg)) {
        tu_fail(&T, "[%s] %s threads=%d W=%d: %s", dc->tag, desc, dc->num_threads, (int)b.workers,
                msg);
    } else if (hash_inputs(&c) != before) {
        tu_fail(&T, "[%s] %s threads=%d: the inputs (q, kv, block table or lengths) changed",
                dc->tag, desc, dc->num_threads);
    } else {
        tu_pass(&T, "[%s] %s threads=%d W=%d %.3fs: %s", dc->tag, desc, dc->num_threads,
                (int)b.workers, t1 - t0, msg);
    }
    buffers_free(&b);
    tu_case_free(&c);
}

/* One plan, two layers: same lengths, different caches (and block tables). */
static void test_two_layers(int size)
{
    int32_t lens[5] = {0, 700, 64, 1, 2000};
    if (size == 1)
        lens[4] = 300;
    tu_case_desc d = {0};
    d.batch = 5;
    d.seqlen_q = 2;
    d.num_heads_q = 16;
    d.num_heads_kv = 1;
    d.page_size = 64;
    d.causal = 1;
    d.dtype = ETAP_DTYPE_BF16;
    d.lengths = lens;
    d.seed = 555;
    tu_case c1, c2;
    if (tu_case_build(&c1, &d) != 0) {
        tu_fail(&T, "[two-layers] out of memory");
        return;
    }
    d.seed = 556;
    d.extra_pages = 3;
    if (tu_case_build(&c2, &d) != 0) {
        tu_case_free(&c1);
        tu_fail(&T, "[two-layers] out of memory");
        return;
    }
    tu_case_reference(&c1);
    tu_case_reference(&c2);
    etap_handle h = handle_for(3);
    buffers b;
    char m1[512] = "", m2[512] = "";
    if (!h || buffers_for(h, &c1.args.shape, &b) != 0) {
        tu_fail(&T, "[two-layers] setup failed");
    } else {
        etap_status st = etap_plan(h, &c1.args.shape, c1.lengths, b.plan, b.plan_bytes, NULL);
        etap_status s1 = st == ETAP_OK ? etap_decode(h, &c1.args, b.plan, b.plan_bytes, b.ws,
                                                     b.ws_bytes, NULL)
                                       : st;
        etap_status s2 = st == ETAP_OK ? etap_decode(h, &c2.args, b.plan, b.plan_bytes, b.ws,
                                                     b.ws_bytes, NULL)
                                       : st;
        int ok1 = s1 == ETAP_OK && tu_case_check(&c1, c1.out, c1.lse, m1, sizeof m1);
        int ok2 = s2 == ETAP_OK && tu_case_check(&c2, c2.out, c2.lse, m2, sizeof m2);
        /* layer 1 again, after layer 2 used the workspace */
        tu_case_poison(&c1);
        etap_status s3 = etap_decode(h, &c1.args, b.plan, b.plan_bytes, b.ws, b.ws_bytes, NULL);
        char m3[512] = "";
        int ok3 = s3 == ETAP_OK && tu_case_check(&c1, c1.out, c1.lse, m3, sizeof m3);
        if (ok1 && ok2 && ok3)
            tu_pass(&T, "[two-layers] one plan, two caches, three decodes: %s", m2);
        else
            tu_fail(&T, "[two-layers] %s / %s / %s: %s | %s | %s", etap_status_string(s1),
                    etap_status_string(s2), etap_status_string(s3), m1, m2, m3);
        buffers_free(&b);
    }
    tu_case_free(&c1);
    tu_case_free(&c2);
}

/* One handle shared by threads (etap.h: a handle is immutable and may be shared by threads
 * that use different streams; on the CPU: different plans, workspaces and outputs). */
typedef struct conc_job {
    tu_case c;
    etap_handle h;
    etap_status st;
    int ok;
    char msg[512];
} conc_job;

static void *conc_worker(void *arg)
{
    conc_job *j = arg;
    buffers b;
    j->st = ETAP_ERR_INTERNAL;
    j->ok = 0;
    if (buffers_for(j->h, &j->c.args.shape, &b) != 0)
        return NULL;
    for (int rep = 0; rep < 3; rep++) {
        tu_case_poison(&j->c);
        j->st = etap_plan(j->h, &j->c.args.shape, j->c.lengths, b.plan, b.plan_bytes, NULL);
        if (j->st == ETAP_OK)
            j->st = etap_decode(j->h, &j->c.args, b.plan, b.plan_bytes, b.ws, b.ws_bytes, NULL);
        if (j->st != ETAP_OK) {
            snprintf(j->msg, sizeof j->msg, "%s", etap_last_error_message());
            break;
        }
        j->ok = tu_case_check(&j->c, j->c.out, j->c.lse, j->msg, sizeof j->msg);
        if (!j->ok)
            break;
    }
    buffers_free(&b);
    return NULL;
}

static void test_concurrent(int size)
{
    enum { N = 3 };
    conc_job jobs[N];
    pthread_t th[N];
    int32_t lens[N][4] = {{500, 0, 77, 1300}, {64, 65, 1, 2}, {3000, 10, 0, 129}};
    if (size == 1)
        lens[0][3] = lens[2][0] = 300;
    etap_handle h = handle_for(2);
    int started = 0;
    for (int i = 0; i < N; i++) {
        tu_case_desc d = {0};
        d.batch = 4;
        d.seqlen_q = 1 + i;
        d.num_heads_q = 16;
        d.num_heads_kv = 1;
        d.page_size = 16 << i;
        d.causal = i == 2;
        d.dtype = i == 1 ? ETAP_DTYPE_FP16 : ETAP_DTYPE_BF16;
        d.lengths = lens[i];
        d.seed = 4242 + (uint64_t)i;
        jobs[i].h = h;
        if (tu_case_build(&jobs[i].c, &d) != 0) {
            tu_fail(&T, "[concurrent] out of memory");
            for (int k = 0; k < i; k++)
                tu_case_free(&jobs[k].c);
            return;
        }
        tu_case_reference(&jobs[i].c);
    }
    for (int i = 0; i < N; i++)
        if (pthread_create(&th[i], NULL, conc_worker, &jobs[i]) == 0)
            started |= 1 << i;
    for (int i = 0; i < N; i++) {
        if (started & (1 << i))
            pthread_join(th[i], NULL);
        else
            conc_worker(&jobs[i]);
    }
    int all = 1;
    for (int i = 0; i < N; i++)
        all &= jobs[i].st == ETAP_OK && jobs[i].ok;
    if (all)
        tu_pass(&T, "[concurrent] 3 threads share one handle, 3 decodes each: %s", jobs[0].msg);
    for (int i = 0; i < N && !all; i++)
        if (jobs[i].st != ETAP_OK || !jobs[i].ok)
            tu_fail(&T, "[concurrent] thread %d: %s: %s", i, etap_status_string(jobs[i].st),
                    jobs[i].msg);
    for (int i = 0; i < N; i++)
        tu_case_free(&jobs[i].c);
}

/* 64-bit offsets: pages near index 2^21 of a 2^21-page cache, q / out strides > 2^31. */
static void test_big_offsets(int64_t num_pages, int64_t big)
{
    int32_t lens[2] = {300, 77};
    tu_case_desc d = {0};
    d.batch = 2;
    d.seqlen_q = 2;
    d.num_heads_q = 4;
    d.num_heads_kv = 1;
    d.page_size = 64;
    d.causal = 1;
    d.dtype = ETAP_DTYPE_FP16;
    d.lengths = lens;
    d.seed = 777;
    tu_case c;
    if (tu_case_build(&c, &d) != 0) {
        tu_fail(&T, "[big-offsets] out of memory");
        return;
    }
    tu_case_reference(&c);
    const int64_t page_elems = c.args.kv_stride_page; /* 64 * 576 */
    const size_t kv_bytes = (size_t)(num_pages * page_elems * 2);
    const size_t q_bytes = (size_t)((big + c.args.q_stride_batch) * 2);
    const size_t out_bytes = (size_t)((big + 2 * c.args.out_stride_batch) * 2);
    void *kv = mmap(NULL, kv_bytes, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void *q = mmap(NULL, q_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void *out = mmap(NULL, out_bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (kv == MAP_FAILED || q == MAP_FAILED || out == MAP_FAILED) {
        printf("SKIP [big-offsets] mmap of %.0f GB of address space failed\n", kv_bytes / 1e9);
        T.skipped++;
        goto done;
    }
    /* move every used page to the top of the cache */
    etap_mla_args a = c.args;
    int32_t *bt = malloc(sizeof(int32_t) * c.bt_elems);
    memcpy(bt, c.block_table, sizeof(int32_t) * c.bt_elems);
    int32_t next = (int32_t)(num_pages - 1);
    for (int32_t i = 0; i < 2; i++) {
        int64_t need = (lens[i] + 63) / 64;
        for (int64_t j = 0; j < need; j++) {
            int32_t old = c.block_table[i * a.block_table_stride + j];
            int32_t id = next;
            next -= 3;
            memcpy((uint16_t *)kv + (int64_t)id * page_elems, c.kv + (int64_t)old * page_elems,
                   (size_t)page_elems * 2);
            bt[i * a.block_table_stride + j] = id;
        }
    }
    /* q and out: sequence 1 starts `big` elements after sequence 0 */
    a.q_stride_batch = big;
    a.out_stride_batch = big + c.args.out_stride_batch;
    memcpy(q, c.q, (size_t)c.args.q_stride_batch * 2);
    memcpy((uint16_t *)q + big, c.q + c.args.q_stride_batch, (size_t)c.args.q_stride_batch * 2);
    uint16_t *o = out;
    uint16_t poison = tu_half_poison(d.dtype);
    for (int64_t e = 0; e < c.args.out_stride_batch; e++)
        o[e] = o[a.out_stride_batch + e] = poison;
    a.kv_cache = kv;
    a.q = q;
    a.out = out;
    a.block_table = bt;
    a.shape.num_pages = (int32_t)num_pages;

    etap_handle h = handle_for(2);
    buffers b;
    if (!h || buffers_for(h, &a.shape, &b) != 0) {
        tu_fail(&T, "[big-offsets] setup failed");
    } else {
        etap_status st = etap_plan(h, &a.shape, c.lengths, b.plan, b.plan_bytes, NULL);
        if (st == ETAP_OK)
            st = etap_decode(h, &a, b.plan, b.plan_bytes, b.ws, b.ws_bytes, NULL);
        char msg[512];
        if (st != ETAP_OK) {
            tu_fail(&T, "[big-offsets] %s: %s", etap_status_string(st), etap_last_error_message());
        } else {
            /* gather the two sequences' rows back into the case's compact out */
            memcpy(c.out, o, (size_t)c.args.out_stride_batch * 2);
            memcpy(c.out + c.args.out_stride_batch, o + a.out_stride_batch,
                   (size_t)c.args.out_stride_batch * 2);
            if (tu_case_check(&c, c.out, c.lse, msg, sizeof msg))
                tu_pass(&T,
                        "[big-offsets] pages %d..%d of %lld, q_stride_batch %lld, "
                        "out_stride_batch %lld: %s",
                        (int)(next + 3), (int)(num_pages - 1), (long long)num_pages,
                        (long long)a.q_stride_batch, (long long)a.out_stride_batch, msg);
            else
                tu_fail(&T, "[big-offsets] %s", msg);
        }
        buffers_free(&b);
    }
    free(bt);
done:
    if (kv != MAP_FAILED)
        munmap(kv, kv_bytes);
    if (q != MAP_FAILED)
        munmap(q, q_bytes);
    if (out != MAP_FAILED)
        munmap(out, out_bytes);
    tu_case_free(&c);
}

int main(void)
{
    int size = tu_test_size();
    uint64_t seed = tu_seed(0xE7A90001ull);
    printf("test_decode_cpu: size %s, seed 0x%llx\n",
           size == 1 ? "small" : size == 2 ? "large" : "default", (unsigned long long)seed);
    double t0 = tu_now();
    dg_list g;
    dg_build(&g, size, 0, seed);
    for (int i = 0; i < g.n; i++)
        run_case(&g.cases[i]);
    dg_free(&g);
    /* random shapes: a few by default (CI runs this under ASan on two cores), more with
     * ETAP_TEST_FUZZ or a new ETAP_TEST_SEED */
    dg_build_fuzz(&g, tu_fuzz_count(size == 1 ? 4 : size == 2 ? 40 : 6), size, 0, seed);
    for (int i = 0; i < g.n; i++)
        run_case(&g.cases[i]);
    dg_free(&g);
    test_two_layers(size);
    test_concurrent(size);
    test_big_offsets((int64_t)1 << 21, ((int64_t)1 << 31) + 4096);
    for (int i = 0; i < MAX_HANDLES; i++)
        if (handles[i])
            etap_destroy(handles[i]);
    printf("total %.1f s\n", tu_now() - t0);
    return tu_finish(&T);
}
