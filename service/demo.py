"""``progress-relay demo``: simulated brand diagnoses against a running relay.

Each execution goes the way a real diagnosis does: it is queued, queries
several AI platforms one after the other (a ``progress`` and a ``result``
per platform, and now and then a platform time-out reported as a
recoverable ``error`` followed by a successful retry), analyses the answers,
writes the report, and ends with ``complete`` carrying the report object.

It publishes through :class:`~service.publisher.RelayPublisher`, exactly as
the scheduler would, and prints for each execution a subscriber token and
ready-to-paste commands to watch it by WebSocket, SSE and polling. History
is replayed, so they can be pasted at any time, even after the end.

:func:`simulate` plays the same script inside a running service; the demo
page's "start" button uses it (development mode only).
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

from .events import parse_draft
from .publisher import PublishError, RelayPublisher

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["PLATFORMS", "Step", "diagnosis_script", "execution_ids", "run", "simulate"]

#: (id, display name) of the AI platforms a diagnosis asks.
PLATFORMS: tuple[tuple[str, str], ...] = (
    ("wenxin", "文心一言"),
    ("tongyi", "通义千问"),
    ("kimi", "Kimi"),
    ("doubao", "豆包"),
    ("deepseek", "DeepSeek"),
)
#: Chance that a platform times out once before answering.
TIMEOUT_CHANCE = 0.2
BRAND = "示例品牌"
QUESTION = f"{BRAND}的产品质量和口碑怎么样？"


@dataclass(frozen=True, slots=True)
class Step:
    """One event to publish, after ``pause`` times the pace."""

    event: str
    data: dict[str, Any]
    pause: float = 1.0


def _progress(progress: int, stage: str, status_text: str, status: str = "processing", pause: float = 1.0) -> Step:
    return Step("progress", {"progress": progress, "stage": stage, "status": status, "status_text": status_text}, pause)


def diagnosis_script(
    execution_id: str, seed: int | str | None = None, timeout_chance: float = TIMEOUT_CHANCE
) -> list[Step]:
    """The events of one simulated diagnosis (the same ones for the same seed)."""
    rng = random.Random(execution_id if seed is None else f"{seed}:{execution_id}")
    n = len(PLATFORMS)
    steps = [
        _progress(0, "queued", "诊断任务已排队，等待调度", status="queued", pause=0.5),
        _progress(5, "ai_fetching", f"开始向 {n} 个 AI 平台提问：{QUESTION}"),
    ]
    outcomes: list[dict[str, Any]] = []
    for i, (platform_id, name) in enumerate(PLATFORMS):
        progress = 10 + i * 60 // n
        steps.append(_progress(progress, "ai_fetching", f"正在查询{name}（{i + 1}/{n}）"))
        latency = rng.randint(800, 6000)
        if rng.random() < timeout_chance:
            steps.append(
                Step(
                    "error",
                    {
                        "error": f"{name}响应超时，正在重试",
                        "error_type": "platform_timeout",
                        "error_details": {
                            "platform": platform_id,
                            "platform_name": name,
                            "timeout_s": 30,
                            "attempt": 1,
                        },
                        "recoverable": True,
                    },
                    pause=1.5,
                )
            )
            latency += 30000
        mentioned = rng.random() < 0.8
        outcome = {
            "platform": platform_id,
            "platform_name": name,
            "question": QUESTION,
            "mentioned": mentioned,
            "rank": rng.randint(1, 5) if mentioned else None,
            "sentiment": rng.choice(("positive", "positive", "neutral", "negative")) if mentioned else "none",
            "score": rng.randint(55, 95) if mentioned else rng.randint(20, 50),
            "latency_ms": latency,
            "summary": f"{name}{'提到了' if mentioned else '没有提到'}{BRAND}",
        }
        outcomes.append(outcome)
        steps.append(Step("result", outcome, pause=1.5))
    steps.append(_progress(75, "analyzing", "正在分析各平台回答：提及率、排名与情感倾向"))
    steps.append(_progress(85, "analyzing", "正在对比竞品表现"))
    steps.append(_progress(95, "report", "正在生成诊断报告"))
    steps.append(Step("complete", {"report": _report(outcomes)}))
    return steps


def _report(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    mentioned = [o for o in outcomes if o["mentioned"]]
    score = round(sum(o["score"] for o in outcomes) / len(outcomes))
    return {
        "brand": BRAND,
        "overall_score": score,
        "grade": "A" if score >= 85 else "B" if score >= 70 else "C",
        "mention_rate": round(len(mentioned) / len(outcomes), 2),
        "platforms": [
            {k: o[k] for k in ("platform", "platform_name", "mentioned", "rank", "sentiment", "score")}
            for o in outcomes
        ],
        "summary": f"{len(mentioned)}/{len(outcomes)} 个 AI 平台提到了{BRAND}，综合得分 {score}。",
        "suggestions": [
            "在未提及品牌的平台补充权威、可引用的品牌资料",
            "针对负面评价整理事实依据并持续更新官方信息",
        ],
    }


def execution_ids(first_id: str | None, count: int) -> list[str]:
    """``count`` ids: ``demo-001`` gives ``demo-001, demo-002, ...``; other ids get ``-2, -3, ...``."""
    if first_id is None:
        first_id = f"demo-{uuid.uuid4().hex[:6]}-1"
    match = re.fullmatch(r"(.*?)(\d+)", first_id)
    if match is None:
        return [first_id] + [f"{first_id}-{i}" for i in range(2, count + 1)]
    prefix, digits = match.groups()
    return [f"{prefix}{int(digits) + i:0{len(digits)}d}" for i in range(count)]


def _commands(base: str, execution_id: str, token: str) -> list[str]:
    ws_base = "ws" + base[len("http") :] if base.startswith("http") else base
    eid, tok = quote(execution_id, safe=""), quote(token, safe="")
    return [
        f"  WebSocket : python -m websockets '{ws_base}/ws/executions/{eid}?token={tok}'",
        f"  SSE       : curl -N '{base}/v1/executions/{eid}/stream?token={tok}'",
        f"  polling   : curl -s '{base}/v1/executions/{eid}/events?after=0&wait=25&token={tok}'",
        f"  state     : curl -s '{base}/v1/executions/{eid}?token={tok}'",
        f"  page      : {base}/demo/?execution_id={eid}&token={tok}  (not in production)",
    ]


def _describe(step: Step) -> str:
    data = step.data
    if step.event == "progress":
        return f"{data['progress']:3d}% {data['stage']}  {data.get('status_text', '')}"
    if step.event == "result":
        return f"{data['platform_name']}: score {data['score']}"
    if step.event == "error":
        return f"{data['error']} (recoverable)"
    return f"overall score {data['report']['overall_score']}"


def run(
    url: str,
    key: str,
    executions: int = 1,
    pace: float = 1.0,
    first_id: str | None = None,
    out: TextIO | None = None,
    seed: int | str | None = None,
    token_ttl: int | None = None,
) -> int:
    """Run ``executions`` simulated diagnoses at once, ``pace`` seconds a step; return an exit code."""
    out = out or sys.stdout
    if executions < 1 or pace < 0:
        print("progress-relay demo: --executions must be at least 1 and --pace not negative", file=sys.stderr)
        return 2
    base = url.rstrip("/")
    publisher = RelayPublisher(base, key, retries=3)
    ids = execution_ids(first_id, executions)
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            print(line, file=out, flush=True)

    try:
        for eid in ids:
            minted = publisher.mint_token(eid, "demo-user", token_ttl)
            say(f"execution {eid}  (subscriber token valid until {minted.get('expires_at_iso', minted['expires_at'])})")
            say(f"  token     : {minted['token']}")
            for line in _commands(base, eid, minted["token"]):
                say(line)
            say("")
    except PublishError as exc:
        print(f"progress-relay demo: cannot get a subscriber token from {base}: {exc}", file=sys.stderr)
        return 1

    def one(eid: str) -> bool:
        for step in diagnosis_script(eid, seed):
            time.sleep(pace * step.pause)
            try:
                answer = publisher.publish(eid, step.event, step.data)
            except PublishError as exc:
                hint = " (it already finished: pick another --execution-id)" if exc.status == 409 else ""
                say(f"[{eid}] publishing failed: {exc}{hint}")
                return False
            say(f"[{eid}] #{answer['seq']:<3d} {step.event:<9}{_describe(step)}")
        return True

    with ThreadPoolExecutor(max_workers=min(executions, 64), thread_name_prefix="demo") as pool:
        finished = list(pool.map(one, ids))
    done = sum(finished)
    say(f"{done}/{len(ids)} demo execution(s) completed.")
    return 0 if all(finished) else 1


async def simulate(relay: Relay, execution_id: str, pace: float, seed: int | str | None = None) -> None:
    """Publish one simulated diagnosis straight into ``relay`` (no HTTP), ``pace`` seconds a step."""
    for step in diagnosis_script(execution_id, seed):
        await asyncio.sleep(pace * step.pause)
        await relay.publish(parse_draft(execution_id, {"event": step.event, "data": step.data}))
