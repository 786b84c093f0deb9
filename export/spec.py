"""The one specification of the Triton model repository.

Every model, its tensors, batching, instances and ensemble wiring are declared here once;
``export.configs`` renders them to ``config.pbtxt`` for either target:

- ``portable``: ONNX models run by onnxruntime inside Python-backend models. This is what the
  tritonserver from the nvidia-pytriton wheel (Python backend only) runs, here and in tests.
- ``ngc``: the same ONNX files on NVIDIA's Triton container with the native ``onnxruntime_onnx``
  backend, a GPU instance group and optional TensorRT acceleration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.model_interfaces import (
    ANALYZE_SENTIMENT,
    CLASSIFY_PRODUCT,
    EMBED_TEXT,
    EMBEDDING_DIM,
    ENRICH_ITEM,
    QUERY_SUFFIX,
    RANK,
    WEIGHTS_FINGERPRINT,
    query_model,
)

Target = Literal["portable", "ngc"]
TARGETS: tuple[Target, ...] = ("portable", "ngc")
DType = Literal["STRING", "INT64", "FP32"]

# Longest input, in wordpiece tokens, for titles and queries: sentence-transformers' own
# max_seq_length for all-MiniLM-L6-v2, so the served embedding equals the library's.
TEXT_MAX_TOKENS = 256
# Longest accepted input in characters. Far above any title (Home Depot max 147) or review
# (Amazon max ~28k); anything longer is refused with an error rather than silently tokenised.
TEXT_MAX_CHARS = 32_768
# Most texts one client request may carry; the bad-input tests send more and expect an error.
REQUEST_MAX_BATCH = 128
# Rows the encoder's dynamic batcher may gather from several requests: room for 8 requests of 32.
ENCODER_MAX_BATCH = 256
# Rows per onnxruntime call after sorting a batch by length: on 2 cores, length-sorted batches
# of 64 ran 430 titles/s against 318 (16), 404 (32) and 351 (128) (/tmp speed probe, see bench/encoder.py).
ENCODER_BUCKET_ROWS = 64
# Per-call overhead of one onnxruntime run, in padded tokens, for cutting a sorted batch into
# buckets (export/backends/onnx_runner.length_buckets). Cutting at length jumps instead of every
# 64 rows took embed_text from 245/241 to 366/349 titles/s (c=8 x 32; onnxruntime in-process
# 379/368 in the same runs). Costs of 0, 20, 50 and 150 differed by less than run-to-run noise
# (283-393 titles/s), so a middle value.
ENCODER_CALL_COST_TOKENS = 50
# Rows per onnxruntime call of an int8 graph (export/quantize.py): one. Dynamic quantisation
# scales a call's activations by their range over the whole call, so a query's vector would
# depend on the queries batched with it: alone and in 64-row batches, 300 Home Depot queries'
# vectors differed by a cosine of 0.991 on average and 0.982 at worst. Alone, a query's vector
# is its own, and it pads to no other query's length.
INT8_BUCKET_ROWS = 1
# onnxruntime session settings of the gateway's per-call models (query_encoder, ranker) in the
# portable target. By default idle intra-op threads spin after every run; per call, in-process,
# with 5 ms between calls (/tmp probe, 2026-11-29): query encoder (9 tokens) 9.7 ms CPU for
# 2.4 ms wall, ranker (300 rows) 7.6 ms CPU for 1.4 ms wall; without spinning 4.5 and 2.4 ms CPU;
# with one thread 3.3 and 2.3 ms CPU. On 2 cores shared with Postgres and the gateway, CPU per
# call is what bounds Search's throughput (bench/gateway.py).
PER_CALL_SESSION = {"intra_op_spinning": "0", "intra_op_threads": "1"}
# The encoder settings of a model that only the gateway's interactive calls reach (the twins of
# core/model_interfaces.py): no queue delay and no queue policy (ModelSpec.expire_queued), one
# onnxruntime thread that does not spin (PER_CALL_SESSION).
INTERACTIVE = {"queue_delay_us": 0, "expire_queued": False, "per_call": True}


# CPU priority (nice) of the bulk encoders' Python-backend stubs in the portable target: on a
# CPU machine the refresh's encoding competes with the gateway's calls for the same cores. In a
# first refresh under 80.7 QPS of traffic (bench/soak.py, 2 cores, 2026-12-08), niced stubs gave
# a median per-minute p50 of 25 ms against 46 ms, and embedded 43,776 items in the 10 minutes
# against 38,400: serving takes the cores first and the refresh what it leaves. Both runs still
# failed calls in one or two bursts (docs/api.md). The ngc target's native backend runs them on
# the GPU.
BULK_NICE = 10


def runner_session(target: Target, per_call: bool) -> dict[str, str]:
    """The Python-backend runner's session settings (the native backend reads none): one
    non-spinning thread for the gateway's per-call models, a lower CPU priority for the bulk ones."""
    if target != "portable":
        return {}
    return dict(PER_CALL_SESSION) if per_call else {"cpu_nice": str(BULK_NICE)}


