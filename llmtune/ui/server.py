"""The HTTP app of ``llmtune ui`` (FastAPI): JSON under ``/api``, the static page at ``/``.

Safety: every path a request names is resolved (symlinks followed) and refused with 403 unless it
lies inside the runs directory (:func:`llmtune.ui.runs.inside`); with a token, every request must
carry it (``X-Llmtune-Token`` header, or the cookie the page gets from ``/?token=...``). The UI
writes only its launch logs; run folders change only through the llmtune processes it starts.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations at run time.
import asyncio
import contextlib
import secrets
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from llmtune.errors import LlmtuneError
from llmtune.ui.launcher import Launcher
from llmtune.ui.runs import OutsideRunsDir, RunTable, inside, is_run, relative

COOKIE = "llmtune_ui_token"
HEADER = "x-llmtune-token"
STATIC = {"/": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}


def static_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "resources" / "ui"


class TrySlot:
    """The model loaded on the Try page: ``llmtune serve``'s app (one at a time), mounted at
    ``/api/try/model`` so chat streams and predict go through serve's own routes."""

    def __init__(self) -> None:
        self.app: Any = None
        self.run: str | None = None
        self.task: str | None = None
        self.generative = False
        self.lock = threading.Lock()

    def load(self, folder: Path, rid: str) -> dict:
        from llmtune.inference.loader import load_for_inference
        from llmtune.inference.server import ServeOptions, create_app

        with self.lock:
            self.unload()
            ctx = load_for_inference(str(folder), generative=True, require_generative=False)
            task = ctx.state["task"]
            opts = ServeOptions(model_name=rid, max_tokens_limit=512, default_max_tokens=64)
            self.app, self.run, self.task, self.generative = create_app(ctx, opts), rid, task.name, task.generative
            return self.info()

    def info(self) -> dict:
        return {"run": self.run, "task": self.task, "generative": self.generative}

    def unload(self) -> None:
        if self.app is not None:
            if self.app.state.batcher is not None:
                self.app.state.batcher.close()
            self.app.state.predictor.close()
        self.app, self.run, self.task, self.generative = None, None, None, False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is None:
            response = JSONResponse({"error": {"message": "no model loaded: pick a run on the Try page"}}, 409)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class StartRequest(BaseModel):
    recipe: str
    name: str
    values: dict[str, Any] = {}


class CheckRequest(BaseModel):
    recipe: str
    values: dict[str, Any] = {}


class PathRequest(BaseModel):
    path: str


class RunRequest(BaseModel):
    run: str


