"""Weight-only quantization: 8-, 4- (and 3-) bit group codes, read from / written to GGUF (Q8_0, Q4_0, Q4_1),
our safetensors layout and the HF GPTQ layout, and the layers that run them without dequantizing the whole model.

    codes.py   GroupCodes: the one canonical form (q, scale, zero per group); GGUF block decoding; RTN
    linear.py  QuantLinear / QuantEmbedding: our int8 kernel, PyTorch's int4 one, the dequantizing fallback
    cpu_kernel.py, int8_linear.cpp   the int8 kernel (llama.cpp's Q8_0 arithmetic), built once per machine
    float_linear.py, float_linear.cpp   FloatLinear / route(model): float32, bfloat16 and float16 projections
               on CPU at the memory's bandwidth (the default inference path), prompts through a GEMM
    ggml.py, ggml_linear.cpp   GGMLBlocks / GGMLLinear: GGUF K-quants, Q5_0, Q5_1 kept as the file's blocks,
               run by llama.cpp's arithmetic (q8_K / q8_0 / q8_1 activations, integer dot products)
    model.py   build_quantized(state, args): a Transformer from a state dict holding codes
    kquant_encode.py   Q2_K..Q6_K blocks as llama.cpp's reference quantizers write them (numpy, byte for byte)
    gptq.py    GPTQ on one matrix (Hessian, Cholesky, lazy batches, act-order); gptq_model.py: over a model, layer
               by layer; calibration.py: `quantize --method gptq`; gptq_layout.py: the HF GPTQ checkpoint layout
"""

from .codes import GGUF_TYPES, GroupCodes, from_gguf, quantize
from .float_linear import FloatEmbedding, FloatLinear, route
from .ggml import BLOCK_TYPES, GGMLBlocks, GGMLLinear
from .linear import QuantEmbedding, QuantLinear
from .model import build_quantized, is_quantized, weight_bytes

__all__ = ["BLOCK_TYPES", "FloatEmbedding", "FloatLinear", "GGMLBlocks", "GGMLLinear", "GGUF_TYPES", "GroupCodes",
           "QuantEmbedding", "QuantLinear", "build_quantized", "from_gguf", "is_quantized", "quantize", "route",
           "weight_bytes"]
