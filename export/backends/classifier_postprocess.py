"""Triton Python backend: class probabilities in, top-k label names with probabilities out.

``labels.json`` beside this file maps each ``<head>_probs`` input to its label list:
``{"department": [...], "aisle": [...]}`` gives outputs ``department``/``department_prob`` and
``aisle``/``aisle_prob``, each ``top_k`` wide, best first.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.top_k = int(params["top_k"])
        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "labels.json"), encoding="utf-8") as f:
            self.labels = {head: np.array(names, dtype=object) for head, names in json.load(f).items()}

    def execute(self, requests):
        responses = []
        for request in requests:
            tensors = []
            for head, names in self.labels.items():
                probs = pb_utils.get_input_tensor_by_name(request, f"{head}_probs").as_numpy()
                k = min(self.top_k, probs.shape[1])
                top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
                tensors.append(pb_utils.Tensor(head, names[top]))
                tensors.append(pb_utils.Tensor(f"{head}_prob", np.take_along_axis(probs, top, axis=1)))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
