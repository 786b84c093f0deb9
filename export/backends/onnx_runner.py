"""Triton Python backend: runs ``model.onnx`` with onnxruntime (the ``portable`` target).

It batches across all requests Triton hands it. For token inputs (``length_input`` set) it
pools the rows of every request, sorts them by length and splits them into buckets of at most
``bucket_rows`` rows, each padded only to its longest row (``length_buckets``): padding is the
main cost of batching short titles, and sorting was worth 2x on 2 cores (bench/encoder.py).
"""

import json
import os

import numpy as np
import onnxruntime as ort

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton, by the tests of length_buckets
    pb_utils = None


def length_buckets(lengths, max_rows, call_cost_tokens):
    """Split rows sorted by ascending length into consecutive buckets, minimising the padded
    tokens computed plus ``call_cost_tokens`` per onnxruntime call; no bucket holds more than
    ``max_rows`` rows. Returns (start, end) index pairs into ``lengths``.

    Fixed-size buckets pad a short title to the longest title of its bucket; on a dynamic
    batch of 256 Home Depot titles they computed 28 % more tokens than a global sort did.
    Cutting where the length jumps keeps that padding small (dynamic programming, O(n x max_rows)).
    """
    n = len(lengths)
    best = [0] + [None] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        width = lengths[end - 1]
        for start in range(max(0, end - max_rows), end):
            cost = best[start] + (end - start) * width + call_cost_tokens
            if best[end] is None or cost < best[end]:
                best[end], cut[end] = cost, start
    spans, end = [], n
    while end > 0:
        spans.append((cut[end], end))
        end = cut[end]
    return spans[::-1]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        self.length_input = params.get("length_input") or None
        self.bucket_rows = int(params.get("bucket_rows", "64"))
        self.call_cost_tokens = int(params.get("bucket_call_cost_tokens", "0"))

        nice = int(params.get("cpu_nice", "0"))
        if nice:
            # Before the session: its thread pool's threads inherit this thread's priority.
            os.nice(nice)
        options = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0"))
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if params.get("intra_op_spinning") == "0":
            # Idle intra-op threads otherwise spin after every run: on the gateway's per-call
            # models that burned ~2/3 of their CPU (export/spec.py PER_CALL_SESSION).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=providers)

    def execute(self, requests):
        arrays = [
            {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs} for r in requests
        ]
        sizes = [len(a[self.inputs[0]]) for a in arrays]
        if self.length_input:
            results = self._run_sorted(arrays, sum(sizes))
        else:
            feed = {name: np.concatenate([a[name] for a in arrays]) for name in self.inputs}
            results = dict(zip(self.outputs, self.session.run(self.outputs, feed)))

        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, results[name][start : start + size]) for name in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def _run_sorted(self, arrays, total):
        rows = []  # (length, request, row)
        for n, a in enumerate(arrays):
            lengths = a[self.length_input].sum(axis=1)
            rows.extend((int(length), n, r) for r, length in enumerate(lengths))
        offsets = np.cumsum([0] + [len(a[self.inputs[0]]) for a in arrays])
        order = sorted(range(total), key=lambda i: rows[i][0])
        spans = length_buckets([rows[i][0] for i in order], self.bucket_rows, self.call_cost_tokens)
        results = {}
        for start, end in spans:
            bucket = order[start:end]
            width = max(1, rows[bucket[-1]][0])
            feed = {}
            for name in self.inputs:
                batch = np.zeros((len(bucket), width), dtype=np.int64)
                for j, i in enumerate(bucket):
                    _, n, r = rows[i]
                    src = arrays[n][name][r]
                    batch[j] = src[:width] if len(src) >= width else np.pad(src, (0, width - len(src)))
                feed[name] = batch
            out = self.session.run(self.outputs, feed)
            for name, values in zip(self.outputs, out):
                if name not in results:
                    results[name] = np.empty((total,) + values.shape[1:], dtype=values.dtype)
                index = [offsets[rows[i][1]] + rows[i][2] for i in bucket]
                results[name][index] = values
        return results
