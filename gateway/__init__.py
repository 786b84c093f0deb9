"""The gRPC gateway (`aisle serve`): the aisle.v1.Aisle API over the search and recommendation
pipelines (gateway/engine.py), with health, reflection, API keys, request logs and metrics.

API: protos/aisle/v1/aisle.proto (stubs in gateway/protos, made by tools/gen_protos.py);
server: gateway/server.py; client: gateway/client.py; reference: docs/api.md.
"""
