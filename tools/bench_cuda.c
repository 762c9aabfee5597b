/*
 * bench_cuda.c - etap-bench's CUDA side, in C on the CUDA runtime API: device memory,
 * the read ceiling, and graph timing the way PEERS-H200.md timed the peers.
 *
 * Graph timing: the caller's calls are captured into one graph. After a warm-up replay,
 * one more replay is left running while `replays` replays are queued back to back with
 * an event before the first and after each; only then does the host wait. The host
 * queues a replay far faster than the GPU runs one, so the events measure GPU time with
 * no host gap in it; the caller takes the median.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime_api.h>

#include "bench.h"

/* read_ceiling.cu */
int etap_bench_read_launch(const void *buffer, size_t bytes, unsigned *sink, int blocks,
                           int threads_per_block, void *stream);

static char error_message[512];

const char *bench_cuda_error(void) { return error_message; }

static int fail(const char *what, cudaError_t e)
{
    snprintf(error_message, sizeof error_message, "%s: %s (%s)", what, cudaGetErrorString(e),
             cudaGetErrorName(e));
    return -1;
}

#define CUDA_TRY(call)                                                                     \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess)                                                             \
            return fail(#call, e_);                                                        \
    } while (0)

/* ---- device and memory ---------------------------------------------------------------- */

int bench_cuda_init(int device, bench_cuda_info *info)
{
    int count = 0;
    CUDA_TRY(cudaGetDeviceCount(&count));
    if (device >= count) {
        snprintf(error_message, sizeof error_message,
                 "device %d asked for, but %d CUDA device(s) present", device, count);
        return -1;
    }
    CUDA_TRY(cudaSetDevice(device));
    CUDA_TRY(cudaFree(NULL)); /* create the context now, not inside the first timing */
    struct cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, device));
    snprintf(info->name, sizeof info->name, "%s", prop.name);
    CUDA_TRY(cudaDeviceGetAttribute(&info->major, cudaDevAttrComputeCapabilityMajor, device));
    CUDA_TRY(cudaDeviceGetAttribute(&info->minor, cudaDevAttrComputeCapabilityMinor, device));
    CUDA_TRY(cudaDeviceGetAttribute(&info->sm_count, cudaDevAttrMultiProcessorCount, device));
    CUDA_TRY(cudaDeviceGetAttribute(&info->l2_bytes, cudaDevAttrL2CacheSize, device));
    CUDA_TRY(cudaMemGetInfo(&info->free_bytes, &info->total_bytes));
    return 0;
}

int bench_cuda_mem_info(size_t *free_bytes, size_t *total_bytes)
{
    CUDA_TRY(cudaMemGetInfo(free_bytes, total_bytes));
    return 0;
}

void *bench_cuda_malloc(size_t bytes)
{
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 16);
    if (e != cudaSuccess) {
        char what[64];
        snprintf(what, sizeof what, "cudaMalloc(%zu bytes)", bytes);
        fail(what, e);
        cudaGetLastError(); /* an allocation failure is not sticky: clear it */
        return NULL;
    }
    return p;
}

void bench_cuda_free(void *p)
{
    if (p)
        cudaFree(p);
}

int bench_cuda_upload(void *dst, const void *src, size_t bytes)
{
    CUDA_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    CUDA_TRY(cudaDeviceSynchronize()); /* the bench's streams do not wait for stream 0 */
    return 0;
}

int bench_cuda_download(void *dst, const void *src, size_t bytes)
{
    CUDA_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
    return 0;
}

int bench_cuda_copy(void *dst, const void *src, size_t bytes)
{
    CUDA_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
    CUDA_TRY(cudaDeviceSynchronize());
    return 0;
}

int bench_cuda_memset(void *dst, int value, size_t bytes)
{
    CUDA_TRY(cudaMemset(dst, value, bytes));
    CUDA_TRY(cudaDeviceSynchronize());
    return 0;
}

int bench_cuda_stream_create(void **stream)
{
    cudaStream_t s;
    CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    *stream = s;
    return 0;
}

void bench_cuda_stream_destroy(void *stream)
{
    if (stream)
        cudaStreamDestroy((cudaStream_t)stream);
}

int bench_cuda_stream_sync(void *stream)
{
    CUDA_TRY(cudaStreamSynchronize((cudaStream_t)stream));
    return 0;
}

/* ---- streaming-read ceiling --------------------------------------------------------- */

#define CEILING_MAX_BYTES ((size_t)8 << 30) /* 8 GiB, as PEERS-H200.md's 8 GB buffer */

