"""CPU torch tensors run on etap's CPU backend (bf16 included); skipped without torch."""

import pytest

torch = pytest.importorskip("torch")

import etap  # noqa: E402
from torch_reference import assert_close, make_inputs, ref_decode  # noqa: E402

CASES = [
    (2, 1, 16, 1, 64, [100, 0], False),
    (3, 2, 32, 2, 16, [40, 2, 65], True),
    (1, 4, 8, 1, 1, [9], True),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("b,s_q,h_q,h_kv,page,lens,causal", CASES)
def test_cpu_tensors_match_reference(dtype, b, s_q, h_q, h_kv, page, lens, causal):
    q, kv, table, seqlens = make_inputs(b, s_q, h_q, h_kv, page, lens, dtype, "cpu", seed=b)
    md, ns = etap.get_mla_metadata(seqlens, s_q * h_q // h_kv, h_kv)
    assert md.dtype == torch.int32 and md.device.type == "cpu"
    assert ns.untyped_storage().data_ptr() == md.untyped_storage().data_ptr()
    out, lse = etap.flash_mla_with_kvcache(q, kv, table, seqlens, 512, md, ns, causal=causal)
    assert out.dtype == dtype and out.device.type == "cpu"
    ref_out, ref_lse = ref_decode(q, kv, table, seqlens, causal)
    assert_close(out, lse, ref_out, ref_lse)


def test_cpu_tensor_errors():
    q, kv, table, seqlens = make_inputs(2, 1, 16, 1, 64, [10, 20], torch.bfloat16, "cpu")
    md, ns = etap.get_mla_metadata(seqlens, 16, 1)
    with pytest.raises(etap.EtapTypeError, match="q has dtype float32"):
        etap.flash_mla_with_kvcache(q.float(), kv, table, seqlens, 512, md, ns)
    with pytest.raises(etap.EtapError, match="same device"):
        etap.flash_mla_with_kvcache(q, kv, table.numpy(), seqlens, 512, md, ns)
    if hasattr(torch, "_neg_view"):  # a lazily negated view: its memory is not its values
        with pytest.raises(etap.EtapError, match="negated"):
            etap.flash_mla_with_kvcache(torch._neg_view(q), kv, table, seqlens, 512, md, ns)