TOP_K_LABELS = 5


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: DType
    dims: tuple[int, ...]
    # Variable-length token inputs: lets the dynamic batcher group requests of different lengths.
    ragged: bool = False


@dataclass(frozen=True)
class Step:
    model: str
    # model tensor name -> ensemble tensor name
    inputs: dict[str, str]
    outputs: dict[str, str]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: Literal["python", "onnx", "ensemble"]
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int
    # python: module in export/backends/ that implements it; onnx: artifact that builds model.onnx.
    source: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    # Dynamic batching queue delay in microseconds; None disables dynamic batching.
    queue_delay_us: int | None = None
    # Reject a queued request once its client's timeout has passed (a REJECT queue policy): bulk
    # models need it, or abandoned refresh batches starve live ones (export/configs.py). Models on
    # the gateway's per-call path go without: in tritonserver 2.51 a model with any queue policy
    # left 48-89 of 2,000 sequential single-row calls waiting ~510 ms (the batcher thread's
    # default sleep; a missed wake-up), none without one (/tmp probe, encoder model, c=1), and
    # an abandoned query or ranker call costs only milliseconds.
    expire_queued: bool = True
    instances: int = 1
    steps: tuple[Step, ...] = ()
    version: int = 1
    # Extra files, by artifact name, placed beside model.py / model.onnx.
    files: tuple[str, ...] = ()
    # Models of the native backend (onnx) may run on the GPU in the ngc target.
    gpu: bool = False


TEXT = Tensor("text", "STRING", (1,))
INPUT_IDS = Tensor("input_ids", "INT64", (-1,), ragged=True)
ATTENTION_MASK = Tensor("attention_mask", "INT64", (-1,), ragged=True)
SENTENCE_EMBEDDING = Tensor("sentence_embedding", "FP32", (EMBEDDING_DIM,))


def tokenizer(name: str, max_tokens: int, target: Target, expire_queued: bool = True) -> ModelSpec:
    return ModelSpec(
        name=name,
        kind="python",
        source="tokenizer",
        inputs=(TEXT,),
        outputs=(Tensor("input_ids", "INT64", (-1,)), Tensor("attention_mask", "INT64", (-1,))),
        max_batch_size=ENCODER_MAX_BATCH,
        parameters={
            "max_tokens": str(max_tokens),
            "max_chars": str(TEXT_MAX_CHARS),
            # The native onnxruntime backend batches only requests of equal shape: rounding the
            # padded length up to a multiple of 16 makes equal shapes common on the GPU, where
            # the extra padding costs little. The Python-backend encoder sorts rows by length
            # itself, so the portable target pads to the longest row only.
            "pad_to_multiple_of": "16" if target == "ngc" else "1",
        },
        # Zero delay: take whatever is queued; tokenising is cheap next to encoding.
        queue_delay_us=0,
        expire_queued=expire_queued,
        files=("tokenizer.json",),
    )


def encoder(
    name: str,
    source: str,
    target: Target,
    outputs: tuple[Tensor, ...] = (SENTENCE_EMBEDDING,),
    # 2 ms: long enough for concurrent requests to meet in one batch, short next to a
    # 32-title request's ~80 ms encode (see bench/encoder.py for the measured choice).
    queue_delay_us: int = 2000,
    expire_queued: bool = True,
    per_call: bool = False,
    bucket_rows: int = ENCODER_BUCKET_ROWS,
) -> ModelSpec:
    """A transformer graph over token ids: the shared encoder and the adapted classifier encoders."""
    ragged = target == "portable"
    return ModelSpec(
        name=name,
        kind="onnx",
        source=source,
        inputs=(
            Tensor("input_ids", "INT64", (-1,), ragged=ragged),
            Tensor("attention_mask", "INT64", (-1,), ragged=ragged),
        ),
        outputs=outputs,
        max_batch_size=ENCODER_MAX_BATCH,
        parameters={
            "bucket_rows": str(bucket_rows),
            "bucket_call_cost_tokens": str(ENCODER_CALL_COST_TOKENS),
            "length_input": "attention_mask",
            **runner_session(target, per_call),
        },
        queue_delay_us=queue_delay_us,
        expire_queued=expire_queued,
        gpu=True,
    )


