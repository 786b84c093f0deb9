"""aisle: e-commerce search and recommendation served by NVIDIA Triton Inference Server."""
