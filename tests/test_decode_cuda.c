/*
 * test_decode_cuda.c - numerics of the CUDA backend against the double-precision
 * reference, on the same adversarial grid as test_decode_cpu (decode_grid.c, with paddings
 * kept to multiples of 16 bytes) plus larger cases (b = 4096 short sequences, b = 1 with
 * 256K tokens, ...).
 *
 *   - every plan the device computes is compared word for word with the host builder's
 *     plan for the same lengths (and with etap_plan() on a CPU handle whenever one can have
 *     the same worker count);
 *   - a shape the backend refuses must come back as exactly ETAP_ERR_UNSUPPORTED with a
 *     message that says "unsupported"/"not supported"; it is counted apart, never as a
 *     numeric pass, and a refusal of a page size that is a multiple of 64 is a failure
 *     (any number of query rows: more than 64 per KV head run as row groups);
 *   - a plan made from an invalid length is marked invalid and turns every output into NaN;
 *   - the workspace starts full of NaN, out / lse are poisoned, unused cache slots are NaN
 *     and unused block table entries are out-of-range garbage;
 *   - one handle shared by host threads that plan and decode at once, each on its own
 *     stream (etap.h allows it);
 *   - with two or more devices visible, random cases also run on a handle for the last
 *     device while device 0 is current at every etap call (the library must switch to its
 *     device and give the caller's back).
 * Without a CUDA device it prints "skipped: no CUDA device" and exits with 77.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "cuda_util.h"
#include "decode_grid.h"
#include "etap.h"
#include "internal.h" /* etap_plan_build(): the host plan, word for word */
#include "plan_check.h"
#include "test_util.h"

static tu_tally T;
static int numeric_passes;

/* test_second_device: call_device is made current around every etap call of run_case
 * (the library must work on its handle's device and restore this one); data_device,
 * where the case's buffers and stream live, is current everywhere else. -1: neither. */
static int call_device = -1, data_device = -1;
static void enter_call(void)
{
    if (call_device >= 0)
        cudaSetDevice(call_device);
}
static void leave_call(const char *label, const char *fn)
{
    if (call_device < 0)
        return;
    int cur = -1;
    cudaGetDevice(&cur);
    if (cur != call_device)
        tu_fail(&T, "%s: %s left device %d current, the caller's was %d", label, fn, cur, call_device);
    cudaSetDevice(data_device);
}

static int cuda_ok(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 1;
    tu_fail(&T, "%s: CUDA error %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
    return 0;
}

/* A sticky CUDA error (a kernel fault) leaves the context unusable: stop there. */
static void abort_if_sticky(void)
{
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
        tu_fail(&T, "the CUDA context is unusable after %s (%s): stopping", cudaGetErrorName(e),
                cudaGetErrorString(e));
        exit(tu_finish(&T));
    }
}

static int says_unsupported(const char *msg)
{
    return tu_contains(msg, "unsupported") || tu_contains(msg, "not supported");
}

/* A refusal: counted apart when legitimate, a failure otherwise. */
static void refused(const char *label, const char *where, const char *msg, int in_envelope)
{
    if (in_envelope)
        tu_fail(&T, "%s: %s refused a shape the CUDA backend must run (page size a multiple "
                    "of 64, any number of query rows): %s",
                label, where, msg);
    else if (!says_unsupported(msg))
        tu_fail(&T, "%s: %s returned ETAP_ERR_UNSUPPORTED, but the message does not say "
                    "unsupported: \"%s\"",
                label, where, msg);
    else {
        T.unsupported++;
        printf("UNSUPPORTED (expected) %s: %s: %s\n", label, where, msg);
        fflush(stdout);
    }
}

/* Host plan for the same lengths / worker count, and the public CPU path when a CPU handle
 * can have that many workers (4 per thread). Returns 1 when the device plan matches. */
