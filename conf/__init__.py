"""Hydra configuration groups of sde-diffusion, shipped in the wheel as ``sde_diffusion.conf``."""
