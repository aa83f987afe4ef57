"""Trainers: the GRPO math (grpo.py for code-writing VLMs, sde.py for flow / diffusion models); the
VLM and flow trainers build on them."""
