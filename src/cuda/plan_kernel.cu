/*
 * plan_kernel.cu - the split-KV plan of plan.h, computed on the device.
 *
 * One CTA of 1024 threads; no host synchronisation, so etap_plan() can sit inside a CUDA
 * graph and be replayed with new lengths. It writes the same words as the host builder
 * (plan.c), using the same inline math from plan.h; tests compare the two word for word.
 *   1. tiles and sequences with tiles before each sequence: block-wide scans over
 *      per-thread chunks; a cut's prefix P[i] follows from them
 *   2. both cuts (plan.h) weighed: splits per sequence, each worker's tiles and pieces; one
 *      kept
 *   3. per sequence: first/last worker, num_splits; a scan gives split_offset
 *   4. per worker: binary search of its first and last unit in P
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

/* Worker w's record in the cut (ovh, quota) whose units end at `total`: the first and last
 * sequence of which it owns at least one tile unit (plan.c spells the rule out); idle =
 * {0, 0, -1, 0}. tiles_w / pieces_w: what it holds, for the cut's weight. */
__device__ void worker_record(int32_t w, int64_t ovh, int64_t quota, int64_t total,
                              const int64_t *tb, const int32_t *cb, int32_t batch, int32_t *rec,
                              int64_t *tiles_w, int64_t *pieces_w)
{
    rec[0] = 0, rec[1] = 0, rec[2] = -1, rec[3] = 0;
    *tiles_w = 0, *pieces_w = 0;
    const int64_t u0 = (int64_t)w * quota;
    const int64_t u1 = min(u0 + quota, total);
    if (u0 >= total)
        return;
    /* the sequence holding unit u0; its tiles start at P + ovh */
    const int32_t s0 = etap_plan_seq_at(tb, cb, ovh, batch, u0);
    const int64_t p0 = etap_plan_prefix(tb, cb, ovh, s0);
    if (u1 <= p0 + ovh)
        return; /* only overhead units: no tile */
    /* the sequence holding unit u1 - 1, or the one before it when that unit is overhead
     * (the worker then owns none of its tiles) */
    int32_t s1 = etap_plan_seq_at(tb, cb, ovh, batch, u1 - 1);
    int64_t p1 = etap_plan_prefix(tb, cb, ovh, s1);
    if (u1 - 1 < p1 + ovh) {
        s1 = etap_plan_seq_at(tb, cb, ovh, batch, p1 - 1);
        p1 = etap_plan_prefix(tb, cb, ovh, s1);
    }
    const int64_t tiles0 = tb[s0 + 1] - tb[s0], tiles1 = tb[s1 + 1] - tb[s1];
    const int64_t first = etap_plan_tile_at(u0, p0, tiles0, ovh);
    const int64_t end = etap_plan_tile_at(u1, p1, tiles1, ovh);
    rec[0] = s0;
    rec[1] = (int32_t)first;
    rec[2] = s1;
    rec[3] = (int32_t)end;
    *tiles_w = s0 == s1 ? end - first : tiles0 - first + (tb[s1] - tb[s0 + 1]) + end;
    *pieces_w = cb[s1 + 1] - cb[s0];
}

/* Splits of sequence i (i with tiles) in the cut (ovh, quota). */
__device__ int64_t seq_splits(const int64_t *tb, const int32_t *cb, int64_t ovh, int64_t quota,
                              int32_t i)
{
    const int64_t p = etap_plan_prefix(tb, cb, ovh, i), tiles = tb[i + 1] - tb[i];
    return tiles > 0 ? etap_plan_last_worker(p, tiles, ovh, quota) -
                           etap_plan_first_worker(p, ovh, quota) + 1
                     : 0;
}

