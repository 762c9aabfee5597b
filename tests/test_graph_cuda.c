/*
 * test_graph_cuda.c - etap_plan() + etap_decode() captured once in a CUDA graph
 * (cudaStreamCaptureModeGlobal: any forbidden call inside the library breaks the capture),
 * then replayed after changing, in the same device buffers, the sequence lengths, q, the
 * KV cache and the block table. Each replay must match the reference of its own data, and
 * the plan the replay computed must equal the host plan of the new lengths word for word.
 * A replay with an invalid length must turn every output into NaN.
 * Without a CUDA device it prints "skipped: no CUDA device" and exits with 77.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "cuda_util.h"
#include "etap.h"
#include "plan_check.h"
#include "test_util.h"

static tu_tally T;

#define B 8
#define PAGE 64
#define MAX_PAGES 40 /* 2560 tokens per sequence at most */
#define NUM_PAGES (B * MAX_PAGES + 5)

static int ok_cuda(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 1;
    tu_fail(&T, "%s: CUDA error %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
    return 0;
}

/* The case of one replay: fixed shape, strides, page count and table width, so that it
 * fits the buffers the graph was captured with. */
static int build_replay(tu_case *c, const int32_t *lens, etap_dtype dt, uint64_t seed)
{
    tu_case_desc d = {0};
    d.batch = B;
    d.seqlen_q = 2;
    d.num_heads_q = 16;
    d.num_heads_kv = 1;
    d.page_size = PAGE;
    d.causal = 1;
    d.dtype = dt;
    d.lengths = lens;
    d.softmax_scale = 0.0f;
    d.num_pages = NUM_PAGES;
    d.max_pages_per_seq = MAX_PAGES;
    d.seed = seed;
    return tu_case_build(c, &d);
}

int main(void)
{
    etap_handle h = NULL;
    const int opened = cu_open_handle(&h, &T);
    if (opened != 1)
        return opened == 77 ? 77 : tu_finish(&T);

    for (int dti = 0; dti < 2; dti++) {
        const etap_dtype dt = dti ? ETAP_DTYPE_FP16 : ETAP_DTYPE_BF16;
        const char *dn = tu_dtype_name(dt);
        tu_rng r;
        tu_rng_seed(&r, tu_seed(0x67a9) + (uint64_t)dti);

        /* the capture-time data: every sequence at full length */
        int32_t lens[B];
        for (int i = 0; i < B; i++)
            lens[i] = MAX_PAGES * PAGE;
        tu_case c0;
        cu_case d;
        if (build_replay(&c0, lens, dt, 1) != 0 || cu_case_upload(&d, &c0) != 0) {
            tu_fail(&T, "%s: setup", dn);
            break;
        }
        const etap_mla_shape shape = c0.args.shape;
        size_t pb = 0, wb = 0;
        int32_t w = 0;
        etap_plan_size(h, &shape, &pb);
        etap_workspace_size(h, &shape, &wb);
        etap_get_num_workers(h, &shape, &w);
        void *dplan = NULL, *dws = NULL;
        cudaStream_t stream = NULL;
        cudaGraph_t graph = NULL;
        cudaGraphExec_t exec = NULL;
        int ready = cu_malloc(&dplan, pb, "cudaMalloc(plan)") == 0 &&
                    cu_malloc(&dws, wb, "cudaMalloc(ws)") == 0 &&
                    ok_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                            "cudaStreamCreate");
        if (ready) {
            cudaMemset(dws, 0xFF, wb);
            cudaMemset(dplan, 0xAB, pb);
            cudaDeviceSynchronize();
        }

        /* capture */
        if (ready && ok_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal),
                             "cudaStreamBeginCapture")) {
            etap_status sp = etap_plan(h, &shape, d.args.cache_seqlens, dplan, pb, stream);
            etap_status sd = sp == ETAP_OK ? etap_decode(h, &d.args, dplan, pb, dws, wb, stream) : sp;
            char m[512];
            snprintf(m, sizeof m, "%s", etap_last_error_message());
            cudaError_t ec = cudaStreamEndCapture(stream, &graph);
            if (sp != ETAP_OK || sd != ETAP_OK) {
                tu_fail(&T, "%s: capture: plan %s, decode %s: %s", dn, etap_status_string(sp),
                        etap_status_string(sd), m);
                ready = 0;
            } else if (!ok_cuda(ec, "cudaStreamEndCapture (a forbidden call during capture?)") ||
                       !ok_cuda(cudaGraphInstantiateWithFlags(&exec, graph, 0),
                                "cudaGraphInstantiate")) {
                ready = 0;
            } else {
                size_t nodes = 0;
                cudaGraphGetNodes(graph, NULL, &nodes);
                tu_pass(&T, "%s: etap_plan + etap_decode captured into a graph of %zu nodes", dn,
                        nodes);
            }
        } else {
            ready = 0;
        }

        /* replays with new lengths and new data in the same buffers */
        for (int rep = 0; ready && rep < 8; rep++) {
            const char *what;
            for (int i = 0; i < B; i++) {
                int32_t cap = MAX_PAGES * PAGE;
                switch (rep) {
                case 0: lens[i] = cap; what = "all at capacity"; break;
                case 1: lens[i] = 0; what = "all zero"; break;
                case 2:
                    lens[i] = (int32_t)tu_rng_range(&r, 0, cap);
                    what = "random";
                    break;
                case 3: lens[i] = i == 5 ? cap - 7 : (int32_t)tu_rng_range(&r, 0, 3); what = "one long, rest < s_q+2"; break;
                case 4: lens[i] = i % 2 ? 0 : (int32_t)tu_rng_range(&r, 1, 200); what = "every other empty"; break;
                case 5: lens[i] = 64 * (i + 1) + (i % 3) - 1; what = "tile boundaries"; break;
                case 6: lens[i] = (int32_t)tu_rng_range(&r, cap / 2, cap); what = "long"; break;
                default: lens[i] = 1; what = "one token each"; break;
                }
            }
            tu_case c;
            if (build_replay(&c, lens, dt, 100 + (uint64_t)rep) != 0) {
                tu_fail(&T, "%s replay %d: out of memory", dn, rep);
                break;
            }
            int same = c.args.q_stride_batch == c0.args.q_stride_batch &&
                       c.args.kv_stride_page == c0.args.kv_stride_page &&
                       c.args.block_table_stride == c0.args.block_table_stride &&
                       c.args.out_stride_batch == c0.args.out_stride_batch &&
                       c.kv_elems == c0.kv_elems && c.bt_elems == c0.bt_elems &&
                       c.args.shape.num_pages == shape.num_pages &&
                       c.args.shape.max_pages_per_seq == shape.max_pages_per_seq;
            if (!same) {
                tu_fail(&T, "%s replay %d: the replay case does not fit the captured buffers "
                            "(test bug)", dn, rep);
                tu_case_free(&c);
                break;
            }
            tu_case_reference(&c);
            char msg[512];
            int up = cu_upload(d.q, c.q, c.q_elems * 2, "upload q") == 0 &&
                     cu_upload(d.kv, c.kv, c.kv_elems * 2, "upload kv") == 0 &&
                     cu_upload(d.bt, c.block_table, c.bt_elems * 4, "upload block table") == 0 &&
                     cu_upload(d.lens, c.lengths, B * 4, "upload lengths") == 0 &&
                     cu_case_repoison(&d, &c) == 0;
            if (up && ok_cuda(cudaGraphLaunch(exec, stream), "cudaGraphLaunch") &&
                ok_cuda(cudaStreamSynchronize(stream), "replay") && cu_case_download(&d, &c) == 0) {
                int32_t *hp = malloc(pb);
                int64_t cap = (int64_t)MAX_PAGES * PAGE;
                int plan_ok = cu_download(hp, dplan, pb, "download plan") == 0 &&
                              pc_verify(hp, B, w, (int32_t)cap,
                                        shape.seqlen_q * (shape.num_heads_q / shape.num_heads_kv),
                                        c.lengths, NULL, msg, sizeof msg);
                char pmsg[512];
                snprintf(pmsg, sizeof pmsg, "%s", msg);
                free(hp);
                if (!plan_ok)
                    tu_fail(&T, "%s replay %d (%s): the replayed plan is wrong: %s", dn, rep, what,
                            pmsg);
                else if (tu_case_check(&c, c.out, c.lse, msg, sizeof msg))
                    tu_pass(&T, "%s replay %d (%s, %lld tokens): %s", dn, rep, what,
                            (long long)c.total_tokens, msg);
                else
                    tu_fail(&T, "%s replay %d (%s): %s", dn, rep, what, msg);
            } else {
                tu_fail(&T, "%s replay %d: launch / transfer failed", dn, rep);
                tu_case_free(&c);
                break;
            }
            tu_case_free(&c);
        }

        /* an invalid length in a replay: every output NaN */
        if (ready) {
            int32_t bad[B];
            for (int i = 0; i < B; i++)
                bad[i] = 100;
            bad[3] = -4;
            tu_case_poison(&c0);
            int nan_ok = cu_upload(d.lens, bad, B * 4, "upload lengths") == 0 &&
                         cu_case_repoison(&d, &c0) == 0 &&
                         ok_cuda(cudaGraphLaunch(exec, stream), "cudaGraphLaunch") &&
                         ok_cuda(cudaStreamSynchronize(stream), "replay") &&
                         cu_case_download(&d, &c0) == 0;
            etap_status chk = etap_plan_check(h, dplan, pb, stream);
            for (int32_t b = 0; nan_ok && b < B; b++)
                for (int32_t s = 0; s < 2; s++)
                    for (int32_t hh = 0; hh < 16; hh++) {
                        const uint16_t *row = c0.out + b * c0.args.out_stride_batch +
                                              s * c0.args.out_stride_seq +
                                              hh * c0.args.out_stride_head;
                        for (int e = 0; e < 512; e++)
                            nan_ok &= isnan(tu_half_to_float(dt, row[e])) &&
                                      row[e] != tu_half_poison(dt);
                        float l = c0.lse[(b * 16 + hh) * 2 + s];
                        uint32_t lb;
                        memcpy(&lb, &l, 4);
                        nan_ok &= isnan(l) && lb != TU_LSE_POISON_BITS;
                    }
            if (nan_ok && chk == ETAP_ERR_INVALID_ARGUMENT &&
                tu_contains(etap_last_error_message(), "cache_seqlens[3] is -4"))
                tu_pass(&T, "%s: a replay with length -4 marks the plan invalid (\"%s\") and every "
                            "output NaN", dn, etap_last_error_message());
            else
                tu_fail(&T, "%s: replay with an invalid length: all NaN %d, plan_check %s (%s)", dn,
                        nan_ok, etap_status_string(chk), etap_last_error_message());
        }

        if (exec)
            cudaGraphExecDestroy(exec);
        if (graph)
            cudaGraphDestroy(graph);
        if (stream)
            cudaStreamDestroy(stream);
        cu_free(dplan);
        cu_free(dws);
        cu_case_free(&d);
        tu_case_free(&c0);
    }
    etap_destroy(h);
    return tu_finish(&T);
}
