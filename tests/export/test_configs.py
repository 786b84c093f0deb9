"""The generated config.pbtxt files: committed ones match the spec; the ngc target parses and
matches the spec with the native backend."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2 as pb

from core.settings import REPO_ROOT
from export import artifacts
from export.build import config_drift
from export.configs import model_config, parse, render
from export.spec import TARGETS, repository


def test_committed_portable_configs_match_the_spec():
    # given the committed model_repository/ and the spec
    # when comparing what the spec renders with what is committed
    drift = config_drift(REPO_ROOT / "model_repository", "portable")
    # then nothing differs (regenerate with `aisle export --configs-only` otherwise)
    assert drift == []


def test_every_config_round_trips_through_text_format():
    for target in TARGETS:
        for spec in repository(target):
            # given a rendered config
            text = render(spec, target)
            # when parsing it back
            parsed = parse(text)
            # then it is the same message
            assert parsed == model_config(spec, target), (target, spec.name)


def test_ngc_configs_use_the_native_onnxruntime_backend_on_gpu():
    # given the ngc target
    specs = {s.name: s for s in repository("ngc")}
    for name, spec in specs.items():
        cfg = parse(render(spec, "ngc", tensorrt=True))
        # then ONNX models are native onnxruntime on a GPU instance group with TensorRT
        if spec.kind == "onnx":
            assert cfg.platform == "onnxruntime_onnx" and not cfg.backend
            assert cfg.default_model_filename == "model.onnx"
            expected = pb.ModelInstanceGroup.KIND_GPU if spec.gpu else pb.ModelInstanceGroup.KIND_CPU
            assert cfg.instance_group[0].kind == expected
            if spec.gpu:
                accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator
                assert [a.name for a in accel] == ["tensorrt"]
            # the native backend batches only equal shapes: nothing is ragged there
            assert not any(i.allow_ragged_batch for i in cfg.input)
        elif spec.kind == "python":
            assert cfg.backend == "python"
            assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
        else:
            assert cfg.platform == "ensemble"
        # and the tensors are the spec's
        assert [i.name for i in cfg.input] == [t.name for t in spec.inputs]
        assert [o.name for o in cfg.output] == [t.name for t in spec.outputs]
        assert [list(i.dims) for i in cfg.input] == [list(t.dims) for t in spec.inputs]


def test_ensembles_wire_only_tensors_that_exist():
    for target in TARGETS:
        specs = {s.name: s for s in repository(target)}
        for spec in (s for s in specs.values() if s.kind == "ensemble"):
            # given an ensemble: every step reads tensors produced earlier or given by the client
            available = {t.name for t in spec.inputs}
            for step in spec.steps:
                model = specs[step.model]
                assert set(step.inputs) == {t.name for t in model.inputs}, (spec.name, step.model)
                assert set(step.inputs.values()) <= available, (spec.name, step.model)
                assert set(step.outputs) <= {t.name for t in model.outputs}, (spec.name, step.model)
                available |= set(step.outputs.values())
            # then every output of the ensemble is produced by some step
            assert {t.name for t in spec.outputs} <= available, spec.name
            # and a client request fits every model on the way
            assert all(specs[s.model].max_batch_size >= spec.max_batch_size for s in spec.steps)


def test_non_ensemble_models_warm_up_and_batch_dynamically():
    for spec in repository("portable"):
        if spec.kind == "ensemble":
            continue
        cfg = model_config(spec, "portable")
        assert len(cfg.model_warmup) == 1, spec.name
        assert cfg.HasField("dynamic_batching"), spec.name
        assert list(cfg.version_policy.specific.versions) == [spec.version]


def test_queries_have_an_encoder_instance_of_their_own():
    from core.model_interfaces import EMBED_TEXT, query_model

    # given the portable repository
    specs = {s.name: s for s in repository("portable")}
    # then the query twin of embed_text runs an encoder of its own, which refresh batches never reach
    twin = specs[query_model(EMBED_TEXT.model)]
    base = specs[EMBED_TEXT.model]
    assert [step.model for step in twin.steps] == ["query_tokenizer", "query_encoder"]
    assert [step.model for step in base.steps] == ["tokenizer", "encoder"]
    assert specs["encoder"].source == "encoder"
    # which carries the query-side adapters where they are trained, else the items' own graph
    # (int8 on CPU, fp32 for the GPU)
    trained = "query_encoder" in artifacts.available()
    assert specs["query_encoder"].source == ("query_encoder_int8" if trained else "encoder")
    ngc = {s.name: s for s in repository("ngc")}
    assert ngc["query_encoder"].source == ("query_encoder" if trained else "encoder")
    # one query per int8 call: dynamic quantisation scales a call's activations together
    assert specs["query_encoder"].parameters["bucket_rows"] == ("1" if trained else "64")
    without = {s.name: s for s in repository("portable", include=frozenset({"encoder"}))}
    assert without["query_encoder"].source == "encoder"
    # and a query is not held back waiting for others to batch with
    assert specs["query_encoder"].queue_delay_us == 0


def test_the_gateways_classify_and_sentiment_calls_have_twins_of_their_own():
    from core.model_interfaces import ANALYZE_SENTIMENT, CLASSIFY_PRODUCT, query_model

    # given the portable repository with both heads trained
    if not {"product_classifier", "sentiment"} <= artifacts.available():
        pytest.skip("the classifier and sentiment heads are not committed")
    specs = {s.name: s for s in repository("portable")}
    # then each interactive twin runs the same graphs on models no refresh ensemble names
    twins = {
        query_model(CLASSIFY_PRODUCT.model): ["query_tokenizer", "product_classifier_query", "product_classifier_postprocess_query"],
        query_model(ANALYZE_SENTIMENT.model): ["review_tokenizer_query", "sentiment_query", "sentiment_postprocess_query"],
    }
    bulk = {step.model for spec in specs.values() if spec.kind == "ensemble" and spec.name not in twins
            and not spec.name.endswith("_query") for step in spec.steps}
    for twin, models in twins.items():
        assert [step.model for step in specs[twin].steps] == models
        assert not bulk & set(models), twin
    assert specs["product_classifier_query"].source == specs["product_classifier"].source
    assert specs["sentiment_query"].source == specs["sentiment"].source
    assert specs["sentiment_query"].outputs == specs["sentiment"].outputs


def test_only_bulk_models_reject_requests_that_outwaited_their_timeout():
    from core.model_interfaces import RANK

    # given the portable repository
    configs = {s.name: model_config(s, "portable") for s in repository("portable") if s.kind != "ensemble"}
    # then the gateway's per-call models carry no queue policy (in tritonserver 2.51 any policy
    # made ~2 % of lone calls wait ~510 ms for the batcher thread)
    interactive = ["query_tokenizer", "query_encoder", RANK.model]
    if "product_classifier" in artifacts.available():
        interactive += ["product_classifier_query", "product_classifier_postprocess_query"]
    if "sentiment" in artifacts.available():
        interactive += ["review_tokenizer_query", "sentiment_query", "sentiment_postprocess_query"]
    for name in interactive:
        assert not configs[name].dynamic_batching.HasField("default_queue_policy"), name
    # and the models refresh batches reach reject requests whose client gave up
    for name in ("tokenizer", "encoder"):
        policy = configs[name].dynamic_batching.default_queue_policy
        assert policy.timeout_action == pb.ModelQueuePolicy.REJECT, name
        assert policy.allow_timeout_override and policy.default_timeout_microseconds > 0, name


def test_per_call_models_run_one_thread_that_does_not_spin_on_the_portable_target_only():
    from core.model_interfaces import RANK

    # given both targets' repositories
    portable = {s.name: model_config(s, "portable") for s in repository("portable") if s.kind != "ensemble"}
    ngc = {s.name: model_config(s, "ngc") for s in repository("ngc") if s.kind != "ensemble"}
    # then the gateway's per-call models run onnxruntime on one thread without spinning (idle
    # spinning took ~2/3 of their CPU on two shared cores)
    for name in ("query_encoder", RANK.model):
        params = portable[name].parameters
        assert params["intra_op_spinning"].string_value == "0", name
        assert params["intra_op_threads"].string_value == "1", name
    # while the bulk encoder keeps onnxruntime's defaults, and the native backend's configs
    # carry none of these Python-runner settings
    assert "intra_op_spinning" not in portable["encoder"].parameters
    for name in ("query_encoder", RANK.model):
        assert "intra_op_spinning" not in ngc[name].parameters, name


def test_sentiment_answers_average_the_model_with_the_lexicon_on_both_targets():
    from export.heads import sentiment_lexicon

    if "sentiment" not in artifacts.available():
        pytest.skip("the sentiment head is not committed")
    for target in TARGETS:
        specs = {s.name: s for s in repository(target)}
        for suffix in ("", "_query"):
            # given the sentiment pipeline and its interactive twin
            post = specs["sentiment_postprocess" + suffix]
            last = specs["analyze_sentiment" + suffix].steps[-1]
            # then its last step reads the review text beside the model's probabilities, and
            # ships the committed lexicon with the weight training reported on
            assert last.model == post.name and last.inputs == {"probabilities": "probabilities", "text": "text"}
            assert [t.name for t in post.inputs] == ["probabilities", "text"]
            assert post.files == ("lexicon.npy",)
            assert post.parameters["lexical_weight"] == str(sentiment_lexicon.LEXICAL_WEIGHT)


def test_classifier_answers_average_the_model_with_the_lexicon_on_both_targets():
    from export.heads import classifier_lexicon

    if "product_classifier" not in artifacts.available():
        pytest.skip("the product classifier is not committed")
    for target in TARGETS:
        specs = {s.name: s for s in repository(target)}
        # given the refresh's two classifier pipelines and the gateway's twin
        for ensemble_name, suffix in (("classify_product", ""), ("enrich_item", ""), ("classify_product_query", "_query")):
            post = specs["product_classifier_postprocess" + suffix]
            last = specs[ensemble_name].steps[-1]
            # then the last step reads the product name beside the model's probabilities, and
            # ships the committed lexicon with the weight training reported on
            assert last.model == post.name
            assert last.inputs == {"text": "text", "department_probs": "department_probs", "aisle_probs": "aisle_probs"}
            assert [t.name for t in post.inputs] == ["department_probs", "aisle_probs", "text"]
            assert post.files == ("labels.json", "aisle_lexicon.npy", "aisle_lexicon.json")
            assert post.parameters["lexical_weight"] == str(classifier_lexicon.LEXICAL_WEIGHT)


def test_the_classify_and_sentiment_ensembles_name_the_model_their_answers_come_from():
    from core.model_interfaces import WEIGHTS_FINGERPRINT

    if not {"product_classifier", "sentiment"} <= artifacts.available():
        pytest.skip("the classifier and sentiment heads are not committed")
    classifier, sentiment = artifacts.served_fingerprint("product_classifier"), artifacts.served_fingerprint("sentiment")
    for target in TARGETS:
        specs = {s.name: s for s in repository(target)}
        # given the ensembles whose answers the refresh stores
        # then each names the fingerprint of its head's weights and post-processing, which the
        # workers stamp on every prediction (workers/jobs/served_model.py)
        for name in ("classify_product", "enrich_item", "classify_product_query"):
            assert specs[name].parameters == {WEIGHTS_FINGERPRINT: classifier}, name
        for name in ("analyze_sentiment", "analyze_sentiment_query"):
            assert specs[name].parameters == {WEIGHTS_FINGERPRINT: sentiment}, name
        # and it is rendered into the config Triton serves
        assert WEIGHTS_FINGERPRINT in model_config(specs["classify_product"], target).parameters
    assert classifier != sentiment and len(classifier) == 16


def test_bulk_encoders_yield_the_cpu_to_the_gateways_calls_on_the_portable_target_only():
    from export.spec import BULK_NICE

    # given both targets' repositories
    portable = {s.name: model_config(s, "portable") for s in repository("portable") if s.kind != "ensemble"}
    ngc = {s.name: model_config(s, "ngc") for s in repository("ngc") if s.kind != "ensemble"}
    # then the refresh's encoders run at a lower CPU priority on the portable target ...
    bulk = [n for n in ("encoder", "product_classifier", "sentiment") if n in portable]
    assert "encoder" in bulk
    for name in bulk:
        assert portable[name].parameters["cpu_nice"].string_value == str(BULK_NICE), name
    # ... the gateway's per-call models at the default one, and the native backend carries no such setting
    for name in portable:
        if name.endswith("_query") or name in ("query_encoder", "ranker"):
            assert "cpu_nice" not in portable[name].parameters, name
    assert not any("cpu_nice" in config.parameters for config in ngc.values())
