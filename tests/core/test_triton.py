"""The gateway's Triton client keeps its deadline without cancelling calls on Triton."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from core.triton import MIN_CALL_S, AsyncTritonClient

TITLES = [f"cordless drill {n} with two batteries and charger" for n in range(128)]


def test_a_budget_too_small_for_any_model_sends_nothing(triton_url):
    async def run():
        client = AsyncTritonClient(triton_url)
        try:
            t = time.perf_counter()
            with pytest.raises(asyncio.TimeoutError):
                await client.embed(["drill"], timeout_s=MIN_CALL_S / 2)
            return time.perf_counter() - t
        finally:
            await client.close()

    assert asyncio.run(run()) < 0.01


def test_calls_past_their_budget_return_in_time_and_triton_keeps_serving(triton_url):
    async def run():
        client = AsyncTritonClient(triton_url)
        try:
            # Given 32 concurrent calls of 128 titles, each with a 50 ms budget (far less than
            # Triton needs for all of them on two cores)
            async def one():
                t = time.perf_counter()
                try:
                    await client.embed(TITLES, timeout_s=0.05)
                    outcome = "answered"
                except asyncio.TimeoutError:
                    outcome = "late"
                return outcome, time.perf_counter() - t

            results = await asyncio.gather(*(one() for _ in range(32)))
            # then each caller is free by its budget (plus scheduling slack), most of them late
            assert max(elapsed for _, elapsed in results) < 0.5, results
            assert sum(outcome == "late" for outcome, _ in results) >= 16
            # and Triton, left to finish or reject the abandoned calls, answers the next one
            vectors = await client.embed(["cordless drill"], timeout_s=30)
            assert vectors.shape == (1, 384) and np.isclose(np.linalg.norm(vectors[0]), 1.0, atol=1e-3)
            assert await client.ready()
        finally:
            await client.close()

    asyncio.run(run())