def postprocess(name: str, source: str, inputs, outputs, files=(), parameters=None, expire_queued: bool = True) -> ModelSpec:
    return ModelSpec(
        name=name,
        kind="python",
        source=source,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        max_batch_size=ENCODER_MAX_BATCH,
        queue_delay_us=0,
        expire_queued=expire_queued,
        files=tuple(files),
        parameters=parameters or {},
    )


def ensemble(name: str, inputs, outputs, steps, parameters=None) -> ModelSpec:
    return ModelSpec(
        name=name,
        kind="ensemble",
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        max_batch_size=REQUEST_MAX_BATCH,
        steps=tuple(steps),
        parameters=parameters or {},
    )


def served_identity(artifact: str) -> dict[str, str]:
    """The parameter by which the refresh knows which model made a stored prediction."""
    from export import artifacts

    return {WEIGHTS_FINGERPRINT: artifacts.served_fingerprint(artifact)}


# --- The repository ---------------------------------------------------------------------------

def repository(target: Target, include: frozenset[str] | None = None) -> list[ModelSpec]:
    """Every model of the repository for ``target``, composing models before ensembles.

    ``include`` limits it to the named artifacts' models (the encoder is always there); models
    whose trained weights are absent are left out by the caller through it.
    """
    from export import artifacts

    have = artifacts.available() if include is None else include
    query_source = query_encoder_source(have, target)
    models: list[ModelSpec] = [
        tokenizer("tokenizer", TEXT_MAX_TOKENS, target),
        # Search queries' own tokenizer, without the bulk models' queue policy: behind the shared
        # one, 93 of 5,700 query calls in bursts of four callers waited ~500 ms (Triton 2.51's
        # batcher thread missing its wake-up, see ModelSpec.expire_queued; /tmp probe,
        # 2026-12-07), and a Search whose embedding waits that long answers lexical-only.
        tokenizer("query_tokenizer", TEXT_MAX_TOKENS, target, expire_queued=False),
        encoder("encoder", "encoder", target),
        # Search queries on an instance of their own (core/model_interfaces.py): the encoder with
        # query-side adapters where they are trained (export/heads/query_encoder.py), else the
        # same graph as the items'.
        encoder("query_encoder", query_source, target, **INTERACTIVE,
                bucket_rows=INT8_BUCKET_ROWS if query_source.endswith("_int8") else ENCODER_BUCKET_ROWS),
    ]
    for name, tokenizer_name, encoder_name in (
        (EMBED_TEXT.model, "tokenizer", "encoder"),
        (query_model(EMBED_TEXT.model), "query_tokenizer", "query_encoder"),
    ):
        models.append(
            ensemble(
                name,
                inputs=(TEXT,),
                outputs=(Tensor("embedding", "FP32", (EMBEDDING_DIM,)),),
                steps=(
                    Step(tokenizer_name, {"text": "text"}, {"input_ids": "ids", "attention_mask": "mask"}),
                    Step(encoder_name, {"input_ids": "ids", "attention_mask": "mask"}, {"sentence_embedding": "embedding"}),
                ),
            )
        )
    if "product_classifier" in have:
        models += _product_classifier(target)
    if "sentiment" in have:
        models += _sentiment(target)
    if "ranker" in have:
        models.append(_ranker(target))
    return models


def query_encoder_source(have: frozenset[str], target: Target) -> str:
    """The artifact behind ``query_encoder``: the adapted query encoder where its adapters are
    trained, else the items' own graph. On CPU (portable) its int8 form: a query costs ~0.6
    instead of ~2.3 ms of onnxruntime CPU, for dense retrieval within 0.002 of fp32 on the 5,902
    judged Home Depot queries (export/quantize.py, docs/models.md). The ngc target keeps fp32:
    dynamic int8 quantisation is a CPU technique, and on the GPU a query is cheap (TensorRT,
    where enabled, picks its own precision)."""
    if "query_encoder" not in have:
        return "encoder"
    return "query_encoder_int8" if target == "portable" else "query_encoder"


def _label_outputs(heads: dict[str, int]) -> list[Tensor]:
    out: list[Tensor] = []
    for head_name in heads:
        out += [Tensor(head_name, "STRING", (TOP_K_LABELS,)), Tensor(f"{head_name}_prob", "FP32", (TOP_K_LABELS,))]
    return out


