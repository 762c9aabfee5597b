/*
 * ptx.cuh - every raw PTX instruction the Hopper backend uses, wrapped once.
 *
 * Section names refer to the PTX ISA manual. Kernels call these and read as the algorithm;
 * nothing else in src/cuda/ writes inline assembly except the generated wgmma_ops.cuh.
 */
#pragma once
#include <stdint.h>

/* ---- addresses ---------------------------------------------------------------------- */

__device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* ---- mbarrier (PTX: Parallel Synchronization and Communication: mbarrier) ------------ */

__device__ __forceinline__ void mbarrier_init(uint64_t *bar, uint32_t arrivals)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(arrivals));
}
/* Makes the inits visible to the async proxy (the copy engine) before first use. */
__device__ __forceinline__ void mbarrier_init_fence(void)
{
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
/* Arrive once and add `bytes` to the transaction count the phase waits for. */
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t *bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint64_t *bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
/* Blocks until the phase with the given parity (0 or 1) has completed. */
__device__ __forceinline__ void mbarrier_wait(uint64_t *bar, uint32_t parity)
{
    asm volatile("{\n"
                 ".reg .pred done;\n"
                 "WAIT_%=:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT_%=;\n"
                 "}\n" ::"r"(smem_addr(bar)),
                 "r"(parity)
                 : "memory");
}

/* ---- non-bulk asynchronous copy (PTX: cp.async) ------------------------------------- */

/* Copies 16 bytes global -> shared without going through registers; with src_bytes = 0
 * nothing is read and the 16 bytes are zero-filled. */
__device__ __forceinline__ void cp_async_16(void *dst, const void *src, uint32_t src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)),
                 "l"(src), "r"(src_bytes)
                 : "memory");
}
/* Waits until every cp.async this thread issued has landed. */
__device__ __forceinline__ void cp_async_wait_all(void)
{
    asm volatile("cp.async.wait_all;" ::: "memory");
}
/* One arrival on `bar` once every cp.async this thread issued so far has landed (.noinc:
 * the arrival is one of the counts the barrier was initialised with). */
__device__ __forceinline__ void cp_async_mbarrier_arrive_noinc(uint64_t *bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(smem_addr(bar))
                 : "memory");
}

/* ---- bulk tensor copy (PTX: cp.async.bulk.tensor) ----------------------------------- */

/* Asks L2 for the line holding `ptr` (PTX: prefetch.global.L2); also brings its page
 * translation to this SM. */
__device__ __forceinline__ void prefetch_l2(const void *ptr)
{
    asm volatile("prefetch.global.L2 [%0];" ::"l"((uint64_t)ptr));
}
__device__ __forceinline__ void tma_prefetch_descriptor(const void *tmap)
{
    asm volatile("prefetch.tensormap [%0];" ::"l"((uint64_t)tmap) : "memory");
}
/* An L2 eviction policy (PTX: createpolicy) under which the lines an access brings in
 * are the first to go: for data read once, so that it does not push out what is reused. */
__device__ __forceinline__ uint64_t l2_policy_evict_first(void)
{
    uint64_t policy;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    return policy;
}
/* The fp32 partials are stored with evict_last, since the combine reads them back a few
 * microseconds later and the cache stream (evict_first) would otherwise push them out to
 * DRAM first, and read with evict_first, since nothing needs them after that. */
__device__ __forceinline__ uint64_t l2_policy_evict_last(void)
{
    uint64_t policy;
    asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
    return policy;
}
__device__ __forceinline__ void st_global_hint(float *a, float v, uint64_t policy)
{
    asm volatile("st.global.L2::cache_hint.f32 [%0], %1, %2;" ::"l"(a), "f"(v), "l"(policy) : "memory");
}
__device__ __forceinline__ void st_global_hint(float2 *a, float2 v, uint64_t policy)
{
    asm volatile("st.global.L2::cache_hint.v2.f32 [%0], {%1, %2}, %3;" ::"l"(a), "f"(v.x), "f"(v.y), "l"(policy)
                 : "memory");
}
__device__ __forceinline__ float4 ld_global_hint(const float4 *a, uint64_t policy)
{
    float4 v;
    asm volatile("ld.global.L2::cache_hint.v4.f32 {%0, %1, %2, %3}, [%4], %5;"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "l"(a), "l"(policy)
                 : "memory");
    return v;
}
/* Loads the box at coordinates (c0 innermost .. c4) of a 5-D tensor map into shared
 * memory under the L2 policy `policy`; completion is signalled on `bar` as transaction
 * bytes. */
__device__ __forceinline__ void tma_load_5d(void *dst, const void *tmap, uint64_t *bar, int32_t c0,
                                            int32_t c1, int32_t c2, int32_t c3, int32_t c4,
                                            uint64_t policy)
{
    asm volatile("cp.async.bulk.tensor.5d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 ".L2::cache_hint [%0], [%1, {%3, %4, %5, %6, %7}], [%2], %8;" ::"r"(smem_addr(dst)),
                 "l"((uint64_t)tmap), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4),
                 "l"(policy)
                 : "memory");
}

/* ---- proxies and barriers ------------------------------------------------------------ */

/* Shared memory written by ordinary stores and read next by wgmma or the copy engine
 * (the async proxy) needs this in each writing thread before the barrier that orders it. */
