"""Triton Python backend: raw UTF-8 text in, BERT wordpiece ids and attention mask out.

Parameters (config.pbtxt): ``max_tokens`` (truncation, special tokens included), ``max_chars``
(longer texts are refused, not truncated silently) and ``pad_to_multiple_of``.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


class InputError(ValueError):
    pass


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_tokens = int(params["max_tokens"])
        self.max_chars = int(params["max_chars"])
        self.pad_multiple = max(1, int(params.get("pad_to_multiple_of", "1")))
        here = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer = Tokenizer.from_file(os.path.join(here, "tokenizer.json"))
        # The shipped tokenizer.json pads every text to 128: pad per batch instead, and truncate
        # exactly like sentence-transformers (special tokens count towards the limit).
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_tokens)

    def _texts(self, request):
        raw = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
        texts = []
        for i, item in enumerate(raw):
            if isinstance(item, str):
                text = item
            else:
                try:
                    text = bytes(item).decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(f"text[{i}] is not valid UTF-8 (byte {exc.start})") from None
            if not text.strip():
                raise InputError(f"text[{i}] is empty")
            if len(text) > self.max_chars:
                raise InputError(f"text[{i}] has {len(text)} characters; the limit is {self.max_chars}")
            texts.append(text)
        return texts

    def execute(self, requests):
        # Tokenise every valid request of the batch in one call (the library parallelises it).
        parsed, errors = [], {}
        for n, request in enumerate(requests):
            try:
                parsed.append(self._texts(request))
            except InputError as exc:
                errors[n] = str(exc)
                parsed.append([])
        flat = [t for texts in parsed for t in texts]
        encodings = self.tokenizer.encode_batch(flat) if flat else []

        responses, start = [], 0
        for n, texts in enumerate(parsed):
            if n in errors:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(errors[n], pb_utils.TritonError.INVALID_ARG)))
                continue
            rows = encodings[start : start + len(texts)]
            start += len(texts)
            longest = max(len(e.ids) for e in rows)
            width = -(-longest // self.pad_multiple) * self.pad_multiple
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, enc in enumerate(rows):
                ids[r, : len(enc.ids)] = enc.ids
                mask[r, : len(enc.ids)] = 1
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)]
                )
            )
        return responses