def _product_classifier(target: Target) -> list[ModelSpec]:
    from export.backends.classifier_postprocess import LEXICON_META, LEXICON_WEIGHTS
    from export.heads import classifier_lexicon
    from export.heads import product_classifier as pc

    sizes = {name: len(labels) for name, labels in pc.LABELS.items()}
    probs = [Tensor(f"{name}_probs", "FP32", (n,)) for name, n in sizes.items()]
    labels = _label_outputs(sizes)
    tokens = {"input_ids": "ids", "attention_mask": "mask"}

    def steps(tokenizer_name: str, suffix: str) -> tuple[Step, Step, Step]:
        return (
            Step(tokenizer_name, {"text": "text"}, tokens),
            Step("product_classifier" + suffix, tokens, {t.name: t.name for t in probs}),
            Step("product_classifier_postprocess" + suffix, {"text": "text", **{t.name: t.name for t in probs}},
                 {t.name: t.name for t in labels}),
        )

    def models(suffix: str, interactive: bool) -> list[ModelSpec]:
        return [
            encoder("product_classifier" + suffix, "product_classifier", target, tuple(probs),
                    **(INTERACTIVE if interactive else {})),
            # Averages the model's probabilities with the lexical model's, read from the name
            # (export/backends/classifier_postprocess.py).
            postprocess(
                "product_classifier_postprocess" + suffix,
                "classifier_postprocess",
                (*probs, TEXT),
                labels,
                files=("labels.json", LEXICON_WEIGHTS, LEXICON_META),
                parameters={"top_k": str(TOP_K_LABELS), "lexical_weight": str(classifier_lexicon.LEXICAL_WEIGHT)},
                expire_queued=not interactive,
            ),
        ]

    tokenize, classify, post_step = steps("tokenizer", "")
    # Enrichment tokenizes once and feeds the same ids to the shared encoder and the classifier.
    encode = Step("encoder", tokens, {"sentence_embedding": "embedding"})
    identity = served_identity("product_classifier")
    return [
        *models("", interactive=False),
        ensemble(CLASSIFY_PRODUCT.model, (TEXT,), labels, (tokenize, classify, post_step), identity),
        ensemble(
            ENRICH_ITEM.model,
            (TEXT,),
            [Tensor("embedding", "FP32", (EMBEDDING_DIM,)), *labels],
            (tokenize, encode, classify, post_step),
            identity,
        ),
        # The gateway's ClassifyProduct: the same graph on instances of its own (INTERACTIVE).
        *models(QUERY_SUFFIX, interactive=True),
        ensemble(query_model(CLASSIFY_PRODUCT.model), (TEXT,), labels, steps("query_tokenizer", QUERY_SUFFIX), identity),
    ]


def _sentiment(target: Target) -> list[ModelSpec]:
    from export.heads import sentiment, sentiment_lexicon

    probs = Tensor("probabilities", "FP32", (2,))
    outputs = (Tensor("label", "STRING", (1,)), Tensor("probability", "FP32", (1,)))
    tokens = {"input_ids": "ids", "attention_mask": "mask"}

    def pipeline(suffix: str, interactive: bool) -> list[ModelSpec]:
        return [
            tokenizer("review_tokenizer" + suffix, sentiment.MAX_LENGTH, target, expire_queued=not interactive),
            encoder("sentiment" + suffix, "sentiment", target, (probs,), **(INTERACTIVE if interactive else {})),
            # Averages the model's probabilities with the lexical model's, read from the text
            # (export/backends/sentiment_postprocess.py).
            postprocess("sentiment_postprocess" + suffix, "sentiment_postprocess", (probs, TEXT), outputs,
                        files=("lexicon.npy",),
                        parameters={"lexical_weight": str(sentiment_lexicon.LEXICAL_WEIGHT)},
                        expire_queued=not interactive),
            ensemble(
                ANALYZE_SENTIMENT.model + suffix,
                (TEXT,),
                outputs,
                (
                    Step("review_tokenizer" + suffix, {"text": "text"}, tokens),
                    Step("sentiment" + suffix, tokens, {"probabilities": "probabilities"}),
                    Step("sentiment_postprocess" + suffix, {"probabilities": "probabilities", "text": "text"},
                         {"label": "label", "probability": "probability"}),
                ),
                served_identity("sentiment"),
            ),
        ]

    # The gateway's AnalyzeReviews runs on instances of its own (INTERACTIVE), the refresh on the others.
    return [*pipeline("", interactive=False), *pipeline(QUERY_SUFFIX, interactive=True)]


def _ranker(target: Target) -> ModelSpec:
    from core.features import FEATURE_NAMES

    return ModelSpec(
        name=RANK.model,
        kind="onnx",
        source="ranker",
        inputs=(Tensor("features", "FP32", (len(FEATURE_NAMES),)),),
        outputs=(Tensor("score", "FP32", (1,)),),
        max_batch_size=1024,
        parameters=runner_session(target, per_call=True),
        queue_delay_us=0,
        expire_queued=False,
        gpu=False,
    )
