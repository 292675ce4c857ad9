"""sgdx: smarter SGD for PyTorch, over sgdx's C++ library.

Optimizers (:mod:`sgdx.optim`), samplers (:mod:`sgdx.data`), exact per-sample
gradient norms (:class:`PerSampleGradients`, :func:`per_sample_norms`) and the
functional operators ``torch.ops.sgdx.*`` (:mod:`sgdx.ops`). Every rule is computed
by the C++ code the C++ API uses; this package only adapts it to PyTorch's Python API.
"""
import os as _os

import torch as _torch  # loads LibTorch before the extension links against it

_here = _os.path.dirname(__file__)
_lib = [f for f in _os.listdir(_here) if f.startswith("_C.") and f.endswith((".so", ".pyd"))]
if not _lib:
    raise ImportError(f"sgdx: the compiled extension sgdx._C is missing from {_here}; "
                      "install the package (pip install --no-build-isolation .) instead of importing the source tree")
# Registers the sgdx operators with the dispatcher (torch.ops.sgdx.*).
_torch.ops.load_library(_os.path.join(_here, _lib[0]))

from . import _C  # noqa: E402  (the same shared object: pybind11 classes)
from . import ops  # noqa: E402  (fake implementations for torch.compile)
from . import optim  # noqa: E402
from . import data  # noqa: E402
from . import dist  # noqa: E402
from .per_sample import PerSampleGradients, per_sample_norms  # noqa: E402

__version__ = "0.1.0"
with_cuda: bool = _C.with_cuda()

__all__ = ["optim", "data", "dist", "ops", "PerSampleGradients", "per_sample_norms", "with_cuda"]
