"""Triton Python backend: (negative, positive) probabilities in, label and its probability out."""

import numpy as np
import triton_python_backend_utils as pb_utils

LABELS = np.array(["negative", "positive"], dtype=object)


class TritonPythonModel:
    def initialize(self, args):
        pass

    def execute(self, requests):
        responses = []
        for request in requests:
            probs = pb_utils.get_input_tensor_by_name(request, "probabilities").as_numpy()
            best = probs.argmax(axis=1)
            label = LABELS[best].reshape(-1, 1)
            prob = probs[np.arange(len(best)), best].reshape(-1, 1).astype(np.float32)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("label", label), pb_utils.Tensor("probability", prob)]
                )
            )
        return responses