static int read_ceiling_on(cudaStream_t s, void *buf, size_t bytes, unsigned *sink, int reps,
                           double *gbps)
{
    int device = 0, sms = 0, threads_per_sm = 0;
    CUDA_TRY(cudaGetDevice(&device));
    CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    CUDA_TRY(cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor,
                                    device));
    const int block = 256;
    const int blocks = sms * (threads_per_sm / block); /* one full wave */
    /* warm-up: three full passes, so that the clocks have left any idle state */
    for (int w = 0; w < 3; w++)
        CUDA_TRY((cudaError_t)etap_bench_read_launch(buf, bytes, sink, blocks, block, s));
    CUDA_TRY(cudaStreamSynchronize(s));

    cudaEvent_t start, stop;
    CUDA_TRY(cudaEventCreate(&start));
    CUDA_TRY(cudaEventCreate(&stop));
    double ms[64];
    if (reps > 64)
        reps = 64;
    for (int r = 0; r < reps; r++) {
        CUDA_TRY(cudaEventRecord(start, s));
        CUDA_TRY((cudaError_t)etap_bench_read_launch(buf, bytes, sink, blocks, block, s));
        CUDA_TRY(cudaEventRecord(stop, s));
        CUDA_TRY(cudaEventSynchronize(stop));
        float t = 0;
        CUDA_TRY(cudaEventElapsedTime(&t, start, stop));
        ms[r] = t;
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    /* A ceiling is the best rate the card gave: the fastest pass. The median moved between
     * 3950 and 4438 GB/s across runs of one day while etap's own times moved by 2%. */
    *gbps = (double)bytes / (bench_min(ms, reps) * 1e-3) * 1e-9;
    return 0;
}

int bench_cuda_read_ceiling(int reps, double *gbps, size_t *buffer_bytes)
{
    size_t free_bytes = 0, total = 0;
    CUDA_TRY(cudaMemGetInfo(&free_bytes, &total));
    size_t bytes = free_bytes / 4 < CEILING_MAX_BYTES ? free_bytes / 4 : CEILING_MAX_BYTES;
    bytes = bytes / (1 << 20) * (1 << 20);
    void *buf = NULL;
    unsigned *sink = NULL;
    cudaStream_t s = NULL;
    int rc = -1;
    cudaError_t e;
    if ((e = cudaMalloc(&buf, bytes)) != cudaSuccess) {
        fail("cudaMalloc (read ceiling buffer)", e);
        goto done;
    }
    if ((e = cudaMalloc((void **)&sink, sizeof *sink)) != cudaSuccess ||
        (e = cudaMemset(buf, 0x5a, bytes)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaDeviceSynchronize()) != cudaSuccess) {
        fail("read ceiling setup", e);
        goto done;
    }
    rc = read_ceiling_on(s, buf, bytes, sink, reps, gbps);
    *buffer_bytes = bytes;
done:
    if (s)
        cudaStreamDestroy(s);
    cudaFree(sink);
    cudaFree(buf);
    return rc;
}

/* ---- graph timing ------------------------------------------------------------------ */

int bench_cuda_time_graph(void *stream, int calls, int replays, bench_cuda_enqueue_fn fn,
                          void *ctx, double *ms_per_replay)
{
    cudaStream_t s = (cudaStream_t)stream;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaEvent_t *ev = calloc((size_t)replays + 1, sizeof *ev);
    int rc = -1, made = 0;
    cudaError_t e;
    if (!ev) {
        snprintf(error_message, sizeof error_message, "out of host memory for events");
        return -1;
    }
    /* Thread-local capture: only this thread's calls (etap's included) must be legal
     * inside a capture. */
    if ((e = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal)) != cudaSuccess) {
        fail("cudaStreamBeginCapture", e);
        goto done;
    }
    for (int i = 0; i < calls; i++) {
        if (fn(ctx, i, stream) != 0) {
            cudaStreamEndCapture(s, &graph);
            cudaGetLastError();
            rc = -2;
            goto done;
        }
    }
    if ((e = cudaStreamEndCapture(s, &graph)) != cudaSuccess) {
        fail("cudaStreamEndCapture (was an illegal call made during capture?)", e);
        goto done;
    }
    if ((e = cudaGraphInstantiate(&exec, graph, 0)) != cudaSuccess) {
        fail("cudaGraphInstantiate", e);
        goto done;
    }
    for (made = 0; made <= replays; made++)
        if ((e = cudaEventCreate(&ev[made])) != cudaSuccess) {
            fail("cudaEventCreate", e);
            goto done;
        }
    /* Warm-up (module loading, first touch), then one replay left running so that the
     * GPU is busy while the host queues the timed ones: no replay waits for the host. */
    if ((e = cudaGraphLaunch(exec, s)) != cudaSuccess ||
        (e = cudaStreamSynchronize(s)) != cudaSuccess) {
        fail("warm-up replay", e);
        goto done;
    }
    if ((e = cudaGraphLaunch(exec, s)) != cudaSuccess) {
        fail("cudaGraphLaunch", e);
        goto done;
    }
    if ((e = cudaEventRecord(ev[0], s)) != cudaSuccess) {
        fail("cudaEventRecord", e);
        goto done;
    }
    for (int r = 0; r < replays; r++) {
        if ((e = cudaGraphLaunch(exec, s)) != cudaSuccess ||
            (e = cudaEventRecord(ev[r + 1], s)) != cudaSuccess) {
            fail("cudaGraphLaunch", e);
            goto done;
        }
    }
    if ((e = cudaStreamSynchronize(s)) != cudaSuccess) {
        fail("timed replays", e);
        goto done;
    }
    for (int r = 0; r < replays; r++) {
        float t = 0;
        if ((e = cudaEventElapsedTime(&t, ev[r], ev[r + 1])) != cudaSuccess) {
            fail("cudaEventElapsedTime", e);
            goto done;
        }
        ms_per_replay[r] = t;
    }
    rc = 0;
done:
    for (int i = 0; i < made; i++)
        cudaEventDestroy(ev[i]);
    free(ev);
    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    return rc;
}
