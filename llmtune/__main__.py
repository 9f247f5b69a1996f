from llmtune.cli import run

run()