static int compare_plan(const int32_t *dev, const tu_case *c, int32_t w, char *msg, size_t n)
{
    const etap_mla_shape *sh = &c->args.shape;
    int64_t cap = (int64_t)sh->max_pages_per_seq * sh->page_size;
    int32_t max_len = cap > INT32_MAX ? INT32_MAX : (int32_t)cap;
    int64_t words = pc_plan_words(sh->batch, w);
    int32_t *ref = malloc(sizeof(int32_t) * (size_t)words);
    etap_plan_build(sh->batch, w, max_len, etap_rows_per_kv_head(sh), c->lengths, ref);
    int64_t first = -1;
    for (int64_t i = 0; i < words && first < 0; i++)
        if (dev[i] != ref[i])
            first = i;
    int ok = first < 0;
    if (!ok)
        snprintf(msg, n, "device plan word %lld is %d, the host plan has %d", (long long)first,
                 (int)dev[first], (int)ref[first]);
    if (ok && !pc_verify(dev, sh->batch, w, max_len, etap_rows_per_kv_head(sh), c->lengths, NULL,
                         msg, n))
        ok = 0;
    if (ok && w % 4 == 0 && w / 4 <= 1024 && w / 4 >= 2) {
        etap_handle cpu = NULL;
        etap_options o = {ETAP_BACKEND_CPU, 0, w / 4};
        size_t pb = 0;
        int32_t cw = 0;
        if (etap_create(&cpu, &o) == ETAP_OK && etap_get_num_workers(cpu, sh, &cw) == ETAP_OK &&
            cw == w && etap_plan_size(cpu, sh, &pb) == ETAP_OK) {
            int32_t *hp = malloc(pb);
            if (etap_plan(cpu, sh, c->lengths, hp, pb, NULL) == ETAP_OK &&
                memcmp(hp, dev, pb) != 0) {
                snprintf(msg, n, "device plan differs from etap_plan() on a CPU handle with %d "
                                 "workers", (int)w);
                ok = 0;
            }
            free(hp);
        }
        etap_destroy(cpu);
    }
    free(ref);
    return ok;
}

/* Downloads a finished case's out / lse and checks them against the reference: one pass
 * (counted as numeric) or one failure, under `label`. */
static void check_outputs(tu_case *c, const cu_case *d, const char *label)
{
    char msg[512];
    if (cu_case_download(d, c) != 0)
        tu_fail(&T, "%s: download", label);
    else if (tu_case_check(c, c->out, c->lse, msg, sizeof msg)) {
        numeric_passes++;
        tu_pass(&T, "%s: %s", label, msg);
    } else
        tu_fail(&T, "%s: %s", label, msg);
}

static void run_case(etap_handle h, const dg_case *dc, cudaStream_t stream)
{
    tu_case c;
    char desc[320], label[400], msg[512];
    if (tu_case_build(&c, &dc->desc) != 0) {
        tu_fail(&T, "[%s] out of memory building the case", dc->tag);
        return;
    }
    tu_case_describe(&c, desc, sizeof desc);
    char where[48] = "";
    if (call_device >= 0)
        snprintf(where, sizeof where, " on device %d, %d current", data_device, call_device);
    snprintf(label, sizeof label, "[%s] %s%s%s", dc->tag, desc, stream ? " stream" : "", where);
    const etap_mla_shape *sh = &c.args.shape;
    const int in_envelope = sh->page_size % 64 == 0; /* any number of query rows */

    cu_case d;
    void *dplan = NULL, *dws = NULL;
    size_t pb = 0, wb = 0;
    int32_t w = 0;
    if (etap_plan_size(h, sh, &pb) != ETAP_OK || etap_workspace_size(h, sh, &wb) != ETAP_OK ||
        etap_get_num_workers(h, sh, &w) != ETAP_OK) {
        tu_fail(&T, "%s: size queries failed: %s", label, etap_last_error_message());
        tu_case_free(&c);
        return;
    }
    if (cu_case_upload(&d, &c) != 0 || cu_malloc(&dplan, pb, "cudaMalloc(plan)") != 0 ||
        cu_malloc(&dws, wb, "cudaMalloc(workspace)") != 0) {
        tu_fail(&T, "%s: device buffers", label);
        goto done;
    }
    cudaMemset(dws, 0xFF, wb); /* NaN: nothing may be read before it is written */
    cudaMemset(dplan, 0xAB, pb);
    tu_case_reference(&c);

    enter_call();
    etap_status st = etap_plan(h, sh, d.args.cache_seqlens, dplan, pb, stream);
    leave_call(label, "etap_plan");
    if (st == ETAP_ERR_UNSUPPORTED) {
        refused(label, "etap_plan", etap_last_error_message(), 0);
        goto done;
    }
    if (st != ETAP_OK) {
        tu_fail(&T, "%s: etap_plan: %s: %s", label, etap_status_string(st), etap_last_error_message());
        goto done;
    }
    enter_call();
    st = etap_plan_check(h, dplan, pb, stream);
    leave_call(label, "etap_plan_check");
    if (st != ETAP_OK) {
        tu_fail(&T, "%s: etap_plan_check: %s: %s", label, etap_status_string(st),
                etap_last_error_message());
        abort_if_sticky();
        goto done;
    }
    int32_t *hplan = malloc(pb);
    int plan_ok = cu_download(hplan, dplan, pb, "download plan") == 0 &&
                  compare_plan(hplan, &c, w, msg, sizeof msg);
    free(hplan);
    if (!plan_ok) {
        tu_fail(&T, "%s W=%d: %s", label, (int)w, msg);
        goto done;
    }

    double t0 = tu_now();
    enter_call();
    st = etap_decode(h, &d.args, dplan, pb, dws, wb, stream);
    leave_call(label, "etap_decode");
    if (st == ETAP_ERR_UNSUPPORTED) {
        refused(label, "etap_decode", etap_last_error_message(), in_envelope);
        goto done;
    }
    if (st != ETAP_OK) {
        tu_fail(&T, "%s: etap_decode: %s: %s", label, etap_status_string(st),
                etap_last_error_message());
        goto done;
    }
    if (!cuda_ok(cudaStreamSynchronize(stream), label)) {
        abort_if_sticky();
        goto done;
    }
    char timed[480];
    snprintf(timed, sizeof timed, "%s W=%d %.4fs", label, (int)w, tu_now() - t0);
    check_outputs(&c, &d, timed);
done:
    cu_free(dplan);
    cu_free(dws);
    cu_case_free(&d);
    tu_case_free(&c);
}

