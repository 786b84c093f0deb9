"""Classifier heads served next to the shared MiniLM encoder: product categories and review sentiment.

Each model module exposes ``train`` (deterministic, writes small weights) and ``to_onnx`` (builds the
graph Triton serves), plus constants for the ONNX tensor names, label order and tokenizer length.
"""