#: Host header names a loopback-only UI answers to (a page of another site that rebinds its DNS
#: name to 127.0.0.1 sends its own name: refused)
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def create_app(runs_dir: Path, token: str | None = None, hosts: frozenset[str] | None = None) -> Any:
    """The app for ``runs_dir``; ``token``: required on every request; ``hosts``: the Host header
    names accepted (None: any)."""
    root = Path(runs_dir).resolve()
    launcher = Launcher(root)
    slot = TrySlot()
    extra: set[str] = set()
    table = RunTable(root)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        slot.unload()
        launcher.close()

    app = FastAPI(title="llmtune ui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.launcher, app.state.slot, app.state.root = launcher, slot, root

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        if hosts is not None and request.url.hostname not in hosts:
            return JSONResponse(
                {"error": f"host {request.url.hostname!r} refused: open the page as http://localhost:PORT/"}, 403
            )
        if token is None:
            return await call_next(request)
        given = request.headers.get(HEADER) or request.cookies.get(COOKIE) or ""
        from_query = request.query_params.get("token")
        if from_query is not None and request.url.path == "/" and secrets.compare_digest(from_query, token):
            response = await call_next(request)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        if not secrets.compare_digest(given, token):
            return JSONResponse({"error": "missing or wrong token: open the page as /?token=TOKEN"}, 401)
        return await call_next(request)

    @app.exception_handler(OutsideRunsDir)
    async def _outside(request: Request, exc: OutsideRunsDir) -> Any:
        return JSONResponse({"error": str(exc)}, 403)

    @app.exception_handler(LlmtuneError)
    async def _user_error(request: Request, exc: LlmtuneError) -> Any:
        return JSONResponse({"error": str(exc)}, 400)

    def run_folder(rid: str) -> Path:
        path = inside(root, rid)
        if not is_run(path):
            raise LlmtuneError(f"{rid} is not a run folder (no llmtune_config.yaml with run files)")
        return path

    def static(name: str) -> Response:
        path = static_dir() / name
        return FileResponse(path, media_type=_TYPES[path.suffix], headers={"Cache-Control": "no-store"})

    @app.get("/")
    def index() -> Any:
        return static("index.html")

    @app.get("/app.js")
    def script() -> Any:
        return static("app.js")

    @app.get("/style.css")
    def style() -> Any:
        return static("style.css")

    # ---- runs -------------------------------------------------------------------------------
    @app.get("/api/runs")
    def runs() -> dict:
        launched = launcher.poll()
        rows = table.rows(extra)
        ids = {r["id"] for r in rows}
        for row in rows:
            row["launched"] = launched.get(row["id"])
        for rid, state in launched.items():
            if rid not in ids:  # started, no run files yet (loading the model) or failed early
                status = "starting" if state["running"] else "failed"
                rows.append({"id": rid, "status": status, "task": "-", "model": "-", "data": "-", "launched": state})
        return {"root": str(root), "runs": rows}

    @app.post("/api/runs/add")
    def add(req: PathRequest) -> dict:
        text = req.path.strip()
        path = Path(text).expanduser()
        if path.is_absolute() and not _under(path, root):
            raise OutsideRunsDir(f"{text} is outside the runs directory {root}: only folders inside it can be added")
        rel = relative(root, path) if path.is_absolute() else text
        folder = inside(root, rel)
        if not folder.is_dir():
            raise LlmtuneError(f"{text} is not a folder")
        if not is_run(folder):
            raise LlmtuneError(f"{text} is not a run folder: it needs llmtune_config.yaml and run files")
        extra.add(relative(root, folder))
        return {"ok": True, "id": relative(root, folder)}

    @app.get("/api/run/{rid:path}/predictions")
    def run_predictions(rid: str) -> dict:
        from llmtune.ui.runs import predictions

        return predictions(root, relative(root, run_folder(rid)))

    @app.get("/api/run/{rid:path}/log")
    def run_log(rid: str) -> dict:
        inside(root, rid)
        return {"log": launcher.log_tail(rid), "launched": launcher.poll().get(rid)}

    @app.get("/api/run/{rid:path}")
    def run_page(rid: str) -> dict:
        from llmtune.ui.runs import run_detail

        detail = run_detail(root, relative(root, run_folder(rid)))
        detail["launched"] = launcher.poll().get(detail["id"])
        return detail

    @app.get("/api/compare")
    def compare_runs(ids: str) -> dict:
        from llmtune.ui.runs import compare

        rels = [r for r in ids.split(",") if r]
        if not rels:
            raise LlmtuneError("pick at least one run to compare")
        return compare(root, [relative(root, run_folder(r)) for r in rels])

    @app.get("/api/file/{rel:path}")
    def file(rel: str) -> Any:
        """A file inside the runs directory (an audio clip of an ASR prediction)."""
        path = inside(root, rel)
        if not path.is_file():
            return JSONResponse({"error": f"{rel} is not a file"}, 404)
        return FileResponse(path)

    # ---- launch -------------------------------------------------------------------------------
    @app.get("/api/recipes")
    def recipes() -> dict:
        from llmtune.recipes import list_recipes, recipe_description

        return {"recipes": [{"name": n, "description": recipe_description(p)} for n, p in list_recipes()]}

    @app.get("/api/recipe/{name}")
    def recipe(name: str) -> dict:
        from llmtune.recipes import recipe_names
        from llmtune.ui.launcher import recipe_form

        if name not in recipe_names():
            raise LlmtuneError(f"unknown recipe '{name}'")
        return recipe_form(name)

    @app.post("/api/check")
    def check_values(req: CheckRequest) -> dict:
        from llmtune.recipes import recipe_names
        from llmtune.ui.launcher import check

        if req.recipe not in recipe_names():
            raise LlmtuneError(f"unknown recipe '{req.recipe}'")
        return check(req.recipe, req.values)

    @app.post("/api/launch")
    def launch(req: StartRequest) -> Any:
        from llmtune.recipes import recipe_names

        if req.recipe not in recipe_names():
            raise LlmtuneError(f"unknown recipe '{req.recipe}'")
        out = launcher.start(req.recipe, req.name, req.values)
        return JSONResponse(out, 200 if out["ok"] else 400)

    @app.post("/api/stop")
    def stop(req: RunRequest) -> Any:
        from llmtune.report import read_json

        folder = inside(root, req.run)
        status = read_json(folder / "run_status.json") or {}
        out = launcher.stop(relative(root, folder), status)
        return JSONResponse(out, 200 if out["ok"] else 409)

    @app.post("/api/resume")
    def resume(req: RunRequest) -> Any:
        from llmtune.report import load_run

        folder = run_folder(req.run)
        run = load_run(folder)
        if run.status in ("running", "finished"):
            return JSONResponse({"ok": False, "error": f"{req.run} is {run.status}: nothing to resume"}, 409)
        out = launcher.resume(relative(root, folder), folder, str(run.config.get("task")))
        return JSONResponse(out, 200 if out["ok"] else 409)

    # ---- try ----------------------------------------------------------------------------------
    @app.post("/api/try/load")
    async def try_load(req: RunRequest) -> dict:
        folder = run_folder(req.run)
        return await asyncio.to_thread(slot.load, folder, relative(root, folder))

    @app.get("/api/try")
    def try_info() -> dict:
        return slot.info()

    app.mount("/api/try/model", slot)
    return app


def _under(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True
