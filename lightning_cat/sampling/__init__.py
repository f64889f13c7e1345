"""Seeded sampling in plain diffusers: one generator per (prompt, seed), images written atomically."""

from lightning_cat.sampling.generation import generate_images, write_generated_images

__all__ = ["generate_images", "write_generated_images"]
