"""The endpoints (see app.py's docstring); each reads the running Service from the app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from urllib.parse import quote

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..data import BadImageError
from .batching import Closed, QueueFull
from .explain import CAM_CHOICES
from .limits import authorised
from .page import page_html
from .service import Service, bad_images, error
from .uploads import Upload, UploadError, read_uploads

MAX_FILES = 64  # images in one predict request
EXPLAIN_QUEUE = 4  # explanations waiting at most; each is a forward and a backward pass
log = logging.getLogger("leanvision.serving")


def add_routes(app: FastAPI) -> None:
    """On the app itself, not through an included router: the app's route list stays flat."""
    app.add_api_route("/", page, methods=["GET"], response_class=HTMLResponse,
                      include_in_schema=False)
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
    app.add_api_route("/metrics", metrics_text, methods=["GET"])
    app.add_api_route("/v1/predict", predict, methods=["POST"])
    app.add_api_route("/v1/explain", explain, methods=["POST"])


def _service(request: Request) -> Service:
    return request.app.state.service


async def page(request: Request) -> HTMLResponse:
    svc = _service(request)
    return HTMLResponse(page_html(svc.name, explain=svc.explainer is not None,
                                  with_text=svc.with_text))


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def readyz(request: Request) -> JSONResponse:
    """200 once warmed up; 503 while warming up, draining, lagging or failed. The reasons and
    the model's details go only to a caller with the key (or to anyone when no key is set)."""
    svc = _service(request)
    key = svc.settings.api_key
    told = authorised(request.scope, key.encode() if key else None)
    problem = _not_ready(svc)
    if problem is not None:
        reason, retry = problem
        return JSONResponse({"status": "not ready", **({"detail": reason} if told else {})},
                            status_code=503, headers={"Retry-After": retry} if retry else None)
    if not told:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "ready", "model": svc.name, "runtime": svc.predictor.runtime,
                         "classes": len(svc.classes), "input_size": list(svc.input_size)})


def _not_ready(svc: Service) -> tuple[str, str | None] | None:
    """(reason, Retry-After) while the service should get no traffic, else None."""
    if svc.gate.draining:
        return "shutting down", None
    if svc.batcher.failure is not None:
        return f"the model failed to warm up: {svc.batcher.failure}", None
    if not svc.batcher.ready.is_set():
        return "warming up", "1"
    if svc.lagging():
        return "overloaded: work waits longer than half of --timeout-s", "1"
    return None


async def metrics_text(request: Request) -> Response:
    body, content_type = _service(request).metrics.render()
    return Response(body, media_type=content_type)


async def predict(request: Request, top_k: int | None = None) -> JSONResponse:
    svc = _service(request)
    if top_k is not None and top_k < 1:
        return error(422, f"top_k {top_k} must be at least 1")
    # More classes than the model has is no error: there are only that many to list.
    top_k = min(top_k or svc.settings.top_k, len(svc.classes))
    if svc.batcher.depth >= svc.settings.queue_size:
        return svc.busy()  # before reading a byte of the body
    futures: list = []
    deadline = time.monotonic() + svc.settings.timeout_s
    try:
        async with asyncio.timeout(svc.settings.timeout_s):
            uploads, decoded, futures = await _submit(svc, request, deadline)
            if not futures:
                return bad_images(uploads, decoded)
            rows = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    except UploadError as exc:
        return error(exc.status, exc.message)
    except QueueFull:
        return svc.busy()
    except Closed:
        return error(503, "shutting down", {"Retry-After": "5"})
    except TimeoutError:
        svc.batcher.discard(futures)
        return error(504, f"no answer within {svc.settings.timeout_s:g} s (--timeout-s); the "
                          "server is overloaded or the upload too slow")
    except Exception as exc:  # the runtime failed on the batch: say so, keep serving
        log.exception("the model failed on a batch")
        return error(500, f"the model failed on this batch ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); see the server log")
    return JSONResponse({"model": svc.name, "runtime": svc.predictor.runtime,
                         "results": _results(svc, uploads, decoded, rows, top_k)})


