"""Code shared by several task packages (not a task: the registry skips this package).

- :mod:`.chat`: chat templates (the shipped fallbacks, the ``options.chat_template`` check and
  setter), chat messages from a cell, rendering a conversation, tokenizing a rendered segment;
- :mod:`.lm_eval`: scoring a language model: per-row NLL and token counts, the eval step and
  eval batch size built on them, token-weighted loss and perplexity, generation quality.

Task packages import from here, never from each other. Module level stays torch-free.
"""
