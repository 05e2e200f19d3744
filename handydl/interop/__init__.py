"""Bridges to the frameworks people already use, each optional and imported
lazily: PyTorch (:func:`to_torch`, :func:`from_torch`) and ONNX
(:func:`to_onnx`).  safetensors checkpoints are :func:`handydl.checkpoint.save`
with a ``.safetensors`` path (NumPy only, no package needed)."""
from .pytorch import FROM_TORCH, TO_TORCH, from_torch, to_torch  # noqa: F401
from .onnx_export import TO_ONNX, to_onnx  # noqa: F401,E402
