/* cuda_stub.c - the CUDA entry points of a build without CUDA: each says so. */
#include "internal.h"

#define NO_CUDA                                                                            \
    etap_fail(ETAP_ERR_NO_DEVICE, "this etap was built without the CUDA backend "          \
                                  "(rebuild with nvcc present and -DETAP_CUDA=ON)")

int etap_cuda_device_count(void) { return 0; }
etap_status etap_cuda_create(struct etap_handle_s *h) { (void)h; return NO_CUDA; }
void etap_cuda_destroy(struct etap_handle_s *h) { (void)h; }
int32_t etap_cuda_num_workers(const struct etap_handle_s *h, const etap_mla_shape *s)
{
    (void)h; (void)s;
    return 1;
}
etap_status etap_cuda_plan(const struct etap_handle_s *h, const etap_mla_shape *s,
                           const int32_t *lens, int32_t *plan, void *stream)
{
    (void)h; (void)s; (void)lens; (void)plan; (void)stream;
    return NO_CUDA;
}
etap_status etap_cuda_plan_check(const struct etap_handle_s *h, const int32_t *plan,
                                 int32_t *header_out, void *stream)
{
    (void)h; (void)plan; (void)header_out; (void)stream;
    return NO_CUDA;
}
etap_status etap_cuda_decode(const struct etap_handle_s *h, const etap_mla_args *a,
                             const int32_t *plan, void *ws, size_t ws_bytes, void *stream)
{
    (void)h; (void)a; (void)plan; (void)ws; (void)ws_bytes; (void)stream;
    return NO_CUDA;
}
