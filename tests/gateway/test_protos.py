"""The committed stubs are what tools/gen_protos.py makes from protos/, and import as documented."""

from __future__ import annotations

import importlib.util
import sys

from tests.gateway.conftest import REPO


def _gen_protos():
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "tools" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_protos", module)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_equal_a_fresh_generation(tmp_path):
    gen = _gen_protos()
    # Given the protos, when the stubs are generated into a temporary folder
    written = gen.generate(tmp_path / "protos")
    # then it makes the module, its type stub and the gRPC module under the package path
    names = {p.relative_to(tmp_path / "protos").as_posix() for p in written}
    assert {"aisle/v1/aisle_pb2.py", "aisle/v1/aisle_pb2.pyi", "aisle/v1/aisle_pb2_grpc.py", "aisle/v1/__init__.py"} <= names
    # and the committed stubs are byte for byte the same (regenerate with tools/gen_protos.py)
    assert gen.differences() == []


def test_a_changed_proto_is_detected_as_stale_stubs(tmp_path):
    gen = _gen_protos()
    # Given a copy of the protos with one more field
    protos = tmp_path / "protos"
    (protos / "aisle" / "v1").mkdir(parents=True)
    text = (REPO / "protos" / "aisle" / "v1" / "aisle.proto").read_text()
    changed = text.replace("message TrackEventResponse {}", "message TrackEventResponse { string note = 1; }")
    assert changed != text
    (protos / "aisle" / "v1" / "aisle.proto").write_text(changed)
    # then the committed stubs differ from what it generates
    assert gen.differences(proto_root=protos) == ["differs: aisle/v1/aisle_pb2.py", "differs: aisle/v1/aisle_pb2.pyi"]


def test_generated_imports_point_into_the_gateway_package():
    # The project has its own top-level `aisle` package (the CLI): the stubs must not import
    # `aisle.v1`, which would resolve there.
    grpc_module = (REPO / "gateway" / "protos" / "aisle" / "v1" / "aisle_pb2_grpc.py").read_text()
    assert "from gateway.protos.aisle.v1 import aisle_pb2" in grpc_module
    assert "from aisle.v1" not in grpc_module

    from gateway.protos.aisle.v1 import aisle_pb2, aisle_pb2_grpc

    assert aisle_pb2.DESCRIPTOR.package == "aisle.v1"
    assert aisle_pb2.DESCRIPTOR.name == "aisle/v1/aisle.proto"
    service = aisle_pb2.DESCRIPTOR.services_by_name["Aisle"]
    assert [m.name for m in service.methods] == [
        "Search", "Recommend", "SimilarItems", "ClassifyProduct", "AnalyzeReviews", "TrackEvent",
    ]
    assert hasattr(aisle_pb2_grpc, "AisleStub") and hasattr(aisle_pb2_grpc, "add_AisleServicer_to_server")
