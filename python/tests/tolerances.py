"""FlashMLA's tolerances, as in tests/test_util.h (no numpy or torch needed here)."""

OUT_ABS_TOL = 8e-4
OUT_REL_TOL = 2.01 / 128.0
OUT_COS_TOL = 5e-6
LSE_ABS_TOL = 1e-6
LSE_REL_TOL = 8.01 / 65536.0
