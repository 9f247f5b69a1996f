"""Speech recognition from scratch on real speech: the Free Spoken Digit Dataset (FSDD).

Five speakers x 500 clips of the digits 0-9 (8 kHz mono WAV) from ../shared/data/speech/fsdd (or
--data). A from-scratch CTC model (``ctc-small`` preset, character vocabulary built from the
transcriptions) is trained on four speakers and scored on the fifth, a voice it never heard:

1. isolated digits: one clip = one word ("seven");
2. connected digits: 2-5 clips of one speaker joined into one utterance ("three one four"), so
   multi-word decoding is exercised.

Model selection (the best epoch) uses a validation split carved from the four training speakers
only; the held-out speaker is the ``test`` split, scored once at the end. Everything runs through
the real CLI (``python -m llmtune finetune --task asr``) in a subprocess.

    python benchmarks/bench_asr.py [--data DIR] [--test-speaker yweweler] [--epochs 12] [--only isolated|connected]

Writes the ``asr`` section of BENCHMARKS.md (WER, CER, wall time, clips/s, exact commands).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "speech" / "fsdd"
sys.path.insert(0, str(ROOT / "benchmarks"))

from _lmbench import update_benchmarks_md  # noqa: E402


def read_fsdd(data: Path) -> list[dict]:
    with open(data / "metadata.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["file_name"] = str((data / row["file_name"]).resolve())
    return rows


def write_split(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name", "transcription", "speaker"])
        for row in rows:
            writer.writerow([row["file_name"], row["transcription"], row["speaker"]])


def connected(rows: list[dict], per_speaker: int, folder: Path, seed: int) -> list[dict]:
    """Utterances of 2-5 clips of one speaker, concatenated into new WAV files."""
    import numpy as np
    import soundfile as sf

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    by_speaker: dict[str, list[dict]] = {}
    for row in rows:
        by_speaker.setdefault(row["speaker"], []).append(row)
    out = []
    for speaker, clips in sorted(by_speaker.items()):
        for i in range(per_speaker):
            parts = rng.sample(clips, rng.randint(2, 5))
            audio, rate = [], None
            for part in parts:
                samples, rate = sf.read(part["file_name"], dtype="float32")
                audio.append(samples)
            path = folder / f"{speaker}_{i:04d}.wav"
            sf.write(str(path), np.concatenate(audio), rate)
            out.append(
                {
                    "file_name": str(path),
                    "transcription": " ".join(p["transcription"] for p in parts),
                    "speaker": speaker,
                }
            )
    return out


def layout(rows: list[dict], test_speaker: str, root: Path, seed: int, val_fraction: float = 0.1) -> Path:
    """train/validation (the four training speakers) and test (the held-out speaker)."""
    rng = random.Random(seed)
    train = [r for r in rows if r["speaker"] != test_speaker]
    test = [r for r in rows if r["speaker"] == test_speaker]
    if not train or not test:
        raise SystemExit(f"speaker {test_speaker!r} not found (or is the only one)")
    rng.shuffle(train)
    n_val = int(len(train) * val_fraction)
    write_split(root / "train", train[n_val:])
    write_split(root / "validation", train[:n_val])
    write_split(root / "test", test)
    return root


def run(name: str, data: Path, out: Path, extra: list[str]) -> dict:
    args = ["finetune", "--recipe", "asr-scratch", "--dataset", str(data), "--output-dir", str(out), *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="2")
    started = time.perf_counter()
    log = out.parent / f"{name}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "llmtune", *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time
    code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{name} failed ({code}); see {log}:\n" + log.read_text()[-3000:])
    metrics = json.loads((out / "metrics.json").read_text())
    train_clips = len((data / "train" / "metadata.csv").read_text(encoding="utf-8").splitlines()) - 1
    return {
        "name": name,
        "command": "llmtune " + " ".join(shlex.quote(a) for a in args),
        "wall": wall,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "train_seconds": metrics["train"]["train_wall_seconds"],
        "clips_per_s": metrics["train"].get("train_samples_per_second"),
        "train_clips": train_clips,
        "test": metrics["test"],
        "eval": metrics["eval"],
        "load": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--test-speaker", default="yweweler")
    parser.add_argument("--epochs", type=float, default=12)
    parser.add_argument("--connected-epochs", type=float, default=12)
    parser.add_argument("--connected-per-speaker", type=int, default=200)
    parser.add_argument(
        "--connected-with-isolated",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Train the connected-digit model on the single clips too (validation/test stay connected).",
    )
    parser.add_argument("--only", choices=["isolated", "connected"], default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed-perturbation", default="[0.9, 1.1]", help="options.speed_perturbation; [] for none.")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the data and runs in this folder.")
    ns = parser.parse_args()
    if not (ns.data / "metadata.csv").is_file():
        print(f"FSDD not found at {ns.data} (pass --data): nothing to benchmark", file=sys.stderr)
        return 1
    rows = read_fsdd(ns.data)
    work = ns.keep or Path(tempfile.mkdtemp(prefix="llmtune-bench-asr-"))
    work.mkdir(parents=True, exist_ok=True)
    common = [
        "--seed", str(ns.seed),
        "--set", f"options.speed_perturbation={ns.speed_perturbation}",
        "--overwrite",
    ]  # fmt: skip
    # each task's result is kept in the work dir, so `--keep DIR --only ...` runs of the two tasks
    # (one at a time, on an idle machine) still write one table with both
    saved = work / "results.json"
    done = json.loads(saved.read_text()) if ns.keep and saved.is_file() else {}
    if ns.only in (None, "isolated"):
        data = layout(rows, ns.test_speaker, work / "isolated", ns.seed)
        done["isolated"] = run("isolated digits", data, work / "isolated-run", [*common, "--epochs", str(ns.epochs)])
        saved.write_text(json.dumps(done, indent=1))
        print(json.dumps(done["isolated"], indent=1), flush=True)
    if ns.only in (None, "connected"):
        joined = connected(rows, ns.connected_per_speaker, work / "connected-audio", ns.seed)
        data = layout(joined, ns.test_speaker, work / "connected", ns.seed)
        if ns.connected_with_isolated:
            # the training speakers' single clips join the connected utterances in the train split
            # (validation and test stay connected-only): whole-word examples the model learns fast,
            # beside the multi-word ones that teach it the word boundaries
            train = [r for r in rows if r["speaker"] != ns.test_speaker]
            with open(data / "train" / "metadata.csv", newline="", encoding="utf-8") as fh:
                train += list(csv.DictReader(fh))
            random.Random(ns.seed).shuffle(train)
            write_split(data / "train", train)
        extra = [*common, "--epochs", str(ns.connected_epochs)]
        name = "connected digits (2-5 per utterance" + (
            "; + the single clips in training)" if ns.connected_with_isolated else ")"
        )
        done["connected"] = run(name, data, work / "connected-run", extra)
        saved.write_text(json.dumps(done, indent=1))
        print(json.dumps(done["connected"], indent=1), flush=True)
    results = [done[k] for k in ("isolated", "connected") if k in done]
    lines = [
        "## Speech recognition from scratch: FSDD, unseen speaker (issue 8)",
        "",
        f"Free Spoken Digit Dataset (real 8 kHz recordings, {len(rows)} clips, 5 speakers). A from-scratch "
        f"CTC model (`ctc-small`: 4 Wav2Vec2-BERT conformer layers, hidden 144; clips resampled to 16 kHz, 80 "
        f"log-mel filterbanks every 10 ms, two stacked per 20 ms model step; character vocabulary built from the "
        f"transcriptions) trains on four speakers (10% of their "
        f"clips held out for picking the best epoch) and is scored once on speaker `{ns.test_speaker}`, whom it "
        f"never heard. Greedy CTC decoding; WER/CER corpus-level after `basic` normalisation. Nothing was "
        f"tuned on the held-out speaker.",
        "",
        "| task | train utterances | test WER | test CER | validation WER | train wall time | whole run: wall / CPU time | clips/s (train) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    factors = ns.speed_perturbation.strip("[] ")
    copies = f" (x{len(factors.split(',')) + 1} with speed perturbation)" if factors else ""
    for r in results:
        t, e = r["test"], r["eval"]
        lines.append(
            f"| {r['name']} | {r['train_clips']}{copies} | {100 * t['test_wer']:.1f} % | "
            f"{100 * t['test_cer']:.1f} % | {100 * e['eval_wer']:.1f} % | {r['train_seconds'] / 60:.1f} min | "
            f"{r['wall'] / 60:.1f} min / {r['cpu_seconds'] / 60:.1f} CPU-min | {r['clips_per_s']:.1f} |"
        )
    loads = ", ".join(f"{r['load']:.1f} ({r['name'].split()[0]}, {r.get('date', '?')})" for r in results)
    lines += [
        "",
        f"Machine: 2 CPU cores, one run at a time; 1-minute load average at the end of each run: {loads} "
        f"(about 2 is the run itself). The CPU time counts both cores of the training process. Reproduce:",
        "",
        "```bash",
        f"python benchmarks/bench_asr.py --test-speaker {ns.test_speaker} --epochs {ns.epochs:g} "
        f"--connected-epochs {ns.connected_epochs:g}",
        *[f"# {r['name']}:\n{r['command']}" for r in results],
        "```",
    ]
    path = update_benchmarks_md("asr", "\n".join(lines))
    print("\n".join(lines))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
