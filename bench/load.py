"""Load test of the API (not part of pytest): mixed query / stream / ingest traffic from many concurrent
clients, then the same with one client, so the effect of batching shows as a ratio.

Run from the repository root: `python -m bench.load` starts its own server (a fresh data dir, SQuAD
paragraphs from ../shared/data ingested through the API, or the docs/ folder when that is absent) on a
loopback port; `--url` points it at a running server instead (with `--api-key` when it requires one), and
each `--replica` at another replica of that service: the concurrent phase then runs again, its clients spread
over all replicas, and the ratio to one replica is printed.

Each client loops until the phase ends, picking an operation by weight: `query` (JSON answer), `stream`
(SSE; time to first text, and whether the `done` event arrived) or `ingest` (one small new file). A 429 is
counted, and its Retry-After honoured; it is the server protecting itself, not a failure. A 5xx, a
transport error or a stream that ends without `done` is a failure, and makes the exit status 1.

Prints the hardware, the git revision, the server's settings, and a markdown table per phase: requests,
429s, failures, dropped streams, latency p50/p95/p99 per operation, TTFT p50/p95, answers/s and generated
tokens/s; then the throughput ratio of the concurrent phase over the single-client one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.machine import cpu_name, git_revision, load_average

ROOT = Path(__file__).resolve().parents[1]
SQUAD = ROOT.parent / "shared" / "data" / "squad" / "squad-v1.1-dev-a.json"
FALLBACK_QUESTIONS = [
    "How are deleted documents kept out of answers?",
    "Which embedding model is the default?",
    "How do I run the tests?",
    "Where are the settings read?",
    "What does the chat page show?",
]


@dataclass
class Phase:
    clients: int
    replicas: int = 1
    seconds: float = 0.0
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    ttft: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    dropped_streams: int = 0
    answers: int = 0
    tokens: int = 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def hardware() -> str:
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, load average {load_average()} at start"


def corpus(limit: int) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Files to ingest and questions to ask: SQuAD paragraphs and their questions, else the docs."""
    if SQUAD.exists():
        files, questions = [], []
        for article in json.loads(SQUAD.read_text())["data"]:
            for number, paragraph in enumerate(article["paragraphs"]):
                if len(files) < limit:
                    files.append((f"{article['title']}-{number}.txt", paragraph["context"].encode()))
                    questions.extend(qa["question"] for qa in paragraph["qas"])
        return files, questions
    docs = sorted((ROOT / "docs").glob("*.md"))
    return [(path.name, path.read_bytes()) for path in docs], FALLBACK_QUESTIONS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(data_dir: Path, max_tokens: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "ARCHIVIST_DATA_DIR": str(data_dir),
        "ARCHIVIST_MAX_NEW_TOKENS": str(max_tokens),
        "ARCHIVIST_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if server.poll() is not None:
            raise SystemExit("the API server exited while starting")
        if time.monotonic() > deadline:
            server.terminate()
            raise SystemExit("the API server did not become ready in 10 minutes")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(1)


def ingest(url: str, headers: dict[str, str], files: list[tuple[str, bytes]], collection: str) -> None:
    with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
        for start in range(0, len(files), 50):
            batch = [("files", item) for item in files[start : start + 50]]
            job = http.post("/v1/documents", files=batch, data={"collection": collection}).json()
            while job["state"] in ("queued", "running"):
                time.sleep(0.5)
                job = http.get(f"/v1/jobs/{job['id']}").json()
            if job["state"] != "done":
                raise SystemExit(f"ingest job failed: {job.get('error')}")


class Client:
    def __init__(self, http: httpx.AsyncClient, phase: Phase, args: argparse.Namespace, questions: list[str]):
        self.http, self.phase, self.args, self.questions = http, phase, args, questions
        self.random = random.Random()

    def body(self) -> dict[str, object]:
        question = self.random.choice(self.questions)
        return {"question": question, "collection": self.args.collection, "max_tokens": self.args.max_tokens}

    def record(self, operation: str, status: int, seconds: float) -> bool:
        """True when the request succeeded; a 429 makes the client wait as told."""
        self.phase.statuses[f"{status // 100}xx" if status != 429 else "429"] += 1
        if status == 429:
            return False
        if status >= 500:
            self.phase.failures.append(f"{operation}: HTTP {status}")
            return False
        self.phase.latency[operation].append(seconds)
        return status < 400

    async def query(self) -> float:
        started = time.perf_counter()
        response = await self.http.post("/v1/query", json=self.body())
        if self.record("query", response.status_code, time.perf_counter() - started):
            usage = response.json()["usage"]
            self.phase.answers += 1
            self.phase.tokens += usage["completion_tokens"]
        return float(response.headers.get("retry-after", 0)) if response.status_code == 429 else 0.0

    async def stream(self) -> float:
        started = time.perf_counter()
        first: float | None = None
        done: dict[str, object] | None = None
        async with self.http.stream("POST", "/v1/query", json={**self.body(), "stream": True}) as response:
            if response.status_code != 200:
                await response.aread()
                self.record("stream", response.status_code, time.perf_counter() - started)
                return float(response.headers.get("retry-after", 0)) if response.status_code == 429 else 0.0
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    if event == "delta" and first is None:
                        first = time.perf_counter()
                    elif event == "done":
                        done = json.loads(line.removeprefix("data: "))
                    elif event == "error":
                        self.phase.failures.append(f"stream error event: {line}")
        seconds = time.perf_counter() - started
        if done is None:
            self.phase.dropped_streams += 1
            self.phase.failures.append("stream ended without its done event")
            return 0.0
        self.record("stream", 200, seconds)
        self.phase.ttft.append((first or time.perf_counter()) - started)
        self.phase.answers += 1
        self.phase.tokens += int(done["usage"]["completion_tokens"])  # type: ignore[index]
        return 0.0

    async def ingest(self) -> float:
        name = f"load-{self.random.getrandbits(64):016x}.txt"
        text = f"Load test note {name}: the courier delivered {self.random.randint(1, 999)} parcels today."
        started = time.perf_counter()
        files = {"file": (name, text.encode())}
        response = await self.http.post(
            "/v1/documents", files=files, data={"collection": self.args.collection}
        )
        self.record("ingest", response.status_code, time.perf_counter() - started)
        return float(response.headers.get("retry-after", 0)) if response.status_code == 429 else 0.0

    async def run(self, until: float) -> None:
        operations = {"query": self.query, "stream": self.stream, "ingest": self.ingest}
        names = list(self.args.mix)
        weights = [self.args.mix[name] for name in names]
        while time.monotonic() < until:
            operation = self.random.choices(names, weights)[0]
            try:
                wait = await operations[operation]()
            except httpx.HTTPError as error:
                self.phase.failures.append(f"{operation}: {type(error).__name__}: {error}")
                wait = 1.0
            if wait:
                await asyncio.sleep(min(wait, max(0.0, until - time.monotonic())))


async def run_phase(urls: list[str], headers: dict[str, str], args: argparse.Namespace, questions: list[str],
                    clients: int, seconds: float) -> Phase:  # fmt: skip
    """`clients` clients for `seconds`, spread round-robin over `urls` (replicas of one service)."""
    phase = Phase(clients, replicas=len(urls))
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    timeout = httpx.Timeout(args.request_timeout, connect=30)
    https = [httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits) for url in urls]
    try:
        started = time.monotonic()
        until = started + seconds
        await asyncio.gather(
            *(Client(https[n % len(https)], phase, args, questions).run(until) for n in range(clients))
        )
        phase.seconds = time.monotonic() - started  # includes finishing the requests in flight at the end
    finally:
        for http in https:
            await http.aclose()
    return phase


