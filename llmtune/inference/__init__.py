"""Inference shared by ``llmtune predict``, ``eval``, ``generate``/``chat`` and ``serve``.

- :mod:`.loader`: a saved model (or Hub id, GGUF file, LoRA output folder) and its tokenizer,
  through the same task hooks and :mod:`llmtune.modeling` path as training and ``eval``;
- :mod:`.inputs`: rows to predict on from csv/tsv/jsonl/parquet/txt files or stdin;
- :mod:`.batching`: length-sorted batches written back in input order;
- :mod:`.predict`: per-task prediction records (the task's ``predict_batch`` hook);
- :mod:`.generation`: sampling settings, batched and streamed text generation, prompts;
- :mod:`.server`: the OpenAI-compatible HTTP app of ``llmtune serve``.

Module level stays torch-free.
"""