__global__ void __launch_bounds__(PLAN_THREADS)
    etap_plan_kernel(const int32_t *lengths, int32_t *plan, int32_t batch, int32_t num_workers,
                     int32_t max_len, int32_t rows)
{
    /* tiles_before[0..batch] (int64), then count_before[0..batch] (int32): the sequences
     * with tiles before i; the prefix P of a cut is tiles_before + ovh * count_before */
    extern __shared__ int64_t tiles_before[];
    int32_t *count_before = (int32_t *)(tiles_before + batch + 1);
    __shared__ int64_t warp_sums[32];
    __shared__ int32_t first_bad;
    __shared__ unsigned long long max_tiles, max_load[2];
    const int tid = threadIdx.x;
    const int chunk = (batch + PLAN_THREADS - 1) / PLAN_THREADS;
    const int begin = min(batch, tid * chunk), end = min(batch, begin + chunk);
    if (tid == 0) {
        first_bad = batch;
        max_tiles = 0;
        max_load[0] = max_load[1] = 0;
    }
    __syncthreads();

    /* 1. tiles and sequences with tiles, and their prefix sums (invalid lengths: no tile) */
    int64_t local_tiles = 0, local_seqs = 0, local_max = 0;
    for (int i = begin; i < end; i++) {
        const int32_t len = lengths[i];
        if (len < 0 || len > max_len) {
            atomicMin(&first_bad, i);
        } else {
            const int64_t tiles = etap_plan_tiles(len);
            local_tiles += tiles;
            local_seqs += tiles > 0;
            local_max = max(local_max, tiles);
        }
    }
    if (local_max > 0)
        atomicMax(&max_tiles, (unsigned long long)local_max);
    int64_t run_tiles, run_seqs;
    const int64_t total_tiles = block_exclusive_scan(local_tiles, &run_tiles, warp_sums);
    const int64_t total_seqs = block_exclusive_scan(local_seqs, &run_seqs, warp_sums);
    for (int i = begin; i < end; i++) {
        tiles_before[i] = run_tiles;
        count_before[i] = (int32_t)run_seqs;
        const int32_t len = lengths[i];
        if (len >= 0 && len <= max_len) {
            const int64_t tiles = etap_plan_tiles(len);
            run_tiles += tiles;
            run_seqs += tiles > 0;
        }
    }
    if (tid == 0) {
        tiles_before[batch] = total_tiles;
        count_before[batch] = (int32_t)total_seqs;
    }
    __syncthreads();

    /* 2. the two cuts (plan.h): quotas, splits and the heaviest worker of each; one kept */
    const int64_t ovh_of[2] = {ETAP_PLAN_OVERHEAD_UNITS, 0};
    int64_t quota_of[2], total_of[2], splits_of[2];
    for (int c = 0; c < 2; c++) {
        const int64_t ovh = ovh_of[c];
        total_of[c] = total_tiles + ovh * total_seqs;
        quota_of[c] = etap_plan_quota(total_of[c], num_workers,
                                      etap_plan_cost((int64_t)max_tiles, ovh), ovh);
        int64_t local = 0, unused;
        for (int i = begin; i < end; i++)
            local += seq_splits(tiles_before, count_before, ovh, quota_of[c], i);
        splits_of[c] = block_exclusive_scan(local, &unused, warp_sums);
        for (int w = tid; w < num_workers; w += PLAN_THREADS) {
            int32_t rec[4];
            int64_t tiles_w, pieces_w;
            worker_record(w, ovh, quota_of[c], total_of[c], tiles_before, count_before, batch, rec,
                          &tiles_w, &pieces_w);
            atomicMax(&max_load[c], (unsigned long long)etap_plan_load(tiles_w, pieces_w));
        }
    }
    __syncthreads();
    const int k = etap_plan_take_bare((int64_t)max_load[0], splits_of[0], (int64_t)max_load[1],
                                      splits_of[1], rows)
                      ? 1
                      : 0;
    const int64_t ovh = ovh_of[k], quota = quota_of[k], total = total_of[k];

    /* 3. per sequence: splits, first worker, split_offset */
    int32_t *split_offset = plan + etap_plan_split_offset_offset(num_workers);
    int32_t *first_worker = plan + etap_plan_first_worker_offset(batch, num_workers);
    int64_t local = 0, run;
    for (int i = begin; i < end; i++)
        local += seq_splits(tiles_before, count_before, ovh, quota, i);
    const int64_t total_splits = block_exclusive_scan(local, &run, warp_sums);
    for (int i = begin; i < end; i++) {
        split_offset[i] = (int32_t)run;
        if (tiles_before[i + 1] > tiles_before[i]) {
            first_worker[i] = etap_plan_first_worker(
                etap_plan_prefix(tiles_before, count_before, ovh, i), ovh, quota);
            run += seq_splits(tiles_before, count_before, ovh, quota, i);
        } else {
            first_worker[i] = -1;
        }
    }
    if (tid == 0)
        split_offset[batch] = (int32_t)total_splits;

    /* 4. worker records */
    for (int w = tid; w < num_workers; w += PLAN_THREADS) {
        int64_t tiles_w, pieces_w;
        worker_record(w, ovh, quota, total, tiles_before, count_before, batch,
                      plan + etap_plan_worker_offset(w), &tiles_w, &pieces_w);
    }

    /* 5. header */
    if (tid == 0) {
        const int bad = first_bad;
        const int32_t status = bad == batch       ? ETAP_PLAN_OK
                               : lengths[bad] < 0 ? ETAP_PLAN_BAD_NEGATIVE_LEN
                                                  : ETAP_PLAN_BAD_LEN_TOO_LONG;
        etap_plan_write_header(plan, batch, num_workers, ovh, quota, (int32_t)total_splits,
                               status, bad == batch ? 0 : bad, bad == batch ? 0 : lengths[bad]);
    }
}

size_t etap_plan_kernel_smem_bytes(int32_t batch)
{
    return (sizeof(int64_t) + sizeof(int32_t)) * ((size_t)batch + 1);
}

cudaError_t etap_plan_set_attributes(size_t max_smem_bytes)
{
    return cudaFuncSetAttribute(etap_plan_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)max_smem_bytes);
}

/* A plain launch, and the kernel never triggers its dependents early: the split kernel
 * reads the plan before its griddepcontrol.wait (decode_sm90.cu), so the plan kernel must
 * end before a dependent grid starts. */
cudaError_t etap_launch_plan(const int32_t *seqlens, int32_t *plan, int32_t batch,
                             int32_t num_workers, int32_t max_len, int32_t rows,
                             cudaStream_t stream)
{
    etap_plan_kernel<<<1, PLAN_THREADS, etap_plan_kernel_smem_bytes(batch), stream>>>(
        seqlens, plan, batch, num_workers, max_len, rows);
    return cudaGetLastError();
}
