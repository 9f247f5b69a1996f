"""``llmtune ui``: a local web page to launch, watch, compare, inspect and try runs.

Why this stack: a FastAPI app (the ``ui`` extra: FastAPI + uvicorn, already what ``llmtune
serve`` runs on) serves JSON APIs and one static page written in plain HTML, CSS and JavaScript
shipped in ``llmtune/resources/ui`` (no build step, no CDN, nothing downloaded at install or run
time); curves are inline SVG drawn by that page. Gradio, which LLaMA-Factory's LlamaBoard uses,
would pull about 100 MB with its own front end and a page whose structure we do not control;
here every element the tests click has a stable id, and the server reuses llmtune's own code:
:mod:`llmtune.report` reads and compares runs, :mod:`llmtune.resolve` validates the launch form
as ``--dry-run`` does, runs start as ordinary ``python -m llmtune`` processes, and chat/predict go
through ``llmtune serve``'s app (:mod:`llmtune.inference.server`).

Modules: :mod:`~llmtune.ui.runs` (run folders: discovery, paths kept inside the runs directory,
predictions), :mod:`~llmtune.ui.launcher` (the form built from the typed config, validation,
launched processes), :mod:`~llmtune.ui.server` (the HTTP app).
"""