/* A plan made from an invalid length is marked invalid; decoding with it gives NaN in
 * every element of out and lse (etap.h). */
static void test_invalid_length(etap_handle h)
{
    for (int v = 0; v < 2; v++) {
        int32_t lens[3] = {100, 64, 7};
        tu_case_desc dsc = {0};
        dsc.batch = 3;
        dsc.seqlen_q = 1;
        dsc.num_heads_q = 16;
        dsc.num_heads_kv = 1;
        dsc.page_size = 64;
        dsc.dtype = ETAP_DTYPE_BF16;
        dsc.lengths = lens;
        dsc.seed = 99 + (uint64_t)v;
        tu_case c;
        cu_case d;
        if (tu_case_build(&c, &dsc) != 0 || cu_case_upload(&d, &c) != 0) {
            tu_fail(&T, "[invalid-length] setup");
            return;
        }
        const etap_mla_shape *sh = &c.args.shape;
        int32_t bad = v == 0 ? -1 : sh->max_pages_per_seq * sh->page_size + 1;
        cu_upload((int32_t *)d.lens + 1, &bad, 4, "upload bad length");
        size_t pb = 0, wb = 0;
        etap_plan_size(h, sh, &pb);
        etap_workspace_size(h, sh, &wb);
        void *dplan = NULL, *dws = NULL;
        cu_malloc(&dplan, pb, "cudaMalloc(plan)");
        cu_malloc(&dws, wb, "cudaMalloc(ws)");
        etap_status st = etap_plan(h, sh, d.args.cache_seqlens, dplan, pb, NULL);
        etap_status chk = etap_plan_check(h, dplan, pb, NULL);
        char chk_msg[512];
        snprintf(chk_msg, sizeof chk_msg, "%s", etap_last_error_message());
        etap_status dec = st == ETAP_OK ? etap_decode(h, &d.args, dplan, pb, dws, wb, NULL) : st;
        int synced = cuda_ok(cudaDeviceSynchronize(), "[invalid-length] sync");
        int all_nan = 0;
        if (dec == ETAP_OK && synced && cu_case_download(&d, &c) == 0) {
            all_nan = 1;
            for (int32_t b = 0; b < 3; b++)
                for (int32_t hh = 0; hh < 16; hh++) {
                    const uint16_t *row = c.out + b * c.args.out_stride_batch + hh * c.args.out_stride_head;
                    for (int e = 0; e < 512; e++)
                        all_nan &= isnan(tu_half_to_float(sh->dtype, row[e])) &&
                                   row[e] != tu_half_poison(sh->dtype);
                    float l = c.lse[b * 16 + hh];
                    uint32_t lb;
                    memcpy(&lb, &l, 4);
                    all_nan &= isnan(l) && lb != TU_LSE_POISON_BITS;
                }
        }
        const char *want = v == 0 ? "cache_seqlens[1] is -1" : "cache_seqlens[1] is";
        if (st == ETAP_OK && chk == ETAP_ERR_INVALID_ARGUMENT && tu_contains(chk_msg, want) &&
            dec == ETAP_OK && all_nan)
            tu_pass(&T, "[invalid-length] %s: plan marked invalid (\"%s\"), every output NaN",
                    v == 0 ? "negative" : "too long", chk_msg);
        else
            tu_fail(&T, "[invalid-length] %s: plan %s, check %s (\"%s\"), decode %s, all NaN %d",
                    v == 0 ? "negative" : "too long", etap_status_string(st),
                    etap_status_string(chk), chk_msg, etap_status_string(dec), all_nan);
        cu_free(dplan);
        cu_free(dws);
        cu_case_free(&d);
        tu_case_free(&c);
    }
}