__device__ __forceinline__ void fence_proxy_async_smem(void)
{
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
/* Named barriers (PTX: barrier.sync): `threads` is a multiple of 32, and every lane of a
 * participating warp calls it. ID 0 is __syncthreads(); the kernels use 1.. for subsets of
 * warps. Lane-predicated stores (`if (lane < 4) ...`) often precede these barriers, so the
 * warp is reconverged first and the non-.aligned form is used: bar.sync is
 * barrier.sync.aligned, undefined for a diverged warp (compute-sanitizer's synccheck caught
 * that), and racecheck only credits the ordering to a converged arrival. */
__device__ __forceinline__ void named_barrier_sync(uint32_t id, uint32_t threads)
{
    __syncwarp();
    asm volatile("barrier.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

/* barrier.sync with an OR over the participating threads' predicates (PTX: barrier.red.or):
 * true on every thread when any thread passed true. Same rules as named_barrier_sync. */
__device__ __forceinline__ bool named_barrier_any(uint32_t id, uint32_t threads, bool pred)
{
    uint32_t any;
    __syncwarp();
    asm volatile("{\n\t.reg .pred p, q;\n\t"
                 "setp.ne.u32 q, %1, 0;\n\t"
                 "barrier.red.or.pred p, %2, %3, q;\n\t"
                 "selp.u32 %0, 1, 0, p;\n\t}"
                 : "=r"(any)
                 : "r"((uint32_t)pred), "r"(id), "r"(threads)
                 : "memory");
    return any != 0;
}

/* Four 8x8 matrices of 16-bit values from the warp's registers into shared memory,
 * transposed (PTX: stmatrix.trans): register r[m] of lane l holds row l / 4, columns
 * 2 (l % 4) and + 1 (low half first) of matrix m, and lane 8m + i gives the address of
 * the 16 bytes that receive column i of matrix m (its 8 rows in order). */
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2,
                                                  uint32_t r3)
{
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(addr),
                 "r"(r0), "r"(r1), "r"(r2), "r"(r3)
                 : "memory");
}

/* The same without the transposition: lane 8m + i gives the address of row i of matrix m. */
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3)
{
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(r0),
                 "r"(r1), "r"(r2), "r"(r3)
                 : "memory");
}

/* ---- programmatic dependent launch (PTX: griddepcontrol, sm_90) ---------------------- */

/* Lets the next kernel in the stream (launched with the programmatic-serialization
 * attribute) start its launch while this grid still runs. */
__device__ __forceinline__ void grid_dependents_launch(void)
{
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}
/* Waits until the preceding grid has completed and its memory operations are visible. */
__device__ __forceinline__ void grid_dependency_wait(void)
{
    asm volatile("griddepcontrol.wait;" ::: "memory");
}

/* ---- register reallocation between warpgroups (PTX: setmaxnreg, sm_90a) --------------- */

template <uint32_t REGS> __device__ __forceinline__ void setmaxnreg_inc(void)
{
    static_assert(REGS % 8 == 0 && REGS >= 24 && REGS <= 256, "setmaxnreg range");
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(REGS));
}
template <uint32_t REGS> __device__ __forceinline__ void setmaxnreg_dec(void)
{
    static_assert(REGS % 8 == 0 && REGS >= 24 && REGS <= 256, "setmaxnreg range");
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(REGS));
}

/* ---- wgmma bookkeeping (PTX: wgmma.fence / commit_group / wait_group) ---------------- */

__device__ __forceinline__ void wgmma_fence(void)
{
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit(void)
{
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int PENDING> __device__ __forceinline__ void wgmma_wait(void)
{
    static_assert(PENDING >= 0 && PENDING <= 7, "wgmma.wait_group takes 0..7");
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(PENDING) : "memory");
}
/* Keeps the compiler from moving accesses of an accumulator across wgmma instructions
 * that read or write it asynchronously. */
template <int K> __device__ __forceinline__ void fence_accumulators(float (&d)[K])
{
#pragma unroll
    for (int i = 0; i < K; i++)
        asm volatile("" : "+f"(d[i])::"memory");
}

/*
 * Shared-memory matrix descriptor (PTX: Matrix Descriptor Format, 64 bits):
 *   bits  0-13 start address >> 4
 *   bits 16-29 leading-dimension byte offset >> 4
 *   bits 32-45 stride-dimension byte offset >> 4
 *   bits 62-63 swizzle: 1 = 128B
 * With the 128B swizzle every operand tile here is made of 1024-byte atoms of 8 rows x
 * 128 bytes (64 bf16), so the 8-row stride is always 1024 bytes. For K-major operands the
 * leading offset is unused; for the MN-major V^T view the atom already spans the whole
 * m64 extent, so the leading offset is unused there too; both are set to 1024.
 */
__device__ __forceinline__ uint64_t smem_desc_sw128(uint32_t smem_byte_addr)
{
    const uint64_t atom_stride = 1024;
    return (uint64_t)((smem_byte_addr & 0x3FFFF) >> 4) | ((atom_stride >> 4) << 16) |
           ((atom_stride >> 4) << 32) | (1ull << 62);
}

/* The same for an MN-major operand wider than one 64-element atom row: `lbo` bytes from
 * each 64-element block of the MN dimension to the next (the rows-on-M kernel's V as B:
 * 256 dims in four 8 KB column blocks of the tile). */
__device__ __forceinline__ uint64_t smem_desc_sw128_mn(uint32_t smem_byte_addr, uint32_t lbo)
{
    const uint64_t atom_stride = 1024;
    return (uint64_t)((smem_byte_addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) |
           ((atom_stride >> 4) << 32) | (1ull << 62);
}

/* ---- math ---------------------------------------------------------------------------- */

/* 2^x with the special-function unit: 2^-inf = +0, which the softmax relies on. */
__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
