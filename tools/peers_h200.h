/*
 * peers_h200.h - what other MLA decode kernels take on one H200, for etap-bench to
 * compare with. Data only.
 *
 * Source: the team's reference measurements, PEERS-H200.md (measured 2026-11-21 on the
 * `nvidia-h200` device machine, driver 580.159.04, CUDA 13.0; peers built from their
 * public sources for sm_90a and timed side by side):
 *   FlashMLA  DeepSeek's MLA decode kernel, dense bf16 path, page 64
 *   ETAP      FlashMLA-ETAP, the reference code of the ETAP paper (arXiv 2506.01969)
 *   FA3       FlashAttention-3's MLA path, page 64
 * Method, the one etap-bench uses: decode call (split + combine) in a CUDA graph, several
 * calls per graph on different KV caches (>= 256 MB rotated), median of 20 replays
 * divided by the calls per graph; bf16, randn/4 data, random page table, h_kv = 1,
 * causal only where s_q > 1. Times in microseconds; -1 where a peer was not measured.
 * Their read ceiling of that card was 4450 GB/s.
 */
#ifndef ETAP_PEERS_H200_H
#define ETAP_PEERS_H200_H

#include <stdint.h>

#define BENCH_PEERS_PAGE_SIZE 64
#define BENCH_PEERS_READ_CEILING_GBPS 4450.0

typedef struct bench_peer_row {
    int32_t batch, seqlen_q, heads_q, seqlen_k; /* h_kv = 1, causal = (seqlen_q > 1) */
    double floor_us;                            /* their floor: bytes / 4450 GB/s + 2 us */
    double flashmla_us, etap_us, fa3_us;
} bench_peer_row;

/* The grid of etap-bench --grid, in this order: h_q = 16, s_q = 1 first (the paper's
 * case, TP8 of DeepSeek-V3/R1), then the cases with more query rows (MTP, TP4 and
 * below). */
static const bench_peer_row bench_peers_h200[] = {
    /* b  s_q  h_q    s_k   floor  FlashMLA   ETAP    FA3 */
    {1, 1, 16, 1024, 2.3, 11.1, 11.1, 12.7},
    {1, 1, 16, 4096, 3.1, 22.7, 16.2, -1},
    {1, 1, 16, 16384, 6.2, 40.2, 23.5, 22.2},
    {1, 1, 16, 65536, 19.0, 53.3, 39.5, 40.0},
    {16, 1, 16, 1024, 6.4, 16.5, 17.1, 17.2},
    {16, 1, 16, 4096, 19.1, 30.0, 32.6, 31.9},
    {16, 1, 16, 16384, 70.0, 90.8, 85.0, 86.0},
    {16, 1, 16, 65536, 273.6, 324.8, 289.4, 291.7},
    {32, 1, 16, 4096, 36.2, 47.5, 50.8, 50.8},
    {64, 1, 16, 1024, 19.5, 32.0, 34.5, 33.0},
    {64, 1, 16, 4096, 70.4, 84.1, 86.4, 86.9},
    {64, 1, 16, 16384, 274.0, 325.4, 293.7, 291.6},
    {128, 1, 16, 1024, 36.9, 48.1, 49.1, 49.3},
    {128, 1, 16, 4096, 138.7, 165.9, 152.8, 152.9},
    {128, 1, 16, 16384, 545.9, 641.3, 575.3, 566.9},
    /* more query rows */
    {64, 2, 16, 4096, 70.9, 95.9, 125.5, 93.7},
    {64, 1, 32, 4096, 70.9, 87.6, 125.7, 93.7},
    {64, 1, 64, 4096, 71.9, 96.1, -1, 103.1},
    {64, 1, 128, 4096, 73.9, 119.1, -1, 128.7},
    {128, 1, 128, 8192, 281.5, 462.9, -1, 473.7},
};

#define BENCH_NUM_PEER_ROWS ((int)(sizeof bench_peers_h200 / sizeof bench_peers_h200[0]))

#endif /* ETAP_PEERS_H200_H */