async def _submit(svc: Service, request: Request,
                  deadline: float) -> tuple[list[Upload], list, list]:
    """Read and decode the uploads and queue the good images; (uploads, decoded, futures)."""
    svc.arriving += 1
    try:
        uploads = await read_uploads(request, MAX_FILES, accept_text=svc.with_text)
        decoded = await svc.decode(uploads, deadline)
        images = [d for d in decoded if isinstance(d, torch.Tensor)]
        futures: list = []
        if images:
            # Image + text models: ids for every image (no text: all padding, answered by the
            # image branch), tokenized here, batched alongside.
            extras = list(svc.predictor.encode_texts(
                [u.text for u, d in zip(uploads, decoded, strict=True)
                 if isinstance(d, torch.Tensor)])) if svc.with_text else None
            futures = svc.batcher.submit(images, extras)
        return uploads, decoded, futures
    finally:
        # After submit (so the worker does not run a batch this request just missed), and on
        # every path (so it does not wait for one that failed).
        svc.arriving -= 1
        if svc.arriving == 0:
            svc.batcher.nudge()


def _results(svc: Service, uploads: list[Upload], decoded: list, rows: list,
             top_k: int) -> list[dict]:
    probs = torch.from_numpy(np.stack(rows)).float().softmax(1)
    results, row = [], 0
    for upload, item in zip(uploads, decoded, strict=True):
        if isinstance(item, BadImageError):
            results.append({"image": upload.name, "error": item.reason})
            continue
        values, indices = probs[row].topk(top_k)
        row += 1
        results.append({"image": upload.name,
                        "top": [{"class": svc.classes[int(c)], "prob": float(v)}
                                for v, c in zip(values, indices, strict=True)]})
        if svc.with_text:
            results[-1]["used_text"] = bool(upload.text and upload.text.strip())
    return results


async def explain(request: Request, method: str = "gradcam",
                  target: str | None = None) -> Response:
    svc = _service(request)
    explainer = svc.explainer
    if explainer is None:
        return error(501, "explanations are off for this server (no PyTorch weights "
                          "loaded); start it with the artifact's model.safetensors")
    if method not in CAM_CHOICES:
        return error(422, f"method {method!r} must be one of {', '.join(CAM_CHOICES)}")
    if target is not None and target not in explainer.classes:
        return error(422, f"unknown class {target[:60]!r}; the model's classes are "
                          f"{', '.join(explainer.classes[:20])}")
    if svc.explaining >= EXPLAIN_QUEUE:
        return error(503, "busy explaining; retry shortly", {"Retry-After": "1"})
    loop = asyncio.get_running_loop()
    svc.explaining += 1

    def decrement() -> None:
        svc.explaining -= 1

    def release(_job: object = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to count
            loop.call_soon_threadsafe(decrement)

    job = None
    deadline = time.monotonic() + svc.settings.timeout_s
    try:
        async with asyncio.timeout(svc.settings.timeout_s):
            uploads = await read_uploads(request, 1)
            (item,) = await svc.decode(uploads, deadline)
            if isinstance(item, BadImageError):
                return bad_images(uploads, [item])
            started = time.perf_counter()
            job = svc.explain_pool.submit(explainer.overlay_png, item, target, method)
            # A timed-out explanation still holds its slot until the thread is done with it,
            # so timeouts cannot pile work up behind the single explain thread.
            job.add_done_callback(release)
            png, cls, prob = await asyncio.wrap_future(job)
    except UploadError as exc:
        return error(exc.status, exc.message)
    except TimeoutError:
        return error(504, f"no explanation within {svc.settings.timeout_s:g} s (--timeout-s)")
    finally:
        if job is None:
            release()
    return Response(png, media_type="image/png", headers={
        "X-Leanvision-Class": quote(cls), "X-Leanvision-Prob": f"{prob:.6f}",
        "X-Leanvision-Method": method,
        "X-Leanvision-Seconds": f"{time.perf_counter() - started:.4f}"})
