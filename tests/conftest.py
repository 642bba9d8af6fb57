import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# The first call of an op compiles nothing but may load code; never fail a test on timing.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
# MINIMTL_FUZZ=1: many more examples per property test (issue 7's fuzz pass uses it).
settings.register_profile("fuzz", deadline=None, max_examples=2000, suppress_health_check=list(HealthCheck))
# MINIMTL_HYPOTHESIS=quick: 20 examples per property test (scripts/gpu_check.sh, which has minutes).
settings.register_profile("quick", deadline=None, max_examples=20, suppress_health_check=[HealthCheck.too_slow])
if os.environ.get("MINIMTL_FUZZ") == "1":
    settings.load_profile("fuzz")
else:
    settings.load_profile(os.environ.get("MINIMTL_HYPOTHESIS", "default"))

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

# Parametrise a test over the devices present; CUDA cases skip (only) where there is no GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]
