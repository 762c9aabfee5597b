/*
 * cuda_util.c - see cuda_util.h.
 */
#include "cuda_util.h"

#include <stdio.h>
#include <string.h>

#include <cuda_runtime_api.h>

static int check(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 0;
    printf("CUDA error in %s: %s (%s)\n", what, cudaGetErrorString(e), cudaGetErrorName(e));
    fflush(stdout);
    return -1;
}

int cu_device_available(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n < 1) {
        if (e != cudaSuccess)
            (void)cudaGetLastError(); /* clear the sticky-free error state */
        printf("skipped: no CUDA device\n");
        fflush(stdout);
        return 0;
    }
    return 1;
}

int cu_open_handle(etap_handle *h, tu_tally *t)
{
    *h = NULL;
    if (!cu_device_available())
        return 77;
    etap_options o = {ETAP_BACKEND_CUDA, 0, 0};
    etap_status st = etap_create(h, &o);
    if (st == ETAP_ERR_NO_DEVICE) {
        printf("skipped: no CUDA device etap can use: %s\n", etap_last_error_message());
        return 77;
    }
    if (st != ETAP_OK) {
        tu_fail(t, "etap_create(CUDA): %s: %s", etap_status_string(st), etap_last_error_message());
        return 0;
    }
    return 1;
}

int cu_malloc(void **p, size_t bytes, const char *what)
{
    *p = NULL;
    return check(cudaMalloc(p, bytes ? bytes : 4), what);
}

void cu_free(void *p)
{
    if (p)
        cudaFree(p);
}

int cu_upload(void *dst, const void *src, size_t bytes, const char *what)
{
    return check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), what);
}

int cu_download(void *dst, const void *src, size_t bytes, const char *what)
{
    return check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), what);
}

int cu_sync(const char *what) { return check(cudaDeviceSynchronize(), what); }

int cu_max_smem_optin(void)
{
    int dev = 0, v = -1;
    if (check(cudaGetDevice(&dev), "cudaGetDevice") ||
        check(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
              "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)"))
        return -1;
    return v;
}

int cu_case_upload(cu_case *d, const tu_case *c)
{
    memset(d, 0, sizeof *d);
    d->args = c->args;
    if (cu_malloc(&d->q, c->q_elems * 2, "cudaMalloc(q)") ||
        cu_malloc(&d->kv, c->kv_elems * 2, "cudaMalloc(kv)") ||
        cu_malloc(&d->bt, c->bt_elems * 4, "cudaMalloc(block_table)") ||
        cu_malloc(&d->lens, (size_t)c->desc.batch * 4, "cudaMalloc(seqlens)") ||
        cu_malloc(&d->out, c->out_elems * 2, "cudaMalloc(out)") ||
        cu_malloc(&d->lse, c->lse_elems * 4, "cudaMalloc(lse)"))
        return -1;
    if (cu_upload(d->q, c->q, c->q_elems * 2, "upload q") ||
        cu_upload(d->kv, c->kv, c->kv_elems * 2, "upload kv") ||
        cu_upload(d->bt, c->block_table, c->bt_elems * 4, "upload block_table") ||
        cu_upload(d->lens, c->lengths, (size_t)c->desc.batch * 4, "upload seqlens") ||
        cu_case_repoison(d, c))
        return -1;
    d->args.q = d->q;
    d->args.kv_cache = d->kv;
    d->args.block_table = d->bt;
    d->args.cache_seqlens = d->lens;
    d->args.out = d->out;
    d->args.lse = d->lse;
    return 0;
}

int cu_case_repoison(cu_case *d, const tu_case *c)
{
    if (cu_upload(d->out, c->out, c->out_elems * 2, "upload poisoned out") ||
        cu_upload(d->lse, c->lse, c->lse_elems * 4, "upload poisoned lse"))
        return -1;
    return 0;
}

int cu_case_download(const cu_case *d, tu_case *c)
{
    if (cu_download(c->out, d->out, c->out_elems * 2, "download out") ||
        cu_download(c->lse, d->lse, c->lse_elems * 4, "download lse"))
        return -1;
    return 0;
}

void cu_case_free(cu_case *d)
{
    cu_free(d->q);
    cu_free(d->kv);
    cu_free(d->bt);
    cu_free(d->lens);
    cu_free(d->out);
    cu_free(d->lse);
    memset(d, 0, sizeof *d);
}
