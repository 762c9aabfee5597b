/*
 * trace.cuh - an opt-in CTA timeline for performance work (cmake -DETAP_TRACE=ON).
 *
 * In a normal build every ETAP_TRACE_* macro is empty. With ETAP_TRACE, the split kernel's
 * first ETAP_TRACE_CTAS CTAs of KV head 0 (grid x: workers x row groups, the group
 * fastest; the worker itself when there is one group) and every combine CTA write
 * %globaltimer stamps into device arrays, read back with etap_debug_trace_copy() /
 * etap_debug_combine_trace_copy() (exported from a trace build only; `etap-bench --trace`
 * prints them); the last call wins. ../trace_slots.h names the slots.
 */
#pragma once
#include <stdint.h>

#include "../trace_slots.h"

#ifdef ETAP_TRACE
__device__ __forceinline__ unsigned long long trace_now(void)
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ unsigned smid(void)
{
    unsigned id;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
    return id;
}
#define ETAP_TRACE_SPLIT(slot, cond)                                                        \
    do {                                                                                    \
        if ((cond) && blockIdx.y == 0 && blockIdx.x < ETAP_TRACE_CTAS)                  \
            etap_trace_split[blockIdx.x][(slot)] = trace_now();                             \
    } while (0)
#define ETAP_TRACE_SPLIT_VALUE(slot, cond, v)                                               \
    do {                                                                                    \
        if ((cond) && blockIdx.y == 0 && blockIdx.x < ETAP_TRACE_CTAS)                  \
            etap_trace_split[blockIdx.x][(slot)] = (v);                                     \
    } while (0)
/* stamps once the loaded 32-bit value v is in a register: a branch on it (that never
 * traps) comes first, so the clock is not read before the load has returned */
__device__ __forceinline__ void trace_wait_for(int v)
{
    asm volatile("{ .reg .pred p; setp.eq.s32 p, %0, 0x7eadbeef; @p trap; }" ::"r"(v));
}
#define ETAP_TRACE_SPLIT_AFTER(slot, cond, v)                                               \
    do {                                                                                    \
        if ((cond) && blockIdx.y == 0 && blockIdx.x < ETAP_TRACE_CTAS) {                    \
            trace_wait_for((int)(v));                                                       \
            etap_trace_split[blockIdx.x][(slot)] = trace_now();                             \
        }                                                                                   \
    } while (0)
/* a tile's PV is done: its own slot, the last tile's, and the tile count */
#define ETAP_TRACE_TILE_DONE(it, first_thread)                                              \
    do {                                                                                    \
        ETAP_TRACE_SPLIT(TRACE_TILE_DONE + 2 * (it), (first_thread) && (it) < ETAP_TRACE_TILES); \
        ETAP_TRACE_SPLIT(TRACE_LAST_TILE, (first_thread));                                  \
        ETAP_TRACE_SPLIT_VALUE(TRACE_TILES, (first_thread), (unsigned long long)((it) + 1)); \
    } while (0)
#define ETAP_TRACE_COMBINE(slot)                                                            \
    do {                                                                                    \
        const unsigned cta = blockIdx.y * gridDim.x + blockIdx.x;                           \
        if (threadIdx.x == 0 && cta < ETAP_TRACE_COMBINE_CTAS)                              \
            etap_trace_combine[cta][(slot)] = trace_now();                                  \
    } while (0)
/* thread `thread` stamps `slot` once the 32-bit value v is in its register */
#define ETAP_TRACE_COMBINE_AT(thread, slot, v)                                              \
    do {                                                                                    \
        const unsigned cta = blockIdx.y * gridDim.x + blockIdx.x;                           \
        if (threadIdx.x == (thread) && cta < ETAP_TRACE_COMBINE_CTAS) {                     \
            trace_wait_for((int)(v));                                                       \
            etap_trace_combine[cta][(slot)] = trace_now();                                  \
        }                                                                                   \
    } while (0)
#define ETAP_TRACE_COMBINE_AFTER(slot, v) ETAP_TRACE_COMBINE_AT(0, slot, v)
/* thread 32 (warp 1) reads one word (ld.global.cg) right after the wait and stamps its
 * arrival, without holding up thread 0's stamps: how long one read of a line that no kernel
 * just wrote takes at that moment (before session 10 the stamp did not wait for the load,
 * and read ~0.01 us) */
#define ETAP_TRACE_COMBINE_PROBE(word_ptr) ETAP_TRACE_COMBINE_AT(32, TRACE_COMBINE_PROBE, __ldcg(word_ptr))
#else
#define ETAP_TRACE_COMBINE_PROBE(word_ptr) ((void)0)
#define ETAP_TRACE_SPLIT(slot, cond) ((void)0)
#define ETAP_TRACE_SPLIT_VALUE(slot, cond, v) ((void)0)
#define ETAP_TRACE_SPLIT_AFTER(slot, cond, v) ((void)0)
#define ETAP_TRACE_COMBINE(slot) ((void)0)
#define ETAP_TRACE_COMBINE_AFTER(slot, v) ((void)0)
#define ETAP_TRACE_TILE_DONE(it, first_thread) ((void)0)
#endif
