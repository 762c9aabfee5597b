/*
 * read_ceiling.cu - the streaming-read kernel etap-bench measures the GPU's read
 * ceiling with, and its C-callable launcher. Everything else of the bench is C
 * (bench_cuda.c) on the CUDA runtime API.
 *
 * Each thread XORs 16-byte words of the buffer in a grid-stride loop with four loads in
 * flight; the XOR is stored only if it equals a constant that random-looking data never
 * give, which keeps every load live without costing a store per thread.
 */
#include <cstddef>
#include <cuda_runtime.h>

namespace {

constexpr int kLoadsInFlight = 4;
constexpr unsigned kImpossibleXor = 0x9e3779b9u;

__global__ void read_kernel(const uint4 *__restrict__ words, size_t num_words,
                            unsigned *__restrict__ sink)
{
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    uint4 acc[kLoadsInFlight] = {};
    for (; i + (kLoadsInFlight - 1) * stride < num_words; i += kLoadsInFlight * stride) {
        uint4 w[kLoadsInFlight];
#pragma unroll
        for (int k = 0; k < kLoadsInFlight; k++) // issue every load before using any
            w[k] = words[i + k * stride];
#pragma unroll
        for (int k = 0; k < kLoadsInFlight; k++) {
            acc[k].x ^= w[k].x;
            acc[k].y ^= w[k].y;
            acc[k].z ^= w[k].z;
            acc[k].w ^= w[k].w;
        }
    }
    for (; i < num_words; i += stride) {
        uint4 w = words[i];
        acc[0].x ^= w.x;
        acc[0].y ^= w.y;
        acc[0].z ^= w.z;
        acc[0].w ^= w.w;
    }
    unsigned r = 0;
#pragma unroll
    for (int k = 0; k < kLoadsInFlight; k++)
        r ^= acc[k].x ^ acc[k].y ^ acc[k].z ^ acc[k].w;
    if (r == kImpossibleXor)
        *sink = r;
}

} // namespace

/* Reads `bytes` (a multiple of 16) at `buffer` once on `stream`; returns the
 * cudaError_t of the launch as an int (0 = success). */
extern "C" int etap_bench_read_launch(const void *buffer, size_t bytes, unsigned *sink,
                                      int blocks, int threads_per_block, void *stream)
{
    read_kernel<<<blocks, threads_per_block, 0, (cudaStream_t)stream>>>(
        (const uint4 *)buffer, bytes / sizeof(uint4), sink);
    return (int)cudaGetLastError();
}
