"""What a run tells its user: a progress bar, and one json line per optimizer step in train_log.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm


class TrainLog:
    def __init__(self, output_dir: str | Path, first_step: int, total_steps: int, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "train_log.jsonl"
        if enabled and first_step > 0 and self.path.exists():
            # a resumed run rewrites the steps after its checkpoint, so drop them from the old log
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= first_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif enabled:
            self.path.write_text("")
        self.bar = tqdm(total=total_steps, initial=first_step, desc="steps", disable=not enabled)

    def step(self, step: int, loss: float, lr: float, grad_norm: float, seconds: float) -> None:
        if not self.enabled:
            return
        record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "seconds": seconds}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")

    def close(self) -> None:
        self.bar.close()


def announce(message: str) -> None:
    tqdm.write(message)