/* ---- one handle, several host threads, each on its own stream ----------------------
 * etap.h: a handle is immutable after etap_create() and may be shared by threads that use
 * different streams. Each thread plans and decodes its own random case CONC_CALLS times on
 * its own stream, all threads at once, so that calls and kernels of different threads
 * overlap; the main thread builds, uploads and checks the cases. */
#define CONC_THREADS 4
#define CONC_CALLS 8
typedef struct conc_job {
    etap_handle h;
    const dg_case *dc;
    tu_case c;
    cu_case d;
    void *plan, *ws;
    size_t pb, wb;
    cudaStream_t stream;
    int ready; /* built, uploaded, buffers allocated */
    etap_status st;
    const char *fn; /* the call that returned st */
    cudaError_t sync_err;
    char msg[512];
} conc_job;

static void *conc_run(void *arg)
{
    conc_job *j = (conc_job *)arg;
    j->st = ETAP_OK;
    for (int k = 0; k < CONC_CALLS && j->st == ETAP_OK; k++) {
        j->fn = "etap_plan";
        j->st = etap_plan(j->h, &j->c.args.shape, j->d.args.cache_seqlens, j->plan, j->pb, j->stream);
        if (j->st == ETAP_OK) {
            j->fn = "etap_decode";
            j->st = etap_decode(j->h, &j->d.args, j->plan, j->pb, j->ws, j->wb, j->stream);
        }
    }
    if (j->st != ETAP_OK)
        snprintf(j->msg, sizeof j->msg, "%s", etap_last_error_message());
    j->sync_err = cudaStreamSynchronize(j->stream);
    return NULL;
}

static void test_concurrent_streams(etap_handle h, int size, uint64_t seed)
{
    conc_job jobs[CONC_THREADS];
    memset(jobs, 0, sizeof jobs);
    dg_list g;
    dg_build_fuzz(&g, CONC_THREADS, size, 1, seed ^ 0xC0C0A11ull);
    const int n = g.n < CONC_THREADS ? g.n : CONC_THREADS;
    for (int i = 0; i < n; i++) {
        conc_job *j = &jobs[i];
        j->h = h;
        j->dc = &g.cases[i];
        if (tu_case_build(&j->c, &j->dc->desc) != 0) {
            tu_fail(&T, "[concurrent %d] out of memory building the case", i);
            continue;
        }
        const etap_mla_shape *sh = &j->c.args.shape;
        if (etap_plan_size(h, sh, &j->pb) != ETAP_OK || etap_workspace_size(h, sh, &j->wb) != ETAP_OK ||
            cu_case_upload(&j->d, &j->c) != 0 || cu_malloc(&j->plan, j->pb, "cudaMalloc(plan)") != 0 ||
            cu_malloc(&j->ws, j->wb, "cudaMalloc(workspace)") != 0 ||
            !cuda_ok(cudaStreamCreate(&j->stream), "cudaStreamCreate")) {
            tu_fail(&T, "[concurrent %d] setup: %s", i, etap_last_error_message());
            continue;
        }
        cudaMemset(j->ws, 0xFF, j->wb);
        tu_case_reference(&j->c);
        j->ready = 1;
    }
    cuda_ok(cudaDeviceSynchronize(), "[concurrent] uploads");
    pthread_t th[CONC_THREADS];
    int started[CONC_THREADS] = {0};
    for (int i = 0; i < n; i++)
        if (jobs[i].ready)
            started[i] = pthread_create(&th[i], NULL, conc_run, &jobs[i]) == 0;
    for (int i = 0; i < n; i++)
        if (started[i])
            pthread_join(th[i], NULL);
    for (int i = 0; i < n; i++) {
        conc_job *j = &jobs[i];
        char desc[320], label[400], calls[480];
        if (!j->ready)
            goto next;
        tu_case_describe(&j->c, desc, sizeof desc);
        snprintf(label, sizeof label, "[concurrent %d/%d, %s] %s", i + 1, n, j->dc->tag, desc);
        if (!started[i])
            tu_fail(&T, "%s: pthread_create failed", label);
        else if (j->st == ETAP_ERR_UNSUPPORTED)
            refused(label, j->fn, j->msg, j->c.args.shape.page_size % 64 == 0);
        else if (j->st != ETAP_OK)
            tu_fail(&T, "%s: %s: %s: %s", label, j->fn, etap_status_string(j->st), j->msg);
        else if (!cuda_ok(j->sync_err, label))
            abort_if_sticky();
        else {
            snprintf(calls, sizeof calls, "%s x%d calls on its own thread and stream", label, CONC_CALLS);
            check_outputs(&j->c, &j->d, calls);
        }
    next:
        if (j->stream)
            cudaStreamDestroy(j->stream);
        cu_free(j->plan);
        cu_free(j->ws);
        cu_case_free(&j->d);
        tu_case_free(&j->c);
    }
    dg_free(&g);
}

