/*
 * plan_kernel.cu - the split-KV plan of plan.h, computed on the device.
 *
 * One CTA of 1024 threads; no host synchronisation, so etap_plan() can sit inside a CUDA
 * graph and be replayed with new lengths. It writes the same words as the host builder
 * (plan.c), using the same inline math from plan.h; tests compare the two word for word.
 *   1. prefix[i] = sum of cost(j < i): a block-wide scan over per-thread chunks (int64)
 *   2. per sequence: first/last worker, num_splits; a second scan gives split_offset
 *   3. per worker: binary search of its first and last unit in prefix[]
 * Invalid lengths count as 0 tiles and the first one is recorded in the header.
 */
#include "../plan.h"
#include "cuda_common.cuh"

#define PLAN_THREADS 1024

/* Exclusive scan of one int64 per thread across the block; returns the block total. */
__device__ int64_t block_exclusive_scan(int64_t v, int64_t *exclusive, int64_t *warp_sums)
{
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int64_t incl = v;
    for (int d = 1; d < 32; d *= 2) {
        const int64_t up = __shfl_up_sync(0xffffffffu, incl, d);
        if (lane >= d)
            incl += up;
    }
    if (lane == 31)
        warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        int64_t w = warp_sums[lane];
        for (int d = 1; d < 32; d *= 2) {
            const int64_t up = __shfl_up_sync(0xffffffffu, w, d);
            if (lane >= d)
                w += up;
        }
        warp_sums[lane] = w; /* inclusive over warps */
    }
    __syncthreads();
    const int64_t total = warp_sums[31];
    *exclusive = incl - v + (warp > 0 ? warp_sums[warp - 1] : 0);
    __syncthreads(); /* warp_sums may be reused by the next scan */
    return total;
}

