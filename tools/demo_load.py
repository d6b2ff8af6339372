"""A burst of closed-loop clients against a TGI-compatible /generate (the gateway in `make demo`).

Prints what the clients saw (answers, errors, p50/p95 latency), with a line every few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp


async def burst(url: str, model: str, clients: int, seconds: float, max_new_tokens: int) -> list[float]:
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds
    body = {"inputs": "Tell me about the weather " * 4, "parameters": {"max_new_tokens": max_new_tokens}}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def client() -> None:
            nonlocal errors
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    async with session.post(url, json=body, headers={"X-Model": model}) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.monotonic() - t0)
                else:
                    errors += 1
                    await asyncio.sleep(0.5)

        async def progress() -> None:
            start = time.monotonic()
            while time.monotonic() < end:
                await asyncio.sleep(5)
                print(
                    f"  {time.monotonic() - start:4.0f}s  answered {len(latencies)}  errors {errors}",
                    flush=True,
                )

        await asyncio.gather(progress(), *(client() for _ in range(clients)))
    return latencies


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="e.g. http://127.0.0.1:18080/generate")
    p.add_argument("--model", required=True, help="sent as X-Model")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=40)
    p.add_argument("--max-new-tokens", type=int, default=120)
    args = p.parse_args()
    lat = asyncio.run(burst(args.url, args.model, args.clients, args.seconds, args.max_new_tokens))
    if not lat:
        print("  no answers")
        return 1
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    print(f"  {len(lat)} answers; client-side p50 {q[49]:.2f}s p95 {q[94]:.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