def report(phase: Phase) -> None:
    print(f"\n### {phase.clients} client(s) over {phase.replicas} replica(s), {phase.seconds:.0f} s\n")
    total = sum(phase.statuses.values())
    print(f"requests {total}: " + ", ".join(f"{k} {v}" for k, v in sorted(phase.statuses.items())))
    print(f"failures {len(phase.failures)} (5xx, transport errors, dropped streams), dropped streams "
          f"{phase.dropped_streams}\n")  # fmt: skip
    print("| operation | n | p50 s | p95 s | p99 s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for operation, values in sorted(phase.latency.items()):
        p50, p95, p99 = (percentile(values, q) for q in (50, 95, 99))
        print(f"| {operation} | {len(values)} | {p50:.3f} | {p95:.3f} | {p99:.3f} |")
    if phase.ttft:
        print(f"| stream TTFT | {len(phase.ttft)} | {percentile(phase.ttft, 50):.3f} | "
              f"{percentile(phase.ttft, 95):.3f} | {percentile(phase.ttft, 99):.3f} |")  # fmt: skip
    answers, tokens = phase.answers / phase.seconds, phase.tokens / phase.seconds
    print(f"\nanswers/s {answers:.3f}, generated tokens/s {tokens:.1f}")
    for failure in phase.failures[:10]:
        print(f"- {failure}")


def print_ratio(label: str, phase: Phase, baseline: Phase) -> None:
    if phase.answers and baseline.answers:
        answers = (phase.answers / phase.seconds) / (baseline.answers / baseline.seconds)
        tokens = (phase.tokens / phase.seconds) / max(baseline.tokens / baseline.seconds, 1e-9)
        print(f"\n{label}: answers/s ×{answers:.2f}, generated tokens/s ×{tokens:.2f}")


def parse_mix(text: str) -> dict[str, float]:
    mix = {name: float(weight) for name, weight in (part.split("=") for part in text.split(","))}
    if not set(mix) <= {"query", "stream", "ingest"} or not any(mix.values()):
        raise argparse.ArgumentTypeError(
            "mix names are query, stream and ingest, e.g. query=3,stream=6,ingest=1"
        )
    return mix


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server; default: start one on a loopback port")
    parser.add_argument(
        "--replica",
        action="append",
        default=[],
        help="another replica of the --url service (repeatable): the concurrent phase again, over all",
    )
    parser.add_argument("--api-key", default=os.environ.get("ARCHIVIST_API_KEY"))
    parser.add_argument("--collection", default="load")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120, help="length of the concurrent phase")
    parser.add_argument("--single-seconds", type=float, default=60, help="length of the one-client phase")
    parser.add_argument("--mix", type=parse_mix, default=parse_mix("query=3,stream=6,ingest=1"))
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--documents", type=int, default=200, help="paragraphs to ingest before the test")
    parser.add_argument("--request-timeout", type=float, default=600)
    args = parser.parse_args()

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    files, questions = corpus(args.documents)
    server = None
    with tempfile.TemporaryDirectory(prefix="archivist-load-") as data_dir:
        if args.url:
            url = args.url.rstrip("/")
        else:
            server, url = start_server(Path(data_dir), args.max_tokens)
        try:
            print(f"hardware: {hardware()}")
            print(f"revision: {git_revision()}; server {url}; mix {args.mix}; max_tokens {args.max_tokens}; "
                  f"{len(files)} documents, {len(questions)} questions")  # fmt: skip
            started = time.perf_counter()
            ingest(url, headers, files, args.collection)
            print(f"ingested {len(files)} documents in {time.perf_counter() - started:.1f} s")
            single = asyncio.run(run_phase([url], headers, args, questions, 1, args.single_seconds))
            report(single)
            many = asyncio.run(run_phase([url], headers, args, questions, args.clients, args.seconds))
            report(many)
            print_ratio(f"{args.clients} clients vs 1", many, single)
            phases = [single, many]
            if args.replica:
                urls = [url, *(replica.rstrip("/") for replica in args.replica)]
                spread = asyncio.run(run_phase(urls, headers, args, questions, args.clients, args.seconds))
                report(spread)
                print_ratio(f"{args.clients} clients over {len(urls)} replicas vs over 1", spread, many)
                phases.append(spread)
            metrics = httpx.get(f"{url}/metrics", headers=headers, timeout=30).text
            cache = [
                line for line in metrics.splitlines() if line.startswith("archivist_answer_cache_hit_rate ")
            ]
            print("answer cache hit rate:", cache[0].split()[-1] if cache else "n/a")
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=60)
    raise SystemExit(1 if any(phase.failures for phase in phases) else 0)


if __name__ == "__main__":
    main()
