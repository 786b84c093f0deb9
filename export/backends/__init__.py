"""Python-backend model code. Each module is a self-contained ``model.py`` that ``aisle export``
places in ``<model>/<version>/``: it may import only numpy, tokenizers, onnxruntime and
``triton_python_backend_utils``, because Triton's stub runs it outside this package."""
