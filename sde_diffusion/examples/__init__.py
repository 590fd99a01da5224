"""Worked examples of extending sde-diffusion from the outside, using only its public API."""
