/*
 * cuda_util.h - the few CUDA runtime calls the device tests make (from C, through
 * <cuda_runtime_api.h>), with their errors turned into test failures. Only compiled when
 * the library has the CUDA backend (ETAP_WITH_CUDA).
 */
#ifndef ETAP_TEST_CUDA_UTIL_H
#define ETAP_TEST_CUDA_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "test_util.h"

/* 1 when a CUDA device can be used; prints "skipped: no CUDA device" and returns 0 if not. */
int cu_device_available(void);

/* Opens a CUDA-backend handle for a device test. Returns 1 with *h set; 77 (the CTest skip
 * code) after printing why when there is no CUDA device etap can use; 0 after recording a
 * failure in `t` when etap_create fails otherwise. */
int cu_open_handle(etap_handle *h, tu_tally *t);

/* Wrappers: each returns 0 on success, -1 after printing the CUDA error with `what`. */
int cu_malloc(void **p, size_t bytes, const char *what);
void cu_free(void *p);
int cu_upload(void *dst, const void *src, size_t bytes, const char *what);
int cu_download(void *dst, const void *src, size_t bytes, const char *what);
int cu_sync(const char *what);
/* The current device's opt-in shared memory per block in bytes, -1 on error. */
int cu_max_smem_optin(void);

/* A tu_case mirrored on the device: every buffer of the host case, with args pointing at
 * device memory. */
typedef struct cu_case {
    etap_mla_args args; /* device pointers */
    void *q, *kv, *bt, *lens, *out, *lse;
} cu_case;

/* Uploads q, kv, block table, lengths and the (poisoned) out / lse of `c`. */
int cu_case_upload(cu_case *d, const tu_case *c);
/* Re-uploads the poisoned out / lse (call tu_case_poison first). */
int cu_case_repoison(cu_case *d, const tu_case *c);
/* Downloads out / lse into the host case's out / lse buffers. */
int cu_case_download(const cu_case *d, tu_case *c);
void cu_case_free(cu_case *d);

#endif /* ETAP_TEST_CUDA_UTIL_H */