/* A handle for the last device, used while device 0 is current (a process that drives
 * several GPUs, or torch tensors on cuda:1 with cuda:0 current): random cases with their
 * buffers and stream on that device. */
static void test_second_device(int size, uint64_t seed)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 2) {
        printf("second device: not run (%d device visible)\n", n);
        return;
    }
    etap_handle h = NULL;
    etap_options o = {ETAP_BACKEND_CUDA, n - 1, 0};
    if (etap_create(&h, &o) != ETAP_OK) {
        tu_fail(&T, "etap_create on device %d: %s", n - 1, etap_last_error_message());
        return;
    }
    data_device = n - 1;
    call_device = 0;
    cudaSetDevice(data_device);
    cudaStream_t stream = NULL;
    if (cuda_ok(cudaStreamCreate(&stream), "cudaStreamCreate on the last device")) {
        dg_list g;
        dg_build_fuzz(&g, tu_fuzz_count(8), size, 1, seed ^ 0x5EC0DDull);
        for (int i = 0; i < g.n; i++)
            run_case(h, &g.cases[i], (i % 2) ? stream : NULL);
        dg_free(&g);
        cudaStreamDestroy(stream);
    }
    call_device = data_device = -1;
    cudaSetDevice(0);
    etap_destroy(h);
}

int main(void)
{
    etap_handle h = NULL;
    const int opened = cu_open_handle(&h, &T);
    if (opened != 1)
        return opened == 77 ? 77 : tu_finish(&T);
    etap_backend be = ETAP_BACKEND_AUTO;
    etap_get_backend(h, &be);
    if (be != ETAP_BACKEND_CUDA)
        tu_fail(&T, "a CUDA handle reports backend %d", (int)be);

    int size = tu_test_size();
    uint64_t seed = tu_seed(0xE7A90001ull);
    printf("test_decode_cuda: size %s, seed 0x%llx\n",
           size == 1 ? "small" : size == 2 ? "large" : "default", (unsigned long long)seed);
    cudaStream_t stream = NULL;
    cuda_ok(cudaStreamCreate(&stream), "cudaStreamCreate");
    double t0 = tu_now();
    dg_list g;
    dg_build(&g, size, 1, seed);
    for (int i = 0; i < g.n; i++)
        run_case(h, &g.cases[i], (i % 3 == 2) ? stream : NULL); /* some on a created stream */
    dg_free(&g);
    /* random shapes on top of the grid: a new seed samples new ones */
    const int fuzz = tu_fuzz_count(size == 1 ? 8 : 40);
    dg_build_fuzz(&g, fuzz, size, 1, seed);
    for (int i = 0; i < g.n; i++)
        run_case(h, &g.cases[i], (i % 2) ? stream : NULL);
    dg_free(&g);
    test_invalid_length(h);
    test_concurrent_streams(h, size, seed);
    test_second_device(size, seed);
    if (numeric_passes == 0)
        tu_fail(&T, "no case ran through the numeric check");
    cudaStreamDestroy(stream);
    etap_destroy(h);
    printf("total %.1f s\n", tu_now() - t0);
    return tu_finish(&T);
}
