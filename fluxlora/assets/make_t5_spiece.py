"""Regenerate `t5_spiece.model`, the sentencepiece model bundled for the built-in checkpoints.

Why it exists: the real T5 v1.1 `spiece.model` that FLUX.1-dev ships in `tokenizer_2/` is not
distributed by any package this project can install, and no model hub is reachable. So we train a
unigram sentencepiece model with T5's conventions (pad=0, eos=1, unk=2, no bos; `T5TokenizerFast`
adds the 100 `<extra_id_*>` tokens) on English text that ships with CPython. A user's real folder
goes through exactly the same `T5TokenizerFast.from_pretrained` code; only the vocabulary differs.

The committed file is the source of truth (byte-identical checkpoints need a fixed file); this
script documents how it was made: `python fluxlora/assets/make_t5_spiece.py`.
"""

import io
import re
from pathlib import Path
from pydoc_data.topics import topics

import sentencepiece as spm

VOCAB_SIZE = 4000


def english_lines() -> list[str]:
    text = "\n".join(topics[key] for key in sorted(topics))
    lines = [re.sub(r"\s+", " ", line).strip() for line in text.splitlines()]
    return [line for line in lines if len(line) > 20]


def main() -> None:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(english_lines()),
        model_writer=model,
        vocab_size=VOCAB_SIZE,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        character_coverage=1.0,
        minloglevel=2,
    )
    Path(__file__).with_name("t5_spiece.model").write_bytes(model.getvalue())


if __name__ == "__main__":
    main()