__global__ void __launch_bounds__(PLAN_THREADS)
    etap_plan_kernel(const int32_t *lengths, int32_t *plan, int32_t batch, int32_t num_workers,
                     int32_t max_len)
{
    extern __shared__ int64_t prefix[]; /* [batch + 1] */
    __shared__ int64_t warp_sums[32];
    __shared__ int32_t first_bad;
    __shared__ unsigned long long max_cost;
    const int tid = threadIdx.x;
    const int chunk = (batch + PLAN_THREADS - 1) / PLAN_THREADS;
    const int begin = min(batch, tid * chunk), end = min(batch, begin + chunk);
    if (tid == 0) {
        first_bad = batch;
        max_cost = 0;
    }
    __syncthreads();

    /* 1. costs and their prefix sums */
    int64_t local = 0, local_max = 0;
    for (int i = begin; i < end; i++) {
        const int32_t len = lengths[i];
        if (len < 0 || len > max_len) {
            atomicMin(&first_bad, i);
        } else {
            const int64_t cost = etap_plan_cost(etap_plan_tiles(len));
            local += cost;
            local_max = max(local_max, cost);
        }
    }
    if (local_max > 0)
        atomicMax(&max_cost, (unsigned long long)local_max);
    int64_t run;
    const int64_t total = block_exclusive_scan(local, &run, warp_sums);
    for (int i = begin; i < end; i++) {
        prefix[i] = run;
        const int32_t len = lengths[i];
        if (len >= 0 && len <= max_len)
            run += etap_plan_cost(etap_plan_tiles(len));
    }
    if (tid == 0)
        prefix[batch] = total;
    __syncthreads();
    const int64_t quota = etap_plan_quota(total, num_workers, (int64_t)max_cost);

    /* 2. per sequence: splits, first worker, split_offset */
    int32_t *split_offset = plan + etap_plan_split_offset_offset(num_workers);
    int32_t *first_worker = plan + etap_plan_first_worker_offset(batch, num_workers);
    local = 0;
    for (int i = begin; i < end; i++) {
        const int64_t tiles = prefix[i + 1] > prefix[i] ? prefix[i + 1] - prefix[i] - ETAP_PLAN_OVERHEAD_UNITS : 0;
        if (tiles > 0)
            local += etap_plan_last_worker(prefix[i], tiles, quota) -
                     etap_plan_first_worker(prefix[i], quota) + 1;
    }
    const int64_t total_splits = block_exclusive_scan(local, &run, warp_sums);
    for (int i = begin; i < end; i++) {
        const int64_t tiles = prefix[i + 1] > prefix[i] ? prefix[i + 1] - prefix[i] - ETAP_PLAN_OVERHEAD_UNITS : 0;
        split_offset[i] = (int32_t)run;
        if (tiles > 0) {
            first_worker[i] = etap_plan_first_worker(prefix[i], quota);
            run += etap_plan_last_worker(prefix[i], tiles, quota) - first_worker[i] + 1;
        } else {
            first_worker[i] = -1;
        }
    }
    if (tid == 0)
        split_offset[batch] = (int32_t)total_splits;

    /* 3. worker records: the first and last sequence of which the worker owns at least
     * one tile unit (plan.c spells the rule out); idle = {0, 0, -1, 0} */
    for (int w = tid; w < num_workers; w += PLAN_THREADS) {
        int32_t *rec = plan + etap_plan_worker_offset(w);
        const int64_t u0 = (int64_t)w * quota;
        const int64_t u1 = min(u0 + quota, total);
        rec[0] = 0, rec[1] = 0, rec[2] = -1, rec[3] = 0;
        if (u0 >= total)
            continue;
        /* the sequence holding unit u0; its tiles start at prefix + overhead */
        const int32_t s0 = etap_plan_seq_at(prefix, batch, u0);
        if (u1 <= prefix[s0] + ETAP_PLAN_OVERHEAD_UNITS)
            continue; /* only overhead units: no tile */
        /* the sequence holding unit u1 - 1, or the one before it when that unit is
         * overhead (the worker then owns none of its tiles) */
        int32_t s1 = etap_plan_seq_at(prefix, batch, u1 - 1);
        if (u1 - 1 < prefix[s1] + ETAP_PLAN_OVERHEAD_UNITS)
            s1 = etap_plan_seq_at(prefix, batch, prefix[s1] - 1);
        const int64_t tiles0 = prefix[s0 + 1] - prefix[s0] - ETAP_PLAN_OVERHEAD_UNITS;
        const int64_t tiles1 = prefix[s1 + 1] - prefix[s1] - ETAP_PLAN_OVERHEAD_UNITS;
        rec[0] = s0;
        rec[1] = (int32_t)etap_plan_tile_at(u0, prefix[s0], tiles0);
        rec[2] = s1;
        rec[3] = (int32_t)etap_plan_tile_at(u1, prefix[s1], tiles1);
    }

    /* 4. header */
    if (tid == 0) {
        const int bad = first_bad;
        const int32_t status = bad == batch       ? ETAP_PLAN_OK
                               : lengths[bad] < 0 ? ETAP_PLAN_BAD_NEGATIVE_LEN
                                                  : ETAP_PLAN_BAD_LEN_TOO_LONG;
        etap_plan_write_header(plan, batch, num_workers, quota, (int32_t)total_splits, status,
                               bad == batch ? 0 : bad, bad == batch ? 0 : lengths[bad]);
    }
}

size_t etap_plan_kernel_smem_bytes(int32_t batch) { return sizeof(int64_t) * ((size_t)batch + 1); }

cudaError_t etap_plan_set_attributes(size_t max_smem_bytes)
{
    return cudaFuncSetAttribute(etap_plan_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)max_smem_bytes);
}

/* A plain launch, and the kernel never triggers its dependents early: the split kernel
 * reads the plan before its griddepcontrol.wait (decode_sm90.cu), so the plan kernel must
 * end before a dependent grid starts. */
cudaError_t etap_launch_plan(const int32_t *seqlens, int32_t *plan, int32_t batch,
                             int32_t num_workers, int32_t max_len, cudaStream_t stream)
{
    etap_plan_kernel<<<1, PLAN_THREADS, etap_plan_kernel_smem_bytes(batch), stream>>>(
        seqlens, plan, batch, num_workers, max_len);
    return cudaGetLastError();
}
