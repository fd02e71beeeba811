"""Step-time benchmark and first-principles memory model of the FLUX.1 LoRA trainers."""
